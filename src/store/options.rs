//! Options of stores and new cores.

use std::time::Duration;

use crate::{
    crypto::{CoreKind, KeyPair},
    storage::Durability,
};

/// How to open a [`Corestore`](super::Corestore).
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Durability of acknowledged writes.
    pub durability: Durability,
    /// Bytes of the database's page cache; `None` keeps redb's default (1 GiB). Pages written
    /// stay in this cache, so a store's memory grows with what it writes up to this size; a
    /// smaller cache bounds memory, and reads beyond it go to the file.
    pub cache_bytes: Option<usize>,
    /// The primary key named cores derive from. A new store generates one when this is `None`;
    /// an existing store refuses a primary key that differs from its own.
    pub primary_key: Option<[u8; 32]>,
    /// The blob store beside the database.
    pub blobs: BlobOptions,
}

/// How a store keeps and fetches blobs (see [`Hypercore::append_blob`](crate::Hypercore::append_blob)).
#[derive(Debug, Clone)]
pub struct BlobOptions {
    /// How often iroh-blobs' garbage collection runs (`None`: never). Blobs a block of this
    /// store names are kept; others go.
    pub gc_interval: Option<Duration>,
    /// The largest blob fetched: a block naming a bigger one is refused before anything is
    /// downloaded.
    pub max_blob_size: u64,
}

/// The default of [`BlobOptions::max_blob_size`]: 16 GiB.
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 16 << 30;

impl Default for BlobOptions {
    fn default() -> Self {
        Self {
            gc_interval: Some(Duration::from_secs(60)),
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
        }
    }
}

/// How to create a writable core with [`Corestore::create`](super::Corestore::create).
#[derive(Debug, Clone)]
pub struct CoreOptions {
    /// The signing key pair; generated when `None`.
    pub key_pair: Option<KeyPair>,
    /// Default (manifest) or compat core.
    pub kind: CoreKind,
}

impl Default for CoreOptions {
    fn default() -> Self {
        Self {
            key_pair: None,
            kind: CoreKind::Default,
        }
    }
}

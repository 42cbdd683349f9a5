//! Options of stores and new cores.

use crate::{
    blobs::BlobOptions,
    crypto::{CoreKind, KeyPair},
    storage::Durability,
};

/// How to open a [`Corestore`](super::Corestore).
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Durability of acknowledged writes.
    pub durability: Durability,
    /// Bytes of the database's page cache; `None` keeps redb's default (1 GiB) for a store on
    /// a file, and 8 MiB for a store in memory, whose pages are in memory already (a larger
    /// cache holds a second copy of them). Pages written stay in this cache, so a store's
    /// memory grows with what it writes up to this size; a smaller cache bounds memory, and
    /// reads beyond it go to the file (or the memory store's own copy).
    pub cache_bytes: Option<usize>,
    /// The primary key named cores derive from. A new store generates one when this is `None`;
    /// an existing store refuses a primary key that differs from its own.
    pub primary_key: Option<[u8; 32]>,
    /// The blob store beside the database.
    pub blobs: BlobOptions,
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

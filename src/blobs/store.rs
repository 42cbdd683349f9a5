//! [`BlobStore`]: the iroh-blobs store beside a core store's database, and the tags that keep
//! the blobs its blocks name from garbage collection.
//!
//! Every blob a block names is held by one persistent tag per (core, block): `hypercore/`,
//! the core key, the block index (big-endian). A blob named by two blocks (of one core or of
//! two) has two tags, and goes only once both are released. Tags are set before they are
//! needed and released after the blocks are gone, so a crash in between can leave a tag
//! behind (a blob kept too long), never a block without its blob's tag.

use std::{path::Path, time::Duration};

use iroh_blobs::{
    Hash, HashAndFormat,
    api::Store,
    store::{GcConfig, fs::FsStore, mem::MemStore},
};

use super::BlobOptions;
use crate::{
    crypto::CoreKey,
    error::{Error, Result},
};

/// The prefix of every tag this crate sets for a block's blob.
const TAG_PREFIX: &[u8] = b"hypercore/";
/// The prefix of the tag that keeps a blob while its block is being appended (then the core
/// key; see `core::blobs`).
pub(crate) const PENDING_TAG_PREFIX: &[u8] = b"hypercore-pending/";
/// What both prefixes start with.
const COMMON_PREFIX: &[u8] = b"hypercore";

/// The name of the tag that keeps the blob of block `index` of `core`.
fn tag(core: &CoreKey, index: u64) -> Vec<u8> {
    let mut name = Vec::with_capacity(TAG_PREFIX.len() + 40);
    name.extend_from_slice(TAG_PREFIX);
    name.extend_from_slice(core);
    name.extend_from_slice(&index.to_be_bytes());
    name
}

/// The prefix of every tag of `core`.
fn core_prefix(core: &CoreKey) -> Vec<u8> {
    let mut name = TAG_PREFIX.to_vec();
    name.extend_from_slice(core);
    name
}

/// The blob store of a [`Corestore`](crate::Corestore): iroh-blobs' file store in the
/// store's directory, or its memory store.
#[derive(Debug, Clone)]
pub(crate) struct BlobStore {
    store: Store,
    /// The largest blob fetched.
    pub max_blob_size: u64,
}

fn blob_error(what: &str, e: impl std::error::Error + 'static) -> Error {
    Error::blob(what, &e)
}

impl BlobStore {
    /// A memory store.
    pub fn memory(opts: &BlobOptions) -> Self {
        let mem = iroh_blobs::store::mem::Options {
            gc_config: opts.gc_interval.map(gc_config),
        };
        Self {
            store: MemStore::new_with_opts(mem).into(),
            max_blob_size: opts.max_blob_size,
        }
    }

    /// A file store in `dir`.
    pub async fn persistent(dir: &Path, opts: &BlobOptions) -> Result<Self> {
        let mut fs = iroh_blobs::store::fs::options::Options::new(dir);
        fs.gc = opts.gc_interval.map(gc_config);
        let store = FsStore::load_with_opts(dir.join("blobs.db"), fs)
            .await
            .map_err(|e| blob_error(&format!("opening the blob store in {}", dir.display()), e))?;
        Ok(Self {
            store: store.into(),
            max_blob_size: opts.max_blob_size,
        })
    }

    /// The iroh-blobs store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Keeps `hash` for block `index` of `core`.
    pub async fn protect(&self, core: &CoreKey, index: u64, hash: Hash) -> Result<()> {
        self.store
            .tags()
            .set(tag(core, index), HashAndFormat::raw(hash))
            .await
            .map_err(|e| blob_error("tagging a blob", e))
    }

    /// Releases the blobs of blocks `start..end` of `core`.
    pub async fn release(&self, core: &CoreKey, start: u64, end: u64) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        self.store
            .tags()
            .delete_range(tag(core, start)..tag(core, end))
            .await
            .map(|_| ())
            .map_err(|e| blob_error("releasing blobs", e))
    }

    /// Whether every one of `hashes` is named by a block of a core `scope` admits (its tag is
    /// kept), or is being appended to one (its pending tag). One pass over the store's tags.
    pub async fn all_named(&self, hashes: &[Hash], scope: &BlobScope) -> bool {
        let mut wanted: std::collections::HashSet<Hash> = hashes.iter().copied().collect();
        if wanted.is_empty() {
            return true;
        }
        // `hypercore/` and `hypercore-pending/` both start so.
        let Ok(tags) = self.store.tags().list_prefix(COMMON_PREFIX).await else {
            return false;
        };
        let mut tags = std::pin::pin!(tags);
        while let Some(tag) = n0_future::StreamExt::next(&mut tags).await {
            let Ok(tag) = tag else {
                return false;
            };
            if !wanted.contains(&tag.hash) {
                continue;
            }
            let name = &tag.name.0[..];
            let core = name
                .strip_prefix(TAG_PREFIX)
                .or_else(|| name.strip_prefix(PENDING_TAG_PREFIX))
                .and_then(|rest| rest.get(..32))
                .and_then(|k| <CoreKey>::try_from(k).ok());
            if core.is_some_and(|core| scope.admits(&core)) {
                wanted.remove(&tag.hash);
                if wanted.is_empty() {
                    return true;
                }
            }
        }
        false
    }

    /// Releases every blob of `core`.
    pub async fn release_core(&self, core: &CoreKey) -> Result<()> {
        self.store
            .tags()
            .delete_prefix(core_prefix(core))
            .await
            .map(|_| ())
            .map_err(|e| blob_error("releasing blobs", e))
    }
}

/// Whose blobs a node serves.
#[derive(Debug, Clone)]
pub(crate) enum BlobScope {
    /// Those of every core of the store, but the cores in `except` (the application left
    /// them).
    Every {
        /// Cores not served.
        except: std::collections::HashSet<CoreKey>,
    },
    /// Those of these cores only.
    Only(std::collections::HashSet<CoreKey>),
}

impl BlobScope {
    /// Whether the blobs of `core` are served.
    fn admits(&self, core: &CoreKey) -> bool {
        match self {
            Self::Every { except } => !except.contains(core),
            Self::Only(cores) => cores.contains(core),
        }
    }
}

fn gc_config(interval: Duration) -> GcConfig {
    GcConfig {
        interval,
        add_protected: None,
    }
}

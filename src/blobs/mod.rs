//! Large values through iroh-blobs, named by a signed log.
//!
//! A block can hold at most [`MAX_BLOCK_SIZE`](crate::core::MAX_BLOCK_SIZE) bytes; bigger
//! values go into the store's iroh-blobs store, and the log gets a small block holding a
//! [`BlobRef`] (the content's BLAKE3 hash and size), signed like any other block. A reader
//! fetches and verifies the block first, so the log vouches for the hash, then the blob from
//! the peers that replicate the core, verified by BLAKE3 as it streams.
//!
//! This module is the blob side of a database: the blob store, the fetcher, references and
//! options, below the cores. A core's own blob calls
//! ([`Hypercore::append_blob`](crate::Hypercore::append_blob),
//! [`Hypercore::get_blob`](crate::Hypercore::get_blob)) live with the core.

mod blob_ref;
mod fetch;
mod options;
mod policy;
mod source;
mod store;

use std::sync::{Arc, Mutex, OnceLock};

pub(crate) use blob_ref::BLOCK_LEN;
pub use blob_ref::BlobRef;
pub(crate) use fetch::{BlameProvider, BlobFetcher, Providers};
pub use options::{BlobOptions, DEFAULT_MAX_BLOB_SIZE};
pub use policy::BlobPolicy;
pub use source::{BlobProgress, BlobSource};
pub(crate) use store::{BlobScope, BlobStore, PENDING_TAG_PREFIX};

/// The blob side of the stores on one database: the blob store, and the protocol that fetches
/// blobs for their cores (the last one spawned on the store).
#[derive(Debug, Default)]
pub(crate) struct BlobState {
    store: OnceLock<BlobStore>,
    fetcher: Mutex<Option<Arc<BlobFetcher>>>,
    /// Turns of the changes that tag or release blobs of blocks (see `Hypercore::append_blob`).
    pub tags: Arc<tokio::sync::Mutex<()>>,
}

impl BlobState {
    /// The blob store, once set.
    pub fn store(&self) -> Option<&BlobStore> {
        self.store.get()
    }

    /// Sets the blob store, unless one is set.
    pub fn set_store(&self, store: BlobStore) {
        let _ = self.store.set(store);
    }

    /// The protocol fetching blobs, if one runs.
    pub fn fetcher(&self) -> Option<Arc<BlobFetcher>> {
        self.fetcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes `fetcher` the one fetching blobs.
    pub fn set_fetcher(&self, fetcher: Arc<BlobFetcher>) {
        *self.fetcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(fetcher);
    }
}

impl Drop for BlobState {
    /// The last user of the database is gone (every store and core on it): the blob store
    /// stops too. Its garbage collector would keep it running, with its files locked.
    fn drop(&mut self) {
        if let (Some(blobs), Ok(runtime)) =
            (self.store.get(), tokio::runtime::Handle::try_current())
        {
            let store = blobs.store().clone();
            runtime.spawn(async move {
                let _ = store.shutdown().await;
            });
        }
    }
}

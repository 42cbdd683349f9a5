//! Blobs of a core: [`Hypercore::append_blob`] and [`Hypercore::get_blob`], on the blob
//! store of the core's database.

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use iroh::EndpointId;
use iroh_blobs::api::proto::BlobStatus;
use n0_future::Stream;
use tokio::sync::watch;

use super::Hypercore;
use crate::{
    blobs::{BlobProgress, BlobRef, BlobSource, BlobState, BlobStore},
    error::{Error, Result},
};

/// The prefix of the tag that keeps a blob while its block is being appended.
const PENDING_PREFIX: &[u8] = crate::blobs::PENDING_TAG_PREFIX;

fn blob_state(core: &Hypercore) -> (Arc<BlobState>, Result<BlobStore>) {
    let state = core.inner.blobs.clone();
    let store = state
        .store()
        .cloned()
        .ok_or_else(|| Error::Blob("the core's store has no blob store".into()));
    (state, store)
}

fn blob_error(what: impl std::fmt::Display, e: impl std::error::Error + 'static) -> Error {
    Error::blob(what, &e)
}

impl Hypercore {
    /// Appends a blob: its content goes into the store's iroh-blobs store, and a small
    /// block holding its [`BlobRef`] is appended and signed. Returns the block's index. The
    /// blob is kept from garbage collection as long as the block is.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> iroh_hypercore::Result<()> {
    /// use iroh_hypercore::{Corestore, blobs::BlobRef};
    ///
    /// let store = Corestore::memory().await?;
    /// let core = store.get_named("files").await?;
    /// let index = core.append_blob(vec![7u8; 100_000]).await?;
    /// let block = core.get(index).await?.expect("the block is stored");
    /// let blob = BlobRef::from_block(&block).expect("a blob block");
    /// assert_eq!(blob.size, 100_000);
    /// assert_eq!(store.blobs().get_bytes(blob.hash).await.unwrap().len(), 100_000);
    /// # Ok(()) }
    /// ```
    pub async fn append_blob(&self, source: impl Into<BlobSource>) -> Result<u64> {
        if !self.writable() {
            return Err(Error::NotWritable);
        }
        let (state, store) = blob_state(self);
        let store = store?;
        let blobs = store.store();
        let added = match source.into() {
            BlobSource::Bytes(bytes) => blobs.add_bytes(bytes).temp_tag().await,
            BlobSource::Path(path) => {
                // The file store takes absolute paths only.
                let path = std::path::absolute(&path)
                    .map_err(|e| blob_error(format!("reading {}", path.display()), e))?;
                blobs.add_path(&path).temp_tag().await
            }
            BlobSource::Stream(stream) => blobs.add_stream(stream).await.temp_tag().await,
        };
        let held = added.map_err(|e| blob_error("adding a blob", e))?;
        let hash = held.hash();
        let size = match blobs.status(hash).await {
            Ok(BlobStatus::Complete { size }) => size,
            Ok(other) => return Err(Error::Blob(format!("added blob is {other:?}"))),
            Err(e) => return Err(blob_error("reading an added blob", e)),
        };
        // A persistent tag before the block exists: a crash after the append but before the
        // block's own tag leaves this one (the blob kept too long), never a block whose blob
        // garbage collection may take.
        let mut pending = PENDING_PREFIX.to_vec();
        pending.extend_from_slice(&self.key());
        pending.extend_from_slice(&rand::random::<[u8; 8]>());
        blobs
            .tags()
            .set(&pending, iroh_blobs::HashAndFormat::raw(hash))
            .await
            .map_err(|e| blob_error("tagging a blob", e))?;
        // Appends and tag changes of blobs take turns with truncates and clears, so that a
        // truncate's release never takes the tag of a block appended meanwhile.
        let turn = state.tags.clone().lock_owned().await;
        let appended = self.append(BlobRef { hash, size }.to_block()).await;
        let appended_ok = appended.is_ok();
        let result = match appended {
            Ok(out) => {
                let index = out.length - 1;
                store
                    .protect(&self.key(), index, hash)
                    .await
                    .map(|()| index)
            }
            Err(e) => Err(e),
        };
        drop(turn);
        // Kept only if the block was appended but its own tag failed: the blob then stays too
        // long, not too short. Without a block, nothing names the blob.
        let keep_pending = appended_ok && result.is_err();
        if !keep_pending && let Err(e) = blobs.tags().delete(&pending).await {
            tracing::warn!("a blob's pending tag stays: {e}");
        }
        drop(held);
        result
    }

    /// The blob block `index` names, read from the block stored here: `None` for an
    /// ordinary block, [`Error::BlockNotAvailable`] if the block is not stored here (nothing
    /// is fetched).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> iroh_hypercore::Result<()> {
    /// let store = iroh_hypercore::Corestore::memory().await?;
    /// let core = store.get_named("files").await?;
    /// core.append(b"text".to_vec()).await?;
    /// let index = core.append_blob(vec![1u8; 1000]).await?;
    /// assert_eq!(core.blob_ref(0).await?, None);
    /// assert_eq!(core.blob_ref(index).await?.map(|b| b.size), Some(1000));
    /// assert!(core.has_blob(index).await?);
    /// # Ok(()) }
    /// ```
    pub async fn blob_ref(&self, index: u64) -> Result<Option<BlobRef>> {
        match self.get(index).await? {
            Some(block) => Ok(BlobRef::from_block(&block)),
            None => Err(Error::BlockNotAvailable(index)),
        }
    }

    /// Whether block `index` is stored here, names a blob, and the whole blob is stored in
    /// the store's blob store.
    pub async fn has_blob(&self, index: u64) -> Result<bool> {
        let Ok(Some(blob)) = self.blob_ref(index).await else {
            return Ok(false);
        };
        let (_, store) = blob_state(self);
        match store?.store().status(blob.hash).await {
            Ok(BlobStatus::Complete { .. }) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(blob_error("reading a blob's status", e)),
        }
    }

    /// The blob block `index` names, fetched from the peers that replicate this core if it is
    /// not stored: see [`GetBlob`].
    pub fn get_blob(&self, index: u64) -> GetBlob {
        GetBlob {
            core: self.clone(),
            index,
            progress: Arc::new(watch::channel(BlobProgress::default()).0),
        }
    }

    /// Waits for the turn of a change to blocks that name blobs (see `append_blob`); a
    /// truncate or clear holds it until it released the tags of the blocks it cut.
    pub(crate) async fn blob_tags_turn(&self) -> tokio::sync::OwnedMutexGuard<()> {
        blob_state(self).0.tags.clone().lock_owned().await
    }

    /// Releases the blobs of blocks `start..end` (truncated or cleared). A failure is logged,
    /// not returned: the blocks are gone either way, and a tag left keeps a blob too long,
    /// never too short.
    pub(crate) async fn release_blobs(&self, start: u64, end: u64) -> Result<()> {
        if let Ok(store) = blob_state(self).1
            && let Err(e) = store.release(&self.key(), start, end).await
        {
            tracing::warn!("blobs of blocks {start}..{end} stay tagged: {e}");
        }
        Ok(())
    }
}

/// A blob named by a block, from [`Hypercore::get_blob`].
///
/// The block is read (fetched by replicating peers if needed, and verified against the
/// log's signature) first, so the log vouches for the blob's hash; then the blob is fetched
/// from the peers that replicate the core (several at once, resuming what is already
/// stored), verified by BLAKE3 as it streams, and kept from garbage collection as long as
/// the block is. A block naming a blob over the store's
/// [`max_blob_size`](crate::store::BlobOptions::max_blob_size) is refused before anything
/// is downloaded.
#[derive(Debug)]
#[must_use = "a GetBlob does nothing until it is waited on or exported"]
pub struct GetBlob {
    core: Hypercore,
    index: u64,
    progress: Arc<watch::Sender<BlobProgress>>,
}

impl GetBlob {
    /// The progress of the fetch: bytes done, the total, the peer asked last and the bytes
    /// each provider sent.
    pub fn progress(&self) -> impl Stream<Item = BlobProgress> + Send + Unpin + 'static {
        let rx = self.progress.subscribe();
        Box::pin(n0_future::stream::unfold(
            (rx, true),
            |(mut rx, first)| async move {
                if !first && rx.changed().await.is_err() {
                    return None;
                }
                let now = rx.borrow_and_update().clone();
                Some((now, (rx, false)))
            },
        ))
    }

    /// Resolves once the blob is stored here (fetched from peers if it was not), within
    /// `timeout`, with its reference; read it from [`Corestore::blobs`](crate::Corestore::blobs)
    /// without copying it into memory.
    pub async fn fetch(self, timeout: Duration) -> Result<BlobRef> {
        Ok(self.ensure_stored(timeout).await?.1)
    }

    /// [`fetch`](Self::fetch), with the provider asked last (none if it was stored).
    pub(crate) async fn fetch_with_provider(
        self,
        timeout: Duration,
    ) -> Result<(BlobRef, Option<EndpointId>)> {
        let blob = self.ensure_stored(timeout).await?.1;
        let provider = self.progress.borrow().provider;
        Ok((blob, provider))
    }

    /// The blob's bytes, within `timeout`. They are read into memory whole (up to the store's
    /// `max_blob_size`): for big blobs, [`export`](Self::export) to a file or
    /// [`fetch`](Self::fetch) and read from the blob store.
    pub async fn wait(self, timeout: Duration) -> Result<Bytes> {
        let (store, blob) = self.ensure_stored(timeout).await?;
        store
            .store()
            .get_bytes(blob.hash)
            .await
            .map_err(|e| blob_error("reading a blob", e))
    }

    /// Writes the blob to the file `path` (fetching it first, within `timeout`); returns its
    /// size.
    pub async fn export(self, path: impl AsRef<Path>, timeout: Duration) -> Result<u64> {
        let (store, blob) = self.ensure_stored(timeout).await?;
        let path = std::path::absolute(path.as_ref())
            .map_err(|e| blob_error(format!("exporting to {}", path.as_ref().display()), e))?;
        store
            .store()
            .export(blob.hash, &path)
            .finish()
            .await
            .map_err(|e| blob_error(format!("exporting to {}", path.display()), e))?;
        Ok(blob.size)
    }

    /// Reads the block, checks the reference and makes sure the blob is stored.
    async fn ensure_stored(&self, timeout: Duration) -> Result<(BlobStore, BlobRef)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (state, store) = blob_state(&self.core);
        let store = store?;
        let index = self.index;
        let block = self.core.get(index).wait(timeout).await?;
        let blob = BlobRef::from_block(&block)
            .ok_or_else(|| Error::Blob(format!("block {index} names no blob")))?;
        if blob.size > store.max_blob_size {
            return Err(Error::Blob(format!(
                "block {index} names a blob of {} bytes, over max_blob_size ({} bytes)",
                blob.size, store.max_blob_size
            )));
        }
        self.progress.send_modify(|p| p.total = blob.size);
        let key = self.core.key();
        if blob.size == 0 {
            // Nothing to fetch, and nothing to ask a peer for: any request would have no
            // bound.
            if blob.hash != iroh_blobs::Hash::EMPTY {
                return Err(Error::Blob(format!(
                    "block {index} names an empty blob whose hash is not the empty hash"
                )));
            }
            let added = store.store().add_bytes(Bytes::new()).temp_tag().await;
            let _held = added.map_err(|e| blob_error("storing the empty blob", e))?;
            store.protect(&key, index, blob.hash).await?;
            return Ok((store, blob));
        }
        // Tagged before it downloads (the block vouches for the hash): garbage collection
        // keeps what arrived even if this fetch stops, so the next one resumes from it.
        store.protect(&key, index, blob.hash).await?;
        if !is_complete(&store, &blob).await? {
            let fetcher = state.fetcher().ok_or_else(|| {
                Error::Blob("no protocol replicates the core to fetch its blobs".into())
            })?;
            tokio::time::timeout_at(deadline, fetcher.fetch(key, blob, &self.progress))
                .await
                .map_err(|_| Error::Timeout(format!("blob {} of block {index}", blob.hash)))??;
            if !is_complete(&store, &blob).await? {
                return Err(Error::Blob(format!(
                    "blob {} of block {index} is incomplete after its download",
                    blob.hash
                )));
            }
        }
        self.progress.send_modify(|p| p.done = blob.size);
        Ok((store, blob))
    }
}

/// Whether `blob` is stored whole, with the size its reference says (a reference whose size
/// lies about its content is an error).
async fn is_complete(store: &BlobStore, blob: &BlobRef) -> Result<bool> {
    match store.store().status(blob.hash).await {
        Ok(BlobStatus::Complete { size }) if size == blob.size => Ok(true),
        Ok(BlobStatus::Complete { size }) => Err(Error::Blob(format!(
            "blob {} has {size} bytes, its block says {}",
            blob.hash, blob.size
        ))),
        Ok(_) => Ok(false),
        Err(e) => Err(blob_error("reading a blob's status", e)),
    }
}

//! [`BlobFetcher`]: how a protocol fetches a blob for a core, from the peers replicating it.

use std::{fmt, sync::Arc};

use iroh::EndpointId;
use iroh_blobs::{
    api::downloader::{DownloadProgressItem, DownloadRequest, Downloader, SplitStrategy},
    protocol::{ChunkRanges, ChunkRangesExt, GetRequest},
};
use n0_future::{StreamExt, boxed::BoxFuture};
use tokio::sync::watch;

use super::{BlobRef, core_blobs::BlobProgress};
use crate::{
    crypto::CoreKey,
    error::{Error, Result},
};

/// The peers that may hold the blobs of a core: those with an open channel for it, then the
/// nodes it was joined with.
pub(crate) type Providers = Arc<dyn Fn(CoreKey) -> BoxFuture<Vec<EndpointId>> + Send + Sync>;

/// Fetches blobs with iroh-blobs' downloader from a core's providers.
pub(crate) struct BlobFetcher {
    downloader: Downloader,
    providers: Providers,
}

impl fmt::Debug for BlobFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobFetcher").finish_non_exhaustive()
    }
}

impl BlobFetcher {
    /// A fetcher downloading with `downloader` from the peers `providers` names.
    pub fn new(downloader: Downloader, providers: Providers) -> Self {
        Self {
            downloader,
            providers,
        }
    }

    /// Downloads `blob` from the providers of `core` (several at once when there are
    /// several), keeping what is already stored, and reports its progress. A provider whose
    /// bytes do not match the hash is dropped for the next one: iroh-blobs verifies every
    /// chunk against the BLAKE3 tree as it arrives.
    pub async fn fetch(
        &self,
        core: CoreKey,
        blob: BlobRef,
        progress: &watch::Sender<BlobProgress>,
    ) -> Result<()> {
        let providers = (self.providers)(core).await;
        if providers.is_empty() {
            return Err(Error::Blob(format!(
                "no peer to fetch blob {} from: none replicates the core",
                blob.hash
            )));
        }
        let strategy = if providers.len() > 1 {
            SplitStrategy::Split
        } else {
            SplitStrategy::None
        };
        let tried = providers.len();
        // Only the chunks up to the size the block vouches for: a reference that understates
        // its blob cannot make us download more (the blob then stays incomplete, an error).
        let request = if blob.size == 0 {
            GetRequest::blob(blob.hash)
        } else {
            GetRequest::blob_ranges(blob.hash, ChunkRanges::bytes(..blob.size))
        };
        let request = DownloadRequest::new(request, providers, strategy);
        let mut items = self
            .downloader
            .download_with_opts(request)
            .stream()
            .await
            .map_err(|e| Error::Blob(format!("starting the download of {}: {e}", blob.hash)))?;
        let mut failed = 0usize;
        while let Some(item) = items.next().await {
            match item {
                DownloadProgressItem::Progress(done) => {
                    progress.send_modify(|p| p.done = done.min(blob.size));
                }
                DownloadProgressItem::TryProvider { id, .. } => {
                    progress.send_modify(|p| p.provider = Some(id));
                }
                DownloadProgressItem::ProviderFailed { id, .. } => {
                    failed += 1;
                    tracing::debug!(%id, hash = %blob.hash, "a blob provider failed");
                }
                DownloadProgressItem::PartComplete { .. } => {}
                DownloadProgressItem::Error(e) => {
                    return Err(Error::Blob(format!("downloading {}: {e}", blob.hash)));
                }
                DownloadProgressItem::DownloadError => {
                    return Err(Error::Blob(format!(
                        "no provider had blob {} ({failed} of {tried} failed)",
                        blob.hash
                    )));
                }
            }
        }
        Ok(())
    }
}

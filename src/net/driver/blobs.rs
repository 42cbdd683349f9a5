//! Fetching the blobs of cores replicated in full, under the protocol's [`BlobPolicy`]: each
//! block that arrives with the size of a blob block is read, and the blob it names is
//! fetched if the policy admits its size, a few at a time.

use std::time::Duration;

use super::{Driver, Io, cores::Replicated};
use crate::{
    blobs::{BLOCK_LEN, BlobPolicy, BlobRef},
    crypto::CoreKey,
    replication::{Event, Mode},
};

/// Blobs fetched at once under the policy.
const MAX_BLOB_FETCHES: usize = 4;
/// Blob blocks waiting for a fetch; beyond it, more are not fetched (the application still
/// can, with `get_blob`).
const MAX_BLOB_QUEUE: usize = 65_536;

/// How long a policy fetch of a blob of `size` bytes may take: a minute, plus a second per
/// MB.
fn fetch_timeout(size_hint: u64) -> Duration {
    Duration::from_secs(60 + size_hint / 1_000_000)
}

impl Driver {
    /// Block `index` of `core` arrived (`bytes` long): if it may name a blob and the core is
    /// replicated in full under a policy that fetches blobs, its blob is queued.
    pub(super) fn on_block_downloaded(&mut self, core: CoreKey, index: u64, bytes: u64) {
        if self.blob_policy == BlobPolicy::None
            || !BLOCK_LEN.contains(&bytes)
            || self.engine.mode(&core) != Some(Mode::Full)
        {
            return;
        }
        if self.blob_queue.len() >= MAX_BLOB_QUEUE {
            tracing::debug!("blob queue full: block {index} left for the application");
            return;
        }
        self.blob_queue.push_back((core, index));
        self.start_blob_fetches();
    }

    /// Starts queued blob fetches while fewer than [`MAX_BLOB_FETCHES`] run.
    fn start_blob_fetches(&mut self) {
        while self.blob_fetching < MAX_BLOB_FETCHES
            && let Some((key, index)) = self.blob_queue.pop_front()
        {
            let Some(core) = self.cores.get(&key).and_then(Replicated::core) else {
                continue;
            };
            let policy = self.blob_policy;
            self.blob_fetching += 1;
            self.io.push(Box::pin(async move {
                let result = async {
                    let Some(block) = core.get(index).await? else {
                        return Ok(None);
                    };
                    let Some(blob) = BlobRef::from_block(&block) else {
                        return Ok(None);
                    };
                    if !policy.admits(blob.size) {
                        return Ok(None);
                    }
                    let fetched = core
                        .get_blob(index)
                        .fetch_with_provider(fetch_timeout(blob.size))
                        .await?;
                    Ok(Some(fetched))
                }
                .await;
                Io::BlobFetched(key, index, result)
            }));
        }
    }

    /// A policy fetch ended: a blob fetched is reported.
    pub(super) fn on_blob_fetched(
        &mut self,
        core: CoreKey,
        index: u64,
        result: crate::Result<Option<(BlobRef, Option<iroh::EndpointId>)>>,
    ) {
        self.blob_fetching = self.blob_fetching.saturating_sub(1);
        self.start_blob_fetches();
        match result {
            Ok(Some((blob, peer))) => {
                let _ = self.events.send(Event::BlobDownloaded {
                    core,
                    index,
                    hash: *blob.hash.as_bytes(),
                    size: blob.size,
                    peer: peer.map(|p| *p.as_bytes()).unwrap_or_default(),
                });
            }
            Ok(None) => {}
            Err(e) => tracing::debug!("fetching the blob of block {index}: {e}"),
        }
    }
}

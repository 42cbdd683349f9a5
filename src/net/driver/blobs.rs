//! The blob part: fetching the blobs of cores replicated in full, under the protocol's
//! [`BlobPolicy`]: each block that arrives with the size of a blob block is read, and the
//! blob it names is fetched if the policy admits its size, a few at a time. It owns the
//! futures of its fetches.

use std::{collections::VecDeque, time::Duration};

use iroh::EndpointId;
use n0_future::{FuturesUnordered, StreamExt, boxed::BoxFuture};

use crate::{
    blobs::{BLOCK_LEN, BlobPolicy, BlobRef},
    core::Hypercore,
    crypto::CoreKey,
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

/// A policy fetch that ended: block `u64` of the core, and the blob fetched (with the peer
/// that served it) or nothing to fetch.
pub(super) type Fetched = (
    CoreKey,
    u64,
    crate::Result<Option<(BlobRef, Option<EndpointId>)>>,
);

/// The blob part; see the module docs.
pub(super) struct BlobFetches {
    policy: BlobPolicy,
    /// Fetches running.
    fetching: usize,
    /// Blob blocks waiting for a fetch.
    queue: VecDeque<(CoreKey, u64)>,
    io: FuturesUnordered<BoxFuture<Fetched>>,
}

impl BlobFetches {
    /// Fetching the blobs `policy` admits.
    pub(super) fn new(policy: BlobPolicy) -> Self {
        Self {
            policy,
            fetching: 0,
            queue: VecDeque::new(),
            io: FuturesUnordered::new(),
        }
    }

    /// Block `index` of `core` arrived (`bytes` long) on a core replicated in full (`full`):
    /// if it may name a blob and the policy fetches blobs, its blob is queued. Returns
    /// whether it was.
    pub(super) fn block_downloaded(
        &mut self,
        core: CoreKey,
        index: u64,
        bytes: u64,
        full: bool,
    ) -> bool {
        if self.policy == BlobPolicy::None || !BLOCK_LEN.contains(&bytes) || !full {
            return false;
        }
        if self.queue.len() >= MAX_BLOB_QUEUE {
            tracing::debug!("blob queue full: block {index} left for the application");
            return false;
        }
        self.queue.push_back((core, index));
        true
    }

    /// Starts queued fetches while fewer than [`MAX_BLOB_FETCHES`] run; `core_of` gives the
    /// handle of a core still replicated.
    pub(super) fn start(&mut self, core_of: impl Fn(&CoreKey) -> Option<Hypercore>) {
        while self.fetching < MAX_BLOB_FETCHES
            && let Some((key, index)) = self.queue.pop_front()
        {
            let Some(core) = core_of(&key) else {
                continue;
            };
            let policy = self.policy;
            self.fetching += 1;
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
                (key, index, result)
            }));
        }
    }

    /// Fetches running or waiting.
    pub(super) fn pending(&self) -> usize {
        self.fetching + self.queue.len()
    }

    /// The next fetch that ended (the next queued one may start then); pending forever while
    /// none runs.
    pub(super) async fn next(&mut self) -> Fetched {
        match self.io.next().await {
            Some(done) => {
                self.fetching = self.fetching.saturating_sub(1);
                done
            }
            None => std::future::pending().await,
        }
    }
}

//! [`BlobFetcher`]: how a protocol fetches a blob for a core, from the peers replicating it.
//!
//! The blob's missing bytes are split in one part per provider (whole 16 KiB chunk groups,
//! at most [`MAX_PROVIDERS`] providers), and each part is fetched over a connection of our
//! own with iroh-blobs' `execute_get`, which verifies every chunk against the BLAKE3 tree as
//! it arrives. A provider that fails (unreachable, without the blob, silent for
//! [`PROVIDER_IDLE`], or sending bytes that do not match the hash) is dropped for this fetch,
//! and its part goes to the next one. Only bytes that fail verification are reported, so
//! that the protocol counts the provider as invalid: a peer that merely lacks the blob is
//! not blamed. What is stored already is never fetched again.

use std::{
    fmt,
    sync::{Arc, Mutex},
};

use iroh::{Endpoint, EndpointId, endpoint::Connection};
use iroh_blobs::{
    api::{Store, remote::GetProgressItem},
    get::{GetError, fsm::DecodeError},
    protocol::{ChunkRanges, ChunkRangesExt, GetRequest},
};
use n0_future::{StreamExt, boxed::BoxFuture};
use tokio::sync::watch;

use super::{BlobProgress, BlobRef};
use crate::{
    crypto::CoreKey,
    error::{Error, Result},
};

/// The peers that may hold the blobs of a core: those with an open channel for it, then the
/// nodes it was joined with.
pub(crate) type Providers = Arc<dyn Fn(CoreKey) -> BoxFuture<Vec<EndpointId>> + Send + Sync>;

/// Told of a provider whose bytes failed verification: `(core, provider, reason)`.
pub(crate) type BlameProvider = Arc<dyn Fn(CoreKey, EndpointId, String) + Send + Sync>;

/// Bytes per part boundary: iroh-blobs stores and verifies 16 KiB chunk groups.
const PART_ALIGN: u64 = 16 * 1024;

/// Providers asked in one fetch (the first ones: channel peers before join nodes).
pub(crate) const MAX_PROVIDERS: usize = 8;

/// How long a provider may take to connect, or go without sending anything, before its part
/// goes to the next one.
pub(crate) const PROVIDER_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Fetches blobs from a core's providers into the store's blob store.
pub(crate) struct BlobFetcher {
    store: Store,
    endpoint: Endpoint,
    providers: Providers,
    blame: BlameProvider,
}

impl fmt::Debug for BlobFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobFetcher").finish_non_exhaustive()
    }
}

/// The providers of one fetch: a connection to each (made on first use), and those that
/// failed.
struct Pool {
    providers: Vec<EndpointId>,
    /// One lock per provider: connecting to one does not hold up the others.
    conns: Vec<tokio::sync::Mutex<Option<Connection>>>,
    failed: Mutex<Vec<bool>>,
}

impl Pool {
    fn failed(&self) -> std::sync::MutexGuard<'_, Vec<bool>> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next provider from `i` on that has not failed.
    fn next_alive(&self, i: usize) -> Option<usize> {
        let failed = self.failed();
        let n = self.providers.len();
        (0..n).map(|k| (i + k) % n).find(|&k| !failed[k])
    }
}

impl BlobFetcher {
    /// A fetcher into `store`, dialing from `endpoint` the peers `providers` names.
    pub fn new(
        store: Store,
        endpoint: Endpoint,
        providers: Providers,
        blame: BlameProvider,
    ) -> Self {
        Self {
            store,
            endpoint,
            providers,
            blame,
        }
    }

    /// Fetches what is missing of `blob` (up to the size its block states) from the
    /// providers of `core`, several at once, and reports its progress.
    pub async fn fetch(
        self: &Arc<Self>,
        core: CoreKey,
        blob: BlobRef,
        progress: &Arc<watch::Sender<BlobProgress>>,
    ) -> Result<()> {
        let mut providers = (self.providers)(core).await;
        providers.truncate(MAX_PROVIDERS);
        if providers.is_empty() {
            return Err(Error::Blob(format!(
                "no peer to fetch blob {} from: none replicates the core",
                blob.hash
            )));
        }
        let whole = request(&blob, 0, blob.size);
        let local = self.local(&whole).await?;
        if local.is_complete() {
            return Ok(());
        }
        let have = local.local_bytes();
        progress.send_modify(|p| p.done = have.min(blob.size));
        let n = providers.len() as u64;
        let step = (blob.size / n)
            .div_ceil(PART_ALIGN)
            .max(1)
            .saturating_mul(PART_ALIGN);
        let parts: Vec<(u64, u64)> = (0..n)
            .map(|i| {
                let start = i.saturating_mul(step).min(blob.size);
                (start, start.saturating_add(step).min(blob.size))
            })
            .filter(|(s, e)| s < e)
            .collect();
        let pool = Arc::new(Pool {
            conns: providers.iter().map(|_| Default::default()).collect(),
            failed: Mutex::new(vec![false; providers.len()]),
            providers,
        });
        let done: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(vec![0; parts.len()]));
        let part = move |i: usize, start: u64, end: u64| {
            let (this, pool, done, progress) =
                (self.clone(), pool.clone(), done.clone(), progress.clone());
            async move {
                let report = |bytes: u64| {
                    let total = {
                        let mut d = done.lock().unwrap_or_else(|e| e.into_inner());
                        d[i] = bytes;
                        d.iter().sum::<u64>()
                    };
                    progress.send_modify(|p| p.done = (have + total).min(blob.size));
                };
                this.fetch_part(core, &blob, start, end, i, &pool, &progress, report)
                    .await
            }
        };
        if let [(start, end)] = parts[..] {
            // One provider: no task to hand the chunks over between threads.
            return part(0, start, end).await;
        }
        // A task per part: each verifies its chunks on its own worker thread (and the tasks
        // are aborted when the fetch is dropped). Not a FuturesUnordered in this task: that
        // measured 30% slower for a single part.
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (start, end)) in parts.into_iter().enumerate() {
            tasks.spawn(part(i, start, end));
        }
        while let Some(result) = tasks.join_next().await {
            result.map_err(|e| Error::Blob(format!("a blob fetch task failed: {e}")))??;
        }
        Ok(())
    }

    /// Fetches bytes `start..end` of `blob`, from provider `first` on, moving to the next one
    /// each time one fails.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_part(
        &self,
        core: CoreKey,
        blob: &BlobRef,
        start: u64,
        end: u64,
        first: usize,
        pool: &Pool,
        progress: &watch::Sender<BlobProgress>,
        report: impl Fn(u64),
    ) -> Result<()> {
        let part = request(blob, start, end);
        let mut at = first;
        let mut last_error = String::new();
        // Bytes of this part that failed providers delivered (stored, so not asked again).
        let mut carried = 0;
        while let Some(k) = pool.next_alive(at) {
            at = k + 1;
            let local = self.local(&part).await?;
            if local.is_complete() {
                return Ok(());
            }
            let provider = pool.providers[k];
            progress.send_modify(|p| p.provider = Some(provider));
            let conn = match self.connection(pool, k).await {
                Ok(conn) => conn,
                Err(e) => {
                    pool.failed()[k] = true;
                    last_error = e;
                    continue;
                }
            };
            let mut items = Box::pin(
                self.store
                    .remote()
                    .execute_get(conn, local.missing())
                    .stream(),
            );
            let mut got = 0;
            let outcome = loop {
                match tokio::time::timeout(PROVIDER_IDLE, items.next()).await {
                    Err(_) => {
                        break Err((
                            format!("{provider} sent nothing for {PROVIDER_IDLE:?}"),
                            false,
                        ));
                    }
                    Ok(None) => break Err((format!("{provider} ended the transfer early"), false)),
                    Ok(Some(GetProgressItem::Progress(bytes))) => {
                        let more = bytes.saturating_sub(got);
                        progress.send_modify(|p| p.served_by(provider, more));
                        got = bytes;
                        report(carried + bytes);
                    }
                    Ok(Some(GetProgressItem::Done(_))) => break Ok(()),
                    Ok(Some(GetProgressItem::Error(e))) => {
                        let bad = is_bad_data(&e);
                        break Err((format!("{provider}: {e}"), bad));
                    }
                }
            };
            carried += got;
            match outcome {
                Ok(()) => return Ok(()),
                Err((e, bad_data)) => {
                    tracing::debug!(%provider, hash = %blob.hash, "a blob provider failed: {e}");
                    pool.failed()[k] = true;
                    if bad_data {
                        (self.blame)(core, provider, format!("blob {}: {e}", blob.hash));
                    }
                    last_error = e;
                }
            }
        }
        Err(Error::Blob(format!(
            "no provider had bytes {start}..{end} of blob {} (last: {last_error})",
            blob.hash
        )))
    }

    /// What the store holds of `request`.
    async fn local(&self, request: &GetRequest) -> Result<iroh_blobs::api::remote::LocalInfo> {
        self.store
            .remote()
            .local_for_request(request.clone())
            .await
            .map_err(|e| Error::Blob(format!("reading what is stored of a blob: {e}")))
    }

    /// The connection to provider `k` of `pool`, made on first use.
    async fn connection(&self, pool: &Pool, k: usize) -> std::result::Result<Connection, String> {
        let mut slot = pool.conns[k].lock().await;
        if let Some(conn) = &*slot
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        let provider = pool.providers[k];
        let conn = tokio::time::timeout(
            PROVIDER_IDLE,
            self.endpoint.connect(provider, iroh_blobs::ALPN),
        )
        .await
        .map_err(|_| format!("connecting to {provider} took over {PROVIDER_IDLE:?}"))?
        .map_err(|e| format!("connecting to {provider}: {e}"))?;
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

/// The request for bytes `start..end` of `blob` (never all of it: a size the block states
/// bounds every request, so an empty blob is never asked for; see `core_blobs`).
fn request(blob: &BlobRef, start: u64, end: u64) -> GetRequest {
    GetRequest::blob_ranges(blob.hash, ChunkRanges::bytes(start..end))
}

/// Whether a fetch failed because the provider's bytes did not match the hash (rather than
/// because it lacks them, or the connection broke).
fn is_bad_data(e: &GetError) -> bool {
    matches!(
        e,
        GetError::Decode {
            source: DecodeError::ParentHashMismatch { .. } | DecodeError::LeafHashMismatch { .. },
            ..
        }
    )
}

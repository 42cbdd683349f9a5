//! Reads that wait for replication: `get(i).wait(timeout)` and `download(range)`.
//!
//! A core knows nothing of the network. Waiting reads signal the blocks they want (and, when
//! they give up, that they no longer want them) to the replicating protocols watching the
//! core, and then wait for the core's own events to say the blocks arrived.

use std::{future::IntoFuture, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::sync::broadcast;

use super::{hypercore::Hypercore, news::StoredNews, signals::Signal, state::CoreInner};
use crate::{
    error::{Error, Result},
    replication::ranges,
};

/// A read of one block, from [`Hypercore::get`]: `.await` it for the local copy, or
/// [`wait`](Self::wait) for peers to deliver it.
#[derive(Debug, Clone)]
#[must_use = "a Get does nothing until it is awaited or waited on"]
pub struct Get {
    inner: Arc<CoreInner>,
    index: u64,
}

impl Get {
    pub(crate) fn new(inner: Arc<CoreInner>, index: u64) -> Self {
        Self { inner, index }
    }

    /// The block, fetched by replicating peers if it is not stored (also past the current
    /// length: the read waits for the log to grow). Fails with [`Error::Timeout`] after
    /// `timeout`, and with [`Error::Left`] if the protocol stops replicating the core
    /// meanwhile.
    ///
    /// A block from a peer is returned as soon as it verified against the signed tree, while
    /// it is still being written. The read counts from this call: a `leave` after it fails
    /// it, even before the future is first polled.
    pub fn wait(
        self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Bytes>> + Send + 'static + use<> {
        let mut events = self.inner.news.subscribe_stored();
        let mut verified = self.inner.verified.subscribe();
        let mut stopped = self.inner.stopped.subscribe();
        async move {
            let index = self.index;
            if self.inner.state().closed {
                return Err(Error::Closed);
            }
            let deadline = tokio::time::Instant::now() + timeout;
            let mut want: Option<RangeWant> = None;
            loop {
                let length = self.inner.state().committed.tree.length;
                if index < length
                    && let Some(v) = local_block(&self.inner, index).await?
                {
                    if let Some(w) = want {
                        w.arrived();
                    }
                    return Ok(v);
                }
                if want.is_none() {
                    want = Some(RangeWant::new(
                        self.inner.clone(),
                        index,
                        index.saturating_add(1),
                    ));
                }
                loop {
                    let ev = tokio::time::timeout_at(deadline, async {
                        tokio::select! {
                            ev = events.recv() => Some(Ok(ev)),
                            v = verified.recv() => Some(Err(v)),
                            _ = stopped.changed() => None,
                        }
                    })
                    .await
                    .map_err(|_| Error::Timeout(format!("block {index}")))?
                    .ok_or_else(|| self.inner.stopped_error(format!("block {index}")))?;
                    let ev = match ev {
                        Ok(ev) => ev,
                        Err(Ok((i, value))) if i == index => {
                            if let Some(w) = want {
                                w.arrived();
                            }
                            return self.inner.block_text(index, value);
                        }
                        Err(Ok(_)) => continue,
                        // Missed some: look in storage again.
                        Err(Err(broadcast::error::RecvError::Lagged(_))) => break,
                        Err(Err(broadcast::error::RecvError::Closed)) => {
                            return Err(Error::Closed);
                        }
                    };
                    match ev {
                        Ok(StoredNews::Blocks { start, end }) if (start..end).contains(&index) => {
                            break;
                        }
                        Ok(StoredNews::Grew { length }) if length > index => break,
                        Ok(StoredNews::Truncated) => break,
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return Err(Error::Closed),
                        Ok(_) => {}
                    }
                }
            }
        }
    }
}

impl IntoFuture for Get {
    type Output = Result<Option<Bytes>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'static>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let length = self.inner.state().committed.tree.length;
            if self.index >= length {
                return Err(Error::OutOfRange {
                    index: self.index,
                    length,
                });
            }
            local_block(&self.inner, self.index).await
        })
    }
}

/// A range of blocks a read waits for: wanted when made, and unwanted if the read gives up
/// (times out, fails or is dropped) before they arrived, so that peers are no longer asked
/// for blocks nobody waits for.
#[derive(Debug)]
struct RangeWant {
    inner: Arc<CoreInner>,
    start: u64,
    end: u64,
    /// Not arrived yet.
    open: bool,
}

impl RangeWant {
    fn new(inner: Arc<CoreInner>, start: u64, end: u64) -> Self {
        inner.want(start, end);
        Self {
            inner,
            start,
            end,
            open: true,
        }
    }

    /// The blocks arrived: the protocol dropped their want itself.
    fn arrived(mut self) {
        self.inner.release_want(self.start, self.end);
        self.open = false;
    }
}

impl Drop for RangeWant {
    fn drop(&mut self) {
        if self.open {
            self.inner.unwant(self.start, self.end);
        }
    }
}

async fn local_block(inner: &Arc<CoreInner>, index: u64) -> Result<Option<Bytes>> {
    let id = inner.id;
    let stored = inner
        .storage
        .read(move |r| Ok(r.blocks()?.view().get(id, index)?.map(Bytes::from)))
        .await?;
    stored.map(|b| inner.block_text(index, b)).transpose()
}

/// An update of a core from its peers, from [`Hypercore::update`].
#[derive(Debug)]
#[must_use = "an Update does nothing until it is waited on"]
pub struct Update {
    inner: Arc<CoreInner>,
}

impl Hypercore {
    /// Asks the peers replicating this core for their newest state (hypercore's
    /// `update({ wait: true })`): see [`Update::wait`].
    pub fn update(&self) -> Update {
        Update {
            inner: self.inner.clone(),
        }
    }

    /// A protocol answered the `update()`s up to `asked`.
    pub(crate) fn mark_updated(&self, asked: u64) {
        self.inner.updated.send_modify(|n| *n = (*n).max(asked));
    }
}

impl Update {
    /// Asks every peer with an open channel for the core for its state, and resolves with the
    /// core's signed length once each has answered (or gone, or stayed silent for the
    /// protocol's `upgrade_timeout`, 5 s by default) and the upgrade to the newest
    /// length any of them has, if it is ahead, was verified and stored. With no peer it
    /// resolves at once with the local length. Fails with [`Error::Timeout`] after `timeout`
    /// (also when no protocol replicates the core), and with [`Error::Left`] or
    /// [`Error::Closed`] if the core stops replicating or closes meanwhile.
    pub fn wait(
        self,
        timeout: Duration,
    ) -> impl Future<Output = Result<u64>> + Send + 'static + use<> {
        let mut updated = self.inner.updated.subscribe();
        let mut stopped = self.inner.stopped.subscribe();
        async move {
            let inner = &self.inner;
            if inner.state().closed {
                return Err(Error::Closed);
            }
            let asked = inner
                .update_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            inner.signal(Signal::Update(asked));
            let deadline = tokio::time::Instant::now() + timeout;
            tokio::time::timeout_at(deadline, async {
                loop {
                    if *updated.borrow_and_update() >= asked {
                        return Ok(());
                    }
                    tokio::select! {
                        r = updated.changed() => r.map_err(|_| Error::Closed)?,
                        _ = stopped.changed() => {
                            return Err(inner.stopped_error("an update".into()));
                        }
                    }
                }
            })
            .await
            .map_err(|_| Error::Timeout("an update from peers".into()))??;
            Ok(inner.state().committed.tree.length)
        }
    }
}

/// How far a [`Download`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Blocks of the range stored.
    pub have: u64,
    /// Blocks in the range.
    pub total: u64,
}

/// A range of blocks replicating peers are asked to fetch, from [`Hypercore::download`].
#[derive(Debug)]
pub struct Download {
    inner: Arc<CoreInner>,
    start: u64,
    end: u64,
    events: broadcast::Receiver<StoredNews>,
    stopped: tokio::sync::watch::Receiver<u64>,
    /// Its want until every block arrived. Dropped before, it tells the replicating protocol
    /// that the blocks are no longer wanted (unless another read wants them): their queued
    /// fetches go, and requests for them are cancelled with the peers.
    want: Option<RangeWant>,
}

impl Hypercore {
    /// Asks replicating peers for blocks `start..end` (which may lie past the current length)
    /// and returns a handle to follow the download.
    pub fn download(&self, range: std::ops::Range<u64>) -> Download {
        let events = self.inner.news.subscribe_stored();
        let stopped = self.inner.stopped.subscribe();
        let (start, end) = (range.start, range.end.max(range.start));
        Download {
            inner: self.inner.clone(),
            start,
            end,
            events,
            stopped,
            want: Some(RangeWant::new(self.inner.clone(), start, end)),
        }
    }
}

impl Download {
    /// Stops the download (the same as dropping it before it is done): its blocks are no
    /// longer fetched unless another read wants them.
    pub fn cancel(self) {}

    /// How many blocks of the range are stored now.
    pub fn progress(&self) -> impl Future<Output = Result<Progress>> + Send + 'static + use<> {
        let (inner, start, end) = (self.inner.clone(), self.start, self.end);
        async move {
            Ok(Progress {
                have: count_stored(&inner, start, end).await?.0,
                total: end - start,
            })
        }
    }

    /// Resolves when every block of the range is stored, or fails with [`Error::Timeout`], or
    /// with [`Error::Left`] if the protocol stops replicating the core meanwhile.
    pub async fn done(mut self, timeout: Duration) -> Result<()> {
        {
            if self.inner.state().closed {
                return Err(Error::Closed);
            }
            let deadline = tokio::time::Instant::now() + timeout;
            let total = self.end - self.start;
            loop {
                let (have, published) = count_stored(&self.inner, self.start, self.end).await?;
                if have == total {
                    // A read can see a commit whose new state the storage thread has not
                    // published yet: wait for it, so that `info()` already says what was
                    // downloaded when this resolves.
                    if !published {
                        self.inner.storage.barrier().await?;
                    }
                    if let Some(w) = self.want.take() {
                        w.arrived();
                    }
                    return Ok(());
                }
                // Count arrivals rather than re-reading the table for each one: the ranges
                // stored since, merged (runs arrive in order, so this stays a range or two).
                let (mut seen, mut arrived) = (Vec::new(), 0u64);
                while have + arrived < total {
                    let what = || format!("blocks {}..{}", self.start, self.end);
                    let ev = tokio::time::timeout_at(deadline, async {
                        tokio::select! {
                            ev = self.events.recv() => Some(ev),
                            _ = self.stopped.changed() => None,
                        }
                    })
                    .await
                    .map_err(|_| Error::Timeout(what()))?
                    .ok_or_else(|| self.inner.stopped_error(what()))?;
                    match ev {
                        Ok(StoredNews::Blocks { start, end }) => {
                            let added =
                                ranges::insert(&mut seen, start.max(self.start), end.min(self.end));
                            arrived += added.iter().map(|(s, e)| e - s).sum::<u64>();
                        }
                        // A writer's own appends store blocks without a download: count again.
                        // (A reader's upgrade stores none: its blocks come as downloads.)
                        Ok(StoredNews::Grew { length })
                            if length > self.start && self.inner.writable() =>
                        {
                            break;
                        }
                        Ok(StoredNews::Truncated) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            break;
                        }
                        Err(broadcast::error::RecvError::Closed) => return Err(Error::Closed),
                        Ok(_) => {}
                    }
                }
            }
        }
    }
}

/// Blocks of `start..end` stored locally, if the core's published state tells without a
/// read: every block below its contiguous length is stored, and none at or past its length
/// (a block is stored only with a proof against a signed length, and a truncation removes
/// those past the new one in its commit). A waiter subscribed to the core's news before
/// asking misses nothing: a commit's state is published before its news is sent.
fn stored_by_state(inner: &CoreInner, start: u64, end: u64) -> Option<u64> {
    let st = inner.state();
    let (length, contiguous) = (st.committed.tree.length, st.committed.contiguous_length);
    if end <= contiguous {
        Some(end - start)
    } else if start >= length {
        Some(0)
    } else {
        None
    }
}

/// Blocks of `start..end` stored locally, and whether the core's published state told (else
/// a read counted them, which may see a commit whose state is not published yet).
async fn count_stored(inner: &Arc<CoreInner>, start: u64, end: u64) -> Result<(u64, bool)> {
    if let Some(have) = stored_by_state(inner, start, end) {
        return Ok((have, true));
    }
    let id = inner.id;
    let have = inner
        .storage
        .read(move |r| r.blocks()?.view().count(id, start, end))
        .await?;
    Ok((have, false))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{
        core::{Signal, SignalQueue},
        store::Corestore,
        tree::{IndexRequest, ProofRequest, UpgradeRequest},
    };

    const WAIT: Duration = Duration::from_secs(10);

    /// A waiting read takes a verified block from the hand-over channel, without the block
    /// being stored.
    #[tokio::test]
    async fn wait_resolves_from_a_verified_block_before_its_commit() {
        let store = Corestore::memory().await.unwrap();
        let reader = store.get_remote([7; 32]).await.unwrap();
        let signals = SignalQueue::new();
        reader.inner.watch(&signals);
        let waiting = tokio::spawn(reader.get(3).wait(WAIT));
        let want = tokio::time::timeout(WAIT, signals.next()).await.unwrap();
        assert_eq!(want, vec![(reader.key(), Signal::Want(3, 4))]);
        reader
            .inner
            .hand_over_verified([(2, &b"other block"[..]), (3, b"block three")]);
        let got = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
        assert_eq!(&got.unwrap()[..], b"block three");
        assert_eq!(reader.info().length, 0, "nothing was stored");
        assert!(
            signals.drain().is_empty(),
            "a read that got its block unwants nothing"
        );
    }

    /// A protocol that starts watching a core gets the wants of the reads already waiting:
    /// the unwant of a read that gives up then matches a want it got (else it would cancel
    /// another read's want), and the early read is fetched for too. Reads that are done
    /// leave no want to replay.
    #[tokio::test]
    async fn a_protocol_watching_late_gets_the_wants_of_waiting_reads() {
        let store = Corestore::memory().await.unwrap();
        let reader = store.get_remote([7; 32]).await.unwrap();
        let early = tokio::spawn(reader.get(3).wait(Duration::from_millis(50)));
        // On this single-threaded runtime the read runs up to its first wait here.
        tokio::task::yield_now().await;
        let signals = SignalQueue::new();
        reader.inner.watch(&signals);
        let key = reader.key();
        assert_eq!(signals.drain(), vec![(key, Signal::Want(3, 4))]);
        let err = tokio::time::timeout(WAIT, early).await.unwrap().unwrap();
        assert!(matches!(err, Err(crate::Error::Timeout(_))), "{err:?}");
        assert_eq!(signals.drain(), vec![(key, Signal::Unwant(3, 4))]);

        let late = SignalQueue::new();
        reader.inner.watch(&late);
        assert!(late.drain().is_empty(), "no read waits any more");
    }

    /// A read that times out unwants its block, so that peers stop being asked for it.
    #[tokio::test]
    async fn a_read_that_gives_up_unwants_its_block() {
        let store = Corestore::memory().await.unwrap();
        let reader = store.get_remote([7; 32]).await.unwrap();
        let signals = SignalQueue::new();
        reader.inner.watch(&signals);
        let err = reader.get(5).wait(Duration::from_millis(20)).await;
        assert!(matches!(err, Err(crate::Error::Timeout(_))), "{err:?}");
        let err = reader.get(u64::MAX).wait(Duration::ZERO).await;
        assert!(matches!(err, Err(crate::Error::Timeout(_))), "{err:?}");
        let key = reader.key();
        assert_eq!(
            signals.drain(),
            vec![
                (key, Signal::Want(5, 6)),
                (key, Signal::Unwant(5, 6)),
                (key, Signal::Want(u64::MAX, u64::MAX)),
                (key, Signal::Unwant(u64::MAX, u64::MAX)),
            ]
        );
    }

    /// A download dropped or cancelled before it is done unwants its range; one that is done
    /// does not.
    #[tokio::test]
    async fn a_download_dropped_before_it_is_done_unwants_its_range() {
        let store = Corestore::memory().await.unwrap();
        let writer = store.get_named("w").await.unwrap();
        writer.append(b"a".to_vec()).await.unwrap();
        let signals = SignalQueue::new();
        writer.inner.watch(&signals);
        drop(writer.download(5..9));
        writer.download(2..3).cancel();
        writer.download(0..1).done(WAIT).await.unwrap();
        let key = writer.key();
        assert_eq!(
            signals.drain(),
            vec![
                (key, Signal::Want(5, 9)),
                (key, Signal::Unwant(5, 9)),
                (key, Signal::Want(2, 3)),
                (key, Signal::Unwant(2, 3)),
                (key, Signal::Want(0, 1)),
            ],
            "a finished download unwants nothing"
        );
    }

    /// Applying a proof hands its block over once it verified.
    #[tokio::test]
    async fn applying_a_proof_hands_its_block_over() {
        let store = Corestore::memory().await.unwrap();
        let writer = store.get_named("w").await.unwrap();
        writer.append_batch([&b"zero"[..], b"one"]).await.unwrap();
        let proof = writer
            .create_proof(ProofRequest {
                block: Some(IndexRequest { index: 1, nodes: 0 }),
                upgrade: Some(UpgradeRequest {
                    start: 0,
                    length: 2,
                }),
                manifest: true,
                ..Default::default()
            })
            .await
            .unwrap();
        let other = Corestore::memory().await.unwrap();
        let reader = other.get_remote(writer.key()).await.unwrap();
        let mut verified = reader.inner.verified.subscribe();
        reader.verify_and_apply_proof(proof).await.unwrap();
        let (index, value) = verified.try_recv().unwrap();
        assert_eq!((index, &value[..]), (1, &b"one"[..]));
    }

    /// What a download counts without a read: the blocks under the contiguous length, and
    /// none at or past the length; anything else is read.
    #[tokio::test]
    async fn the_published_state_counts_what_it_can_and_no_more() {
        let store = Corestore::memory().await.unwrap();
        let writer = store.get_named("w").await.unwrap();
        writer
            .append_batch((0..5u8).map(|i| vec![i]))
            .await
            .unwrap();
        let by_state = |start, end| super::stored_by_state(&writer.inner, start, end);
        assert_eq!(by_state(0, 5), Some(5));
        assert_eq!(by_state(2, 4), Some(2));
        assert_eq!(by_state(5, 9), Some(0));
        assert_eq!(by_state(3, 8), None, "partly past the length: read");
        let reader = store.get_remote([9; 32]).await.unwrap();
        assert_eq!(super::stored_by_state(&reader.inner, 0, 10), Some(0));
        // A cleared block leaves a gap: the range across it is read, and counted right.
        writer.clear(1, 2).await.unwrap();
        assert_eq!(by_state(0, 5), None);
        assert_eq!(by_state(0, 1), Some(1));
        let progress = writer.download(0..5).progress().await.unwrap();
        assert_eq!((progress.have, progress.total), (4, 5));
        // Past the gap, under the length: read, and a stored range resolves.
        assert_eq!(by_state(2, 5), None);
        writer.download(2..5).done(WAIT).await.unwrap();
        let progress = writer.download(2..5).progress().await.unwrap();
        assert_eq!((progress.have, progress.total), (3, 3));
    }

    /// A read-only store's downloads resolve for what is stored, whether the state tells
    /// (from 0) or a read counts (past a gap); nothing is written to wait for.
    #[tokio::test]
    async fn a_read_only_stores_stored_ranges_are_done() {
        let dir = tempfile::tempdir().unwrap();
        let key = {
            let store = Corestore::persistent(dir.path()).await.unwrap();
            let core = store.get_named("w").await.unwrap();
            core.append_batch((0..5u8).map(|i| vec![i])).await.unwrap();
            core.clear(1, 2).await.unwrap();
            store.close().await.unwrap();
            core.key()
        };
        let store = Corestore::open_read_only(dir.path()).await.unwrap();
        let core = store.get(key).await.unwrap().unwrap();
        core.download(0..1).done(WAIT).await.unwrap();
        core.download(2..5).done(WAIT).await.unwrap();
        let short = Duration::from_millis(50);
        assert!(matches!(
            core.download(0..5).done(short).await,
            Err(crate::Error::Timeout(_))
        ));
    }
}

//! The storage actor: writes are queued in call order and committed together (group commit)
//! by one storage thread, or, for a small write with relaxed durability while the database is
//! free, by the caller's own first poll.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use super::{
    Durability, StorageError,
    apply::apply,
    batch::Batch,
    ops::{Op, Outcome},
};

/// Most writes merged into one transaction.
const MAX_BATCH: usize = 8192;
/// Longest time relaxed durability leaves commits non-durable.
const RELAXED_WINDOW: Duration = Duration::from_millis(100);

type Answer = Result<Outcome, StorageError>;
type Reply = oneshot::Sender<Answer>;
/// Each write's reply channel with its answer, and the result of the commit.
type BatchOutcome = (Vec<(Reply, Answer)>, Result<(), StorageError>);

enum Request {
    /// A write; `small` ones may run on the caller's thread (see [`ActorHandle::write`]).
    Write {
        op: Op,
        reply: Reply,
        small: bool,
    },
    Flush(Reply),
    Close(Reply),
}

impl Request {
    fn is_small_write(&self) -> bool {
        matches!(self, Request::Write { small: true, .. })
    }

    fn answer(self, result: Answer) {
        let (Request::Write { reply, .. } | Request::Flush(reply) | Request::Close(reply)) = self;
        let _ = reply.send(result);
    }
}

/// Counters of the storage actor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Write transactions committed.
    pub commits: u64,
    /// Of those, durable (fsynced) commits.
    pub durable_commits: u64,
    /// Writes applied.
    pub writes: u64,
    /// Of the commits, those made on the writer's own thread (small writes with relaxed
    /// durability while the storage thread was idle).
    pub inline_commits: u64,
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    durable_commits: AtomicU64,
    writes: AtomicU64,
    inline_commits: AtomicU64,
}

/// Most queued small writes one caller commits on its own thread.
const MAX_INLINE: usize = 16;

/// Requests not yet taken, in call order, and what the storage thread sleeps on.
#[derive(Default)]
struct Queue {
    requests: VecDeque<Request>,
    /// Set while non-durable commits wait for a durable one.
    dirty_since: Option<Instant>,
    /// The actor closed: new requests are answered with [`StorageError::Closed`].
    closed: bool,
}

/// State shared by the handle, the storage thread and callers committing inline.
///
/// Lock order: `writer` before `queue`; nobody waits for `writer` while holding `queue`.
/// Requests leave the queue only under `writer`, so commits happen in call order whoever
/// makes them.
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the storage thread: a request arrived, or commits became non-durable.
    wake: Condvar,
    /// The database, held by whoever commits; `None` once closed.
    writer: Mutex<Option<Arc<redb::Database>>>,
    durability: Durability,
    /// Longest time relaxed durability leaves commits non-durable ([`RELAXED_WINDOW`]).
    window: Duration,
    counters: Counters,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("durability", &self.durability)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sending side of the actor.
#[derive(Debug)]
pub(super) struct ActorHandle {
    shared: Arc<Shared>,
}

impl ActorHandle {
    pub(super) fn spawn(
        db: Arc<redb::Database>,
        durability: Durability,
    ) -> Result<Self, StorageError> {
        Self::spawn_with_window(db, durability, RELAXED_WINDOW)
    }

    /// [`spawn`](Self::spawn) with relaxed commits made durable within `window`.
    fn spawn_with_window(
        db: Arc<redb::Database>,
        durability: Durability,
        window: Duration,
    ) -> Result<Self, StorageError> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            writer: Mutex::new(Some(db)),
            durability,
            window,
            counters: Counters::default(),
        });
        let thread = shared.clone();
        std::thread::Builder::new()
            .name("hypercore-storage".into())
            .spawn(move || thread.run())
            .map_err(|e| StorageError::Database(format!("cannot start storage thread: {e}")))?;
        Ok(Self { shared })
    }

    /// Queues `req` and, unless it may run inline, wakes the storage thread.
    fn send(&self, req: Request, rx: oneshot::Receiver<Answer>) -> PendingWrite {
        let inline = req.is_small_write() && self.shared.durability == Durability::Relaxed;
        {
            let mut q = lock(&self.shared.queue);
            if q.closed {
                drop(q);
                req.answer(Err(StorageError::Closed));
                return PendingWrite { inline: None, rx };
            }
            q.requests.push_back(req);
        }
        if !inline {
            self.shared.wake.notify_one();
        }
        PendingWrite {
            inline: inline.then(|| self.shared.clone()),
            rx,
        }
    }

    /// Queues a write. With relaxed durability a `small` write is committed by the future's
    /// first poll on the caller's thread when nothing else holds the database, which saves two
    /// thread hand-offs (about 50 µs on a small VM) per awaited append; otherwise, and always
    /// with durable commits (an fsync must not block the runtime), the storage thread commits.
    pub(super) fn write(&self, op: Op, small: bool) -> PendingWrite {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Write { op, reply, small }, rx)
    }

    pub(super) fn flush(&self) -> PendingWrite {
        let (r, rx) = oneshot::channel();
        self.send(Request::Flush(r), rx)
    }

    pub(super) fn close(&self) -> PendingWrite {
        let (r, rx) = oneshot::channel();
        self.send(Request::Close(r), rx)
    }

    pub(super) fn stats(&self) -> StorageStats {
        let c = &self.shared.counters;
        StorageStats {
            commits: c.commits.load(Ordering::Relaxed),
            durable_commits: c.durable_commits.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            inline_commits: c.inline_commits.load(Ordering::Relaxed),
        }
    }
}

impl Drop for ActorHandle {
    fn drop(&mut self) {
        let (reply, _rx) = oneshot::channel();
        lock(&self.shared.queue)
            .requests
            .push_back(Request::Close(reply));
        self.shared.wake.notify_one();
    }
}

/// Closes the actor if the storage thread unwinds: the writes of the failed batch are
/// answered [`StorageError::Closed`] as their replies drop, and so is every later one.
struct RefuseOnPanic<'a>(&'a Shared);

impl Drop for RefuseOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the storage thread panicked: the store is closed");
            self.0.refuse_the_rest();
        }
    }
}

/// The answer to one queued request. A small write with relaxed durability is committed at the
/// first poll if it can be; dropping the future never cancels the request.
#[derive(Debug)]
#[must_use = "a write is queued either way; poll to learn its result"]
pub(super) struct PendingWrite {
    /// Set until the request was tried inline or handed to the storage thread.
    inline: Option<Arc<Shared>>,
    rx: oneshot::Receiver<Answer>,
}

impl Future for PendingWrite {
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(shared) = self.inline.take() {
            shared.commit_inline();
        }
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StorageError::Closed)))
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if let Some(shared) = self.inline.take() {
            shared.wake.notify_one();
        }
    }
}

impl Shared {
    /// Commits the queued requests on this thread if they are all small writes and the
    /// database is free; otherwise leaves them to the storage thread.
    fn commit_inline(&self) {
        if let Ok(writer) = self.writer.try_lock()
            && let Some(db) = writer.as_ref()
        {
            let (batch, was_dirty): (Vec<Request>, bool) = {
                let mut q = lock(&self.queue);
                let all_small = q.requests.len() <= MAX_INLINE
                    && q.requests.iter().all(Request::is_small_write);
                let batch = match all_small {
                    true => q.requests.drain(..).collect(),
                    false => Vec::new(),
                };
                (batch, q.dirty_since.is_some())
            };
            if !batch.is_empty() {
                self.counters.inline_commits.fetch_add(1, Ordering::Relaxed);
                self.process(db, batch);
                drop(writer);
                if !was_dirty {
                    // The storage thread owes a durable commit within the window now.
                    self.wake.notify_one();
                }
                return;
            }
        }
        self.wake.notify_one();
    }

    /// The storage thread: takes queued requests in order and commits them together; with
    /// relaxed durability it also makes a durable commit at most its window after the
    /// first non-durable one.
    fn run(self: Arc<Self>) {
        // A panic (a bug) must not leave later writes waiting for a thread that is gone.
        let _guard = RefuseOnPanic(&self);
        loop {
            let periodic = {
                let mut q = lock(&self.queue);
                loop {
                    if !q.requests.is_empty() {
                        break false;
                    }
                    match q.dirty_since {
                        Some(since) => {
                            let wait = self.window.saturating_sub(since.elapsed());
                            if wait.is_zero() {
                                break true;
                            }
                            q = self
                                .wake
                                .wait_timeout(q, wait)
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                        }
                        None => q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner()),
                    }
                }
            };
            let mut writer = lock(&self.writer);
            let Some(db) = writer.clone() else {
                // Closed (the thread returns after a close, so this is only a safeguard).
                self.refuse_the_rest();
                return;
            };
            if periodic {
                if lock(&self.queue).dirty_since.is_some()
                    && let Err(e) = self.run_batch(&db, Vec::new(), true).1
                {
                    tracing::warn!("periodic durable commit failed: {e}");
                }
                continue;
            }
            let batch: Vec<Request> = {
                let mut q = lock(&self.queue);
                let mut n = 0;
                let mut writes = 0;
                for r in &q.requests {
                    n += 1;
                    match r {
                        Request::Close(_) => break,
                        Request::Write { .. } => writes += 1,
                        Request::Flush(_) => {}
                    }
                    if writes == MAX_BATCH {
                        break;
                    }
                }
                q.requests.drain(..n).collect()
            };
            if let Some((reply, result)) = self.process(&db, batch) {
                // Release the database before answering, so the caller can reopen the file.
                *writer = None;
                drop((writer, db));
                self.refuse_the_rest();
                let _ = reply.send(result);
                return;
            }
        }
    }

    /// Marks the actor closed and answers every request still queued with
    /// [`StorageError::Closed`]; later requests are answered so when they are sent.
    fn refuse_the_rest(&self) {
        let rest: Vec<Request> = {
            let mut q = lock(&self.queue);
            q.closed = true;
            q.requests.drain(..).collect()
        };
        rest.into_iter()
            .for_each(|r| r.answer(Err(StorageError::Closed)));
    }

    /// Commits `batch` (requests in call order) in one transaction and answers each request
    /// but a close, which is returned with its result: it is answered once the database is
    /// released.
    fn process(&self, db: &redb::Database, batch: Vec<Request>) -> Option<(Reply, Answer)> {
        let mut writes = Vec::new();
        let mut barriers = Vec::new();
        let mut closing = None;
        for req in batch {
            match req {
                Request::Write { op, reply, .. } => writes.push((op, reply)),
                Request::Flush(reply) => barriers.push(reply),
                Request::Close(reply) => closing = Some(reply),
            }
        }
        let durable =
            self.durability == Durability::Durable || !barriers.is_empty() || closing.is_some();
        let (replies, result) = self.run_batch(db, writes, durable);
        for (reply, r) in replies {
            let _ = reply.send(r);
        }
        for reply in barriers {
            let _ = reply.send(result.clone().map(|()| Outcome::Done));
        }
        closing.map(|reply| (reply, result.map(|()| Outcome::Done)))
    }

    /// Applies `writes` in one transaction, then signs and writes the header of each core they
    /// changed (once per core), commits, and publishes each core's new state before any write
    /// is answered. Returns each write's answer and the commit result.
    fn run_batch(
        &self,
        db: &redb::Database,
        writes: Vec<(Op, Reply)>,
        durable: bool,
    ) -> BatchOutcome {
        if writes.is_empty() && !durable {
            return (Vec::new(), Ok(()));
        }
        let n = writes.len();
        let (ops, replies): (Vec<Op>, Vec<Reply>) = writes.into_iter().unzip();
        let mut answers: Vec<Answer> = Vec::with_capacity(n);
        let result = (|| {
            let txn = db.begin_write()?;
            let mut batch = Batch::new(&txn);
            let mut applied = Ok(());
            for op in ops {
                if applied.is_err() {
                    break;
                }
                match apply(&mut batch, op) {
                    Ok(outcome) => answers.push(Ok(outcome)),
                    Err(e @ StorageError::Rejected(_)) => answers.push(Err(e)),
                    Err(e) => applied = Err(e),
                }
            }
            let published = match applied.and_then(|()| batch.finish()) {
                Ok(p) => p,
                Err(e) => {
                    batch.into_touched().for_each(|slot| slot.roll_back());
                    return Err(e);
                }
            };
            drop(batch);
            match self.commit(txn, durable) {
                Ok(()) => {
                    for (slot, header, events) in published {
                        slot.publish(header, events);
                    }
                    Ok(())
                }
                Err(e) => {
                    published.iter().for_each(|(slot, ..)| slot.roll_back());
                    Err(e)
                }
            }
        })();
        self.counters.writes.fetch_add(n as u64, Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::warn!("storage transaction failed: {e}");
            answers.resize(n, Err(e.clone()));
            for a in answers.iter_mut().filter(|a| a.is_ok()) {
                *a = Err(e.clone());
            }
        }
        (replies.into_iter().zip(answers).collect(), result)
    }

    fn commit(&self, mut txn: redb::WriteTransaction, durable: bool) -> Result<(), StorageError> {
        if !durable {
            txn.set_durability(redb::Durability::None)?;
        }
        txn.commit()?;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        let mut q = lock(&self.queue);
        if durable {
            self.counters
                .durable_commits
                .fetch_add(1, Ordering::Relaxed);
            q.dirty_since = None;
        } else if q.dirty_since.is_none() {
            q.dirty_since = Some(Instant::now());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Mutex as StdMutex, time::Duration};

    use bytes::Bytes;
    use redb::{ReadableDatabase, ReadableTable, backends::InMemoryBackend};

    use super::*;
    use crate::{
        crypto::CoreKind,
        storage::{
            Change, CommitListener, CoreHeader, CoreSlot,
            blocks::BlocksRead,
            nodes,
            ops::Probe,
            schema::{self, init},
        },
        tree::{Node, TreeState},
    };

    fn actor(durability: Durability) -> (ActorHandle, Arc<redb::Database>) {
        actor_with_window(durability, RELAXED_WINDOW)
    }

    fn actor_with_window(
        durability: Durability,
        window: Duration,
    ) -> (ActorHandle, Arc<redb::Database>) {
        let db = redb::Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        init(&db).unwrap();
        let db = Arc::new(db);
        let actor = ActorHandle::spawn_with_window(db.clone(), durability, window).unwrap();
        (actor, db)
    }

    fn header(key: [u8; 32]) -> CoreHeader {
        CoreHeader {
            key,
            kind: Some(CoreKind::Default),
            manifest: None,
            secret: None,
            tree: TreeState::default(),
            contiguous_length: 0,
        }
    }

    /// A write that stores a core whose key starts with `n`: cores get ids in the order
    /// their writes run.
    fn record(n: u64) -> Op {
        let key = [n as u8; 32];
        Op::CreateCore {
            key,
            header: Box::new(header(key)),
            name: None,
        }
    }

    /// The `n` of every recorded write, in the order they ran.
    fn stored(db: &redb::Database) -> Vec<u64> {
        let txn = db.begin_read().unwrap();
        let mut cores: Vec<(u64, u64)> = txn
            .open_table(schema::CORES)
            .unwrap()
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (v.value(), k.value()[0] as u64)
            })
            .collect();
        cores.sort();
        cores.into_iter().map(|(_, n)| n).collect()
    }

    /// A write appending blocks `first..first + n` (one byte each) of core `slot` with their
    /// leaves.
    fn append(slot: &Arc<CoreSlot>, first: u64, n: u64) -> (Op, Reply) {
        let values: Vec<Bytes> = (first..first + n)
            .map(|i| Bytes::from(vec![i as u8]))
            .collect();
        let nodes = values
            .iter()
            .zip(first..)
            .map(|(v, i)| Node::leaf(i, v))
            .collect();
        let tree = TreeState {
            length: first + n,
            ..Default::default()
        };
        let op = Op::Append {
            slot: slot.clone(),
            base: (first, 0),
            base_roots: Vec::new(),
            values,
            nodes,
            tree,
        };
        (op, oneshot::channel().0)
    }

    /// A panic inside a batch (a bug) closes the store: the batch's write and every later one
    /// are answered `Closed` instead of waiting forever for a thread that is gone.
    #[tokio::test]
    async fn a_panic_in_the_storage_thread_closes_the_store() {
        let (actor, _db) = actor(Durability::Durable);
        let boom = Op::Probe(Probe(Box::new(|_| panic!("a bug in an op"))));
        let failed = tokio::time::timeout(Duration::from_secs(10), actor.write(boom, false));
        assert!(matches!(failed.await, Ok(Err(StorageError::Closed))));
        let later = tokio::time::timeout(Duration::from_secs(10), actor.write(record(1), false));
        assert!(matches!(later.await, Ok(Err(StorageError::Closed))));
    }

    #[test]
    fn appends_of_a_batch_share_rows_and_later_writes_see_them() {
        let (actor, db) = actor(Durability::Durable);
        let heard = Arc::new(Heard::default());
        let slot = Arc::new(CoreSlot::new(1, header([1; 32]), heard.clone()));
        let seen = Arc::new(StdMutex::new(None));
        let seen_in = seen.clone();
        let check = Op::Probe(Probe(Box::new(move |batch| {
            *seen_in.lock().unwrap() = Some(batch.blocks()?.view().count(1, 0, 100)?);
            Ok(())
        })));
        let writes = vec![
            append(&slot, 0, 2),
            append(&slot, 2, 2),
            (check, oneshot::channel().0),
            append(&slot, 4, 1),
            append(&slot, 5, 3),
        ];
        let (answers, result) = actor.shared.run_batch(&db, writes, true);
        result.unwrap();
        assert!(answers.iter().all(|(_, a)| a.is_ok()));
        assert_eq!(
            *seen.lock().unwrap(),
            Some(4),
            "staged appends written before a read"
        );
        let txn = db.begin_read().unwrap();
        let rows: Vec<u64> = txn
            .open_table(schema::BLOCKS)
            .unwrap()
            .iter()
            .unwrap()
            .map(|r| r.unwrap().0.value().1)
            .collect();
        assert_eq!(rows, [0, 4], "one chunk row per run of appends");
        let blocks = BlocksRead::open(&txn).unwrap();
        let table = txn.open_table(schema::NODES).unwrap();
        for i in 0..8u64 {
            assert_eq!(blocks.view().get(1, i).unwrap(), Some(vec![i as u8]));
            let leaf = nodes::get(&table, 1, 2 * i).unwrap();
            assert_eq!(leaf, Some(Node::leaf(i, &[i as u8])));
        }
        assert_eq!(slot.state().committed.tree.length, 8, "published");
        let changes = heard.0.lock().unwrap().clone();
        assert!(
            matches!(changes[..], [Change::Append { length: 8, .. }]),
            "consecutive appends are heard of as one: {changes:?}"
        );
    }

    /// Records the changes it hears of.
    #[derive(Debug, Default)]
    struct Heard(StdMutex<Vec<Change>>);

    impl CommitListener for Heard {
        fn committed(&self, changes: Vec<Change>) {
            self.0.lock().unwrap().extend(changes);
        }
    }

    /// Awaits small writes of `0..n`, one at a time.
    async fn write_in_turn(actor: &ActorHandle, n: u64) {
        for i in 0..n {
            actor.write(record(i), true).await.unwrap();
        }
    }

    /// Waits (at most 5 s) until `done` holds.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    /// Small relaxed writes commit on the caller's thread. The storage thread, woken by the
    /// end of its window, can take a write queued just before its first poll: with a window
    /// longer than the test (however slow the machine), none is. It is also woken once, by
    /// the first inline commit (to start its window): on a loaded machine it may run late
    /// and find the next write queued, and take that one (as after a spurious wake). So
    /// nearly all, not all, are inline.
    #[tokio::test]
    async fn relaxed_small_writes_commit_inline() {
        let (actor, db) = actor_with_window(Durability::Relaxed, Duration::from_secs(600));
        write_in_turn(&actor, 50).await;
        let stats = actor.stats();
        assert!(stats.inline_commits >= 45, "{stats:?}");
        assert_eq!(stats.commits, 50, "one commit each: {stats:?}");
        assert_eq!(stats.durable_commits, 0, "{stats:?}");
        assert_eq!(stored(&db), (0..50).collect::<Vec<_>>());
    }

    /// The storage thread owes a durable commit after relaxed ones, made within the window.
    #[tokio::test]
    async fn relaxed_writes_are_made_durable_within_the_window() {
        let (actor, db) = actor(Durability::Relaxed);
        write_in_turn(&actor, 50).await;
        assert_eq!(stored(&db), (0..50).collect::<Vec<_>>());
        eventually("a durable commit", || actor.stats().durable_commits > 0).await;
        assert_eq!(actor.stats().writes, 50);
    }

    #[tokio::test]
    async fn durable_writes_never_commit_inline() {
        let (actor, db) = actor(Durability::Durable);
        write_in_turn(&actor, 10).await;
        let stats = actor.stats();
        assert_eq!(stats.inline_commits, 0);
        assert_eq!(stats.durable_commits, 10);
        assert_eq!(stored(&db).len(), 10);
    }

    #[tokio::test]
    async fn an_inline_write_never_overtakes_an_earlier_large_one() {
        let (actor, db) = actor(Durability::Relaxed);
        let large = actor.write(record(1), false);
        let small = actor.write(record(2), true);
        let later = actor.write(record(3), true);
        // Polled in reverse: whoever commits, call order is commit order.
        later.await.unwrap();
        small.await.unwrap();
        large.await.unwrap();
        // Cores get ids in the order their writes ran.
        assert_eq!(stored(&db), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_dropped_small_write_still_commits() {
        let (actor, db) = actor(Durability::Relaxed);
        drop(actor.write(record(7), true));
        // No other request wakes the storage thread: dropping the future must.
        eventually("the dropped write", || !stored(&db).is_empty()).await;
        assert_eq!(stored(&db), vec![7]);
    }

    #[tokio::test]
    async fn writes_after_close_fail_and_the_database_is_released() {
        let (actor, db) = actor(Durability::Relaxed);
        actor.write(record(1), true).await.unwrap();
        actor.close().await.unwrap();
        assert_eq!(
            Arc::strong_count(&db),
            1,
            "the actor still holds the database"
        );
        let err = actor.write(record(2), true).await.unwrap_err();
        assert!(matches!(err, StorageError::Closed), "{err:?}");
        assert_eq!(stored(&db), vec![1]);
    }
}

//! The storage actor: one thread owns all writes and commits queued writes together.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use super::{
    Durability, StorageError,
    blocks::{BlocksTable, BlocksWrite, PiecesTable},
    nodes::{NodesTable, NodesWrite},
    schema,
};

/// Most writes merged into one transaction.
const MAX_BATCH: usize = 8192;
/// Longest time relaxed durability leaves commits non-durable.
const RELAXED_WINDOW: Duration = Duration::from_millis(100);

type WriteFn = Box<dyn FnOnce(&mut WriteCtx<'_, '_>) -> Result<(), StorageError> + Send>;
type FinalizeFn =
    Box<dyn FnOnce(&redb::WriteTransaction) -> Result<Option<CommitFn>, StorageError> + Send>;
type CommitFn = Box<dyn FnOnce() + Send>;
type Reply = oneshot::Sender<Result<(), StorageError>>;
/// Each write's reply channel with its answer, and the result of the commit.
type BatchOutcome = (
    Vec<(Reply, Result<(), StorageError>)>,
    Result<(), StorageError>,
);

/// The block and node tables, opened once per batch: opening a redb table for every write of a
/// batch cost about a tenth of the storage thread's time with 100 appending tasks.
#[derive(Default)]
struct OpenTables<'t> {
    blocks: Option<(BlocksTable<'t>, PiecesTable<'t>)>,
    nodes: Option<NodesTable<'t>>,
}

/// What a queued write sees: the shared transaction, plus hooks that run once per batch.
///
/// The block and node tables must be reached through [`WriteCtx::blocks`] and
/// [`WriteCtx::nodes`], which keep them open for the batch (redb refuses to open a table twice).
pub struct WriteCtx<'a, 't> {
    /// The transaction shared by every write of this batch.
    pub txn: &'t redb::WriteTransaction,
    tables: &'a mut OpenTables<'t>,
    finalizers: &'a mut BTreeMap<u64, FinalizeFn>,
    on_commit: &'a mut Vec<CommitFn>,
    on_abort: &'a mut Vec<CommitFn>,
}

impl<'t> WriteCtx<'_, 't> {
    /// The block tables of this batch.
    pub fn blocks(&mut self) -> Result<BlocksWrite<'_, 't>, StorageError> {
        if self.tables.blocks.is_none() {
            self.tables.blocks = Some((
                self.txn.open_table(schema::BLOCKS)?,
                self.txn.open_table(schema::PIECES)?,
            ));
        }
        let (chunks, pieces) = self
            .tables
            .blocks
            .as_mut()
            .ok_or_else(|| StorageError::Database("block tables not open".into()))?;
        Ok(BlocksWrite::new(chunks, pieces))
    }

    /// The nodes table of this batch.
    pub fn nodes(&mut self) -> Result<NodesWrite<'_, 't>, StorageError> {
        if self.tables.nodes.is_none() {
            self.tables.nodes = Some(self.txn.open_table(schema::NODES)?);
        }
        let table = self
            .tables
            .nodes
            .as_mut()
            .ok_or_else(|| StorageError::Database("nodes table not open".into()))?;
        Ok(NodesWrite::new(table))
    }

    /// Registers work to run once at the end of the batch for `slot` (for example signing a
    /// core's final length and writing its header); a later registration for the same slot
    /// replaces an earlier one. It may return work to run after the commit.
    pub fn finalize<F, C>(&mut self, slot: u64, f: F)
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<Option<C>, StorageError> + Send + 'static,
        C: FnOnce() + Send + 'static,
    {
        self.finalizers.insert(
            slot,
            Box::new(move |txn| Ok(f(txn)?.map(|c| Box::new(c) as CommitFn))),
        );
    }

    /// Registers work to run if the batch fails to commit (to roll back in-memory state).
    pub fn on_abort(&mut self, f: impl FnOnce() + Send + 'static) {
        self.on_abort.push(Box::new(f));
    }

    /// Registers work to run after the batch committed, before any write of it is answered.
    pub fn on_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.on_commit.push(Box::new(f));
    }
}

enum Request {
    Write(WriteFn, Reply),
    Flush(Reply),
    Close(Reply),
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
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    durable_commits: AtomicU64,
    writes: AtomicU64,
}

/// The sending side of the actor.
#[derive(Debug)]
pub(super) struct ActorHandle {
    tx: mpsc::Sender<Request>,
    counters: Arc<Counters>,
}

impl ActorHandle {
    pub(super) fn spawn(
        db: Arc<redb::Database>,
        durability: Durability,
    ) -> Result<Self, StorageError> {
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let actor = Actor {
            db,
            durability,
            counters: counters.clone(),
            dirty_since: None,
        };
        std::thread::Builder::new()
            .name("hypercore-storage".into())
            .spawn(move || actor.run(rx))
            .map_err(|e| StorageError::Database(format!("cannot start storage thread: {e}")))?;
        Ok(Self { tx, counters })
    }

    fn send(
        &self,
        req: Request,
        rx: oneshot::Receiver<Result<(), StorageError>>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send + 'static + use<> {
        let sent = self.tx.send(req).is_ok();
        async move {
            if !sent {
                return Err(StorageError::Closed);
            }
            rx.await.unwrap_or(Err(StorageError::Closed))
        }
    }

    pub(super) fn write(
        &self,
        op: WriteFn,
    ) -> impl Future<Output = Result<(), StorageError>> + Send + 'static + use<> {
        let (r, rx) = oneshot::channel();
        self.send(Request::Write(op, r), rx)
    }

    pub(super) fn flush(
        &self,
    ) -> impl Future<Output = Result<(), StorageError>> + Send + 'static + use<> {
        let (r, rx) = oneshot::channel();
        self.send(Request::Flush(r), rx)
    }

    pub(super) fn close(
        &self,
    ) -> impl Future<Output = Result<(), StorageError>> + Send + 'static + use<> {
        let (r, rx) = oneshot::channel();
        self.send(Request::Close(r), rx)
    }

    pub(super) fn stats(&self) -> StorageStats {
        StorageStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            durable_commits: self.counters.durable_commits.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
        }
    }
}

impl Drop for ActorHandle {
    fn drop(&mut self) {
        let (reply, _rx) = oneshot::channel();
        let _ = self.tx.send(Request::Close(reply));
    }
}

struct Actor {
    db: Arc<redb::Database>,
    durability: Durability,
    counters: Arc<Counters>,
    /// Set while non-durable commits wait for a durable one.
    dirty_since: Option<Instant>,
}

impl Actor {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        loop {
            let first = match self.dirty_since {
                Some(since) => {
                    let wait = RELAXED_WINDOW.saturating_sub(since.elapsed());
                    match rx.recv_timeout(wait) {
                        Ok(r) => r,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if let Err(e) = self.commit_batch(Vec::new(), true) {
                                tracing::warn!("periodic durable commit failed: {e}");
                            }
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                },
            };
            let mut writes = Vec::new();
            let mut barriers = Vec::new();
            let mut closing = None;
            let mut next = Some(first);
            while let Some(req) = next.take() {
                match req {
                    Request::Write(op, reply) => writes.push((op, reply)),
                    Request::Flush(reply) => barriers.push(reply),
                    Request::Close(reply) => {
                        closing = Some(reply);
                        break;
                    }
                }
                if writes.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            let durable =
                self.durability == Durability::Durable || !barriers.is_empty() || closing.is_some();
            let (replies, result) = self.run_batch(writes, durable);
            for (reply, r) in replies {
                let _ = reply.send(r);
            }
            for reply in barriers {
                let _ = reply.send(result.clone());
            }
            if let Some(reply) = closing {
                // Release the database before answering, so the caller can reopen the file.
                drop(self);
                let _ = reply.send(result);
                return;
            }
        }
        if self.dirty_since.is_some() {
            let _ = self.commit_batch(Vec::new(), true);
        }
    }

    /// Applies `writes` in one transaction; returns each write's answer and the commit result.
    fn run_batch(&mut self, writes: Vec<(WriteFn, Reply)>, durable: bool) -> BatchOutcome {
        if writes.is_empty() && !durable {
            return (Vec::new(), Ok(()));
        }
        let n = writes.len();
        let (ops, replies): (Vec<WriteFn>, Vec<Reply>) = writes.into_iter().unzip();
        let mut answers: Vec<Result<(), StorageError>> = vec![Ok(()); n];
        let mut on_commit = Vec::new();
        let mut on_abort = Vec::new();
        let result = (|| {
            let txn = self.db.begin_write()?;
            let mut finalizers = BTreeMap::new();
            let mut tables = OpenTables::default();
            for (op, answer) in ops.into_iter().zip(answers.iter_mut()) {
                let mut ctx = WriteCtx {
                    txn: &txn,
                    tables: &mut tables,
                    finalizers: &mut finalizers,
                    on_commit: &mut on_commit,
                    on_abort: &mut on_abort,
                };
                match op(&mut ctx) {
                    Ok(()) => {}
                    Err(e @ StorageError::Rejected(_)) => *answer = Err(e),
                    Err(e) => return Err(e),
                }
            }
            drop(tables);
            for (_, f) in finalizers {
                if let Some(c) = f(&txn)? {
                    on_commit.push(c);
                }
            }
            self.commit(txn, durable)
        })();
        self.counters.writes.fetch_add(n as u64, Ordering::Relaxed);
        match &result {
            Ok(()) => on_commit.into_iter().for_each(|f| f()),
            Err(e) => {
                tracing::warn!("storage transaction failed: {e}");
                on_abort.into_iter().for_each(|f| f());
                for a in answers.iter_mut().filter(|a| a.is_ok()) {
                    *a = Err(e.clone());
                }
            }
        }
        (replies.into_iter().zip(answers).collect(), result)
    }

    fn commit_batch(
        &mut self,
        writes: Vec<(WriteFn, Reply)>,
        durable: bool,
    ) -> Result<(), StorageError> {
        let (replies, result) = self.run_batch(writes, durable);
        for (reply, r) in replies {
            let _ = reply.send(r);
        }
        result
    }

    fn commit(
        &mut self,
        mut txn: redb::WriteTransaction,
        durable: bool,
    ) -> Result<(), StorageError> {
        if !durable {
            txn.set_durability(redb::Durability::None)?;
        }
        txn.commit()?;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        if durable {
            self.counters
                .durable_commits
                .fetch_add(1, Ordering::Relaxed);
            self.dirty_since = None;
        } else if self.dirty_since.is_none() {
            self.dirty_since = Some(Instant::now());
        }
        Ok(())
    }
}

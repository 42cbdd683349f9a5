//! Serving peers: proofs and runs, with a bounded queue per peer so a flood of requests cannot
//! take over the storage thread, and a bound on the bytes queued towards a peer so one that does
//! not read cannot make us hold its answers: requests wait while its backlog is over
//! `max_backlog_bytes`, and a run is read in parts of `serve_run_bytes`.
//!
//! [`Server`] owns the serve side's state: each peer's queue of requests and backlog, and the
//! storage tasks running for each peer. It says which request to serve next; the engine's
//! methods here decide how (an answer at once, or a storage task) and send the answers.

use std::collections::{BTreeMap, VecDeque};

use super::{ChannelId, Engine, EngineConfig, PeerId, Task, TaskCtx};
use crate::{
    core::{MAX_RUN, RunItem},
    replication::wire::Message,
    tree::Proof,
};

/// The requests of one peer waiting to be served, and its backlog.
#[derive(Debug, Default)]
struct ServeQueue {
    requests: VecDeque<(ChannelId, Message)>,
    /// Bytes queued towards the peer that QUIC has not taken yet, as the driver reported.
    backlog_bytes: u64,
}

/// Whether a peer's queue takes one more request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// It has room: the request waits for its turn.
    Open,
    /// It is full: the request is refused.
    Full,
    /// The peer is not connected.
    Unknown,
}

/// The serve side: per-peer request queues and backlogs, and the storage tasks running for
/// each peer's requests.
#[derive(Debug)]
pub(super) struct Server {
    concurrency: usize,
    queue_cap: usize,
    max_backlog: u64,
    /// Each connected peer's queue.
    queues: BTreeMap<PeerId, ServeQueue>,
    /// Storage tasks running for each peer's requests (also those of a connection or channel
    /// closed since: they hold the storage thread all the same).
    running: BTreeMap<PeerId, usize>,
}

impl Server {
    /// No peer yet; the limits from `cfg`.
    pub(super) fn new(cfg: &EngineConfig) -> Self {
        Self {
            concurrency: cfg.serve_concurrency,
            queue_cap: cfg.serve_queue,
            max_backlog: cfg.max_backlog_bytes,
            queues: BTreeMap::new(),
            running: BTreeMap::new(),
        }
    }

    /// `peer` connected: it gets an empty queue.
    pub(super) fn add_peer(&mut self, peer: PeerId) {
        self.queues.entry(peer).or_default();
    }

    /// `peer` disconnected: its queued requests are dropped (its running tasks still count
    /// until they finish).
    pub(super) fn remove_peer(&mut self, peer: &PeerId) {
        self.queues.remove(peer);
    }

    /// Whether `peer`'s queue takes one more request.
    pub(super) fn admission(&self, peer: &PeerId) -> Admission {
        match self.queues.get(peer) {
            None => Admission::Unknown,
            Some(q) if q.requests.len() >= self.queue_cap => Admission::Full,
            Some(_) => Admission::Open,
        }
    }

    /// Queues a request of `peer` on `channel` (see [`admission`](Self::admission)).
    pub(super) fn push_back(&mut self, peer: PeerId, channel: ChannelId, msg: Message) {
        if let Some(q) = self.queues.get_mut(&peer) {
            q.requests.push_back((channel, msg));
        }
    }

    /// Puts the rest of a request in front of `peer`'s queue.
    pub(super) fn push_front(&mut self, peer: PeerId, channel: ChannelId, msg: Message) {
        if let Some(q) = self.queues.get_mut(&peer) {
            q.requests.push_front((channel, msg));
        }
    }

    /// Drops the queued request `id` of `channel` (the peer cancelled it); returns whether one
    /// was queued.
    pub(super) fn cancel_queued(&mut self, peer: &PeerId, channel: ChannelId, id: u64) -> bool {
        let Some(q) = self.queues.get_mut(peer) else {
            return false;
        };
        let before = q.requests.len();
        q.requests.retain(|(ch, msg)| {
            *ch != channel || !matches!(msg, Message::Request { id: i, .. } | Message::RequestRun { id: i, .. } if *i == id)
        });
        q.requests.len() != before
    }

    /// Whether a request of `channel` waits in `peer`'s queue.
    pub(super) fn has_queued(&self, peer: &PeerId, channel: ChannelId) -> bool {
        self.queues
            .get(peer)
            .is_some_and(|q| q.requests.iter().any(|(ch, _)| *ch == channel))
    }

    /// Drops the queued requests of a channel that closed.
    pub(super) fn forget_channel(&mut self, peer: &PeerId, channel: ChannelId) {
        if let Some(q) = self.queues.get_mut(peer) {
            q.requests.retain(|(ch, _)| *ch != channel);
        }
    }

    /// The driver's count of bytes queued towards `peer`.
    pub(super) fn set_backlog(&mut self, peer: &PeerId, bytes: u64) {
        if let Some(q) = self.queues.get_mut(peer) {
            q.backlog_bytes = bytes;
        }
    }

    /// Bytes queued towards `peer`, as the driver last reported.
    pub(super) fn backlog(&self, peer: &PeerId) -> u64 {
        self.queues.get(peer).map_or(0, |q| q.backlog_bytes)
    }

    /// Whether answers may be queued towards `peer`: it is connected and its backlog is under
    /// the limit.
    pub(super) fn has_room(&self, peer: &PeerId) -> bool {
        self.queues
            .get(peer)
            .is_some_and(|q| q.backlog_bytes < self.max_backlog)
    }

    /// The next request of `peer` to serve, if it is under its concurrency limit and its
    /// backlog has room.
    pub(super) fn next(&mut self, peer: &PeerId) -> Option<(ChannelId, Message)> {
        let running = self.running.get(peer).copied().unwrap_or(0);
        if running >= self.concurrency || !self.has_room(peer) {
            return None;
        }
        self.queues.get_mut(peer)?.requests.pop_front()
    }

    /// A storage task started for a request of `peer`.
    pub(super) fn started(&mut self, peer: PeerId) {
        *self.running.entry(peer).or_default() += 1;
    }

    /// A storage task for a request of `peer` finished.
    pub(super) fn finished(&mut self, peer: &PeerId) {
        if let Some(n) = self.running.get_mut(peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running.remove(peer);
            }
        }
    }
}

impl Engine {
    pub(super) fn on_request(&mut self, peer: PeerId, channel: ChannelId, msg: Message) {
        match self.server.admission(&peer) {
            Admission::Open => {
                self.server.push_back(peer, channel, msg);
                self.serve_next(peer);
            }
            Admission::Full => {
                let refused = self.count_refused(peer);
                self.refuse_request(peer, channel, &msg);
                if refused > self.cfg.max_refused {
                    self.close_channel(peer, channel, "too many requests");
                }
            }
            Admission::Unknown => {}
        }
    }

    fn refuse_request(&mut self, peer: PeerId, channel: ChannelId, msg: &Message) {
        let answer = match *msg {
            Message::Request { id, .. } => Message::NoData {
                id,
                start: 0,
                end: 0,
            },
            Message::RequestRun { id, start, end, .. } => Message::NoData { id, start, end },
            _ => return,
        };
        self.send(peer, channel, answer);
    }

    /// The peer cancelled its request `id` on `channel`: a queued one is dropped, and one
    /// being read is neither sent nor continued when its task ends. Nothing is answered.
    pub(super) fn on_cancel(&mut self, peer: PeerId, channel: ChannelId, id: u64) {
        if self.server.cancel_queued(&peer, channel, id) {
            return;
        }
        let running = self.tasks.values().any(|t| match t {
            TaskCtx::Serve {
                peer: p,
                channel: c,
                id: i,
            } => (*p, *c, *i) == (peer, channel, id),
            TaskCtx::ServeRun {
                peer: p,
                channel: c,
                request: Message::RequestRun { id: i, .. },
            } => (*p, *c, *i) == (peer, channel, id),
            _ => false,
        });
        // Only requests being read are remembered, so the set holds at most the running
        // serve tasks.
        if running {
            self.cancelled.insert((channel, id));
        }
    }

    /// The driver's count of bytes queued towards `peer`; serving resumes once it has room.
    pub(super) fn on_backlog(&mut self, peer: PeerId, bytes: u64) {
        self.server.set_backlog(&peer, bytes);
        self.serve_next(peer);
    }

    /// Whether answers may be queued towards `peer`: its backlog is under the limit.
    pub(super) fn has_room(&self, peer: &PeerId) -> bool {
        self.server.has_room(peer)
    }

    /// Starts serving queued requests while the peer is under its concurrency limit and its
    /// backlog has room.
    fn serve_next(&mut self, peer: PeerId) {
        while let Some((channel, msg)) = self.server.next(&peer) {
            let Some(core) = self.channels.get(&channel).map(|c| c.core) else {
                continue;
            };
            let length = self.cores.get(&core).map_or(0, |r| r.local.length);
            match plan(peer, channel, msg, length, self.cfg.serve_run_bytes) {
                Some(ServeStep::Refuse(answer)) => {
                    self.count_refused(peer);
                    self.send(peer, channel, answer);
                }
                Some(ServeStep::Read(task, ctx)) => {
                    self.server.started(peer);
                    self.new_task(core, task, ctx);
                }
                None => {}
            }
        }
    }

    /// A proof for request `id` of `peer` was read (or could not be): it is sent.
    pub(super) fn on_served(
        &mut self,
        peer: PeerId,
        channel: ChannelId,
        id: u64,
        result: Result<Proof, String>,
    ) {
        if self.cancelled.remove(&(channel, id)) {
            self.serve_next(peer);
            return;
        }
        if let Some(core) = self.channels.get(&channel).map(|c| c.core) {
            match result {
                Ok(proof) => {
                    if let Some(b) = &proof.block {
                        self.count_upload(core, peer, b.index, b.value.len() as u64);
                    }
                    self.send(peer, channel, Message::Data { id, proof });
                }
                Err(e) => {
                    tracing::debug!("cannot serve request {id}: {e}");
                    let none = Message::NoData {
                        id,
                        start: 0,
                        end: 0,
                    };
                    self.send(peer, channel, none);
                }
            }
        }
        self.serve_next(peer);
    }

    /// A part of a run was read: it is sent, and the rest of the run queued in front of the
    /// peer's other requests.
    pub(super) fn on_served_run(
        &mut self,
        peer: PeerId,
        channel: ChannelId,
        request: Message,
        result: Result<Vec<RunItem>, String>,
    ) {
        let Message::RequestRun { id, start, end, .. } = request else {
            return;
        };
        if self.cancelled.remove(&(channel, id)) {
            self.serve_next(peer);
            return;
        }
        if let Some(core) = self.channels.get(&channel).map(|c| c.core) {
            match result {
                Ok(items) => {
                    let stop = items.last().map_or(end, |item| match item {
                        RunItem::Missing(i) => i + 1,
                        RunItem::Proof(p) => p.block.as_ref().map_or(end, |b| b.index + 1),
                    });
                    if stop > start
                        && stop < end
                        && let Message::RequestRun { fork, length, .. } = request
                    {
                        let rest = Message::RequestRun {
                            id,
                            fork,
                            start: stop,
                            end,
                            length,
                        };
                        self.server.push_front(peer, channel, rest);
                    }
                    for msg in run_answer(id, items) {
                        if let Message::Data { proof, .. } = &msg
                            && let Some(b) = &proof.block
                        {
                            self.count_upload(core, peer, b.index, b.value.len() as u64);
                        }
                        self.send(peer, channel, msg);
                    }
                }
                Err(e) => {
                    tracing::debug!("cannot serve run {start}..{end}: {e}");
                    self.send(peer, channel, Message::NoData { id, start, end });
                }
            }
        }
        self.serve_next(peer);
    }
}

/// How to serve a request taken from a peer's queue.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Returned and matched at once; boxing the task costs more.
pub(super) enum ServeStep {
    /// Answer at once, and count the request as refused: it asked for too much, or for
    /// nothing we have (an honest peer asks for what our `Sync` said we hold).
    Refuse(Message),
    /// Read the answer from storage with this task; its result goes where the context says.
    Read(Task, TaskCtx),
}

/// How to serve `msg`, a request of `peer` on `channel` for a log of `length` blocks: runs
/// are read in parts of `run_bytes`. `None` for a message that is no request.
pub(super) fn plan(
    peer: PeerId,
    channel: ChannelId,
    msg: Message,
    length: u64,
    run_bytes: u64,
) -> Option<ServeStep> {
    let step = match msg {
        Message::Request { id, request } => {
            if !answerable(&request, length) {
                let none = Message::NoData {
                    id,
                    start: 0,
                    end: 0,
                };
                return Some(ServeStep::Refuse(none));
            }
            ServeStep::Read(
                Task::CreateProof(request),
                TaskCtx::Serve { peer, channel, id },
            )
        }
        Message::RequestRun {
            id,
            fork,
            start,
            end,
            length: their_length,
        } => {
            if start >= end || end - start > MAX_RUN {
                return Some(ServeStep::Refuse(Message::NoData { id, start, end }));
            }
            if start >= length.min(their_length) {
                // Past our log, or past the log the requester asks about: nothing of it can
                // be proven, and no storage task is needed to say so. Counted: a peer that
                // keeps asking for what we never said we hold is closed like a flood.
                return Some(ServeStep::Refuse(Message::NoData { id, start, end }));
            }
            ServeStep::Read(
                Task::CreateRun {
                    fork,
                    start,
                    end,
                    length: their_length,
                    max_bytes: run_bytes,
                },
                TaskCtx::ServeRun {
                    peer,
                    channel,
                    request: msg,
                },
            )
        }
        _ => return None,
    };
    Some(step)
}

/// The messages answering run request `id`, in block order: a `Data` per proof, and one
/// `NoData` per stretch of blocks this node lacks.
fn run_answer(id: u64, items: Vec<RunItem>) -> Vec<Message> {
    let mut out = Vec::with_capacity(items.len());
    let mut gap: Option<(u64, u64)> = None;
    // `None` at the end flushes a trailing gap.
    for item in items.into_iter().map(Some).chain([None]) {
        if let Some(RunItem::Missing(i)) = item {
            gap = Some((gap.map_or(i, |g| g.0), i + 1));
            continue;
        }
        if let Some((start, end)) = gap.take() {
            out.push(Message::NoData { id, start, end });
        }
        if let Some(RunItem::Proof(proof)) = item {
            out.push(Message::Data { id, proof });
        }
    }
    out
}

/// Whether a request to a log of `length` blocks could be answered with anything: one that
/// asks for nothing, or for a block past the log, gets `NoData` without a storage task.
fn answerable(request: &crate::tree::ProofRequest, length: u64) -> bool {
    let asks = request.block.is_some()
        || request.hash.is_some()
        || request.seek.is_some()
        || request.upgrade.is_some()
        || request.manifest;
    let block_past_end = request.block.as_ref().is_some_and(|b| b.index >= length);
    asks && !block_past_end
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::{
        super::{
            Input, Mode, Output, TaskResult,
            testing::{PEER, engine_with_peer, local, outputs, sync},
        },
        *,
    };
    use crate::tree::{BlockProof, IndexRequest, ProofRequest};

    /// Requests that cannot be answered with anything (past the log, or asking for nothing)
    /// get `NoData` at once: a flood of them costs no storage task.
    #[test]
    fn unanswerable_requests_cost_no_storage_task() {
        let now = Instant::now();
        let (mut engine, channel) =
            engine_with_peer(local(10, true), Mode::Full, sync(0, true), now);
        let requests = [
            // The requester claims a longer log: what counts is ours.
            Message::RequestRun {
                id: 1,
                fork: 0,
                start: 10,
                end: 20,
                length: 1000,
            },
            Message::Request {
                id: 2,
                request: ProofRequest::default(),
            },
            Message::Request {
                id: 3,
                request: ProofRequest {
                    block: Some(IndexRequest {
                        index: 10,
                        nodes: 0,
                    }),
                    ..Default::default()
                },
            },
        ];
        for msg in requests {
            engine.handle(Input::Message(PEER, channel, msg), now);
        }
        let out = outputs(&mut engine);
        assert!(
            !out.iter().any(|o| matches!(o, Output::Task(..))),
            "{out:?}"
        );
        let answered: Vec<u64> = out
            .iter()
            .filter_map(|o| match o {
                Output::Send(_, _, Message::NoData { id, .. }) => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(answered, [1, 2, 3]);

        // A block within the log still goes to storage.
        let msg = Message::Request {
            id: 4,
            request: ProofRequest {
                block: Some(IndexRequest { index: 9, nodes: 0 }),
                ..Default::default()
            },
        };
        engine.handle(Input::Message(PEER, channel, msg), now);
        assert!(
            outputs(&mut engine)
                .iter()
                .any(|o| matches!(o, Output::Task(..)))
        );
    }

    fn proof(index: u64) -> RunItem {
        RunItem::Proof(Proof {
            block: Some(BlockProof {
                index,
                value: Vec::new(),
                nodes: Vec::new(),
            }),
            ..Default::default()
        })
    }

    #[test]
    fn missing_stretches_become_one_no_data_each() {
        let items = vec![
            RunItem::Missing(0),
            proof(1),
            RunItem::Missing(2),
            RunItem::Missing(3),
            proof(4),
            RunItem::Missing(5),
        ];
        let shape: Vec<(char, u64, u64)> = run_answer(7, items)
            .into_iter()
            .map(|m| match m {
                Message::Data { id, proof } => ('d', id, proof.block.map_or(99, |b| b.index)),
                Message::NoData { id, start, end } => ('n', id, start * 10 + end),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ('n', 7, 1),
                ('d', 7, 1),
                ('n', 7, 24),
                ('d', 7, 4),
                ('n', 7, 56)
            ]
        );
    }

    fn block_request(id: u64) -> Message {
        Message::Request {
            id,
            request: ProofRequest {
                block: Some(IndexRequest {
                    index: id,
                    nodes: 0,
                }),
                ..Default::default()
            },
        }
    }

    /// At most `serve_concurrency` storage tasks run for one peer; each that finishes lets the
    /// next request start. Tasks of a connection that went away still count.
    #[test]
    fn serve_tasks_per_peer_are_bounded_and_counted() {
        let cfg = EngineConfig {
            serve_concurrency: 2,
            ..Default::default()
        };
        let mut server = Server::new(&cfg);
        server.add_peer(PEER);
        for id in 0..3 {
            server.push_back(PEER, 1, block_request(id));
        }
        assert!(server.next(&PEER).is_some());
        server.started(PEER);
        assert!(server.next(&PEER).is_some());
        server.started(PEER);
        assert!(server.next(&PEER).is_none(), "two running");
        server.finished(&PEER);
        assert!(server.next(&PEER).is_some());
        server.started(PEER);
        // Reconnected: the old connection's tasks still hold the storage thread.
        server.remove_peer(&PEER);
        server.add_peer(PEER);
        server.push_back(PEER, 3, block_request(4));
        assert!(server.next(&PEER).is_none());
        server.finished(&PEER);
        server.finished(&PEER);
        assert!(server.next(&PEER).is_some());
        server.started(PEER);
        server.finished(&PEER);
        assert!(server.running.is_empty(), "no counter left at zero");
    }

    /// A peer whose backlog is over the limit is served nothing until it reads.
    #[test]
    fn a_peer_over_its_backlog_waits() {
        let cfg = EngineConfig::default();
        let mut server = Server::new(&cfg);
        server.add_peer(PEER);
        server.push_back(PEER, 1, block_request(0));
        server.set_backlog(&PEER, cfg.max_backlog_bytes);
        assert!(!server.has_room(&PEER));
        assert!(server.next(&PEER).is_none());
        server.set_backlog(&PEER, 0);
        assert!(server.next(&PEER).is_some());
        assert_eq!(server.admission(&[7; 32]), Admission::Unknown);
    }

    /// An engine serving `PEER`, who sent `extra` block requests (ids from 0) more than the
    /// serve concurrency: the channel, the concurrency and the storage tasks started.
    fn requests_past_concurrency(extra: u64, now: Instant) -> (Engine, ChannelId, u64, Vec<u64>) {
        let (mut engine, channel) =
            engine_with_peer(local(10, true), Mode::Full, sync(0, true), now);
        let concurrency = engine.config().serve_concurrency as u64;
        for id in 0..concurrency + extra {
            engine.handle(Input::Message(PEER, channel, block_request(id)), now);
        }
        let tasks: Vec<u64> = outputs(&mut engine)
            .iter()
            .filter_map(|o| match o {
                Output::Task(id, ..) => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(tasks.len() as u64, concurrency);
        (engine, channel, concurrency, tasks)
    }

    /// Through the engine: requests beyond the concurrency wait for a task to finish.
    #[test]
    fn requests_beyond_the_concurrency_wait_for_a_task() {
        let now = Instant::now();
        let (mut engine, _, _, tasks) = requests_past_concurrency(2, now);
        let done = TaskResult::Proof(Err("gone".into()));
        engine.handle(Input::TaskDone(tasks[0], done), now);
        let out = outputs(&mut engine);
        assert_eq!(
            out.iter().filter(|o| matches!(o, Output::Task(..))).count(),
            1,
            "{out:?}"
        );
    }

    /// A cancelled request is not served: a queued one never costs a task, and one being
    /// read is not sent when its task ends (nor is anything answered for either).
    #[test]
    fn cancelled_requests_are_not_served() {
        let now = Instant::now();
        let (mut engine, channel, concurrency, tasks) = requests_past_concurrency(1, now);
        // Cancel the queued one (id `concurrency`) and the first running one (id 0).
        for id in [concurrency, 0] {
            engine.handle(Input::Message(PEER, channel, Message::Cancel { id }), now);
        }
        let proof = |index| Proof {
            block: Some(crate::tree::BlockProof {
                index,
                value: b"x".to_vec(),
                nodes: Vec::new(),
            }),
            ..Default::default()
        };
        engine.handle(
            Input::TaskDone(tasks[0], TaskResult::Proof(Ok(proof(0)))),
            now,
        );
        engine.handle(
            Input::TaskDone(tasks[1], TaskResult::Proof(Ok(proof(1)))),
            now,
        );
        let out = outputs(&mut engine);
        let answered: Vec<u64> = out
            .iter()
            .filter_map(|o| match o {
                Output::Send(_, _, Message::Data { id, .. } | Message::NoData { id, .. }) => {
                    Some(*id)
                }
                _ => None,
            })
            .collect();
        assert_eq!(answered, [1], "only the request not cancelled is answered");
        assert!(
            !out.iter().any(|o| matches!(o, Output::Task(..))),
            "the cancelled queued request got a task: {out:?}"
        );
        assert!(engine.cancelled.is_empty(), "nothing remembered once read");
        // A Cancel of a request that is neither queued nor read is not remembered.
        engine.handle(
            Input::Message(PEER, channel, Message::Cancel { id: 99 }),
            now,
        );
        assert!(engine.cancelled.is_empty());
    }

    /// A run wholly past our log costs no storage task, whatever length the requester
    /// claims: there is nothing of it to read.
    #[test]
    fn a_run_past_our_log_costs_no_storage_task_whatever_length_is_claimed() {
        let now = Instant::now();
        let (mut engine, channel) =
            engine_with_peer(local(10, true), Mode::Full, sync(0, true), now);
        let msg = Message::RequestRun {
            id: 1,
            fork: 0,
            start: 10,
            end: 20,
            length: 1 << 40,
        };
        engine.handle(Input::Message(PEER, channel, msg), now);
        let out = outputs(&mut engine);
        assert!(
            !out.iter().any(|o| matches!(o, Output::Task(..))),
            "{out:?}"
        );
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Send(
                _,
                _,
                Message::NoData {
                    id: 1,
                    start: 10,
                    end: 20
                }
            )
        )));
    }

    /// What serving each kind of run request takes: too long a run, or one wholly past the
    /// log, is refused (answered at once, and counted), and the rest is read in parts of
    /// `run_bytes`.
    #[test]
    fn runs_are_refused_answered_or_read() {
        let run = |start, end| Message::RequestRun {
            id: 7,
            fork: 0,
            start,
            end,
            length: 100,
        };
        let step = |msg| plan(PEER, 1, msg, 100, 4096);
        assert!(matches!(
            step(run(0, MAX_RUN + 1)),
            Some(ServeStep::Refuse(Message::NoData { id: 7, .. }))
        ));
        assert!(matches!(
            step(run(5, 5)),
            Some(ServeStep::Refuse(Message::NoData { .. }))
        ));
        assert!(matches!(
            step(run(100, 110)),
            Some(ServeStep::Refuse(Message::NoData {
                start: 100,
                end: 110,
                ..
            }))
        ));
        assert!(matches!(
            step(run(10, 20)),
            Some(ServeStep::Read(
                Task::CreateRun {
                    start: 10,
                    end: 20,
                    max_bytes: 4096,
                    ..
                },
                TaskCtx::ServeRun { .. }
            ))
        ));
        assert!(step(Message::Cancel { id: 7 }).is_none());
    }
}

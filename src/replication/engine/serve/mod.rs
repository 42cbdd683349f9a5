//! The serving part: the peers' requests to us, queued, bounded and answered.
//!
//! A flood of requests cannot take over the storage thread: each peer has a bounded queue
//! (more are refused with `NoData`, and a peer refused too often loses the channel) and at
//! most `serve_concurrency` storage tasks at once. A peer that does not read cannot make us
//! hold its answers: nothing is read for it while its backlog is over `max_backlog_bytes`,
//! and a run is read in parts of `serve_run_bytes`. A cancelled request is dropped from the
//! queue, or not sent once read.

mod plan;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use plan::{Plan, RunRequest, plan, refusal, run_answer};

use super::{
    ChannelId, Output, PeerId, Task, TaskId,
    cx::Cx,
    task::{ProofRead, Reply, RunRead},
};
use crate::{core::RunItem, crypto::CoreKey, replication::wire::Message};

/// A request waiting in a peer's queue.
#[derive(Debug)]
struct Queued {
    channel: ChannelId,
    core: CoreKey,
    msg: Message,
}

/// A storage task reading an answer.
#[derive(Debug)]
struct Reading<R> {
    peer: PeerId,
    channel: ChannelId,
    core: CoreKey,
    /// The request (its id, or the run from where this part starts).
    request: R,
    /// Whether the answer is still wanted: not once the peer cancelled the request or its
    /// channel went.
    send: bool,
}

/// The serving part; see the module docs.
#[derive(Debug, Default)]
pub(super) struct Server {
    /// Each connected peer's queue.
    queues: BTreeMap<PeerId, VecDeque<Queued>>,
    /// Storage tasks running for each peer's requests (also those of a connection or channel
    /// closed since: they hold the storage thread all the same).
    running: BTreeMap<PeerId, usize>,
    /// Their sum.
    total_running: usize,
    /// Peers that may have a request to start, served in turn from after `turn`.
    waiting: BTreeSet<PeerId>,
    /// The peer whose request was started last.
    turn: Option<PeerId>,
    /// Proofs being read, by task.
    proofs: BTreeMap<TaskId, Reading<u64>>,
    /// Parts of runs being read, by task.
    runs: BTreeMap<TaskId, Reading<RunRequest>>,
}

impl Server {
    /// `peer` connected: it gets an empty queue.
    pub(super) fn add_peer(&mut self, peer: PeerId) {
        self.queues.entry(peer).or_default();
    }

    /// `peer` disconnected: its queued requests are dropped, and what is being read for it is
    /// not sent (its running tasks still count until they finish).
    pub(super) fn remove_peer(&mut self, peer: &PeerId) {
        self.queues.remove(peer);
        self.waiting.remove(peer);
        self.stop_sending(|r| r.0 == *peer);
    }

    /// A channel closed: its queued requests are dropped, and what is being read for it is not
    /// sent.
    pub(super) fn forget_channel(&mut self, peer: &PeerId, channel: ChannelId) {
        if let Some(q) = self.queues.get_mut(peer) {
            q.retain(|r| r.channel != channel);
        }
        self.stop_sending(|r| r.1 == channel);
    }

    fn stop_sending(&mut self, which: impl Fn((PeerId, ChannelId)) -> bool) {
        for r in self.proofs.values_mut() {
            r.send &= !which((r.peer, r.channel));
        }
        for r in self.runs.values_mut() {
            r.send &= !which((r.peer, r.channel));
        }
    }

    /// A request of `peer` on its channel for `core`: queued if its queue has room, refused
    /// with `NoData` otherwise. Returns true when the peer was refused more than
    /// `max_refused` times: the caller closes the channel.
    pub(super) fn on_request(
        &mut self,
        peer: PeerId,
        channel: ChannelId,
        core: CoreKey,
        msg: Message,
        length_of: &dyn Fn(&CoreKey) -> u64,
        cx: &mut Cx,
    ) -> bool {
        let Some(q) = self.queues.get_mut(&peer) else {
            return false;
        };
        if q.len() < cx.cfg.serve_queue {
            q.push_back(Queued { channel, core, msg });
            self.serve_next(peer, length_of, cx);
            return false;
        }
        let refused = cx.peers.count_refused(&peer);
        if let Some(answer) = refusal(&msg) {
            cx.send(peer, channel, answer);
        }
        refused > cx.cfg.max_refused
    }

    /// The peer cancelled its request `id` on `channel`: a queued one is dropped, and one
    /// being read is neither sent nor continued when its task ends. Nothing is answered.
    pub(super) fn cancel(&mut self, peer: PeerId, channel: ChannelId, id: u64) {
        if let Some(q) = self.queues.get_mut(&peer) {
            let before = q.len();
            q.retain(|r| {
                r.channel != channel
                    || !matches!(r.msg, Message::Request { id: i, .. } | Message::RequestRun { id: i, .. } if i == id)
            });
            if q.len() != before {
                return;
            }
        }
        for r in self.proofs.values_mut() {
            if (r.peer, r.channel, r.request) == (peer, channel, id) {
                r.send = false;
            }
        }
        for r in self.runs.values_mut() {
            if (r.peer, r.channel, r.request.id) == (peer, channel, id) {
                r.send = false;
            }
        }
    }

    /// Whether a request of `channel` waits in `peer`'s queue or is being read.
    pub(super) fn is_busy_on(&self, peer: &PeerId, channel: ChannelId) -> bool {
        self.queues
            .get(peer)
            .is_some_and(|q| q.iter().any(|r| r.channel == channel))
            || self.proofs.values().any(|r| r.channel == channel && r.send)
            || self.runs.values().any(|r| r.channel == channel && r.send)
    }

    /// `peer` may have requests to start: they start while it is under its own concurrency
    /// limit and its backlog has room, and all peers together under theirs, one request of
    /// each waiting peer in turn. `length_of` gives each core's signed length.
    pub(super) fn serve_next(
        &mut self,
        peer: PeerId,
        length_of: &dyn Fn(&CoreKey) -> u64,
        cx: &mut Cx,
    ) {
        self.waiting.insert(peer);
        while self.total_running < cx.cfg.serve_concurrency_total {
            let after = self.turn.and_then(|after| {
                let rest = (std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded);
                self.waiting.range(rest).next()
            });
            let next = after.or_else(|| self.waiting.iter().next()).copied();
            let Some(next) = next else {
                return;
            };
            self.turn = Some(next);
            if !self.start_one(next, length_of, cx) {
                self.waiting.remove(&next);
            }
        }
    }

    /// Starts one queued request of `peer` if it is under its concurrency limit and its backlog
    /// has room (answering those refused on the way); false if none started.
    fn start_one(
        &mut self,
        peer: PeerId,
        length_of: &dyn Fn(&CoreKey) -> u64,
        cx: &mut Cx,
    ) -> bool {
        loop {
            let running = self.running.get(&peer).copied().unwrap_or(0);
            if running >= cx.cfg.serve_concurrency || !cx.has_room(&peer) {
                return false;
            }
            let Some(Queued { channel, core, msg }) =
                self.queues.get_mut(&peer).and_then(VecDeque::pop_front)
            else {
                return false;
            };
            let Some(step) = plan(msg, length_of(&core)) else {
                continue;
            };
            let task = match step {
                Plan::Refuse(answer) => {
                    cx.peers.count_refused(&peer);
                    cx.send(peer, channel, answer);
                    continue;
                }
                Plan::Proof { id, request } => {
                    let reply: Reply<ProofRead> = cx.tasks.start(core);
                    let task_id = reply.id();
                    let reading = Reading {
                        peer,
                        channel,
                        core,
                        request: id,
                        send: true,
                    };
                    self.proofs.insert(task_id, reading);
                    Task::CreateProof { request, reply }
                }
                Plan::Run(run) => {
                    let reply: Reply<RunRead> = cx.tasks.start(core);
                    let task_id = reply.id();
                    let reading = Reading {
                        peer,
                        channel,
                        core,
                        request: run,
                        send: true,
                    };
                    self.runs.insert(task_id, reading);
                    Task::CreateRun {
                        fork: run.fork,
                        start: run.start,
                        end: run.end,
                        length: run.length,
                        max_bytes: cx.cfg.serve_run_bytes,
                        reply,
                    }
                }
            };
            *self.running.entry(peer).or_default() += 1;
            self.total_running += 1;
            cx.out.push_back(Output::Task(core, task));
            return true;
        }
    }

    /// Whether task `task` reads a proof for a peer's request.
    pub(super) fn reads_proof(&self, task: TaskId) -> bool {
        self.proofs.contains_key(&task)
    }

    /// A storage task for a request of `peer` finished.
    fn finished(&mut self, peer: &PeerId) {
        self.total_running = self.total_running.saturating_sub(1);
        if let Some(n) = self.running.get_mut(peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running.remove(peer);
            }
        }
    }

    /// The proof of task `task` was read (or could not be): it is sent, unless no longer
    /// wanted, and the peer's next request starts.
    pub(super) fn proof_read(
        &mut self,
        task: TaskId,
        result: ProofRead,
        length_of: &dyn Fn(&CoreKey) -> u64,
        cx: &mut Cx,
    ) {
        let Some(r) = self.proofs.remove(&task) else {
            return;
        };
        self.finished(&r.peer);
        let (peer, id) = (r.peer, r.request);
        if r.send {
            match result {
                Ok(proof) => {
                    if let Some(b) = &proof.block {
                        cx.uploaded(r.core, peer, b.index, b.value.len() as u64);
                    }
                    cx.send(peer, r.channel, Message::Data { id, proof });
                }
                Err(e) => {
                    tracing::debug!("cannot serve request {id}: {e}");
                    let none = Message::NoData {
                        id,
                        start: 0,
                        end: 0,
                    };
                    cx.send(peer, r.channel, none);
                }
            }
        }
        self.serve_next(peer, length_of, cx);
    }

    /// A part of a run was read: it is sent, unless no longer wanted, and the rest of the run
    /// queued in front of the peer's other requests.
    pub(super) fn run_read(
        &mut self,
        task: TaskId,
        result: RunRead,
        length_of: &dyn Fn(&CoreKey) -> u64,
        cx: &mut Cx,
    ) {
        let Some(r) = self.runs.remove(&task) else {
            return;
        };
        self.finished(&r.peer);
        let (peer, run) = (r.peer, r.request);
        if r.send {
            match result {
                Ok(items) => {
                    let stop = items.last().map_or(run.end, |item| match item {
                        RunItem::Missing(i) => i + 1,
                        RunItem::Proof(p) => p.block.as_ref().map_or(run.end, |b| b.index + 1),
                    });
                    if stop > run.start
                        && stop < run.end
                        && let Some(q) = self.queues.get_mut(&peer)
                    {
                        let rest = RunRequest { start: stop, ..run };
                        q.push_front(Queued {
                            channel: r.channel,
                            core: r.core,
                            msg: rest.message(),
                        });
                    }
                    for msg in run_answer(run.id, items) {
                        if let Message::Data { proof, .. } = &msg
                            && let Some(b) = &proof.block
                        {
                            cx.uploaded(r.core, peer, b.index, b.value.len() as u64);
                        }
                        cx.send(peer, r.channel, msg);
                    }
                }
                Err(e) => {
                    tracing::debug!("cannot serve run {}..{}: {e}", run.start, run.end);
                    let none = Message::NoData {
                        id: run.id,
                        start: run.start,
                        end: run.end,
                    };
                    cx.send(peer, r.channel, none);
                }
            }
        }
        self.serve_next(peer, length_of, cx);
    }

    /// The peers with storage tasks running, in id order.
    #[cfg(test)]
    pub(super) fn running_peers(&self) -> Vec<PeerId> {
        self.running.keys().copied().collect()
    }

    /// Checks the serving part's bounds: each peer's queue within `serve_queue`, its running
    /// tasks within `serve_concurrency`, and all within `serve_concurrency_total`.
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn check_bounds(&self, cfg: &super::EngineConfig) -> Result<(), String> {
        for (peer, q) in &self.queues {
            if q.len() > cfg.serve_queue {
                return Err(format!("{} requests queued for {peer:?}", q.len()));
            }
        }
        // A task of a connection closed since may run on beside a new one's (see `running`).
        for (peer, n) in &self.running {
            if *n > cfg.serve_concurrency.saturating_mul(2) {
                return Err(format!("{n} storage tasks running for {peer:?}"));
            }
        }
        if self.total_running > cfg.serve_concurrency_total {
            return Err(format!("{} storage tasks running", self.total_running));
        }
        Ok(())
    }

    /// Storage tasks reading answers, and those running for `peer`.
    #[cfg(test)]
    pub(super) fn reading(&self, peer: &PeerId) -> (usize, usize) {
        (
            self.proofs.len() + self.runs.len(),
            self.running.get(peer).copied().unwrap_or(0),
        )
    }
}

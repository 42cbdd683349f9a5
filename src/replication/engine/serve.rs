//! Serving peers: proofs and runs, with a bounded queue per peer so a flood of requests cannot
//! take over the storage thread, and a bound on the bytes queued towards a peer so one that does
//! not read cannot make us hold its answers: requests wait while its backlog is over
//! `max_backlog_bytes`, and a run is read in parts of `serve_run_bytes`.

use super::{ChannelId, Engine, Event, PeerId, Task, TaskCtx};
use crate::{
    core::{MAX_RUN, RunItem},
    replication::wire::Message,
    tree::Proof,
};

impl Engine {
    pub(super) fn on_request(&mut self, peer: PeerId, channel: ChannelId, msg: Message) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.serve_queue.len() >= self.cfg.serve_queue {
            p.stats.refused += 1;
            let refused = p.stats.refused;
            self.refuse_request(peer, channel, &msg);
            if refused > self.cfg.max_refused {
                self.close_channel(peer, channel, "too many requests");
            }
            return;
        }
        p.serve_queue.push_back((channel, msg));
        self.serve_next(peer);
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

    /// Storage tasks running for `peer`'s requests (also those of channels closed since).
    fn serving(&self, peer: &PeerId) -> usize {
        self.tasks
            .values()
            .filter(|t| {
                matches!(t, TaskCtx::Serve { peer: p, .. } | TaskCtx::ServeRun { peer: p, .. } if p == peer)
            })
            .count()
    }

    /// The driver's count of bytes queued towards `peer`; serving resumes once it has room.
    pub(super) fn on_backlog(&mut self, peer: PeerId, bytes: u64) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.backlog_bytes = bytes;
        }
        self.serve_next(peer);
    }

    /// Whether answers may be queued towards `peer`: its backlog is under the limit.
    pub(super) fn has_room(&self, peer: &PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.stats.backlog_bytes < self.cfg.max_backlog_bytes)
    }

    /// Starts serving queued requests while the peer is under its concurrency limit and its
    /// backlog has room.
    fn serve_next(&mut self, peer: PeerId) {
        while self.serving(&peer) < self.cfg.serve_concurrency && self.has_room(&peer) {
            let Some((channel, msg)) = self
                .peers
                .get_mut(&peer)
                .and_then(|p| p.serve_queue.pop_front())
            else {
                return;
            };
            let Some(core) = self.channels.get(&channel).map(|c| c.core) else {
                continue;
            };
            let ours = self.cores.get(&core).map_or(0, |r| r.local.length);
            match msg {
                Message::Request { id, request } => {
                    if !answerable(&request, ours) {
                        let none = Message::NoData {
                            id,
                            start: 0,
                            end: 0,
                        };
                        self.send(peer, channel, none);
                        continue;
                    }
                    self.new_task(
                        core,
                        Task::CreateProof(request),
                        TaskCtx::Serve { peer, channel, id },
                    )
                }
                Message::RequestRun {
                    id,
                    fork,
                    start,
                    end,
                    length,
                } => {
                    if start >= end || end - start > MAX_RUN {
                        self.count_refused(peer);
                        self.send(peer, channel, Message::NoData { id, start, end });
                        continue;
                    }
                    if start >= ours {
                        // None of it is in our log: no storage task to say so.
                        self.send(peer, channel, Message::NoData { id, start, end });
                        continue;
                    }
                    self.new_task(
                        core,
                        Task::CreateRun {
                            fork,
                            start,
                            end,
                            length,
                            max_bytes: self.cfg.serve_run_bytes,
                        },
                        TaskCtx::ServeRun {
                            peer,
                            channel,
                            request: msg,
                        },
                    );
                }
                _ => {}
            }
        }
    }

    pub(super) fn on_served(
        &mut self,
        peer: PeerId,
        channel: ChannelId,
        id: u64,
        result: Result<Proof, String>,
    ) {
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
        if let Some(core) = self.channels.get(&channel).map(|c| c.core) {
            match result {
                Ok(items) => {
                    let stop = items.last().map_or(end, |item| match item {
                        RunItem::Missing(i) => i + 1,
                        RunItem::Proof(p) => p.block.as_ref().map_or(end, |b| b.index + 1),
                    });
                    if stop > start
                        && stop < end
                        && let Some(p) = self.peers.get_mut(&peer)
                        && let Message::RequestRun { fork, length, .. } = request
                    {
                        let rest = Message::RequestRun {
                            id,
                            fork,
                            start: stop,
                            end,
                            length,
                        };
                        p.serve_queue.push_front((channel, rest));
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

    pub(super) fn count_upload(
        &mut self,
        core: crate::crypto::CoreKey,
        peer: PeerId,
        index: u64,
        bytes: u64,
    ) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.blocks_up += 1;
            p.stats.bytes_up += bytes;
        }
        self.emit(Event::Upload {
            core,
            index,
            bytes,
            peer,
        });
    }
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
            Input, Mode, Output,
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
}

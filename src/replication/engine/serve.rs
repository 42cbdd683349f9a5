//! Serving peers: proofs and runs, with a bounded queue per peer so a flood of requests cannot
//! take over the storage thread.

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

    /// Starts serving queued requests while the peer is under its concurrency limit.
    fn serve_next(&mut self, peer: PeerId) {
        loop {
            let Some(p) = self.peers.get_mut(&peer) else {
                return;
            };
            if p.serving >= self.cfg.serve_concurrency {
                return;
            }
            let Some((channel, msg)) = p.serve_queue.pop_front() else {
                return;
            };
            let Some(core) = self.channels.get(&channel).map(|c| c.core) else {
                continue;
            };
            match msg {
                Message::Request { id, request } => {
                    p.serving += 1;
                    self.new_task(
                        core,
                        Task::CreateProof(request),
                        TaskCtx::Serve { channel, id },
                    );
                }
                Message::RequestRun {
                    id,
                    fork,
                    start,
                    end,
                    length,
                } => {
                    if start >= end || end - start > MAX_RUN {
                        p.stats.refused += 1;
                        self.send(peer, channel, Message::NoData { id, start, end });
                        continue;
                    }
                    p.serving += 1;
                    self.new_task(
                        core,
                        Task::CreateRun {
                            fork,
                            start,
                            end,
                            length,
                        },
                        TaskCtx::ServeRun {
                            channel,
                            id,
                            start,
                            end,
                        },
                    );
                }
                _ => {}
            }
        }
    }

    fn finish_serving(&mut self, channel: ChannelId) -> Option<(PeerId, crate::crypto::CoreKey)> {
        let c = self.channels.get(&channel)?;
        let (peer, core) = (c.peer, c.core);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.serving = p.serving.saturating_sub(1);
        }
        Some((peer, core))
    }

    pub(super) fn on_served(&mut self, channel: ChannelId, id: u64, result: Result<Proof, String>) {
        let Some((peer, core)) = self.finish_serving(channel) else {
            self.release_orphan();
            return;
        };
        match result {
            Ok(proof) => {
                if let Some(b) = &proof.block {
                    self.count_upload(core, peer, b.index, b.value.len() as u64);
                }
                self.send(peer, channel, Message::Data { id, proof });
            }
            Err(e) => {
                tracing::debug!("cannot serve request {id}: {e}");
                self.send(
                    peer,
                    channel,
                    Message::NoData {
                        id,
                        start: 0,
                        end: 0,
                    },
                );
            }
        }
        self.serve_next(peer);
    }

    pub(super) fn on_served_run(
        &mut self,
        channel: ChannelId,
        id: u64,
        start: u64,
        end: u64,
        result: Result<Vec<RunItem>, String>,
    ) {
        let Some((peer, core)) = self.finish_serving(channel) else {
            self.release_orphan();
            return;
        };
        match result {
            Ok(items) => {
                let mut gap: Option<(u64, u64)> = None;
                for item in items {
                    match item {
                        RunItem::Proof(proof) => {
                            if let Some((s, e)) = gap.take() {
                                self.send(
                                    peer,
                                    channel,
                                    Message::NoData {
                                        id,
                                        start: s,
                                        end: e,
                                    },
                                );
                            }
                            if let Some(b) = &proof.block {
                                self.count_upload(core, peer, b.index, b.value.len() as u64);
                            }
                            self.send(peer, channel, Message::Data { id, proof });
                        }
                        RunItem::Missing(i) => {
                            gap = match gap {
                                Some((s, e)) if e == i => Some((s, i + 1)),
                                Some((s, e)) => {
                                    self.send(
                                        peer,
                                        channel,
                                        Message::NoData {
                                            id,
                                            start: s,
                                            end: e,
                                        },
                                    );
                                    Some((i, i + 1))
                                }
                                None => Some((i, i + 1)),
                            };
                        }
                    }
                }
                if let Some((s, e)) = gap {
                    self.send(
                        peer,
                        channel,
                        Message::NoData {
                            id,
                            start: s,
                            end: e,
                        },
                    );
                }
            }
            Err(e) => {
                tracing::debug!("cannot serve run {start}..{end}: {e}");
                self.send(peer, channel, Message::NoData { id, start, end });
            }
        }
        self.serve_next(peer);
    }

    /// A serve task finished after its channel closed: the slot is released by the peer that
    /// still counts it, if any.
    fn release_orphan(&mut self) {
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            let open: usize = self
                .tasks
                .values()
                .filter(|t| match t {
                    TaskCtx::Serve { channel, .. } | TaskCtx::ServeRun { channel, .. } => {
                        self.channels.get(channel).is_some_and(|c| c.peer == peer)
                    }
                    _ => false,
                })
                .count();
            if let Some(p) = self.peers.get_mut(&peer) {
                p.serving = p.serving.min(open);
            }
            self.serve_next(peer);
        }
    }

    fn count_upload(&mut self, core: crate::crypto::CoreKey, peer: PeerId, index: u64, bytes: u64) {
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

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

    /// Storage tasks running for `peer`'s requests (also those of channels closed since).
    fn serving(&self, peer: &PeerId) -> usize {
        self.tasks
            .values()
            .filter(|t| {
                matches!(t, TaskCtx::Serve { peer: p, .. } | TaskCtx::ServeRun { peer: p, .. } if p == peer)
            })
            .count()
    }

    /// Starts serving queued requests while the peer is under its concurrency limit.
    fn serve_next(&mut self, peer: PeerId) {
        while self.serving(&peer) < self.cfg.serve_concurrency {
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
            match msg {
                Message::Request { id, request } => self.new_task(
                    core,
                    Task::CreateProof(request),
                    TaskCtx::Serve { peer, channel, id },
                ),
                Message::RequestRun {
                    id,
                    fork,
                    start,
                    end,
                    length,
                } => {
                    if start >= end || end - start > MAX_RUN {
                        if let Some(p) = self.peers.get_mut(&peer) {
                            p.stats.refused += 1;
                        }
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
                        },
                        TaskCtx::ServeRun {
                            peer,
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

    pub(super) fn on_served_run(
        &mut self,
        peer: PeerId,
        channel: ChannelId,
        id: u64,
        start: u64,
        end: u64,
        result: Result<Vec<RunItem>, String>,
    ) {
        if let Some(core) = self.channels.get(&channel).map(|c| c.core) {
            match result {
                Ok(items) => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::BlockProof;

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

//! Pushing new blocks from the writer to peers that follow its log live.
//!
//! Without it, a new block reaches a caught-up reader in two round trips of messages: our
//! `Sync`, its `Request`, our `Data`. A reader that downloads everything will ask for the new
//! block anyway, so when its last `Sync` said it held the whole log at our previous length, the
//! writer sends it the first new block with the upgrade right away ([`Message::Push`]) and its
//! `Sync` after it. The reader checks that the push still fits its state and verifies it like
//! any answer; a push that does not fit is dropped, and the `Sync` behind it starts the usual
//! path.
//!
//! Only the writer pushes. Readers that pushed what they just received would send each block
//! back to where it came from and to every other reader that already has it; behind a reader,
//! blocks travel the `Sync` → `Request` way.

use std::time::Instant;

use super::{ChannelId, Engine, LocalInfo, Mode, PeerId, Task, TaskCtx};
use crate::{
    crypto::CoreKey,
    replication::wire::Message,
    tree::{IndexRequest, Proof, ProofRequest, UpgradeRequest},
};

impl Engine {
    /// After a writable core grew from `old` to `new` on the same fork: starts a push to every
    /// channel whose remote downloads everything and held the whole log at `old`. Their `Sync`
    /// is held back until the push is sent (see [`Engine::on_pushed`]).
    pub(super) fn push_new_blocks(&mut self, core: CoreKey, old: LocalInfo, new: LocalInfo) {
        let grew =
            new.writable && new.fork == old.fork && new.length > old.length && old.length > 0;
        // We must hold the first new block to prove it.
        if !grew || new.contiguous <= old.length {
            return;
        }
        let targets: Vec<(PeerId, ChannelId)> = self
            .channels
            .of_core(&core)
            .filter(|(_, c)| !c.pushing && self.has_room(&c.peer))
            .filter(|(_, c)| {
                c.remote.is_some_and(|s| {
                    s.downloading
                        && s.fork == old.fork
                        && s.length == old.length
                        && s.contiguous == s.length
                })
            })
            .map(|(id, c)| (c.peer, id))
            .collect();
        for (peer, channel) in targets {
            if let Some(c) = self.channels.get_mut(&channel) {
                c.pushing = true;
            }
            let request = ProofRequest {
                fork: new.fork,
                block: Some(IndexRequest {
                    index: old.length,
                    nodes: 0,
                }),
                upgrade: Some(UpgradeRequest {
                    start: old.length,
                    length: new.length - old.length,
                }),
                ..Default::default()
            };
            self.new_task(
                core,
                Task::CreateProof(request),
                TaskCtx::Push { peer, channel },
            );
        }
    }

    /// The proof of a push is ready (or could not be made): sends it, then our `Sync`.
    pub(super) fn on_pushed(
        &mut self,
        peer: PeerId,
        channel: ChannelId,
        result: Result<Proof, String>,
    ) {
        let Some(c) = self.channels.get_mut(&channel) else {
            return;
        };
        c.pushing = false;
        let core = c.core;
        match result {
            Ok(proof) => {
                if let Some(b) = &proof.block {
                    self.count_upload(core, peer, b.index, b.value.len() as u64);
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.stats.pushes_sent += 1;
                }
                self.send(peer, channel, Message::Push { proof });
            }
            // Truncated meanwhile, say: the `Sync` tells the peer where we are.
            Err(e) => tracing::debug!("push not sent: {e}"),
        }
        if let Some(info) = self.sync_info(&core, false) {
            self.send(peer, channel, Message::Sync(info));
        }
    }

    /// A peer pushed a block with its upgrade. It is applied as an upgrade from that peer if
    /// we are a full-mode reader holding the whole log, it starts at our length on our fork, and
    /// no other upgrade is under way; otherwise it is dropped (the peer's `Sync` follows it).
    /// A writer takes no pushes: only it can sign new blocks of its log.
    pub(super) fn on_push(&mut self, channel: ChannelId, proof: Proof, now: Instant) {
        let Some(c) = self.channels.get(&channel) else {
            return;
        };
        let (peer, core) = (c.peer, c.core);
        let trusted = self.may_ask(&peer, now);
        let Some(r) = self.cores.get(&core) else {
            return;
        };
        // An upgrade asked of a peer (not a push being applied) does not keep a fitting push
        // out: a silent or slow peer claiming more must not stall following live.
        let upgrading = self.upgrades.get(&core);
        let asked = upgrading.filter(|u| {
            self.channels
                .get(&u.channel)
                .is_some_and(|c| c.requests.contains_key(&u.id))
        });
        let busy = upgrading.is_some() && asked.is_none();
        let asked = asked.is_some();
        let local = r.local;
        let fits = r.mode == Mode::Full
            && !local.writable
            && trusted
            && !busy
            && r.apply.upgrade_proof.is_none()
            && local.length > 0
            && local.contiguous == local.length
            && proof.fork == local.fork
            && proof
                .upgrade
                .as_ref()
                .is_some_and(|u| u.start == local.length)
            && proof
                .block
                .as_ref()
                .is_some_and(|b| b.index == local.length);
        if !fits {
            tracing::trace!("push from {peer:?} does not fit our state; dropped");
            return;
        }
        let Some(r) = self.cores.get_mut(&core) else {
            return;
        };
        // The request stays outstanding until the push verified (see `settle_superseded`).
        if asked {
            self.upgrades.supersede(core);
        }
        self.upgrades.start(core, peer, channel, now);
        r.apply.upgrade_proof = Some((peer, proof));
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.pushes_taken += 1;
        }
        self.maybe_apply(core);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::{
        Input, Mode, Output, Task, TaskResult,
        testing::{CORE, PEER, engine_with_peer, local, outputs, sync},
    };
    use crate::{
        replication::wire::Message,
        tree::{BlockProof, Proof, UpgradeProof},
    };

    fn pushed_proof(start: u64) -> Proof {
        Proof {
            block: Some(BlockProof {
                index: start,
                value: b"new".to_vec(),
                nodes: Vec::new(),
            }),
            upgrade: Some(UpgradeProof {
                start,
                length: 1,
                nodes: Vec::new(),
                additional_nodes: Vec::new(),
                signature: vec![0; 64],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_append_is_pushed_to_a_caught_up_downloader_before_our_sync() {
        let now = Instant::now();
        let (mut engine, channel) =
            engine_with_peer(local(5, true), Mode::Full, sync(5, true), now);
        engine.handle(Input::LocalChanged(CORE, local(7, true)), now);
        let out = outputs(&mut engine);
        let (task, request) = out
            .iter()
            .find_map(|o| match o {
                Output::Task(id, _, Task::CreateProof(r)) => Some((*id, r.clone())),
                _ => None,
            })
            .expect("a push proof is made");
        assert_eq!(request.block.map(|b| b.index), Some(5));
        assert_eq!(request.upgrade.map(|u| (u.start, u.length)), Some((5, 2)));
        assert!(
            !out.iter()
                .any(|o| matches!(o, Output::Send(_, _, Message::Sync(_)))),
            "the Sync waits for the push"
        );

        let proof = pushed_proof(5);
        let done = TaskResult::Proof(Ok(proof.clone()));
        engine.handle(Input::TaskDone(task, done), now);
        let sent: Vec<Message> = outputs(&mut engine)
            .into_iter()
            .filter_map(|o| match o {
                Output::Send(_, ch, m) if ch == channel => Some(m),
                _ => None,
            })
            .collect();
        assert!(matches!(&sent[..], [Message::Push { .. }, Message::Sync(s)] if s.length == 7));
    }

    #[test]
    fn no_push_to_a_sparse_peer_or_one_behind_nor_from_a_reader() {
        let now = Instant::now();
        for (remote, writable) in [
            (sync(5, false), true),
            (sync(4, true), true),
            (sync(5, true), false),
        ] {
            let (mut engine, _) = engine_with_peer(local(5, writable), Mode::Full, remote, now);
            engine.handle(Input::LocalChanged(CORE, local(6, writable)), now);
            let out = outputs(&mut engine);
            assert!(!out.iter().any(|o| matches!(o, Output::Task(..))));
            assert!(
                out.iter()
                    .any(|o| matches!(o, Output::Send(_, _, Message::Sync(s)) if s.length == 6))
            );
        }
    }

    #[test]
    fn a_fitting_push_is_applied_and_the_following_sync_asks_nothing() {
        let now = Instant::now();
        let (mut engine, channel) =
            engine_with_peer(local(5, false), Mode::Full, sync(5, true), now);
        engine.handle(
            Input::Message(
                PEER,
                channel,
                Message::Push {
                    proof: pushed_proof(5),
                },
            ),
            now,
        );
        let applied = outputs(&mut engine).into_iter().find_map(|o| match o {
            Output::Task(_, _, Task::ApplyProof(p)) => p.block.map(|b| b.index),
            _ => None,
        });
        assert_eq!(applied, Some(5), "the push is applied as an upgrade");
        engine.handle(Input::Message(PEER, channel, sync(6, true)), now);
        let out = outputs(&mut engine);
        assert!(
            !out.iter()
                .any(|o| matches!(o, Output::Send(_, _, Message::Request { .. }))),
            "the pushed upgrade is under way: no second request"
        );
    }

    #[test]
    fn a_push_that_does_not_fit_is_dropped_and_the_sync_path_remains() {
        let now = Instant::now();
        // Starts below our length, or we follow sparsely, or we are the writer.
        for (start, mode, writable) in [
            (4, Mode::Full, false),
            (5, Mode::Sparse, false),
            (5, Mode::Full, true),
        ] {
            let (mut engine, channel) =
                engine_with_peer(local(5, writable), mode, sync(5, true), now);
            engine.handle(
                Input::Message(
                    PEER,
                    channel,
                    Message::Push {
                        proof: pushed_proof(start),
                    },
                ),
                now,
            );
            assert!(
                !outputs(&mut engine)
                    .iter()
                    .any(|o| matches!(o, Output::Task(..))),
                "dropped: push at {start} in {mode:?} mode, writable: {writable}"
            );
            engine.handle(Input::Message(PEER, channel, sync(6, true)), now);
            let asked = outputs(&mut engine)
                .iter()
                .any(|o| matches!(o, Output::Send(_, _, Message::Request { .. })));
            // A writer's state comes from its own appends: it never asks a peer for one.
            assert_eq!(
                asked, !writable,
                "the Sync starts an upgrade request in a reader"
            );
        }
    }
}

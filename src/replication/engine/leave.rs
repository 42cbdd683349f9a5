//! Leaving a core: the engine stops replicating it and forgets everything of it, telling the
//! peers with a `Close` on each of its channels.

use std::time::Instant;

use super::{ChannelId, Engine, PeerId};
use crate::crypto::CoreKey;

/// The reason sent in the `Close` of each channel of a core the node leaves.
pub const LEAVE_REASON: &str = "left the core";

impl Engine {
    /// Stops replicating `key` (a turn of its own): each of its channels is closed with a
    /// `Close` telling the peer, and its queued fetches, upgrade, proofs waiting to be
    /// applied and announcement are dropped; the driver is asked to leave its gossip topic
    /// ([`Output::LeaveGossip`](super::Output::LeaveGossip)). Storage tasks still running for
    /// it finish and are ignored. Adding the core again starts afresh. Returns whether the core
    /// was replicated.
    pub fn remove_core(&mut self, key: CoreKey, now: Instant) -> bool {
        let Some(replica) = self.cores.remove(&key) else {
            return false;
        };
        self.by_discovery_key.remove(&replica.discovery_key);
        let channels: Vec<(ChannelId, PeerId)> = self
            .channels
            .of_core(&key)
            .map(|(id, c)| (id, c.peer))
            .collect();
        for (id, peer) in channels {
            self.close_channel(peer, id, LEAVE_REASON);
        }
        self.fetch.remove_core(&key);
        self.upgrades.forget(&key);
        self.announcer.forget(&key);
        self.drop_update(&key);
        for p in self.peers.values_mut() {
            p.to_open.remove(&key);
            p.idle_closed.remove(&key);
        }
        self.outputs.push_back(super::Output::LeaveGossip(key));
        self.schedule(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::{
        super::{
            ApplyOutcome, Input, Mode, Output, Task, TaskResult,
            channels::Sent,
            testing::{CORE, PEER, engine_with_peer, local, outputs, sync, upgrade_answer},
        },
        *,
    };
    use crate::{
        crypto::{
            capability::{Role, capability},
            discovery_key,
        },
        replication::wire::Message,
    };

    /// The upgrade request in flight on `channel`.
    fn upgrade_id(engine: &Engine, channel: ChannelId) -> u64 {
        engine
            .channels
            .get(&channel)
            .and_then(|c| {
                c.requests
                    .iter()
                    .find_map(|(id, s)| matches!(s, Sent::Upgrade { .. }).then_some(*id))
            })
            .expect("an upgrade is asked")
    }

    /// Answers the upgrade in flight on `channel` and returns the apply task it starts.
    fn answer_upgrade(engine: &mut Engine, channel: ChannelId, now: Instant) -> u64 {
        let id = upgrade_id(engine, channel);
        let proof = upgrade_answer(5, 3);
        engine.handle(
            Input::Message(PEER, channel, Message::Data { id, proof }),
            now,
        );
        outputs(engine)
            .into_iter()
            .find_map(|o| match o {
                Output::Task(id, _, Task::ApplyProof(_)) => Some(id),
                _ => None,
            })
            .expect("the answer is applied")
    }

    /// Leaving closes the core's channel with a `Close` and leaves its topic; an apply task
    /// of before the leave that ends after the core was added again changes nothing of the
    /// new replica: its own apply still runs alone and its upgrade keeps its deadline.
    #[test]
    fn an_apply_from_before_a_leave_does_not_touch_the_core_added_again() {
        let now = Instant::now();
        let (mut engine, channel) =
            engine_with_peer(local(5, false), Mode::Full, sync(8, true), now);
        let old = answer_upgrade(&mut engine, channel, now);

        assert!(engine.remove_core(CORE, now));
        let out = outputs(&mut engine);
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Send(_, ch, Message::Close { reason }) if *ch == channel && reason == LEAVE_REASON
        )));
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::CloseChannel(_, ch) if *ch == channel))
        );
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::LeaveGossip(k) if *k == CORE))
        );
        assert!(!engine.has_core(&CORE));
        assert!(!engine.remove_core(CORE, now), "left already");
        engine.check_timers().unwrap();

        engine.add_core(CORE, local(5, false), Mode::Full, now);
        let again = outputs(&mut engine)
            .into_iter()
            .find_map(|o| match o {
                Output::OpenChannel(_, ch, _) => Some(ch),
                _ => None,
            })
            .expect("a new channel");
        let accept = Message::Accept {
            capability: capability(&CORE, Role::Acceptor, &[1; 32], &PEER),
        };
        engine.handle(Input::Message(PEER, again, accept), now);
        engine.handle(Input::Message(PEER, again, sync(8, true)), now);
        outputs(&mut engine);
        let new = answer_upgrade(&mut engine, again, now);

        let done = TaskResult::Applied(ApplyOutcome::Done(()), local(8, false));
        engine.handle(Input::TaskDone(old, done), now);
        let out = outputs(&mut engine);
        assert!(
            !out.iter().any(|o| matches!(o, Output::Task(..))),
            "a second apply runs beside the new one: {out:?}"
        );
        assert!(engine.cores[&CORE].apply.running);
        assert!(
            engine.upgrades.is_under_way(&CORE),
            "the new upgrade is kept"
        );
        engine.check_timers().unwrap();

        let done = TaskResult::Applied(ApplyOutcome::Done(()), local(8, false));
        engine.handle(Input::TaskDone(new, done), now);
        assert_eq!(engine.local(&CORE).map(|l| l.length), Some(8));
    }

    /// A core found in the store is served only to a parked channel that proves its key; one
    /// whose opener does not (or that went away) stays parked as for an unknown core, and
    /// nothing is added. A served core opens no channel to other peers.
    #[test]
    fn a_found_core_is_served_only_to_a_peer_that_proves_its_key() {
        let now = Instant::now();
        let me = [1; 32];
        let dk = discovery_key(&CORE);
        let mut engine = Engine::new(me, super::super::EngineConfig::default());
        engine.handle(Input::PeerConnected(PEER), now);
        let open = |capability| Message::Open {
            discovery_key: dk,
            capability,
        };
        engine.handle(Input::Message(PEER, 1, open([0; 32])), now);
        assert!(
            outputs(&mut engine)
                .iter()
                .any(|o| matches!(o, Output::FindCore(d) if *d == dk))
        );
        assert!(!engine.serve_core(CORE, local(3, true), Mode::Sparse, now));
        assert!(!engine.has_core(&CORE));
        assert!(
            outputs(&mut engine).is_empty(),
            "answered sooner than for an unknown core"
        );
        assert_eq!(engine.parked_channels(), 1);
        engine.handle(Input::ChannelClosed(PEER, 1), now);
        // A lookup that ends after the channel went away adds nothing either.
        engine.handle(Input::Message(PEER, 3, open([0; 32])), now);
        engine.handle(Input::ChannelClosed(PEER, 3), now);
        assert!(!engine.serve_core(CORE, local(3, true), Mode::Sparse, now));
        assert!(!engine.has_core(&CORE));

        let proof = capability(&CORE, Role::Opener, &PEER, &me);
        engine.handle(Input::Message(PEER, 5, open(proof)), now);
        outputs(&mut engine);
        assert!(engine.serve_core(CORE, local(3, true), Mode::Sparse, now));
        let out = outputs(&mut engine);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Send(_, 5, Message::Accept { .. })))
        );
        let other = [10; 32];
        engine.handle(Input::PeerConnected(other), now);
        assert!(
            !outputs(&mut engine)
                .iter()
                .any(|o| matches!(o, Output::OpenChannel(..))),
            "a served core is opened to another peer"
        );
        // Replicated by name, it is.
        engine.add_core(CORE, local(3, true), Mode::Full, now);
        assert!(
            outputs(&mut engine)
                .iter()
                .any(|o| matches!(o, Output::OpenChannel(p, ..) if *p == other))
        );
        engine.check_timers().unwrap();
    }
}

//! Upgrades: asking the peer furthest ahead for a signed proof of its length, checking that its
//! answer answers the question, and asking another peer when it fails or times out.
//!
//! [`Upgrades`] owns the upgrade request in flight of each core, their deadlines, the request a
//! push took the place of, and the cores waiting to ask again. The engine's methods here pick
//! the peer and route the answers; applying a proof is the `apply` module's job.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use super::{ChannelId, Engine, Mode, PeerId, Sent, TaskCtx};
use crate::{
    crypto::CoreKey,
    replication::{
        deadlines::Deadlines,
        wire::{Message, SyncInfo},
    },
    tree::{IndexRequest, Proof, ProofRequest, UpgradeRequest},
};

/// Ids of upgrade requests have the top bit set; run requests use the fetch queue's ids.
const UPGRADE_ID_BIT: u64 = 1 << 63;

/// An upgrade request in flight (or a push being applied in its place).
#[derive(Debug, Clone, Copy)]
pub(super) struct Upgrading {
    /// The peer asked.
    pub(super) peer: PeerId,
    /// The channel it was asked on.
    pub(super) channel: ChannelId,
    /// The request's id.
    pub(super) id: u64,
    /// When it is asked of another peer.
    pub(super) deadline: Instant,
}

/// The upgrade of each core: the request in flight and its deadline, and the cores that wait
/// to ask again.
#[derive(Debug)]
pub(super) struct Upgrades {
    timeout: Duration,
    /// The upgrade in flight of each core.
    in_flight: BTreeMap<CoreKey, Upgrading>,
    /// Their deadlines.
    deadlines: Deadlines<CoreKey>,
    /// The upgrade request a push took the place of while the push is applied.
    superseded: BTreeMap<CoreKey, Upgrading>,
    /// Cores whose upgrade peer went away: asked of another peer at the end of this turn.
    retry: BTreeSet<CoreKey>,
    /// Cores with a peer ahead that is backed off: asked again when a back-off ends.
    after_backoff: BTreeSet<CoreKey>,
    next_id: u64,
}

impl Upgrades {
    /// No upgrade in flight; each may take `timeout`.
    pub(super) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            in_flight: BTreeMap::new(),
            deadlines: Deadlines::default(),
            superseded: BTreeMap::new(),
            retry: BTreeSet::new(),
            after_backoff: BTreeSet::new(),
            next_id: 0,
        }
    }

    /// The upgrade in flight of `core`.
    pub(super) fn get(&self, core: &CoreKey) -> Option<&Upgrading> {
        self.in_flight.get(core)
    }

    /// Whether an upgrade of `core` is in flight.
    pub(super) fn is_under_way(&self, core: &CoreKey) -> bool {
        self.in_flight.contains_key(core)
    }

    /// A new upgrade of `core` asked of `peer` on `channel` at `now`: its id, and when it
    /// times out.
    pub(super) fn start(
        &mut self,
        core: CoreKey,
        peer: PeerId,
        channel: ChannelId,
        now: Instant,
    ) -> u64 {
        let id = UPGRADE_ID_BIT | self.next_id;
        self.next_id += 1;
        self.set(
            core,
            Upgrading {
                peer,
                channel,
                id,
                deadline: now + self.timeout,
            },
        );
        id
    }

    /// Makes `upgrade` the one in flight of `core`, with its deadline.
    pub(super) fn set(&mut self, core: CoreKey, upgrade: Upgrading) {
        let old = self.in_flight.insert(core, upgrade).map(|u| u.deadline);
        self.deadlines.replace(core, old, Some(upgrade.deadline));
    }

    /// The upgrade in flight of `core` waits another `timeout` from `now`.
    pub(super) fn wait_again(&mut self, core: CoreKey, now: Instant) {
        if let Some(u) = self.in_flight.get(&core).copied() {
            self.set(
                core,
                Upgrading {
                    deadline: now + self.timeout,
                    ..u
                },
            );
        }
    }

    /// Ends the upgrade in flight of `core`.
    pub(super) fn take(&mut self, core: &CoreKey) -> Option<Upgrading> {
        let u = self.in_flight.remove(core)?;
        self.deadlines.remove(u.deadline, *core);
        Some(u)
    }

    /// Ends the upgrade of `core` if it was asked on `channel`.
    pub(super) fn take_on(&mut self, core: &CoreKey, channel: ChannelId) -> Option<Upgrading> {
        if self.get(core)?.channel != channel {
            return None;
        }
        self.take(core)
    }

    /// Puts the upgrade in flight of `core` aside while a push takes its place.
    pub(super) fn supersede(&mut self, core: CoreKey) {
        if let Some(u) = self.take(&core) {
            self.superseded.insert(core, u);
        }
    }

    /// The upgrade request a push took the place of, if any.
    pub(super) fn take_superseded(&mut self, core: &CoreKey) -> Option<Upgrading> {
        self.superseded.remove(core)
    }

    /// The cores whose upgrade was asked of `peer`.
    pub(super) fn of_peer(&self, peer: &PeerId) -> Vec<CoreKey> {
        self.in_flight
            .iter()
            .filter(|(_, u)| u.peer == *peer)
            .map(|(core, _)| *core)
            .collect()
    }

    /// The cores whose upgrade timed out at `now`, in key order (their upgrades stay in flight
    /// for the caller to end).
    pub(super) fn timed_out(&mut self, now: Instant) -> Vec<CoreKey> {
        let mut late = self.deadlines.drain_due(now);
        late.sort_unstable();
        late
    }

    /// Checks that the deadline set holds exactly the deadline of every upgrade in flight.
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn check_timers(&self) -> Result<(), String> {
        let mut expected: Vec<(Instant, CoreKey)> = self
            .in_flight
            .iter()
            .map(|(c, u)| (u.deadline, *c))
            .collect();
        expected.sort();
        let set = self.deadlines.entries();
        if set != expected {
            return Err(format!(
                "upgrade timers {set:?}, upgrades in flight {expected:?}"
            ));
        }
        Ok(())
    }

    /// When the next upgrade times out.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first()
    }

    /// Forgets everything of `core`: its upgrade in flight, the one a push took the place
    /// of, and its retries (the core is no longer replicated).
    pub(super) fn forget(&mut self, core: &CoreKey) {
        self.take(core);
        self.superseded.remove(core);
        self.retry.remove(core);
        self.after_backoff.remove(core);
    }

    /// Asks `core` again of another peer at the end of this turn.
    pub(super) fn retry(&mut self, core: CoreKey) {
        self.retry.insert(core);
    }

    /// The next core to ask again this turn.
    pub(super) fn next_retry(&mut self) -> Option<CoreKey> {
        self.retry.pop_first()
    }

    /// Asks `core` again when a back-off ends.
    pub(super) fn retry_after_backoff(&mut self, core: CoreKey) {
        self.after_backoff.insert(core);
    }

    /// The cores waiting for a back-off to end.
    pub(super) fn take_after_backoff(&mut self) -> BTreeSet<CoreKey> {
        std::mem::take(&mut self.after_backoff)
    }

    /// A back-off ended before its timer (a block of the peer verified): the cores that waited
    /// for one ask again at the end of this turn.
    pub(super) fn backoff_ended(&mut self) {
        self.retry.append(&mut self.after_backoff);
    }
}

impl Engine {
    /// Asks the peer furthest ahead for a signed upgrade, if none is in flight.
    pub(super) fn maybe_upgrade(&mut self, core: CoreKey, now: Instant) {
        let Some(r) = self.cores.get(&core) else {
            return;
        };
        // A writer's state comes from its own appends, never from the wire.
        if self.upgrades.is_under_way(&core) || r.apply.upgrade_proof.is_some() || r.local.writable
        {
            return;
        }
        let local = r.local;
        let ahead = |s: &SyncInfo| {
            s.length > 0
                && (s.fork > local.fork || (s.fork == local.fork && s.length > local.length))
        };
        let best = self
            .channels
            .of_core(&core)
            .filter(|(_, c)| self.may_ask(&c.peer, now))
            .filter_map(|(id, c)| c.remote.map(|s| (id, c.peer, s)))
            .filter(|(_, _, s)| ahead(s))
            .max_by_key(|(id, _, s)| (s.fork, s.length, std::cmp::Reverse(*id)));
        let Some((channel, peer, remote)) = best else {
            // A peer ahead that is backed off is asked once its back-off ends.
            let waiting = self.channels.of_core(&core).any(|(_, c)| {
                c.remote.as_ref().is_some_and(ahead)
                    && self.peers.get(&c.peer).is_some_and(|p| !p.dropped)
            });
            if waiting {
                self.upgrades.retry_after_backoff(core);
            }
            return;
        };
        let start = if remote.fork == local.fork {
            local.length
        } else {
            0
        };
        // Following live: ask for the first new block with the upgrade, saving a round trip.
        let first_block = r.mode == Mode::Full
            && local.length > 0
            && start == local.length
            && local.contiguous == local.length
            && remote.contiguous > local.length;
        let request = ProofRequest {
            fork: local.fork,
            block: first_block.then_some(IndexRequest {
                index: local.length,
                nodes: 0,
            }),
            upgrade: Some(UpgradeRequest {
                start,
                length: remote.length - start,
            }),
            manifest: local.length == 0,
            ..Default::default()
        };
        let id = self.upgrades.start(core, peer, channel, now);
        if let Some(c) = self.channels.get_mut(&channel) {
            let block = request.block.map(|b| b.index);
            let length = remote.length - start;
            c.requests.insert(
                id,
                Sent::Upgrade {
                    start,
                    length,
                    block,
                },
            );
        }
        self.send(peer, channel, Message::Request { id, request });
    }

    /// `Data` answering upgrade request `id` on `channel`, which asked for an upgrade from
    /// `start` by `length` blocks, with block `block` if one was asked for.
    pub(super) fn on_upgrade_data(
        &mut self,
        channel: ChannelId,
        (start, length, block): (u64, u64, Option<u64>),
        proof: Proof,
        now: Instant,
    ) {
        let Some((peer, core)) = self.channels.get(&channel).map(|c| (c.peer, c.core)) else {
            return;
        };
        // An answer must answer the question: an upgrade from where we asked to the length
        // the peer claimed, and the block we asked for. Anything else (no upgrade at all, or
        // an older state that proves less than it claimed) fails the request.
        let answers = proof
            .upgrade
            .as_ref()
            .is_some_and(|u| u.start == start && u.length >= length)
            && proof.block.as_ref().map(|b| b.index) == block
            && proof.hash.is_none()
            && proof.seek.is_none();
        if !answers {
            self.upgrade_failed(core, channel);
            self.blame(
                core,
                peer,
                "an answer that does not answer the upgrade asked for".into(),
                now,
            );
            self.maybe_upgrade(core, now);
            return;
        }
        if let Some(r) = self.cores.get_mut(&core) {
            r.apply.upgrade_proof = Some((peer, proof));
        }
        self.maybe_apply(core);
    }

    /// The upgrade asked of `channel`'s peer failed: it cannot prove the length it claimed, so
    /// it is not believed until it syncs again (it is asked to), and the upgrade may be asked
    /// of another peer.
    pub(super) fn upgrade_failed(&mut self, core: CoreKey, channel: ChannelId) {
        let Some(r) = self.cores.get(&core) else {
            return;
        };
        self.upgrades.take_on(&core, channel);
        let length = r.local.length;
        let Some(c) = self.channels.get_mut(&channel) else {
            return;
        };
        let peer = c.peer;
        if let Some(remote) = c.remote.as_mut() {
            remote.length = remote.length.min(length);
        }
        // An honest peer that was only slow says its length again and is asked again (after
        // its back-off); a liar says its lie again and runs out of back-offs.
        if self.has_room(&peer)
            && let Some(info) = self.sync_info(&core, true)
        {
            self.send(peer, channel, Message::Sync(info));
        }
    }

    /// The upgrades whose deadline passed are asked of another peer; their peers are not
    /// believed until they sync again, and are backed off. An upgrade whose answer (or push)
    /// arrived and waits for storage is not late on the peer's side: it waits again. Then the
    /// cores that waited for a back-off ask again.
    pub(super) fn expire_upgrades(&mut self, now: Instant) {
        for core in self.upgrades.timed_out(now) {
            if let Some(u) = self.upgrades.get(&core).copied() {
                if self.upgrade_being_applied(core, &u) {
                    // Answered (or pushed), and our storage is slow to apply it: the peer is
                    // not at fault. It waits again, with a deadline.
                    self.upgrades.wait_again(core, now);
                    continue;
                }
                if let Some(c) = self.channels.get_mut(&u.channel) {
                    c.requests.remove(&u.id);
                }
                // Not believed until it syncs again, like a peer that says it cannot prove.
                self.upgrade_failed(core, u.channel);
                if self.peers.contains_key(&u.peer) {
                    self.fetch.penalize(u.peer, now);
                }
                self.maybe_upgrade(core, now);
            }
        }
        for core in self.upgrades.take_after_backoff() {
            self.maybe_upgrade(core, now);
        }
    }

    /// Whether the answer (or push) of upgrade `u` of `core` waits for storage or is being
    /// applied: it is no longer asked, and a proof from its peer is queued or applying.
    fn upgrade_being_applied(&self, core: CoreKey, u: &Upgrading) -> bool {
        let asked = self
            .channels
            .get(&u.channel)
            .is_some_and(|c| c.requests.contains_key(&u.id));
        let Some(r) = self.cores.get(&core) else {
            return false;
        };
        let queued = r
            .apply
            .upgrade_proof
            .as_ref()
            .is_some_and(|(peer, _)| *peer == u.peer);
        let applying = r.apply.running
            && self.tasks.values().any(|t| {
                matches!(t, TaskCtx::ApplyUpgrade { core: c, peer, .. }
                    if *c == core && *peer == u.peer)
            });
        !asked && (queued || applying)
    }

    /// The request that a push superseded while the push was applied: withdrawn once the push
    /// stored, or asked for again (it is still outstanding) if the push failed, so that a
    /// forged push cannot cancel an honest upgrade.
    pub(super) fn settle_superseded(&mut self, core: CoreKey, asked: Upgrading, push_stored: bool) {
        let outstanding = self
            .channels
            .get(&asked.channel)
            .is_some_and(|c| c.requests.contains_key(&asked.id));
        if !outstanding {
            return;
        }
        if push_stored {
            if let Some(c) = self.channels.get_mut(&asked.channel) {
                c.requests.remove(&asked.id);
            }
            self.send(asked.peer, asked.channel, Message::Cancel { id: asked.id });
        } else if self.cores.contains_key(&core) {
            self.upgrades.set(core, asked);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{
        super::{
            ApplyOutcome, Input, LocalInfo, Mode, Output, Task, TaskResult,
            testing::{CORE, PEER, engine_with_peer, local, outputs, sync, upgrade_answer},
        },
        *,
    };
    use crate::{core::RunApplied, tree::BlockProof};

    /// The deadline set holds the deadline of each upgrade in flight, and nothing else.
    #[test]
    fn deadlines_follow_the_upgrades_in_flight() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut u = Upgrades::new(Duration::from_millis(100));
        let (a, b) = ([1; 32], [2; 32]);
        u.start(b, PEER, 0, at(0));
        u.start(a, PEER, 2, at(10));
        assert_eq!(u.next_deadline(), Some(at(100)));
        // A push takes the place of b's request: its timer goes with it, and comes back
        // with it.
        u.supersede(b);
        assert_eq!(u.next_deadline(), Some(at(110)));
        let asked = u.take_superseded(&b).expect("put aside");
        u.set(b, asked);
        assert_eq!(u.next_deadline(), Some(at(100)));
        assert!(u.take_on(&a, 0).is_none(), "asked on another channel");
        assert!(u.take_on(&a, 2).is_some());
        assert_eq!(u.timed_out(at(200)), vec![b]);
        assert!(u.take(&b).is_some());
        assert_eq!(u.next_deadline(), None);
        assert_eq!(u.of_peer(&PEER), Vec::<CoreKey>::new());
    }

    /// An upgrade that times out is the engine's next timer; when it fires the peer is asked
    /// to sync again and backed off, and the back-off's end is the next timer.
    #[test]
    fn an_upgrade_that_times_out_asks_the_peer_to_sync_again() {
        let now = Instant::now();
        let (mut engine, channel) =
            engine_with_peer(local(5, false), Mode::Full, sync(8, true), now);
        let _ = outputs(&mut engine);
        let cfg = engine.config().clone();
        let deadline = now + cfg.upgrade_timeout;
        assert_eq!(engine.poll_timeout(), Some(deadline));
        engine.handle_timeout(deadline);
        let out = outputs(&mut engine);
        assert!(
            out.iter().any(|o| matches!(
                o,
                Output::Send(_, ch, Message::Sync(s)) if *ch == channel && s.ask
            )),
            "{out:?}"
        );
        assert_eq!(engine.poll_timeout(), Some(deadline + cfg.fetch.backoff));
    }

    /// A peer that answers an upgrade to the length it claimed with `NoData` is backed off:
    /// claiming the length again in its next `Sync` does not get it asked again at once.
    #[test]
    fn a_peer_that_cannot_prove_its_claim_is_backed_off() {
        let now = Instant::now();
        let (mut engine, channel) =
            engine_with_peer(local(5, false), Mode::Full, sync(5, false), now);
        let upgrade_ids = |out: &[Output]| -> Vec<u64> {
            out.iter()
                .filter_map(|o| match o {
                    Output::Send(_, _, Message::Request { id, request })
                        if request.upgrade.is_some() =>
                    {
                        Some(*id)
                    }
                    _ => None,
                })
                .collect()
        };
        engine.handle(Input::Message(PEER, channel, sync(10, false)), now);
        let asked = upgrade_ids(&outputs(&mut engine));
        assert_eq!(asked.len(), 1, "the claim is asked for");
        let none = Message::NoData {
            id: asked[0],
            start: 0,
            end: 0,
        };
        engine.handle(Input::Message(PEER, channel, none), now);
        outputs(&mut engine);
        engine.handle(Input::Message(PEER, channel, sync(10, false)), now);
        assert!(
            upgrade_ids(&outputs(&mut engine)).is_empty(),
            "asked again at once"
        );
        // After its back-off it is asked again.
        let later = now + Duration::from_secs(60);
        engine.handle_timeout(later);
        engine.handle(Input::Message(PEER, channel, sync(10, false)), later);
        assert_eq!(upgrade_ids(&outputs(&mut engine)).len(), 1);
    }

    fn request_ids(engine: &Engine, channel: ChannelId) -> (Option<u64>, Option<u64>) {
        let requests = &engine.channels.get(&channel).expect("open").requests;
        let of = |upgrade: bool| {
            requests
                .iter()
                .find(|(_, s)| matches!(s, Sent::Upgrade { .. }) == upgrade)
                .map(|(id, _)| *id)
        };
        (of(false), of(true))
    }

    /// A core whose only peer ahead is backed off waits for the back-off's end to ask it. When
    /// a verified block of that peer ends the back-off early, the upgrade is asked then: there
    /// is no back-off timer left to wake it later.
    #[test]
    fn an_upgrade_waiting_for_a_back_off_is_asked_when_a_verified_block_ends_it() {
        let now = Instant::now();
        let mine = LocalInfo {
            contiguous: 9,
            ..local(10, false)
        };
        let (mut engine, channel) = engine_with_peer(mine, Mode::Full, sync(20, false), now);
        let (Some(run), Some(upgrade)) = request_ids(&engine, channel) else {
            panic!("a run of block 9 and an upgrade to 20 are asked");
        };
        // Block 9 arrives; storing it takes a while.
        let block = Proof {
            block: Some(BlockProof {
                index: 9,
                value: b"x".to_vec(),
                nodes: Vec::new(),
            }),
            ..Default::default()
        };
        let data = Message::Data {
            id: run,
            proof: block,
        };
        engine.handle(Input::Message(PEER, channel, data), now);
        let apply = outputs(&mut engine)
            .into_iter()
            .find_map(|o| match o {
                Output::Task(id, _, Task::ApplyRun(_)) => Some(id),
                _ => None,
            })
            .expect("block 9 is applied");
        // The upgrade's answer proves nothing: the peer is backed off and asked to sync.
        let empty = Message::Data {
            id: upgrade,
            proof: Proof::default(),
        };
        engine.handle(Input::Message(PEER, channel, empty), now);
        // It syncs again, still ahead: the upgrade waits for its back-off to end.
        engine.handle(Input::Message(PEER, channel, sync(20, false)), now);
        let _ = outputs(&mut engine);
        assert!(engine.fetch.is_backed_off(&PEER, now));
        // Block 9 verifies: the peer is forgiven, its back-off is over.
        let later = now + Duration::from_millis(10);
        let stored = RunApplied {
            stored: vec![(9, 1)],
            rejected: None,
        };
        let done = TaskResult::RunApplied(ApplyOutcome::Done(stored), local(10, false));
        engine.handle(Input::TaskDone(apply, done), later);
        assert!(!engine.fetch.is_backed_off(&PEER, later));
        engine.check_timers().unwrap();
        let asked = outputs(&mut engine)
            .iter()
            .any(|o| matches!(o, Output::Send(_, _, Message::Request { .. })));
        assert!(
            asked || engine.poll_timeout().is_some(),
            "the peer ahead is never asked: no upgrade request and no timer left"
        );
    }

    /// An upgrade that was answered is not the peer's to time out while our storage applies
    /// it: the peer is neither backed off nor disbelieved, and the upgrade keeps a deadline.
    #[test]
    fn an_answered_upgrade_applied_slowly_does_not_blame_the_peer() {
        let now = Instant::now();
        let (mut engine, channel) =
            engine_with_peer(local(5, false), Mode::Full, sync(8, true), now);
        let (_, Some(upgrade)) = request_ids(&engine, channel) else {
            panic!("an upgrade to 8 is asked");
        };
        let proof = upgrade_answer(5, 3);
        engine.handle(
            Input::Message(PEER, channel, Message::Data { id: upgrade, proof }),
            now,
        );
        let apply = outputs(&mut engine)
            .into_iter()
            .find_map(|o| match o {
                Output::Task(id, _, Task::ApplyProof(_)) => Some(id),
                _ => None,
            })
            .expect("the answer is applied");
        // Our storage is slow: the upgrade's deadline passes while it applies.
        let deadline = now + engine.config().upgrade_timeout;
        engine.handle_timeout(deadline);
        let out = outputs(&mut engine);
        assert!(
            !out.iter()
                .any(|o| matches!(o, Output::Event(super::super::Event::Backoff(_)))),
            "the peer that answered is backed off: {out:?}"
        );
        assert!(!engine.fetch.is_backed_off(&PEER, deadline));
        assert!(
            engine.poll_timeout().is_some_and(|t| t > deadline),
            "the upgrade being applied keeps a deadline"
        );
        engine.check_timers().unwrap();
        let done = TaskResult::Applied(ApplyOutcome::Done(()), local(8, false));
        engine.handle(Input::TaskDone(apply, done), deadline);
        assert!(!engine.upgrades.is_under_way(&CORE));
        assert_eq!(engine.poll_timeout(), None, "no timer left");
    }
}

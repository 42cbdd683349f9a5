//! Gossip: our announcements wait for their interval, and what others announce is a hint.

use std::time::{Duration, Instant};

use super::super::{
    Engine, EngineConfig, Input, LocalInfo, Mode, Output,
    testing::{CORE, PEER, engine_with_peer, local, outputs, sync},
};
use crate::replication::{gossip::GossipOp, wire::Message};

/// A core truncated to nothing while an announcement waited for its interval leaves no
/// timer behind: the driver would otherwise be woken at a past instant on every turn.
#[test]
fn a_core_truncated_to_nothing_drops_its_due_announcement() {
    let t0 = Instant::now();
    let mut engine = Engine::new([1; 32], EngineConfig::default());
    let core = [2; 32];
    let at = |length, fork| LocalInfo {
        fork,
        length,
        byte_length: length,
        contiguous: length,
        writable: true,
    };
    engine.add_core(core, at(1, 0), Mode::Full, t0);
    engine.handle(
        Input::LocalChanged(core, at(2, 0)),
        t0 + Duration::from_millis(10),
    );
    assert!(
        engine.poll_timeout().is_some(),
        "the second announcement waits"
    );
    engine.handle(
        Input::LocalChanged(core, at(0, 1)),
        t0 + Duration::from_millis(20),
    );
    engine.handle_timeout(t0 + Duration::from_millis(100));
    assert_eq!(engine.poll_timeout(), None, "no timer left");
}

/// Announcements within the interval wait for its end and go then, once.
#[test]
fn announcements_within_the_interval_wait_for_its_end() {
    let t0 = Instant::now();
    let interval = EngineConfig::default().announce_interval;
    let mut engine = Engine::new([1; 32], EngineConfig::default());
    let core = [2; 32];
    let at = |length| LocalInfo {
        length,
        byte_length: length,
        contiguous: length,
        writable: true,
        ..Default::default()
    };
    let broadcasts = |engine: &mut Engine| {
        outputs(engine)
            .iter()
            .filter(|o| matches!(o, Output::Broadcast(..)))
            .count()
    };
    engine.add_core(core, at(1), Mode::Full, t0);
    assert_eq!(broadcasts(&mut engine), 1);
    for (i, length) in [2, 3].into_iter().enumerate() {
        let now = t0 + Duration::from_millis(1 + i as u64);
        engine.handle(Input::LocalChanged(core, at(length)), now);
    }
    assert_eq!(broadcasts(&mut engine), 0);
    assert_eq!(engine.poll_timeout(), Some(t0 + interval));
    engine.handle_timeout(t0 + interval);
    assert_eq!(broadcasts(&mut engine), 1);
    assert_eq!(engine.poll_timeout(), None);
}

/// An announcement from a connected peer is a reason to ask for its state only if its last
/// `Sync` did not say as much: a writer's announcement travels beside its `Sync` and push.
#[test]
fn an_announcement_its_sync_told_already_asks_nothing() {
    let now = Instant::now();
    let (mut engine, _) = engine_with_peer(local(5, false), Mode::Full, sync(10, false), now);
    let announce = |length| {
        let op = GossipOp::Announce {
            origin: PEER,
            fork: 0,
            length,
            contiguous: length,
        };
        let bytes = op.encode(crate::replication::gossip::GOSSIP_MAX_MESSAGE);
        Input::Gossip(CORE, bytes.unwrap().into())
    };
    let asks = |engine: &mut Engine| {
        outputs(engine)
            .iter()
            .filter(|o| matches!(o, Output::Send(_, _, Message::Sync(s)) if s.ask))
            .count()
    };
    engine.handle(announce(10), now);
    assert_eq!(asks(&mut engine), 0, "its Sync said 10 already");
    engine.handle(announce(11), now);
    assert_eq!(asks(&mut engine), 1, "11 is news");
}

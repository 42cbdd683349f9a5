//! Upgrades: asking the peer furthest ahead for a signed length, and what happens when it does
//! not answer, cannot prove its claim, or is backed off.

use std::time::{Duration, Instant};

use super::super::{
    ApplyOutcome, ChannelId, Engine, EngineConfig, Event, Input, LocalInfo, Mode, Output, Task,
    testing::{
        CORE, PEER, engine_with_peer, engine_with_peer_outputs, local, outputs, proof_applied,
        run_applied, sync, take_task, upgrade_answer,
    },
};
use crate::{
    core::RunApplied,
    replication::wire::Message,
    tree::{BlockProof, Proof},
};

/// An upgrade that times out is the engine's next timer; when it fires the peer is asked to
/// sync again and backed off, and the back-off's end is the next timer.
#[test]
fn an_upgrade_that_times_out_asks_the_peer_to_sync_again() {
    let now = Instant::now();
    let (mut engine, channel) = engine_with_peer(local(5, false), Mode::Full, sync(8, true), now);
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
    let (mut engine, channel) = engine_with_peer(local(5, false), Mode::Full, sync(5, false), now);
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

/// The run request and the upgrade request waiting on `channel`.
fn request_ids(engine: &Engine, channel: ChannelId) -> (Option<u64>, Option<u64>) {
    let requests = engine.cores[&CORE].requests_on(channel);
    let of = |upgrade: bool| {
        requests
            .iter()
            .find(|(_, u)| *u == upgrade)
            .map(|(id, _)| *id)
    };
    (of(false), of(true))
}

/// A core whose only peer ahead is backed off waits for the back-off's end to ask it. When a
/// verified block of that peer ends the back-off early, the upgrade is asked then: there is
/// no back-off timer left to wake it later.
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
            value: b"x".to_vec().into(),
            nodes: Vec::new(),
        }),
        ..Default::default()
    };
    let data = Message::Data {
        id: run,
        proof: block,
    };
    engine.handle(Input::Message(PEER, channel, data), now);
    let apply = take_task(&mut outputs(&mut engine), |t| {
        matches!(t, Task::ApplyRun { .. })
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
    outputs(&mut engine);
    assert!(engine.fetch.is_backed_off(&PEER, now));
    // Block 9 verifies: the peer is forgiven, its back-off is over.
    let later = now + Duration::from_millis(10);
    let stored = RunApplied {
        stored: vec![(9, 1)],
        rejected: None,
    };
    engine.handle(
        run_applied(apply, ApplyOutcome::Done(stored), local(10, false)),
        later,
    );
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

/// A reader at 5 blocks with a peer at 8 (tuned by `cfg`) whose answer to the upgrade is being
/// applied: the engine, and the apply task.
fn upgrade_being_applied(cfg: EngineConfig, now: Instant) -> (Engine, Task) {
    let (mut engine, channel, _) =
        engine_with_peer_outputs(cfg, local(5, false), Mode::Full, sync(8, true), now);
    let (_, Some(upgrade)) = request_ids(&engine, channel) else {
        panic!("an upgrade to 8 is asked");
    };
    let proof = upgrade_answer(5, 3);
    engine.handle(
        Input::Message(PEER, channel, Message::Data { id: upgrade, proof }),
        now,
    );
    let apply = take_task(&mut outputs(&mut engine), |t| {
        matches!(t, Task::ApplyProof { .. })
    })
    .expect("the answer is applied");
    (engine, apply)
}

/// An upgrade that was answered is not the peer's to time out while our storage applies it:
/// the peer is neither backed off nor disbelieved, and the upgrade keeps a timer.
#[test]
fn an_answered_upgrade_applied_slowly_does_not_blame_the_peer() {
    let now = Instant::now();
    let (mut engine, apply) = upgrade_being_applied(EngineConfig::default(), now);
    // Our storage is slow: the upgrade's timer fires while it applies.
    let deadline = now + engine.config().upgrade_timeout;
    engine.handle_timeout(deadline);
    let out = outputs(&mut engine);
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Event(Event::Backoff(_)))),
        "the peer that answered is backed off: {out:?}"
    );
    assert!(!engine.fetch.is_backed_off(&PEER, deadline));
    assert!(
        engine.poll_timeout().is_some_and(|t| t > deadline),
        "the upgrade being applied keeps a timer"
    );
    engine.check_timers().unwrap();
    engine.handle(
        proof_applied(apply, ApplyOutcome::Done(()), local(8, false)),
        deadline,
    );
    assert!(!engine.cores[&CORE].upgrade_in_flight());
    assert_eq!(engine.poll_timeout(), None, "no timer left");
}

/// A handler may set its own timer again for `now` (an upgrade whose answer is being applied
/// waits again, here with an `upgrade_timeout` of zero): `handle_timeout` handles the timers
/// that were due when it was called, and returns.
#[test]
fn a_timer_set_again_for_now_does_not_hang_handle_timeout() {
    let now = Instant::now();
    let cfg = EngineConfig {
        upgrade_timeout: Duration::ZERO,
        ..Default::default()
    };
    let (mut engine, _apply) = upgrade_being_applied(cfg, now);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        engine.handle_timeout(now);
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(5)).is_ok(),
        "handle_timeout did not return within 5 s"
    );
}

/// A peer that claims one block more than we hold and, just before each upgrade deadline,
/// opens its channel again (with a lower id than ours, its new channel replaces the old one)
/// is not asked first for ever: each channel it gives up with the upgrade unanswered counts
/// as a failure, until it is penalized.
#[test]
fn reopening_the_channel_before_each_upgrade_deadline_does_not_escape_the_penalty() {
    use super::super::testing::open_of;
    let low = [0; 32];
    let mut now = Instant::now();
    let mut engine = Engine::new(super::super::testing::ME, EngineConfig::default());
    engine.add_core(CORE, local(5, false), Mode::Full, now);
    let wait = engine.config().upgrade_timeout - Duration::from_millis(100);
    let mut penalized = false;
    let mut upgrades = 0;
    for k in 0..40u64 {
        let channel = 2 * k + 1;
        let open = open_of(&CORE, low, engine.me());
        if k == 0 {
            engine.handle(Input::PeerConnected(low), now);
        }
        engine.handle(Input::Message(low, channel, open), now);
        engine.handle(Input::Message(low, channel, sync(6, false)), now);
        let out = outputs(&mut engine);
        upgrades += out
            .iter()
            .filter(|o| matches!(o, Output::Send(p, _, Message::Request { .. }) if *p == low))
            .count();
        penalized |= out
            .iter()
            .any(|o| matches!(o, Output::Event(Event::Penalized { peer, .. }) if *peer == low));
        if penalized {
            break;
        }
        now += wait;
        engine.handle_timeout(now);
    }
    assert!(upgrades > 1, "the peer was asked for the upgrade");
    assert!(penalized, "the peer escaped every deadline");
}

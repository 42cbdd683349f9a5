//! Leaving a core, adding it again, and serving a core found in the store.

use std::time::Instant;

use super::super::{
    ApplyOutcome, ChannelId, Engine, EngineConfig, Event, Input, LEAVE_REASON, Mode, Output, Task,
    testing::{
        CORE, PEER, engine_with_peer, local, outputs, proof_applied, sync, take_task,
        upgrade_answer,
    },
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
    engine.cores[&CORE]
        .requests_on(channel)
        .into_iter()
        .find_map(|(id, upgrade)| upgrade.then_some(id))
        .expect("an upgrade is asked")
}

/// Answers the upgrade in flight on `channel` and returns the apply task it starts.
fn answer_upgrade(engine: &mut Engine, channel: ChannelId, now: Instant) -> Task {
    let id = upgrade_id(engine, channel);
    let proof = upgrade_answer(5, 3);
    engine.handle(
        Input::Message(PEER, channel, Message::Data { id, proof }),
        now,
    );
    take_task(&mut outputs(engine), |t| {
        matches!(t, Task::ApplyProof { .. })
    })
    .expect("the answer is applied")
}

/// Leaving closes the core's channel with a `Close` and leaves its topic; an apply task of
/// before the leave that ends after the core was added again changes nothing of the new
/// core: its own apply still runs alone and its upgrade keeps its timer.
#[test]
fn an_apply_from_before_a_leave_does_not_touch_the_core_added_again() {
    let now = Instant::now();
    let (mut engine, channel) = engine_with_peer(local(5, false), Mode::Full, sync(8, true), now);
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
    // Its peers are told again (the driver reads them from the store's record).
    engine.handle(Input::Peers(CORE, vec![PEER]), now);
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

    engine.handle(
        proof_applied(old, ApplyOutcome::Done(()), local(8, false)),
        now,
    );
    let out = outputs(&mut engine);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Task(..))),
        "a second apply runs beside the new one: {out:?}"
    );
    assert!(engine.cores[&CORE].is_applying());
    assert!(
        engine.cores[&CORE].upgrade_in_flight(),
        "the new upgrade is kept"
    );
    engine.check_timers().unwrap();

    engine.handle(
        proof_applied(new, ApplyOutcome::Done(()), local(8, false)),
        now,
    );
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
    let mut engine = Engine::new(me, EngineConfig::default());
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
    // Replicated by name, it is, to a peer known to have it.
    engine.add_core(CORE, local(3, true), Mode::Full, now);
    engine.handle(Input::Peers(CORE, vec![other]), now);
    assert!(
        outputs(&mut engine)
            .iter()
            .any(|o| matches!(o, Output::OpenChannel(p, ..) if *p == other))
    );
    engine.check_timers().unwrap();
}

/// Leaving a core closes its open channels, each reported with `Event::ChannelClosed` to pair
/// with its `ChannelOpen`: the subscribers of the core's events see the peer leave.
#[test]
fn leaving_a_core_reports_its_open_channels_closed() {
    let now = Instant::now();
    let (mut engine, channel) = engine_with_peer(local(5, true), Mode::Full, sync(5, true), now);
    assert!(engine.remove_core(CORE, now));
    let out = outputs(&mut engine);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::CloseChannel(_, ch) if *ch == channel)),
        "{out:?}"
    );
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::Event(Event::ChannelClosed { core, peer })
                if *core == CORE && *peer == PEER
        )),
        "the channel that was open is never reported closed: {out:?}"
    );
}

//! Peers come back: a core with no channel dials the peers it knows again, with back-off and
//! jitter, until one is back; `update` waits for the first peer of a core that looks for its
//! peers.

use std::time::{Duration, Instant};

use super::super::{
    Engine, EngineConfig, Event, Input, MAX_KNOWN_PER_CORE, MAX_LEARNT, MAX_NAMED, Mode, Output,
    testing::{
        CORE, ME, PEER, accept_of, connect, engine_with_peer, local, open_of, outputs, sync,
    },
};

/// The peers dialed among `out`.
fn dialed(out: &[Output]) -> Vec<[u8; 32]> {
    out.iter()
        .filter_map(|o| match o {
            Output::Connect(p) => Some(*p),
            _ => None,
        })
        .collect()
}

/// The `(attempt, next_in)` of the `Reconnecting` events among `out`.
fn reconnecting(out: &[Output]) -> Vec<(u32, Duration)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(Event::Reconnecting {
                core,
                attempt,
                next_in,
            }) if *core == CORE => Some((*attempt, *next_in)),
            _ => None,
        })
        .collect()
}

/// The peer of a reader's only channel goes away (a restart): the reader says it has no peer,
/// then dials it again after about 1 s, 2 s, 4 s … (a quarter either way), at most a minute
/// apart, until it is back; its channel opening ends the search and its timer.
#[test]
fn a_core_whose_last_peer_went_dials_it_again_with_back_off_until_it_is_back() {
    let t0 = Instant::now();
    let (mut engine, _) = engine_with_peer(local(5, false), Mode::Full, sync(5, true), t0);
    assert_eq!(
        engine.known_peers(&CORE),
        [PEER],
        "the peer it had a channel with"
    );
    engine.handle(Input::PeerDisconnected(PEER), t0);
    let out = outputs(&mut engine);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(Event::NoPeers { core }) if *core == CORE)),
        "{out:?}"
    );
    let first = reconnecting(&out);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, 0);
    assert!((750..=1250).contains(&first[0].1.as_millis()), "{first:?}");
    engine.check_timers().unwrap();

    let mut now = t0;
    let mut waits = vec![first[0].1];
    for attempt in 1..=8 {
        now = engine.poll_timeout().expect("a redial is due");
        engine.handle_timeout(now);
        let out = outputs(&mut engine);
        assert_eq!(dialed(&out), [PEER], "attempt {attempt}");
        let r = reconnecting(&out);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, attempt);
        waits.push(r[0].1);
        engine.check_timers().unwrap();
    }
    for (i, w) in waits.iter().enumerate() {
        let base = Duration::from_secs(1 << i.min(16)).min(Duration::from_secs(60));
        assert!(
            *w >= base.mul_f64(0.75) && *w <= base.mul_f64(1.25),
            "wait {i} is {w:?}, not about {base:?}"
        );
    }
    // It is back: the channel opens and the search ends, with its timer.
    let channel = connect(&mut engine, PEER, now);
    engine.handle(Input::Message(PEER, channel, sync(5, true)), now);
    outputs(&mut engine);
    assert_eq!(engine.poll_timeout(), None, "no redial left");
    engine.check_timers().unwrap();
}

/// The nodes of a ticket (or a restarted node's remembered peers) are known before any
/// channel opens: a core with none dials them at once, then again, four at a time, rounding
/// the list. A core keeps at most 8 named peers (the first given) and 8 learnt ones (gossip,
/// channels), the most recently useful first.
#[test]
fn ticket_nodes_are_dialed_again_and_the_peers_known_are_bounded() {
    let t0 = Instant::now();
    let mut engine = Engine::new(ME, EngineConfig::default());
    engine.add_core(CORE, local(0, false), Mode::Full, t0);
    outputs(&mut engine);
    let nodes: Vec<[u8; 32]> = (10..40u8).map(|i| [i; 32]).collect();
    engine.handle(Input::Peers(CORE, nodes.clone()), t0);
    assert_eq!(engine.known_peers(&CORE)[..], nodes[..MAX_NAMED]);
    let seen: Vec<[u8; 32]> = (50..80u8).map(|i| [i; 32]).collect();
    engine.handle(Input::PeersSeen(CORE, seen.clone()), t0);
    let known = engine.known_peers(&CORE);
    assert_eq!(known.len(), MAX_KNOWN_PER_CORE);
    assert_eq!(
        known[..MAX_NAMED],
        nodes[..MAX_NAMED],
        "the named come first"
    );
    assert_eq!(
        reconnecting(&outputs(&mut engine)),
        [(0, Duration::ZERO)],
        "the search starts, its first dials at once (as a restarted node's)"
    );
    assert_eq!(engine.poll_timeout(), Some(t0));
    let mut all = Vec::new();
    for _ in 0..4 {
        let now = engine.poll_timeout().unwrap();
        engine.handle_timeout(now);
        let d = dialed(&outputs(&mut engine));
        assert_eq!(d.len(), 4);
        all.extend(d);
    }
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        MAX_KNOWN_PER_CORE,
        "every known peer was dialed once"
    );
    // A learnt peer that becomes useful goes first among the learnt; nobody is pushed out.
    let useful = known[MAX_KNOWN_PER_CORE - 1];
    assert_eq!(useful, seen[MAX_LEARNT - 1]);
    engine.handle(Input::PeerConnected(useful), t0);
    let channel = outputs(&mut engine)
        .into_iter()
        .find_map(|o| match o {
            Output::OpenChannel(p, ch, _) if p == useful => Some(ch),
            _ => None,
        })
        .expect("a learnt peer gets a channel");
    let accept = accept_of(&CORE, ME, useful);
    engine.handle(Input::Message(useful, channel, accept), t0);
    engine.handle(Input::Message(useful, channel, sync(0, true)), t0);
    assert_eq!(engine.known_peers(&CORE)[MAX_NAMED], useful);
    assert_eq!(engine.known_peers(&CORE).len(), MAX_KNOWN_PER_CORE);
    engine.check_timers().unwrap();
}

/// Peers that learn the key and open channels from many ids (each channel makes its peer
/// useful) fill the learnt places, never the named ones: the ticket's node stays known and
/// dialed; a `join` naming three more keeps all three.
#[test]
fn channels_from_many_ids_never_push_out_the_named_peers() {
    let t0 = Instant::now();
    let mut engine = Engine::new(ME, EngineConfig::default());
    engine.add_core(CORE, local(5, true), Mode::Full, t0);
    let writer = [200; 32];
    engine.handle(Input::Peers(CORE, vec![writer]), t0);
    for i in 0..40u8 {
        let peer = [100 + i; 32];
        engine.handle(Input::PeerConnected(peer), t0);
        let open = open_of(&CORE, peer, ME);
        engine.handle(Input::Message(peer, 1, open), t0);
        engine.handle(Input::Message(peer, 1, sync(5, false)), t0);
    }
    outputs(&mut engine);
    let known = engine.known_peers(&CORE);
    assert_eq!(known[0], writer, "{known:?}");
    assert_eq!(known.len(), 1 + MAX_LEARNT);
    let more = vec![[201; 32], [202; 32], [203; 32]];
    engine.handle(Input::Peers(CORE, more.clone()), t0);
    let known = engine.known_peers(&CORE);
    assert_eq!(known[..4], [more[0], more[1], more[2], writer]);
    engine.check_timers().unwrap();
}

/// A core that knows no peer does not look for any, and its `update` resolves at once.
#[test]
fn a_core_without_known_peers_does_not_search() {
    let t0 = Instant::now();
    let mut engine = Engine::new(ME, EngineConfig::default());
    engine.add_core(CORE, local(3, true), Mode::Full, t0);
    engine.handle(Input::Update(CORE), t0);
    let out = outputs(&mut engine);
    assert!(reconnecting(&out).is_empty());
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Event(Event::Updated { core, length: 3 }) if *core == CORE
    )));
    assert_eq!(engine.poll_timeout(), None);
}

/// `update` right after a ticket was opened (the core has no channel yet, and looks for the
/// ticket's nodes) waits for the first peer's state, as hypercore's `findingPeers`; with no
/// peer at all it resolves after `first_peer_timeout`.
#[test]
fn update_waits_for_the_first_peer_of_a_core_looking_for_its_peers() {
    let t0 = Instant::now();
    let mut engine = Engine::new(ME, EngineConfig::default());
    engine.add_core(CORE, local(0, false), Mode::Sparse, t0);
    engine.handle(Input::Peers(CORE, vec![PEER]), t0);
    engine.handle(Input::Update(CORE), t0);
    let updated = |out: &[Output]| {
        out.iter()
            .any(|o| matches!(o, Output::Event(Event::Updated { core, .. }) if *core == CORE))
    };
    assert!(!updated(&outputs(&mut engine)), "not before a peer");
    let later = t0 + Duration::from_secs(2);
    let channel = connect(&mut engine, PEER, later);
    engine.handle(Input::Message(PEER, channel, sync(0, false)), later);
    assert!(
        updated(&outputs(&mut engine)),
        "the first peer's state answers it"
    );
    engine.check_timers().unwrap();

    // Nobody comes: it resolves after the first-peer timeout, not before.
    let mut engine = Engine::new(ME, EngineConfig::default());
    engine.add_core(CORE, local(0, false), Mode::Sparse, t0);
    engine.handle(Input::Peers(CORE, vec![PEER]), t0);
    engine.handle(Input::Update(CORE), t0);
    outputs(&mut engine);
    let timeout = engine.config().first_peer_timeout;
    engine.handle_timeout(t0 + timeout - Duration::from_millis(1));
    assert!(!updated(&outputs(&mut engine)));
    engine.handle_timeout(t0 + timeout);
    assert!(updated(&outputs(&mut engine)));
    engine.check_timers().unwrap();
}

/// An engine serving `CORE` (found in the store) to `PEER`, which opened its channel and
/// said its state: the core remembers nobody. Its outputs are drained.
fn served_to_peer(now: Instant) -> Engine {
    let mut engine = Engine::new(ME, EngineConfig::default());
    engine.handle(Input::PeerConnected(PEER), now);
    engine.handle(Input::Message(PEER, 1, open_of(&CORE, PEER, ME)), now);
    assert!(engine.serve_core(CORE, local(3, true), Mode::Sparse, now));
    engine.handle(Input::Message(PEER, 1, sync(0, false)), now);
    outputs(&mut engine);
    assert!(engine.known_peers(&CORE).is_empty());
    engine
}

/// A core only served to the peers that asked (found in the store) remembers and redials
/// none of them: when its reader goes, nothing is dialed and no timer is left.
#[test]
fn a_served_core_redials_nobody() {
    let now = Instant::now();
    let mut engine = served_to_peer(now);
    engine.handle(Input::PeerDisconnected(PEER), now);
    let out = outputs(&mut engine);
    assert!(
        !out.iter().any(|o| matches!(
            o,
            Output::Event(Event::NoPeers { .. } | Event::Reconnecting { .. })
        )),
        "{out:?}"
    );
    engine.handle_timeout(now + Duration::from_secs(600));
    assert!(dialed(&outputs(&mut engine)).is_empty());
    engine.check_timers().unwrap();
}

/// A core served on demand that the application then replicates remembers the peers it is
/// served to: when they go, it looks for them.
#[test]
fn a_served_core_replicated_later_remembers_its_peers() {
    let now = Instant::now();
    let mut engine = served_to_peer(now);
    engine.add_core(CORE, local(3, true), Mode::Full, now);
    assert_eq!(engine.known_peers(&CORE), vec![PEER]);
    engine.handle(Input::PeerDisconnected(PEER), now);
    assert!(
        outputs(&mut engine)
            .iter()
            .any(|o| matches!(o, Output::Event(Event::NoPeers { .. })))
    );
    engine.check_timers().unwrap();
}

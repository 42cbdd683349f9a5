//! Channels: who opens them, and how idle ones make room at a peer's cap.

use std::time::{Duration, Instant};

use super::super::{
    ChannelId, Engine, EngineConfig, Event, IDLE_REASON, Input, LocalInfo, Mode, NO_ROOM_REASON,
    Output,
    testing::{CORE, ME, PEER, accept_of, connect, known, local, local_at, open_of, outputs, sync},
};
use crate::{crypto::CoreKey, replication::wire::Message};

/// With an open delay, the higher id opens the channels the lower did not once it passes
/// (a timer of its own); with none, both open at once.
#[test]
fn the_higher_id_opens_the_rest_after_the_open_delay() {
    let now = Instant::now();
    let delay = Duration::from_millis(100);
    let cfg = EngineConfig {
        open_delay: delay,
        ..Default::default()
    };
    let (me, lower) = ([9; 32], [1; 32]);
    let mut engine = Engine::new(me, cfg);
    engine.add_core(CORE, local(1, true), Mode::Full, now);
    known(&mut engine, CORE, lower, now);
    engine.handle(Input::PeerConnected(lower), now);
    let opened = |out: &[Output]| out.iter().any(|o| matches!(o, Output::OpenChannel(..)));
    assert!(!opened(&outputs(&mut engine)));
    assert_eq!(
        engine.poll_timeout().filter(|t| *t <= now + delay),
        Some(now + delay)
    );
    engine.check_timers().unwrap();
    engine.handle_timeout(now + delay);
    assert!(opened(&outputs(&mut engine)));
    assert_eq!(engine.poll_timeout().filter(|t| *t <= now + delay), None);
    engine.check_timers().unwrap();

    let mut engine = Engine::new(me, EngineConfig::default());
    engine.add_core(CORE, local(1, true), Mode::Full, now);
    known(&mut engine, CORE, lower, now);
    engine.handle(Input::PeerConnected(lower), now);
    assert!(opened(&outputs(&mut engine)), "no delay by default");
}

/// The channels opened in `out`, with their cores (of three test cores).
fn opened(out: &[Output]) -> Vec<(ChannelId, CoreKey)> {
    out.iter()
        .filter_map(|o| match o {
            Output::OpenChannel(_, ch, Message::Open { discovery_key, .. }) => {
                Some((*ch, *discovery_key))
            }
            _ => None,
        })
        .map(|(ch, dk)| {
            let core = [[3; 32], [4; 32], [5; 32]]
                .into_iter()
                .find(|k| crate::crypto::discovery_key(k) == dk)
                .unwrap();
            (ch, core)
        })
        .collect()
}

/// A local state one block longer than `local(5, true)`.
fn grown() -> LocalInfo {
    LocalInfo {
        length: 6,
        byte_length: 6,
        contiguous: 6,
        ..local(5, true)
    }
}

/// Three cores at a cap of two channels, the first two open and idle.
struct AtCap {
    engine: Engine,
    cores: [CoreKey; 3],
    /// The two channels opened first, with their cores.
    first: Vec<(ChannelId, CoreKey)>,
    /// The outputs after their `Sync`s.
    out: Vec<Output>,
}

/// Three cores of 5 blocks known to `PEER`, at a cap of two channels: the two opened first
/// are accepted and synced (idle: the peer holds the same whole log).
fn three_cores_at_a_cap_of_two(now: Instant) -> AtCap {
    let me = [1; 32];
    let cfg = EngineConfig {
        max_channels_per_peer: 2,
        ..Default::default()
    };
    let mut engine = Engine::new(me, cfg);
    let cores = [[3; 32], [4; 32], [5; 32]];
    for core in cores {
        engine.add_core(core, local(5, true), Mode::Full, now);
        known(&mut engine, core, PEER, now);
    }
    engine.handle(Input::PeerConnected(PEER), now);
    let first = opened(&outputs(&mut engine));
    assert_eq!(first.len(), 2, "two channels at the cap");
    for (ch, core) in &first {
        engine.handle(Input::Message(PEER, *ch, accept_of(core, me, PEER)), now);
    }
    for (ch, _) in &first {
        engine.handle(Input::Message(PEER, *ch, sync(5, true)), now);
    }
    let out = outputs(&mut engine);
    AtCap {
        engine,
        cores,
        first,
        out,
    }
}

/// At the channel cap, a core waits; once an open channel is idle it closes (telling the
/// peer why) and the waiting core gets its channel; the core closed idle opens again when it
/// has something new.
#[test]
fn idle_channels_make_room_and_reopen_on_change() {
    let now = Instant::now();
    let AtCap {
        mut engine,
        cores,
        first,
        out,
    } = three_cores_at_a_cap_of_two(now);
    let closed: Vec<ChannelId> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send(_, ch, Message::Close { reason }) if reason == IDLE_REASON => Some(*ch),
            _ => None,
        })
        .collect();
    assert_eq!(closed.len(), 1, "{out:?}");
    let third = opened(&out);
    assert_eq!(third.len(), 1);
    let waiting = cores
        .into_iter()
        .find(|c| !first.iter().any(|(_, k)| k == c))
        .unwrap();
    assert_eq!(third[0].1, waiting, "the waiting core got the room");
    let idle_core = first.iter().find(|(ch, _)| *ch == closed[0]).unwrap().1;
    assert!(engine.channels.idle_closed(&PEER, &idle_core));

    // The idle-closed core grows: its channel is wanted again (opened, or queued for room,
    // which the next idle channel makes).
    engine.handle(Input::LocalChanged(idle_core, grown()), now);
    assert!(!engine.channels.idle_closed(&PEER, &idle_core));
    assert!(
        engine.channels.waits_to_open(&PEER, &idle_core)
            || opened(&outputs(&mut engine))
                .iter()
                .any(|(_, k)| *k == idle_core)
    );
    engine.check_timers().unwrap();
}

/// A core whose channel closed idle still has its peer: it is not reported without peers,
/// looks for nobody, and its channel stays closed however long nothing changes (at 10,000
/// cores every idle-closed core was redialed and reopened, and closed again, over and over).
/// Once that peer's connection goes, the core has no peer and looks for it.
#[test]
fn a_core_closed_idle_is_not_lost_until_its_peer_goes() {
    let now = Instant::now();
    let me = [1; 32];
    let AtCap {
        mut engine,
        first,
        out,
        ..
    } = three_cores_at_a_cap_of_two(now);
    let closed = out
        .iter()
        .find_map(|o| match o {
            Output::Send(_, ch, Message::Close { reason }) if reason == IDLE_REASON => Some(*ch),
            _ => None,
        })
        .expect("an idle channel closed for the waiting core");
    let idle_core = first.iter().find(|(ch, _)| *ch == closed).unwrap().1;
    let about = |out: &[Output]| {
        out.iter()
            .filter(|o| match o {
                Output::Event(Event::NoPeers { core } | Event::Reconnecting { core, .. }) => {
                    *core == idle_core
                }
                _ => false,
            })
            .count()
    };
    assert_eq!(about(&out), 0, "reported lost: {out:?}");
    // The third core's channel opens and turns idle; minutes pass with nothing new.
    let third = opened(&out);
    for (ch, core) in &third {
        engine.handle(Input::Message(PEER, *ch, accept_of(core, me, PEER)), now);
        engine.handle(Input::Message(PEER, *ch, sync(5, true)), now);
    }
    outputs(&mut engine);
    let mut t = now;
    for _ in 0..100 {
        t += Duration::from_secs(6);
        engine.handle_timeout(t);
        let out = outputs(&mut engine);
        assert_eq!(about(&out), 0, "reported lost: {out:?}");
        assert!(
            !opened(&out).iter().any(|(_, k)| *k == idle_core),
            "reopened with nothing new: {out:?}"
        );
        engine.check_timers().unwrap();
    }
    assert!(engine.channels.idle_closed(&PEER, &idle_core));
    engine.check_bounds().unwrap();

    // The peer goes: the core has no peer now, and says so.
    engine.handle(Input::PeerDisconnected(PEER), t);
    engine.check_bounds().unwrap();
    let out = outputs(&mut engine);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(Event::NoPeers { core }) if *core == idle_core)),
        "{out:?}"
    );
    assert!(about(&out) >= 2, "no search for its peer: {out:?}");
    engine.check_timers().unwrap();
}

/// Channels opened for `core` in `out`.
fn opens_of(out: &[Output], core: &CoreKey) -> Vec<ChannelId> {
    let dk = crate::crypto::discovery_key(core);
    out.iter()
        .filter_map(|o| match o {
            Output::OpenChannel(_, ch, Message::Open { discovery_key, .. })
                if *discovery_key == dk =>
            {
                Some(*ch)
            }
            _ => None,
        })
        .collect()
}

/// Events in `out` that say `core` has no peer or looks for one.
fn lost_events(out: &[Output], core: &CoreKey) -> usize {
    out.iter()
        .filter(|o| {
            matches!(o, Output::Event(Event::NoPeers { core: c } | Event::Reconnecting { core: c, .. }) if c == core)
        })
        .count()
}

/// `engine` replicating `CORE` (5 blocks, `mode`) with `PEER`, both holding the whole log;
/// the channel is returned.
fn in_sync_with_peer(mode: Mode, now: Instant) -> (Engine, ChannelId) {
    let mut engine = Engine::new(ME, EngineConfig::default());
    engine.add_core(CORE, local(5, false), mode, now);
    let ch = connect(&mut engine, PEER, now);
    engine.handle(Input::Message(PEER, ch, sync(5, true)), now);
    outputs(&mut engine);
    (engine, ch)
}

/// `PEER` closes channel `ch` as idle; the outputs are drained.
fn idle_close(engine: &mut Engine, ch: ChannelId, now: Instant) {
    let close = Message::Close {
        reason: IDLE_REASON.into(),
    };
    engine.handle(Input::Message(PEER, ch, close), now);
    outputs(engine);
}

/// The peer closes the core's only channel as idle, both holding the same log: the core keeps
/// it as its peer (no `NoPeers`, no search) and the channel stays closed while nothing
/// changes. The side that receives the `Close` was the one left searching at 10,000 cores.
#[test]
fn a_peers_idle_close_leaves_the_core_its_peer() {
    let now = Instant::now();
    let (mut engine, ch) = in_sync_with_peer(Mode::Full, now);
    let close = Message::Close {
        reason: IDLE_REASON.into(),
    };
    engine.handle(Input::Message(PEER, ch, close), now);
    let out = outputs(&mut engine);
    assert_eq!(lost_events(&out, &CORE), 0, "{out:?}");
    assert!(engine.channels.idle_closed(&PEER, &CORE));
    let mut t = now;
    for _ in 0..100 {
        t += Duration::from_secs(6);
        engine.handle_timeout(t);
        let out = outputs(&mut engine);
        assert_eq!(lost_events(&out, &CORE), 0, "{out:?}");
        assert!(opens_of(&out, &CORE).is_empty(), "{out:?}");
    }
    engine.check_timers().unwrap();
}

/// A peer that refused a core's channel for lack of room too often is not the core's peer:
/// once the core's other peer goes, it has none and looks for its peers.
#[test]
fn a_peer_that_refused_too_often_does_not_count_as_the_cores() {
    let now = Instant::now();
    let refuser = [7; 32];
    let (mut engine, _) = in_sync_with_peer(Mode::Full, now);
    known(&mut engine, CORE, refuser, now);
    engine.handle(Input::PeerConnected(refuser), now);
    let mut out = outputs(&mut engine);
    let mut t = now;
    let mut refusals = 0;
    while let Some(ch) = opens_of(&out, &CORE).pop() {
        let close = Message::Close {
            reason: NO_ROOM_REASON.into(),
        };
        engine.handle(Input::Message(refuser, ch, close), t);
        refusals += 1;
        out = outputs(&mut engine);
        while opens_of(&out, &CORE).is_empty() {
            let Some(next) = engine.poll_timeout() else {
                break;
            };
            if next > now + Duration::from_secs(600) {
                break;
            }
            t = next;
            engine.handle_timeout(t);
            out = outputs(&mut engine);
        }
        assert!(refusals < 20, "opened again without end");
    }
    assert!(refusals >= 8, "gave up after {refusals} refusals");
    engine.check_bounds().unwrap();
    engine.handle(Input::PeerDisconnected(PEER), t);
    let out = outputs(&mut engine);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(Event::NoPeers { core }) if *core == CORE)),
        "{out:?}"
    );
    engine.check_timers().unwrap();
}

/// A core closed idle with a peer that then opens a channel for it again: that channel
/// ending for another reason leaves the core without a peer, and it looks for one (the mark
/// of the old idle close does not outlive the new channel).
#[test]
fn a_channel_reopened_after_an_idle_close_is_missed_when_it_ends() {
    let now = Instant::now();
    let (mut engine, ch) = in_sync_with_peer(Mode::Full, now);
    idle_close(&mut engine, ch, now);
    // The peer (a lower id) opens it again, and its stream then fails.
    let theirs = 101;
    engine.handle(Input::Message(PEER, theirs, open_of(&CORE, PEER, ME)), now);
    assert!(engine.is_authenticated(theirs));
    assert!(!engine.channels.idle_closed(&PEER, &CORE));
    outputs(&mut engine);
    engine.handle(Input::ChannelClosed(PEER, theirs), now);
    let out = outputs(&mut engine);
    assert!(lost_events(&out, &CORE) > 0, "{out:?}");
    engine.check_timers().unwrap();
}

/// A sparse core with nothing wanted closes idle; made a full one, it wants every block and
/// its channel opens again.
#[test]
fn a_sparse_core_closed_idle_reopens_in_full_mode() {
    let now = Instant::now();
    let mut engine = Engine::new(ME, EngineConfig::default());
    engine.add_core(CORE, local_at(2, 2, false), Mode::Sparse, now);
    let ch = connect(&mut engine, PEER, now);
    engine.handle(Input::Message(PEER, ch, sync(2, true)), now);
    idle_close(&mut engine, ch, now);
    assert!(engine.channels.idle_closed(&PEER, &CORE));
    engine.add_core(CORE, local_at(2, 2, false), Mode::Full, now);
    let out = outputs(&mut engine);
    assert_eq!(opens_of(&out, &CORE).len(), 1, "{out:?}");
}

/// An update of a core closed idle asks the peer again: its channel opens, and the update
/// waits for it instead of answering at once with the length it had.
#[test]
fn an_update_reopens_an_idle_closed_channel_and_waits_for_it() {
    let now = Instant::now();
    let (mut engine, ch) = in_sync_with_peer(Mode::Full, now);
    idle_close(&mut engine, ch, now);
    engine.handle(Input::Update(CORE), now);
    let out = outputs(&mut engine);
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Event(Event::Updated { .. }))),
        "answered without asking: {out:?}"
    );
    let reopened = opens_of(&out, &CORE);
    assert_eq!(reopened.len(), 1, "{out:?}");
    engine.handle(
        Input::Message(PEER, reopened[0], accept_of(&CORE, ME, PEER)),
        now,
    );
    engine.handle(Input::Message(PEER, reopened[0], sync(5, true)), now);
    let out = outputs(&mut engine);
    assert!(
        out.iter().any(
            |o| matches!(o, Output::Event(Event::Updated { core, length: 5 }) if *core == CORE)
        ),
        "{out:?}"
    );
    engine.check_timers().unwrap();
}

/// The peer closes a channel as idle while we have news for it (they crossed): it opens
/// again at once, not at the core's next change. Cores waiting for room get a timer.
#[test]
fn an_idle_close_that_crosses_news_reopens_at_once() {
    let now = Instant::now();
    let me = [1; 32];
    let cfg = EngineConfig {
        max_channels_per_peer: 1,
        ..Default::default()
    };
    let mut engine = Engine::new(me, cfg);
    let (a, b) = ([3; 32], [4; 32]);
    engine.add_core(a, local(5, true), Mode::Full, now);
    engine.add_core(b, local(5, true), Mode::Full, now);
    known(&mut engine, a, PEER, now);
    known(&mut engine, b, PEER, now);
    engine.handle(Input::PeerConnected(PEER), now);
    let first = opened(&outputs(&mut engine));
    assert_eq!(first.len(), 1);
    let (ch, core) = first[0];
    assert!(
        engine.poll_timeout().is_some(),
        "a core waits for room: a timer"
    );
    let accept = accept_of(&core, me, PEER);
    engine.handle(Input::Message(PEER, ch, accept), now);
    // Our log grows before the peer's Sync says it holds the old one.
    engine.handle(Input::LocalChanged(core, grown()), now);
    engine.handle(Input::Message(PEER, ch, sync(5, true)), now);
    outputs(&mut engine);
    let close = Message::Close {
        reason: IDLE_REASON.into(),
    };
    engine.handle(Input::Message(PEER, ch, close), now);
    assert!(
        !engine.channels.idle_closed(&PEER, &core),
        "left closed despite news"
    );
    assert!(
        engine.channels.waits_to_open(&PEER, &core)
            || opened(&outputs(&mut engine))
                .iter()
                .any(|(_, k)| *k == core)
    );
    engine.check_timers().unwrap();
}

/// A peer leaves a core and replicates it again: its new channel's `Open` may arrive before
/// the `Close` of its old one (they travel on different streams). The new channel replaces
/// the old one: refusing it as a duplicate left neither side with a channel once the old
/// `Close` arrived.
#[test]
fn a_peers_new_channel_replaces_its_old_one_whose_close_is_late() {
    let now = Instant::now();
    let me = [1; 32];
    // The peer has the lower id: its channels are kept when both open.
    let peer = [0; 32];
    let mut engine = Engine::new(me, EngineConfig::default());
    engine.add_core(CORE, local(5, true), Mode::Full, now);
    engine.handle(Input::PeerConnected(peer), now);
    outputs(&mut engine);
    let open = open_of(&CORE, peer, me);
    engine.handle(Input::Message(peer, 1, open.clone()), now);
    engine.handle(Input::Message(peer, 1, sync(5, true)), now);
    outputs(&mut engine);
    engine.handle(Input::Message(peer, 3, open), now);
    let out = outputs(&mut engine);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Send(_, 3, Message::Accept { .. }))),
        "the new channel is accepted: {out:?}"
    );
    assert!(
        out.iter().any(|o| matches!(o, Output::CloseChannel(_, 1))),
        "the old one goes: {out:?}"
    );
    // The old channel's Close arrives late: the new one stays.
    let close = Message::Close {
        reason: crate::replication::engine::LEAVE_REASON.into(),
    };
    engine.handle(Input::Message(peer, 1, close), now);
    engine.handle(Input::Message(peer, 3, sync(5, true)), now);
    assert_eq!(engine.core_peers(&CORE), [peer]);
    engine.check_timers().unwrap();
}

/// A peer learns the discovery key of a core from us only if it is known to have or want
/// it: a stranger that connects gets no channel at all; a ticket's node gets the channels of
/// the cores it was named for, and of a core it is named for later, at once.
#[test]
fn channels_open_only_to_peers_known_to_have_the_core() {
    let now = Instant::now();
    let me = [1; 32];
    let (stranger, node) = ([7; 32], [8; 32]);
    let mut engine = Engine::new(me, EngineConfig::default());
    let [a, b, c] = [[3; 32], [4; 32], [5; 32]];
    for core in [a, b, c] {
        engine.add_core(core, local(5, true), Mode::Full, now);
    }
    outputs(&mut engine);

    engine.handle(Input::PeerConnected(stranger), now);
    assert_eq!(
        opened(&outputs(&mut engine)),
        vec![],
        "a stranger learns nothing"
    );
    engine.handle_timeout(now + Duration::from_secs(60));
    assert_eq!(opened(&outputs(&mut engine)), vec![], "not later either");

    known(&mut engine, a, node, now);
    engine.handle(Input::PeerConnected(node), now);
    let first = opened(&outputs(&mut engine));
    assert_eq!(first.iter().map(|(_, k)| *k).collect::<Vec<_>>(), vec![a]);
    engine.handle(Input::Peers(b, vec![node]), now);
    let then = opened(&outputs(&mut engine));
    assert_eq!(then.iter().map(|(_, k)| *k).collect::<Vec<_>>(), vec![b]);

    // A peer joined while the whole store is replicated gets every core, and a core added
    // later.
    let store_peer = [9; 32];
    engine.handle(Input::StorePeers(vec![store_peer]), now);
    engine.handle(Input::PeerConnected(store_peer), now);
    let all = opened(&outputs(&mut engine));
    assert_eq!(
        all.iter().map(|(_, k)| *k).collect::<Vec<_>>(),
        vec![a, b, c]
    );
    let d = [6; 32];
    engine.add_core(d, local(5, true), Mode::Full, now);
    let out = outputs(&mut engine);
    let to: Vec<[u8; 32]> = out
        .iter()
        .filter_map(|o| match o {
            Output::OpenChannel(p, ..) => Some(*p),
            _ => None,
        })
        .collect();
    assert_eq!(
        to,
        vec![store_peer],
        "a new core goes to the store peer alone"
    );
    engine.check_timers().unwrap();
}

/// A peer's channel that replaces its own still-open one (its `Close` of the old one comes
/// late) is no loss of the core's last peer: no `NoPeers`, no redial. Past 8 replacements a
/// second, a new one is refused and the old one kept (each moves the core's fetch sources).
#[test]
fn a_replaced_channel_is_no_lost_peer_and_replacements_are_rate_limited() {
    let now = Instant::now();
    let me = [1; 32];
    let low = [0; 32];
    let mut engine = Engine::new(me, EngineConfig::default());
    engine.add_core(CORE, local(5, true), Mode::Full, now);
    engine.handle(Input::PeerConnected(low), now);
    let open = open_of(&CORE, low, me);
    let mut refused = 0;
    for k in 0..40u64 {
        let channel = 2 * k + 1;
        engine.handle(Input::Message(low, channel, open.clone()), now);
        for o in outputs(&mut engine) {
            match o {
                Output::Event(Event::NoPeers { .. } | Event::Reconnecting { .. }) => {
                    panic!("replacement {k} reported as a lost peer")
                }
                Output::Send(_, ch, Message::Close { reason }) if ch == channel => {
                    assert_eq!(reason, "too many channels replaced");
                    refused += 1;
                }
                _ => {}
            }
        }
    }
    assert_eq!(refused, 40 - 9, "the first and 8 replacements are taken");
    assert_eq!(engine.peer_stats()[0].channels, 1, "the old channel stays");
    engine.check_timers().unwrap();
    // A second later, one more is.
    engine.handle(Input::Message(low, 101, open), now + Duration::from_secs(1));
    assert!(
        !outputs(&mut engine)
            .iter()
            .any(|o| matches!(o, Output::Send(_, 101, Message::Close { .. })))
    );
}

/// The ranges a peer says it holds are bounded over all its channels, not only per channel:
/// ten channels of 1,024 ranges each record at most `MAX_RANGES_PER_PEER` in all.
#[test]
fn the_ranges_a_peer_says_it_holds_are_bounded_over_its_channels() {
    let now = Instant::now();
    let me = [1; 32];
    let mut engine = Engine::new(me, EngineConfig::default());
    let cores: Vec<CoreKey> = (0..10u8).map(|i| [100 + i; 32]).collect();
    for core in &cores {
        engine.add_core(*core, local(1 << 20, true), Mode::Full, now);
        known(&mut engine, *core, PEER, now);
    }
    engine.handle(Input::PeerConnected(PEER), now);
    let mut channels = Vec::new();
    for o in outputs(&mut engine) {
        if let Output::OpenChannel(_, ch, Message::Open { discovery_key, .. }) = o {
            let core = *cores
                .iter()
                .find(|k| crate::crypto::discovery_key(k) == discovery_key)
                .unwrap();
            channels.push((ch, core));
        }
    }
    assert_eq!(channels.len(), cores.len());
    for (ch, core) in &channels {
        let accept = accept_of(core, me, PEER);
        engine.handle(Input::Message(PEER, *ch, accept), now);
        engine.handle(Input::Message(PEER, *ch, sync(0, false)), now);
        for i in 0..1100u64 {
            let range = Message::Range {
                start: 2 * i,
                end: 2 * i + 1,
            };
            engine.handle(Input::Message(PEER, *ch, range), now);
        }
        outputs(&mut engine);
        engine.check_bounds().unwrap();
    }
}

/// Both sides opening the channels of many cores at once is no replacement: a lower id's
/// channels for 40 cores, each crossing one of ours, are all taken.
#[test]
fn crossing_opens_of_many_cores_are_not_refused_as_replacements() {
    let now = Instant::now();
    let me = [1; 32];
    let low = [0; 32];
    let mut engine = Engine::new(me, EngineConfig::default());
    let cores: Vec<CoreKey> = (0..40u8).map(|i| [100 + i; 32]).collect();
    for core in &cores {
        engine.add_core(*core, local(5, true), Mode::Full, now);
        known(&mut engine, *core, low, now);
    }
    engine.handle(Input::PeerConnected(low), now);
    outputs(&mut engine);
    for (i, core) in cores.iter().enumerate() {
        let open = open_of(core, low, me);
        let channel = 2 * i as u64 + 1;
        engine.handle(Input::Message(low, channel, open), now);
        let out = outputs(&mut engine);
        assert!(
            out.iter().any(
                |o| matches!(o, Output::Send(_, ch, Message::Accept { .. }) if *ch == channel)
            ),
            "core {i}: {out:?}"
        );
    }
    assert_eq!(engine.peer_stats()[0].channels, cores.len());
}

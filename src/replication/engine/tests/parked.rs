//! Parked channels: a fair share of the slots for each peer, and an opener refused for lack
//! of room that opens again with back-off.

use std::time::{Duration, Instant};

use super::super::{
    Engine, EngineConfig, Input, Mode, NO_ROOM_REASON, Output,
    testing::{CORE, ME, PEER, known, local, outputs},
};
use crate::{
    crypto::{
        capability::{Role, capability},
        discovery_key,
    },
    replication::wire::Message,
};

/// The channels closed with `reason` among `out`.
fn closed_with(out: &[Output], reason: &str) -> Vec<u64> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(_, ch, Message::Close { reason: r }) if r == reason => Some(*ch),
            _ => None,
        })
        .collect()
}

/// Keyless peers fill every parked slot with channels for made-up cores. A reader of a core
/// the store holds (but the node does not replicate) still parks its channel: it takes the
/// oldest slot of the peer holding the most, which is refused "no room"; the core is looked
/// up and, once added, the reader's channel is adopted. The reader's slot is not taken back.
#[test]
fn keyless_peers_filling_the_parked_slots_do_not_shut_out_a_reader() {
    let now = Instant::now();
    let cfg = EngineConfig {
        max_parked: 8,
        max_parked_per_peer: 4,
        ..Default::default()
    };
    let mut engine = Engine::new(ME, cfg);
    let (a, b, reader) = ([20; 32], [21; 32], [22; 32]);
    for peer in [a, b, reader] {
        engine.handle(Input::PeerConnected(peer), now);
    }
    // Channel ids are the node's: odd ones are those peers open.
    let mut next_id = (1u64..).step_by(2);
    let mut open_for = |engine: &mut Engine, peer, discovery_key| {
        let id = next_id.next().unwrap_or_default();
        let open = Message::Open {
            discovery_key,
            capability: [0; 32],
        };
        engine.handle(Input::Message(peer, id, open), now);
        id
    };
    outputs(&mut engine);
    let a_first = open_for(&mut engine, a, [100; 32]);
    for i in 1..8u8 {
        open_for(&mut engine, if i < 4 { a } else { b }, [100 + i; 32]);
    }
    let out = outputs(&mut engine);
    assert_eq!(engine.parked_channels(), 8, "{out:?}");

    let dk = discovery_key(&CORE);
    let open = Message::Open {
        discovery_key: dk,
        capability: capability(&CORE, Role::Opener, &reader, &ME),
    };
    let reader_channel = 1001;
    engine.handle(Input::Message(reader, reader_channel, open), now);
    let out = outputs(&mut engine);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::FindCore(d) if *d == dk)),
        "the core is looked up: {out:?}"
    );
    assert!(engine.is_parked(&dk));
    assert_eq!(
        closed_with(&out, NO_ROOM_REASON),
        [a_first],
        "a's oldest gives way"
    );
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::CloseChannel(p, _) if *p == reader)),
        "{out:?}"
    );
    assert_eq!(engine.parked_channels(), 8);

    // The keyless peers keep opening: they take from each other, never from the reader.
    for i in 0..16u8 {
        open_for(&mut engine, if i % 2 == 0 { a } else { b }, [200 + i; 32]);
    }
    assert!(engine.is_parked(&dk), "the reader keeps its slot");
    outputs(&mut engine);

    engine.add_core(CORE, local(3, true), Mode::Full, now);
    let out = outputs(&mut engine);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Send(p, ch, Message::Accept { .. })
                if *p == reader && *ch == reader_channel)),
        "the reader's channel is adopted: {out:?}"
    );
    engine.check_timers().unwrap();
}

/// A peer refuses our channel for lack of room: it is opened again after 0.5 s, then 1 s,
/// 2 s … while refusals go on, until the peer accepts it. A refusal for another reason is
/// retried only as the core looks for its peers again, with its growing back-off.
#[test]
fn a_channel_refused_for_lack_of_room_is_opened_again_with_back_off() {
    let t0 = Instant::now();
    let mut engine = Engine::new(ME, EngineConfig::default());
    engine.add_core(CORE, local(3, true), Mode::Full, t0);
    known(&mut engine, CORE, PEER, t0);
    engine.handle(Input::PeerConnected(PEER), t0);
    let opened = |out: &[Output]| -> Vec<u64> {
        out.iter()
            .filter_map(|o| match o {
                Output::OpenChannel(_, ch, _) => Some(*ch),
                _ => None,
            })
            .collect()
    };
    let mut channel = opened(&outputs(&mut engine))[0];
    let mut now = t0;
    for wait_ms in [500, 1000, 2000] {
        let no_room = Message::Close {
            reason: NO_ROOM_REASON.into(),
        };
        engine.handle(Input::Message(PEER, channel, no_room), now);
        assert!(opened(&outputs(&mut engine)).is_empty(), "not at once");
        engine.check_timers().unwrap();
        let at = now + Duration::from_millis(wait_ms);
        // (The core's redial timer, for the peer it knows, may come first: it opens nothing.)
        engine.handle_timeout(at - Duration::from_millis(1));
        assert!(
            opened(&outputs(&mut engine)).is_empty(),
            "not before {wait_ms} ms"
        );
        engine.handle_timeout(at);
        let again = opened(&outputs(&mut engine));
        assert_eq!(again.len(), 1, "opened again after {wait_ms} ms");
        channel = again[0];
        now = at;
    }
    let accept = Message::Accept {
        capability: capability(&CORE, Role::Acceptor, &ME, &PEER),
    };
    engine.handle(Input::Message(PEER, channel, accept), now);
    assert!(engine.is_authenticated(channel));
    engine.check_timers().unwrap();

    // Another reason: the channel stays closed.
    let close = Message::Close {
        reason: "unknown core".into(),
    };
    engine.handle(Input::PeerDisconnected(PEER), now);
    engine.handle(Input::PeerConnected(PEER), now);
    let channel = opened(&outputs(&mut engine))[0];
    engine.handle(Input::Message(PEER, channel, close), now);
    outputs(&mut engine);
    // Only as the core looks for its peers again (it has none): after its redial back-off,
    // which grows.
    let mut opens = Vec::new();
    for _ in 0..8 {
        let Some(at) = engine.poll_timeout() else {
            break;
        };
        engine.handle_timeout(at);
        let again = opened(&outputs(&mut engine));
        if let Some(ch) = again.first() {
            opens.push(at);
            let close = Message::Close {
                reason: "unknown core".into(),
            };
            engine.handle(Input::Message(PEER, *ch, close), at);
            outputs(&mut engine);
        }
    }
    assert!(opens.len() >= 2, "{opens:?}");
    assert!(opens[0] >= now + Duration::from_millis(750), "not at once");
    assert!(
        opens[1] - opens[0] > Duration::from_millis(1400),
        "backed off: {opens:?}"
    );
    engine.check_timers().unwrap();
}

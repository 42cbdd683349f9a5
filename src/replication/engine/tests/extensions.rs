//! Extensions: named messages on a core's channel or the store channel, filtered, limited
//! and counted.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::super::{
    Engine, EngineConfig, Event, ExtensionTarget, Input, MAX_EXTENSION_PAYLOAD,
    MAX_STORE_CHANNEL_FRAME, Mode, Output, PeerStats, STORE_CHANNEL_KEY,
    testing::{CORE, PEER, engine_with_peer, local, outputs, sync},
};
use crate::{
    crypto::capability::{Role, capability},
    replication::wire::Message,
};

fn ext(name: &str, len: usize) -> Message {
    Message::Extension {
        name: name.into(),
        payload: vec![7; len],
    }
}

fn stats(engine: &Engine) -> PeerStats {
    engine.peer_stats().remove(0)
}

fn delivered(out: &[Output]) -> usize {
    out.iter()
        .filter(|o| matches!(o, Output::Event(Event::Extension { .. })))
        .count()
}

/// Only registered names within the size limit and the peer's rate are delivered; the
/// rest are counted, and the channel stays open.
#[test]
fn extension_messages_are_filtered_limited_and_counted() {
    let now = Instant::now();
    let (mut engine, ch) = engine_with_peer(local(3, true), Mode::Full, sync(3, false), now);
    engine.register_extension("chat");
    engine.handle(Input::Message(PEER, ch, ext("other", 10)), now);
    engine.handle(
        Input::Message(PEER, ch, ext("chat", MAX_EXTENSION_PAYLOAD + 1)),
        now,
    );
    assert_eq!(delivered(&outputs(&mut engine)), 0);
    engine.handle(
        Input::Message(PEER, ch, ext("chat", MAX_EXTENSION_PAYLOAD)),
        now,
    );
    let out = outputs(&mut engine);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(Event::Extension {
        core: Some(c), peer, name, payload
    }) if *c == CORE && *peer == PEER && name == "chat" && payload.len() == MAX_EXTENSION_PAYLOAD))
    );
    let rate = engine.config().extension_messages_per_second;
    for _ in 0..rate * 2 {
        engine.handle(Input::Message(PEER, ch, ext("chat", 1)), now);
    }
    let s = stats(&engine);
    assert_eq!(s.extensions_received, rate, "a second's worth at once");
    assert_eq!(s.extensions_dropped, 2 + rate + 1);
    assert!(
        !outputs(&mut engine)
            .iter()
            .any(|o| matches!(o, Output::CloseChannel(..))),
        "no channel closed"
    );
    let later = now + Duration::from_secs(1);
    engine.handle(Input::Message(PEER, ch, ext("chat", 1)), later);
    assert_eq!(delivered(&outputs(&mut engine)), 1, "the rate refills");
}

/// An extension to a peer with no shared core opens the store channel and waits for its
/// `Accept`; the peer's side accepts a store channel, delivers its extensions with no
/// core, and ignores anything else on it.
#[test]
fn the_store_channel_carries_extensions_between_peers_with_no_core_in_common() {
    let now = Instant::now();
    let (me, peer) = ([1; 32], PEER);
    let mut a = Engine::new(me, EngineConfig::default());
    let mut b = Engine::new(peer, EngineConfig::default());
    a.handle(Input::PeerConnected(peer), now);
    b.handle(Input::PeerConnected(me), now);
    b.register_extension("cores");
    outputs(&mut a);
    outputs(&mut b);

    let n = a.send_extension(
        ExtensionTarget::Peer(peer),
        "cores",
        Bytes::from_static(b"key"),
        now,
    );
    assert_eq!(n, 1);
    let out = outputs(&mut a);
    let (ch, open) = out
        .iter()
        .find_map(|o| match o {
            Output::OpenChannel(_, ch, open) => Some((*ch, open.clone())),
            _ => None,
        })
        .expect("the store channel opens");
    assert!(
        !out.iter().any(|o| matches!(o, Output::Send(..))),
        "nothing before the Accept"
    );
    // B accepts it; the peer-opened channel gets an odd id on B's side.
    b.handle(Input::Message(me, 1, open), now);
    let accept = outputs(&mut b)
        .into_iter()
        .find_map(|o| match o {
            Output::Send(_, 1, m @ Message::Accept { .. }) => Some(m),
            _ => None,
        })
        .expect("B accepts");
    a.handle(Input::Message(peer, ch, accept), now);
    let sent = outputs(&mut a)
        .into_iter()
        .find_map(|o| match o {
            Output::Send(_, c, m @ Message::Extension { .. }) if c == ch => Some(m),
            _ => None,
        })
        .expect("the queued extension follows the Accept");
    b.handle(Input::Message(me, 1, sent), now);
    let out = outputs(&mut b);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(Event::Extension {
        core: None, peer: p, name, payload
    }) if *p == me && name == "cores" && &payload[..] == b"key"))
    );
    // Anything else on the store channel is dropped, and counted.
    b.handle(Input::Message(me, 1, sync(5, false)), now);
    let out = outputs(&mut b);
    assert!(
        out.iter()
            .all(|o| !matches!(o, Output::Task(..) | Output::CloseChannel(..)))
    );
    assert_eq!(b.peer_stats()[0].dropped, 1);
    a.check_timers().unwrap();
    b.check_timers().unwrap();
}

/// Opens the store channel from both sides at once (`a` has the lower id): whichever
/// way the race goes, what each queued reaches the other.
#[test]
fn store_channels_opened_at_once_lose_nothing_queued() {
    let now = Instant::now();
    let (lo, hi) = ([1; 32], PEER);
    let mut a = Engine::new(lo, EngineConfig::default());
    let mut b = Engine::new(hi, EngineConfig::default());
    a.handle(Input::PeerConnected(hi), now);
    b.handle(Input::PeerConnected(lo), now);
    a.register_extension("x");
    b.register_extension("x");
    outputs(&mut a);
    outputs(&mut b);
    a.send_extension(
        ExtensionTarget::Peer(hi),
        "x",
        Bytes::from_static(b"from a"),
        now,
    );
    b.send_extension(
        ExtensionTarget::Peer(lo),
        "x",
        Bytes::from_static(b"from b"),
        now,
    );
    let a_open = outputs(&mut a);
    let b_open = outputs(&mut b);
    let open_of = |out: &[Output]| {
        out.iter()
            .find_map(|o| match o {
                Output::OpenChannel(_, ch, m) => Some((*ch, m.clone())),
                _ => None,
            })
            .unwrap()
    };
    let (a_ch, a_msg) = open_of(&a_open);
    let (b_ch, b_msg) = open_of(&b_open);
    // Each sees the other's Open; peer-opened channels get odd ids.
    a.handle(Input::Message(hi, b_ch + 1, b_msg), now);
    b.handle(Input::Message(lo, a_ch + 1, a_msg), now);
    let mut to_a: Vec<(u64, Message)> = outputs(&mut b)
        .into_iter()
        .filter_map(|o| match o {
            Output::Send(_, ch, m) => Some((ch, m)),
            _ => None,
        })
        .collect();
    let mut to_b: Vec<(u64, Message)> = outputs(&mut a)
        .into_iter()
        .filter_map(|o| match o {
            Output::Send(_, ch, m) => Some((ch, m)),
            _ => None,
        })
        .collect();
    // Deliver until quiet; channel ids map: ours even, theirs odd (+1).
    let id_at = |ch: u64| if ch.is_multiple_of(2) { ch + 1 } else { ch - 1 };
    let mut got = Vec::new();
    for _ in 0..4 {
        for (ch, m) in std::mem::take(&mut to_a) {
            a.handle(Input::Message(hi, id_at(ch), m), now);
        }
        for (ch, m) in std::mem::take(&mut to_b) {
            b.handle(Input::Message(lo, id_at(ch), m), now);
        }
        for o in outputs(&mut a) {
            match o {
                Output::Send(_, ch, m) => to_b.push((ch, m)),
                Output::Event(Event::Extension { payload, .. }) => got.push(payload),
                _ => {}
            }
        }
        for o in outputs(&mut b) {
            match o {
                Output::Send(_, ch, m) => to_a.push((ch, m)),
                Output::Event(Event::Extension { payload, .. }) => got.push(payload),
                _ => {}
            }
        }
    }
    got.sort();
    assert_eq!(got, [&b"from a"[..], b"from b"]);
}

/// Extension messages wait while the peer does not read what we send; a store channel
/// reads frames of one extension message at most; no core takes the store channel's key.
#[test]
fn extensions_respect_the_backlog_and_the_store_channel_is_its_own() {
    let now = Instant::now();
    let (mut engine, _) = engine_with_peer(local(3, true), Mode::Full, sync(3, false), now);
    let max = engine.config().max_backlog_bytes;
    engine.handle(
        Input::Backlog {
            peer: PEER,
            bytes: max,
            over: true,
        },
        now,
    );
    let payload = Bytes::from_static(b"hi");
    assert_eq!(
        engine.send_extension(ExtensionTarget::Core(CORE, PEER), "x", payload.clone(), now),
        0
    );
    assert_eq!(
        engine.send_extension(ExtensionTarget::Peer(PEER), "x", payload.clone(), now),
        0
    );
    engine.handle(
        Input::Backlog {
            peer: PEER,
            bytes: 0,
            over: false,
        },
        now,
    );
    assert_eq!(
        engine.send_extension(ExtensionTarget::Core(CORE, PEER), "x", payload.clone(), now),
        1
    );
    engine.send_extension(ExtensionTarget::Peer(PEER), "x", payload, now);
    let store = outputs(&mut engine)
        .into_iter()
        .find_map(|o| match o {
            Output::OpenChannel(_, ch, _) => Some(ch),
            _ => None,
        })
        .unwrap();
    let accept = Message::Accept {
        capability: capability(&STORE_CHANNEL_KEY, Role::Acceptor, &[1; 32], &PEER),
    };
    engine.handle(Input::Message(PEER, store, accept), now);
    assert_eq!(engine.max_frame(store), MAX_STORE_CHANNEL_FRAME);
    engine.add_core(*STORE_CHANNEL_KEY, local(0, false), Mode::Full, now);
    assert!(!engine.has_core(&STORE_CHANNEL_KEY));
}

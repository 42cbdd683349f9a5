//! Control messages (`Cancel`, `Unwant`) within a per-peer allowance.

use std::time::{Duration, Instant};

use super::super::{
    EngineConfig, Input, Mode, Output,
    testing::{PEER, engine_with_peer, local, outputs, sync},
};
use crate::replication::wire::Message;

/// A peer floods `Cancel`s and `Unwant`s: a second's worth (1,024) are handled, the rest are
/// dropped and counted, and a second's worth dropped closes the channel, which then carries
/// nothing. A second later the peer's allowance is back.
#[test]
fn a_flood_of_control_messages_is_dropped_past_the_allowance_and_closes_the_channel() {
    let t0 = Instant::now();
    let per_second = EngineConfig::default().control_messages_per_second;
    let (mut engine, channel) = engine_with_peer(local(10, true), Mode::Full, sync(10, true), t0);
    let mut closed_at = None;
    for i in 0..5 * per_second {
        let msg = if i % 2 == 0 {
            Message::Cancel { id: i }
        } else {
            Message::Unwant { start: 0, end: i }
        };
        engine.handle(Input::Message(PEER, channel, msg), t0);
        let out = outputs(&mut engine);
        if closed_at.is_none()
            && out.iter().any(|o| {
                matches!(o, Output::Send(_, ch, Message::Close { reason })
                    if *ch == channel && reason == "too many control messages")
            })
        {
            closed_at = Some(i);
        }
    }
    assert_eq!(
        closed_at,
        Some(2 * per_second - 1),
        "closed once a second's worth past the allowance was dropped"
    );
    let stats = engine.peer_stats();
    assert_eq!(stats[0].dropped, per_second, "dropped past the allowance");
    assert!(engine.core_peers(&super::super::testing::CORE).is_empty());
    engine.check_timers().unwrap();

    // A second later: its allowance is back (on a new channel).
    let later = t0 + Duration::from_secs(1);
    engine.handle(Input::PeerDisconnected(PEER), later);
    let channel = super::super::testing::connect(&mut engine, PEER, later);
    engine.handle(
        Input::Message(PEER, channel, Message::Cancel { id: 1 }),
        later,
    );
    assert!(outputs(&mut engine).is_empty());
    assert_eq!(engine.peer_stats()[0].dropped, 0);
}

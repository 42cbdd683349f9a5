//! `update`: the newest state of a core's peers, answered once each has said it (or after
//! the timeout for those that stay silent).

use std::time::Instant;

use super::super::{
    Event, Input, Mode, Output,
    testing::{CORE, PEER, engine_with_peer, local, outputs, sync},
    timer::Timer,
};
use crate::replication::wire::Message;

/// Whether the outputs report the update of `CORE` with `length`.
fn updated(outputs: &[Output], length: u64) -> bool {
    outputs.iter().any(|o| {
        matches!(o, Output::Event(Event::Updated { core, length: l })
            if *core == CORE && *l == length)
    })
}

/// An update asks the peer with a `Sync` that asks back, and resolves when the peer answers;
/// a peer that stays silent holds it up only until `upgrade_timeout`.
#[test]
fn an_update_resolves_when_its_peer_answers_or_after_the_timeout() {
    let now = Instant::now();
    let (mut engine, channel) = engine_with_peer(local(5, true), Mode::Full, sync(5, true), now);
    engine.handle(Input::Update(CORE), now);
    let out = outputs(&mut engine);
    assert!(
        out.iter().any(|o| matches!(o,
            Output::Send(p, ch, Message::Sync(info)) if *p == PEER && *ch == channel && info.ask)),
        "the peer is asked: {out:?}"
    );
    assert!(!updated(&out, 5), "not before the peer answered");
    engine.handle(Input::Message(PEER, channel, sync(5, false)), now);
    assert!(updated(&outputs(&mut engine), 5), "the answer resolves it");

    // The peer stays silent this time, and a second update asked meanwhile does not put the
    // timer back.
    engine.handle(Input::Update(CORE), now);
    assert!(!updated(&outputs(&mut engine), 5));
    let timeout = engine.config().upgrade_timeout;
    engine.handle(Input::Update(CORE), now + timeout / 2);
    assert!(!updated(&outputs(&mut engine), 5));
    assert!(engine.poll_timeout().is_some_and(|t| t <= now + timeout));
    engine.handle_timeout(now + timeout / 2);
    assert!(!updated(&outputs(&mut engine), 5), "not before the timeout");
    engine.check_timers().unwrap();
    engine.handle_timeout(now + timeout);
    assert!(
        updated(&outputs(&mut engine), 5),
        "the silent peer is waited for no more"
    );
    engine.check_timers().unwrap();
    assert!(engine.updating.is_empty());
    assert_eq!(engine.timers.get(Timer::Update(CORE)), None);
}

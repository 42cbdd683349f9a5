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

/// Blocks being stored (a run's apply task still running) do not hold an update past its
/// deadline: only an upgrade being applied can change the signed length.
#[test]
fn an_update_is_not_held_past_its_deadline_by_blocks_being_stored() {
    use super::super::{
        Task,
        testing::{junk_block, local_at, run_requests, sync_at, take_task},
    };
    let now = Instant::now();
    let (mut engine, channel, out) = super::super::testing::engine_with_peer_outputs(
        Default::default(),
        local_at(5, 0, false),
        Mode::Full,
        sync_at(5, 5, false),
        now,
    );
    let (id, start, _) = *run_requests(&out)
        .first()
        .expect("the missing blocks are asked");
    engine.handle(
        Input::Message(
            PEER,
            channel,
            Message::Data {
                id,
                proof: junk_block(start, 16),
            },
        ),
        now,
    );
    let mut out = outputs(&mut engine);
    take_task(&mut out, |t| matches!(t, Task::ApplyRun { .. })).expect("a run is applied");
    // The apply task is left running.
    engine.handle(Input::Update(CORE), now);
    outputs(&mut engine);
    let timeout = engine.config().upgrade_timeout;
    engine.handle_timeout(now + timeout);
    assert!(
        updated(&outputs(&mut engine), 5),
        "resolved at its deadline while blocks are stored"
    );
}

/// A channel that comes up while an update is under way is asked too, and waited for: a
/// peer's channel replaced in the middle of an update (its new one crossing ours) does not
/// end the update with the local length before the peer said its state.
#[test]
fn an_update_waits_for_a_channel_that_replaced_the_one_it_asked() {
    use super::super::testing::open_of;
    let now = Instant::now();
    let low = [0; 32];
    let me = super::super::testing::ME;
    let mut engine = super::super::Engine::new(me, Default::default());
    engine.add_core(CORE, local(5, false), Mode::Full, now);
    engine.handle(Input::PeerConnected(low), now);
    let open = open_of(&CORE, low, me);
    engine.handle(Input::Message(low, 1, open.clone()), now);
    engine.handle(Input::Message(low, 1, sync(5, false)), now);
    outputs(&mut engine);
    engine.handle(Input::Update(CORE), now);
    outputs(&mut engine);
    // Its new channel replaces the one asked, before that one answered.
    engine.handle(Input::Message(low, 3, open), now);
    let out = outputs(&mut engine);
    assert!(
        !updated(&out, 5),
        "ended before the peer said its state: {out:?}"
    );
    assert!(
        out.iter().any(|o| matches!(o,
            Output::Send(_, 3, Message::Sync(info)) if info.ask)),
        "the new channel is asked: {out:?}"
    );
    engine.handle(Input::Message(low, 3, sync(5, false)), now);
    assert!(updated(&outputs(&mut engine), 5));
}

/// The only channel asked goes before it answered (its peer restarted, or closed it to open
/// another): the update waits for the next channel's state instead of answering the local
/// length as if the peers had nothing, and with none coming, ends at its deadline.
#[test]
fn an_update_whose_only_peer_went_unanswered_waits_for_the_next_one() {
    use super::super::testing::open_of;
    let now = Instant::now();
    let low = [0; 32];
    let me = super::super::testing::ME;
    let mut engine = super::super::Engine::new(me, Default::default());
    engine.add_core(CORE, local(5, false), Mode::Full, now);
    engine.handle(Input::PeerConnected(low), now);
    let open = open_of(&CORE, low, me);
    engine.handle(Input::Message(low, 1, open.clone()), now);
    engine.handle(Input::Message(low, 1, sync(5, false)), now);
    outputs(&mut engine);
    engine.handle(Input::Update(CORE), now);
    outputs(&mut engine);
    engine.handle(Input::ChannelClosed(low, 1), now);
    let out = outputs(&mut engine);
    assert!(!updated(&out, 5), "ended as its peer went: {out:?}");
    // The peer opens its channel again and says its state: that answers the update.
    engine.handle(Input::Message(low, 3, open), now);
    outputs(&mut engine);
    engine.handle(Input::Message(low, 3, sync(5, false)), now);
    assert!(updated(&outputs(&mut engine), 5));

    // Again, and no peer comes back: the deadline ends it with the length held.
    engine.handle(Input::Update(CORE), now);
    outputs(&mut engine);
    engine.handle(Input::ChannelClosed(low, 3), now);
    assert!(!updated(&outputs(&mut engine), 5));
    let timeout = engine.config().upgrade_timeout;
    engine.handle_timeout(now + timeout);
    assert!(updated(&outputs(&mut engine), 5), "ended at its deadline");
    engine.check_timers().unwrap();
}

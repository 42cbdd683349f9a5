//! Fetching: what each core queues, what the application wants and no longer wants.

use std::time::Instant;

use super::super::{
    Engine, EngineConfig, Input, LocalInfo, Mode, Output,
    testing::{CORE, PEER, engine_with_peer, local, local_at, outputs, sync, sync_at},
};
use crate::replication::wire::{Message, SyncInfo};

/// In full mode, a read waiting past the length is remembered only until the length covers
/// it: every block below the length is queued anyway.
#[test]
fn full_mode_forgets_wants_the_length_covers() {
    let now = Instant::now();
    let mut engine = Engine::new([1; 32], EngineConfig::default());
    let core = [2; 32];
    engine.add_core(core, LocalInfo::default(), Mode::Full, now);
    engine.handle(Input::Want(core, 5, 7), now);
    assert_eq!(engine.cores[&core].wanted_blocks(), [5, 6]);
    let grown = LocalInfo {
        length: 6,
        byte_length: 6,
        ..Default::default()
    };
    engine.handle(Input::LocalChanged(core, grown), now);
    assert_eq!(engine.cores[&core].wanted_blocks(), [6]);
}

/// A sparse reader's blocks nobody wants any more leave the queue and their request is
/// cancelled with its peer (and the peer told); blocks another read still wants stay.
#[test]
fn unwanted_blocks_leave_the_queue_and_their_requests_are_cancelled() {
    let now = Instant::now();
    let (mut engine, channel) =
        engine_with_peer(local(100, false), Mode::Sparse, sync(100, false), now);
    engine.handle(Input::Want(CORE, 10, 20), now);
    engine.handle(Input::Want(CORE, 15, 16), now);
    let run = outputs(&mut engine)
        .into_iter()
        .find_map(|o| match o {
            Output::Send(_, ch, Message::RequestRun { id, start, end, .. }) if ch == channel => {
                Some((id, start, end))
            }
            _ => None,
        })
        .expect("the wanted blocks are asked for");
    assert_eq!((run.1, run.2), (10, 20));

    engine.handle(Input::Unwant(CORE, 10, 20), now);
    let out = outputs(&mut engine);
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Send(_, _, Message::Cancel { .. }))),
        "block 15 is still wanted: the request stays"
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Send(_, _, Message::Unwant { start: 10, end: 20 })
    )));
    assert_eq!(engine.queued_blocks(), 1, "only block 15 stays queued");

    engine.handle(Input::Unwant(CORE, 15, 16), now);
    let out = outputs(&mut engine);
    assert!(
        out.iter().any(
            |o| matches!(o, Output::Send(_, ch, Message::Cancel { id }) if *ch == channel && *id == run.0)
        ),
        "{out:?}"
    );
    assert_eq!(engine.queued_blocks(), 0);
    assert!(engine.cores[&CORE].wanted_blocks().is_empty());
    engine.check_timers().unwrap();
    // A late answer of the cancelled request is not taken.
    engine.handle(
        Input::Message(
            PEER,
            channel,
            Message::NoData {
                id: run.0,
                start: 10,
                end: 20,
            },
        ),
        now,
    );
    engine.check_timers().unwrap();
}

/// The `Sync`s our changes send in `mode` to a peer with `remote`'s state: whether one went
/// for each of `changes`.
fn syncs_sent(mode: Mode, remote: Message, changes: &[LocalInfo]) -> Vec<bool> {
    let now = Instant::now();
    let (mut engine, channel) = engine_with_peer(local_at(0, 0, false), mode, remote, now);
    outputs(&mut engine);
    changes
        .iter()
        .map(|&change| {
            engine.handle(Input::LocalChanged(CORE, change), now);
            outputs(&mut engine)
                .iter()
                .any(|o| matches!(o, Output::Send(_, ch, Message::Sync(_)) if *ch == channel))
        })
        .collect()
}

/// A downloading reader's state that still lacks blocks is not sent to a peer holding at
/// least as much of the same fork (it would fetch nothing from it, and a writer pushes only
/// to a reader holding its whole log): a whole store's reader no longer tells each core's
/// writer of its first upgrade. It is sent to a peer holding less or on another fork, the
/// whole log is sent to every peer, and a sparse reader sends every change.
#[test]
fn a_state_still_downloading_is_not_sent_to_a_peer_holding_it() {
    let upgraded = local_at(10, 0, false);
    let partly = local_at(10, 4, false);
    let whole = local_at(10, 10, false);
    let changes = [upgraded, partly, whole];
    let full = |remote| syncs_sent(Mode::Full, remote, &changes);
    assert_eq!(
        full(sync_at(10, 10, false)),
        [false, false, true],
        "a peer with the whole log"
    );
    assert_eq!(
        full(sync_at(10, 2, false)),
        [false, true, true],
        "a peer holding 2 blocks"
    );
    assert_eq!(
        full(sync_at(8, 8, false)),
        [true, true, true],
        "a peer with a shorter log"
    );
    let other_fork = Message::Sync(SyncInfo {
        fork: 1,
        length: 20,
        contiguous: 20,
        ask: false,
        downloading: false,
    });
    assert_eq!(
        full(other_fork),
        [true, true, true],
        "a peer on another fork"
    );
    assert_eq!(
        syncs_sent(Mode::Sparse, sync_at(10, 10, false), &[upgraded, partly]),
        [true, true],
        "a sparse reader"
    );
}

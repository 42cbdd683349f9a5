//! Pushes: the writer sends a new block with its upgrade to the readers following it live.

use std::time::Instant;

use super::super::{
    Input, Mode, Output, Task,
    testing::{CORE, PEER, engine_with_peer, local, outputs, proof_read, sync, take_task},
};
use crate::{
    replication::wire::Message,
    tree::{BlockProof, Proof, UpgradeProof},
};

fn pushed_proof(start: u64) -> Proof {
    Proof {
        block: Some(BlockProof {
            index: start,
            value: b"new".to_vec().into(),
            nodes: Vec::new(),
        }),
        upgrade: Some(UpgradeProof {
            start,
            length: 1,
            nodes: Vec::new(),
            additional_nodes: Vec::new(),
            signature: vec![0; 64],
        }),
        ..Default::default()
    }
}

#[test]
fn an_append_is_pushed_to_a_caught_up_downloader_before_our_sync() {
    let now = Instant::now();
    let (mut engine, channel) = engine_with_peer(local(5, true), Mode::Full, sync(5, true), now);
    engine.handle(Input::LocalChanged(CORE, local(7, true)), now);
    let mut out = outputs(&mut engine);
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Send(_, _, Message::Sync(_)))),
        "the Sync waits for the push"
    );
    let task = take_task(&mut out, |t| matches!(t, Task::CreateProof { .. }))
        .expect("a push proof is made");
    let Task::CreateProof { request, .. } = &task else {
        unreachable!()
    };
    assert_eq!(request.block.map(|b| b.index), Some(5));
    assert_eq!(request.upgrade.map(|u| (u.start, u.length)), Some((5, 2)));

    engine.handle(proof_read(task, Ok(pushed_proof(5))), now);
    let sent: Vec<Message> = outputs(&mut engine)
        .into_iter()
        .filter_map(|o| match o {
            Output::Send(_, ch, m) if ch == channel => Some(m),
            _ => None,
        })
        .collect();
    assert!(matches!(&sent[..], [Message::Push { .. }, Message::Sync(s)] if s.length == 7));
}

#[test]
fn no_push_to_a_sparse_peer_or_one_behind_nor_from_a_reader() {
    let now = Instant::now();
    for (remote, writable) in [
        (sync(5, false), true),
        (sync(4, true), true),
        (sync(5, true), false),
    ] {
        let (mut engine, _) = engine_with_peer(local(5, writable), Mode::Full, remote, now);
        engine.handle(Input::LocalChanged(CORE, local(6, writable)), now);
        let out = outputs(&mut engine);
        assert!(!out.iter().any(|o| matches!(o, Output::Task(..))));
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Send(_, _, Message::Sync(s)) if s.length == 6))
        );
    }
}

#[test]
fn a_fitting_push_is_applied_and_the_following_sync_asks_nothing() {
    let now = Instant::now();
    let (mut engine, channel) = engine_with_peer(local(5, false), Mode::Full, sync(5, true), now);
    let push = Message::Push {
        proof: pushed_proof(5),
    };
    engine.handle(Input::Message(PEER, channel, push), now);
    let applied = outputs(&mut engine).into_iter().find_map(|o| match o {
        Output::Task(_, Task::ApplyProof { proof, .. }) => proof.block.map(|b| b.index),
        _ => None,
    });
    assert_eq!(applied, Some(5), "the push is applied as an upgrade");
    engine.handle(Input::Message(PEER, channel, sync(6, true)), now);
    let out = outputs(&mut engine);
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Send(_, _, Message::Request { .. }))),
        "the pushed upgrade is under way: no second request"
    );
}

#[test]
fn a_push_that_does_not_fit_is_dropped_and_the_sync_path_remains() {
    let now = Instant::now();
    // Starts below our length, or we follow sparsely, or we are the writer.
    for (start, mode, writable) in [
        (4, Mode::Full, false),
        (5, Mode::Sparse, false),
        (5, Mode::Full, true),
    ] {
        let (mut engine, channel) = engine_with_peer(local(5, writable), mode, sync(5, true), now);
        let push = Message::Push {
            proof: pushed_proof(start),
        };
        engine.handle(Input::Message(PEER, channel, push), now);
        assert!(
            !outputs(&mut engine)
                .iter()
                .any(|o| matches!(o, Output::Task(..))),
            "dropped: push at {start} in {mode:?} mode, writable: {writable}"
        );
        engine.handle(Input::Message(PEER, channel, sync(6, true)), now);
        let asked = outputs(&mut engine)
            .iter()
            .any(|o| matches!(o, Output::Send(_, _, Message::Request { .. })));
        // A writer's state comes from its own appends: it never asks a peer for one.
        assert_eq!(
            asked, !writable,
            "the Sync starts an upgrade request in a reader"
        );
    }
}

/// The index of the block a push task proves, if `out` holds one.
fn push_task(out: &mut Vec<Output>) -> Option<(Task, u64)> {
    let task = take_task(out, |t| matches!(t, Task::CreateProof { .. }))?;
    let Task::CreateProof { request, .. } = &task else {
        unreachable!()
    };
    let index = request.block?.index;
    Some((task, index))
}

/// Appends one at a time outrun the reader's `Sync`: the next block is pushed on the promise
/// of the last push (one block, the whole growth), but only one push ahead of what the reader
/// confirmed, and not after a push of several blocks.
#[test]
fn appends_one_at_a_time_are_pushed_one_ahead_of_the_readers_sync() {
    let now = Instant::now();
    let (mut engine, channel) = engine_with_peer(local(5, true), Mode::Full, sync(5, true), now);
    let pushes = |engine: &mut super::super::Engine| -> Vec<u64> {
        outputs(engine)
            .into_iter()
            .filter_map(|o| match o {
                Output::Send(_, ch, Message::Push { proof }) if ch == channel => {
                    proof.block.map(|b| b.index)
                }
                _ => None,
            })
            .collect()
    };
    engine.handle(Input::LocalChanged(CORE, local(6, true)), now);
    let (task, index) = push_task(&mut outputs(&mut engine)).expect("confirmed: pushed");
    assert_eq!(index, 5);
    engine.handle(proof_read(task, Ok(pushed_proof(5))), now);
    assert_eq!(pushes(&mut engine), [5]);

    // The reader's Sync still says 5: block 6 goes on the promise of the push of 5.
    engine.handle(Input::LocalChanged(CORE, local(7, true)), now);
    let (task, index) = push_task(&mut outputs(&mut engine)).expect("pushed on the promise");
    assert_eq!(index, 6);
    engine.handle(proof_read(task, Ok(pushed_proof(6))), now);
    assert_eq!(pushes(&mut engine), [6]);

    // Two ahead of what the reader confirmed: our Sync, no push.
    engine.handle(Input::LocalChanged(CORE, local(8, true)), now);
    let out = outputs(&mut engine);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Task(..))),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Send(_, _, Message::Sync(s)) if s.length == 8))
    );

    // The reader caught up with everything: pushes resume from what it confirmed.
    engine.handle(Input::Message(PEER, channel, sync(8, true)), now);
    outputs(&mut engine);
    engine.handle(Input::LocalChanged(CORE, local(10, true)), now);
    let (task, index) = push_task(&mut outputs(&mut engine)).expect("confirmed: pushed");
    assert_eq!(index, 8);
    // A push of two blocks (8 and the upgrade to 10) promises no whole log: the next append
    // waits for the reader's Sync.
    let mut two = pushed_proof(8);
    if let Some(u) = two.upgrade.as_mut() {
        u.length = 2;
    }
    engine.handle(proof_read(task, Ok(two)), now);
    assert_eq!(pushes(&mut engine), [8]);
    engine.handle(Input::LocalChanged(CORE, local(11, true)), now);
    assert!(push_task(&mut outputs(&mut engine)).is_none());
}

/// A reader that drops our pushes (it is still applying the one before) catches up by
/// request, one block behind at each append: its upgrade request ends the promise, so the
/// writer does not push every append to it in vain.
#[test]
fn a_reader_that_asks_for_an_upgrade_is_pushed_nothing_on_a_promise() {
    use crate::tree::{IndexRequest, ProofRequest, UpgradeRequest};
    let now = Instant::now();
    let (mut engine, channel) = engine_with_peer(local(5, true), Mode::Full, sync(5, true), now);
    engine.handle(Input::LocalChanged(CORE, local(6, true)), now);
    let (task, _) = push_task(&mut outputs(&mut engine)).expect("confirmed: pushed");
    engine.handle(proof_read(task, Ok(pushed_proof(5))), now);
    outputs(&mut engine);
    // The reader dropped block 5 and asks for it with the signed length.
    let ask = Message::Request {
        id: 1,
        request: ProofRequest {
            fork: 0,
            block: Some(IndexRequest { index: 5, nodes: 0 }),
            upgrade: Some(UpgradeRequest {
                start: 5,
                length: 1,
            }),
            ..Default::default()
        },
    };
    engine.handle(Input::Message(PEER, channel, ask), now);
    outputs(&mut engine);
    // It got block 5 by request; block 6 is appended before its Sync says 6.
    engine.handle(Input::LocalChanged(CORE, local(7, true)), now);
    let out = outputs(&mut engine);
    assert!(
        !out.iter().any(
            |o| matches!(o, Output::Task(_, Task::CreateProof { request, .. })
            if request.block.map(|b| b.index) == Some(6))
        ),
        "no push on the promise of a push the reader did not take: {out:?}"
    );
    // Once its Sync confirms the whole log, pushes resume.
    engine.handle(Input::Message(PEER, channel, sync(7, true)), now);
    outputs(&mut engine);
    engine.handle(Input::LocalChanged(CORE, local(8, true)), now);
    let (_, index) = push_task(&mut outputs(&mut engine)).expect("confirmed: pushed");
    assert_eq!(index, 7);
}

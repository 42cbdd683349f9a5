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
            value: b"new".to_vec(),
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

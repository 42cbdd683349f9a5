//! Serving: requests are bounded per peer, wait for its backlog, cost no storage task when
//! nothing could answer them, and are not served once cancelled.

use std::time::Instant;

use super::super::{
    Engine, Input, Mode, Output, Task,
    testing::{PEER, connect, engine_with_peer, local, outputs, proof_read, sync, take_task},
};
use crate::{
    replication::wire::Message,
    tree::{BlockProof, IndexRequest, Proof, ProofRequest},
};

/// Requests that cannot be answered with anything (past the log, or asking for nothing) get
/// `NoData` at once: a flood of them costs no storage task.
#[test]
fn unanswerable_requests_cost_no_storage_task() {
    let now = Instant::now();
    let (mut engine, channel) = engine_with_peer(local(10, true), Mode::Full, sync(0, true), now);
    let requests = [
        // The requester claims a longer log: what counts is ours.
        Message::RequestRun {
            id: 1,
            fork: 0,
            start: 10,
            end: 20,
            length: 1000,
        },
        Message::Request {
            id: 2,
            request: ProofRequest::default(),
        },
        Message::Request {
            id: 3,
            request: ProofRequest {
                block: Some(IndexRequest {
                    index: 10,
                    nodes: 0,
                }),
                ..Default::default()
            },
        },
    ];
    for msg in requests {
        engine.handle(Input::Message(PEER, channel, msg), now);
    }
    let out = outputs(&mut engine);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Task(..))),
        "{out:?}"
    );
    let answered: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send(_, _, Message::NoData { id, .. }) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(answered, [1, 2, 3]);

    // A block within the log still goes to storage.
    engine.handle(Input::Message(PEER, channel, block_request(9)), now);
    assert!(
        outputs(&mut engine)
            .iter()
            .any(|o| matches!(o, Output::Task(..)))
    );
}

fn block_request(id: u64) -> Message {
    Message::Request {
        id,
        request: ProofRequest {
            block: Some(IndexRequest {
                index: id,
                nodes: 0,
            }),
            ..Default::default()
        },
    }
}

fn proof(index: u64) -> Proof {
    Proof {
        block: Some(BlockProof {
            index,
            value: b"x".to_vec().into(),
            nodes: Vec::new(),
        }),
        ..Default::default()
    }
}

/// The storage tasks in `out`, in order.
fn tasks(out: Vec<Output>) -> Vec<Task> {
    out.into_iter()
        .filter_map(|o| match o {
            Output::Task(_, t) => Some(t),
            _ => None,
        })
        .collect()
}

/// An engine serving `PEER`, who sent `extra` block requests (ids from 0) more than the serve
/// concurrency: the channel, the concurrency and the storage tasks started.
fn requests_past_concurrency(extra: u64, now: Instant) -> (Engine, u64, u64, Vec<Task>) {
    let (mut engine, channel) = engine_with_peer(local(10, true), Mode::Full, sync(0, true), now);
    let concurrency = engine.config().serve_concurrency as u64;
    for id in 0..concurrency + extra {
        engine.handle(Input::Message(PEER, channel, block_request(id)), now);
    }
    let tasks = tasks(outputs(&mut engine));
    assert_eq!(tasks.len() as u64, concurrency);
    (engine, channel, concurrency, tasks)
}

/// Requests beyond the concurrency wait for a task to finish.
#[test]
fn requests_beyond_the_concurrency_wait_for_a_task() {
    let now = Instant::now();
    let (mut engine, _, _, mut running) = requests_past_concurrency(2, now);
    let first = running.remove(0);
    engine.handle(proof_read(first, Err("gone".into())), now);
    let out = outputs(&mut engine);
    assert_eq!(
        out.iter().filter(|o| matches!(o, Output::Task(..))).count(),
        1,
        "{out:?}"
    );
}

/// Tasks of a connection that went away still hold the storage thread: a peer that
/// reconnects is served only as they finish, and nothing read for the old connection is
/// sent on the new one.
#[test]
fn serve_tasks_of_a_gone_connection_still_count() {
    let now = Instant::now();
    let (mut engine, _, concurrency, running) = requests_past_concurrency(0, now);
    engine.handle(Input::PeerDisconnected(PEER), now);
    outputs(&mut engine);
    let channel = connect(&mut engine, PEER, now);
    engine.handle(Input::Message(PEER, channel, sync(0, true)), now);
    engine.handle(Input::Message(PEER, channel, block_request(1)), now);
    assert!(
        tasks(outputs(&mut engine)).is_empty(),
        "{concurrency} tasks of the old connection run"
    );
    let mut running = running.into_iter();
    engine.handle(proof_read(running.next().unwrap(), Ok(proof(0))), now);
    let mut out = outputs(&mut engine);
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Send(_, _, Message::Data { .. }))),
        "an answer for the old connection was sent"
    );
    let task = take_task(&mut out, |_| true).expect("the new request gets the freed task");
    engine.handle(proof_read(task, Ok(proof(1))), now);
    assert!(
        outputs(&mut engine).iter().any(
            |o| matches!(o, Output::Send(_, ch, Message::Data { id: 1, .. }) if *ch == channel)
        )
    );
    for task in running {
        engine.handle(proof_read(task, Err("gone".into())), now);
    }
    assert_eq!(engine.server.reading(&PEER), (0, 0), "no counter left");
}

/// A peer whose backlog is over the limit is served nothing until it reads.
#[test]
fn a_peer_over_its_backlog_waits() {
    let now = Instant::now();
    let (mut engine, channel) = engine_with_peer(local(10, true), Mode::Full, sync(0, true), now);
    let max = engine.config().max_backlog_bytes;
    engine.handle(
        Input::Backlog {
            peer: PEER,
            bytes: max,
            over: true,
        },
        now,
    );
    engine.handle(Input::Message(PEER, channel, block_request(0)), now);
    assert!(tasks(outputs(&mut engine)).is_empty());
    engine.handle(
        Input::Backlog {
            peer: PEER,
            bytes: 0,
            over: false,
        },
        now,
    );
    assert_eq!(tasks(outputs(&mut engine)).len(), 1);
    engine.handle(
        Input::Backlog {
            peer: [7; 32],
            bytes: max,
            over: true,
        },
        now,
    );
    assert!(
        outputs(&mut engine).is_empty(),
        "an unknown peer changes nothing"
    );
}

/// A cancelled request is not served: a queued one never costs a task, and one being read
/// is not sent when its task ends (nor is anything answered for either).
#[test]
fn cancelled_requests_are_not_served() {
    let now = Instant::now();
    let (mut engine, channel, concurrency, running) = requests_past_concurrency(1, now);
    // Cancel the queued one (id `concurrency`) and the first running one (id 0).
    for id in [concurrency, 0] {
        engine.handle(Input::Message(PEER, channel, Message::Cancel { id }), now);
    }
    let mut running = running.into_iter();
    engine.handle(proof_read(running.next().unwrap(), Ok(proof(0))), now);
    engine.handle(proof_read(running.next().unwrap(), Ok(proof(1))), now);
    let out = outputs(&mut engine);
    let answered: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send(_, _, Message::Data { id, .. } | Message::NoData { id, .. }) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(answered, [1], "only the request not cancelled is answered");
    assert!(
        !out.iter().any(|o| matches!(o, Output::Task(..))),
        "the cancelled queued request got a task: {out:?}"
    );
    assert_eq!(
        engine.server.reading(&PEER).0 as u64,
        concurrency - 2,
        "nothing is kept of the requests read"
    );
    // A Cancel of a request that is neither queued nor read changes nothing.
    engine.handle(
        Input::Message(PEER, channel, Message::Cancel { id: 99 }),
        now,
    );
    assert!(outputs(&mut engine).is_empty());
}

/// A run wholly past our log costs no storage task, whatever length the requester claims:
/// there is nothing of it to read.
#[test]
fn a_run_past_our_log_costs_no_storage_task_whatever_length_is_claimed() {
    let now = Instant::now();
    let (mut engine, channel) = engine_with_peer(local(10, true), Mode::Full, sync(0, true), now);
    let msg = Message::RequestRun {
        id: 1,
        fork: 0,
        start: 10,
        end: 20,
        length: 1 << 40,
    };
    engine.handle(Input::Message(PEER, channel, msg), now);
    let out = outputs(&mut engine);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Task(..))),
        "{out:?}"
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Send(
            _,
            _,
            Message::NoData {
                id: 1,
                start: 10,
                end: 20
            }
        )
    )));
}

/// A run is read in parts of `serve_run_bytes`: the storage task asks for that much, and the
/// run the requester asked for.
#[test]
fn a_run_is_read_in_parts_of_the_configured_size() {
    let now = Instant::now();
    let (mut engine, channel) = engine_with_peer(local(100, true), Mode::Full, sync(0, true), now);
    let run_bytes = engine.config().serve_run_bytes;
    let msg = Message::RequestRun {
        id: 1,
        fork: 0,
        start: 10,
        end: 20,
        length: 100,
    };
    engine.handle(Input::Message(PEER, channel, msg), now);
    let task = take_task(&mut outputs(&mut engine), |t| {
        matches!(t, Task::CreateRun { .. })
    })
    .expect("the run is read");
    let Task::CreateRun {
        start,
        end,
        length,
        max_bytes,
        ..
    } = task
    else {
        unreachable!()
    };
    assert_eq!((start, end, length, max_bytes), (10, 20, 100, run_bytes));
}

/// Forty peers each ask for four blocks: at most `serve_concurrency_total` storage tasks run
/// at once over all of them, and as each ends the next task goes to a peer that had none
/// running, in turn, rather than back to the peer whose task ended.
#[test]
fn storage_tasks_for_all_peers_are_bounded_and_shared_in_turn() {
    let now = Instant::now();
    let mut engine = Engine::new(super::super::testing::ME, Default::default());
    engine.add_core(
        super::super::testing::CORE,
        local(10, true),
        Mode::Full,
        now,
    );
    let total = engine.config().serve_concurrency_total;
    let peers: Vec<[u8; 32]> = (0..40u8).map(|i| [100 + i; 32]).collect();
    let mut running = Vec::new();
    for peer in &peers {
        let channel = connect(&mut engine, *peer, now);
        engine.handle(Input::Message(*peer, channel, sync(0, true)), now);
        for id in 0..4 {
            engine.handle(Input::Message(*peer, channel, block_request(id)), now);
        }
        running.extend(tasks(outputs(&mut engine)));
    }
    assert_eq!(running.len(), total, "at most {total} at once");
    // Peers 0..8 got four each (the per-peer share); the rest wait.
    let first = running.remove(0);
    engine.handle(proof_read(first, Err("gone".into())), now);
    let next = tasks(outputs(&mut engine));
    assert_eq!(next.len(), 1, "one task ended, one starts");
    let served: Vec<[u8; 32]> = engine.server.running_peers();
    assert!(
        served.contains(&peers[total / 4]),
        "the next peer in turn, which had none: {served:?}"
    );
}

//! The frames of one read handled in one turn (`Engine::handle_messages`) as they are one at a
//! time, but for their blocks, which go to storage together.

use std::time::Instant;

use super::super::{
    ApplyOutcome, Engine, EngineConfig, Event, Input, Mode, Output, Task,
    testing::{
        PEER, engine_with_peer, engine_with_peer_outputs, junk_block, local_at, outputs,
        run_applied, run_requests, sync_at, upgrade_answer,
    },
};
use crate::core::RunApplied;

/// The smallest batch a second apply starts beside.
const BESIDE: u64 = super::super::sync::MIN_BATCH_BESIDE as u64;
use crate::replication::wire::Message;

/// A reader missing blocks 40..200 of a peer's log, which says it holds none of them yet,
/// and the channel to that peer.
fn reader(now: Instant) -> (Engine, u64) {
    engine_with_peer(
        local_at(200, 40, false),
        Mode::Full,
        sync_at(200, 0, false),
        now,
    )
}

/// A batch of a peer's messages (what it holds and wants, an answer we did not ask for, a
/// cancel of nothing) gives the same outputs and timers handled in one turn as one at a
/// time: only the scheduling after each is saved.
#[test]
fn a_batch_gives_what_its_messages_give_one_at_a_time() {
    let now = Instant::now();
    let batch = vec![
        // Blocks to ask for: only a scheduling pass sends those requests.
        Message::Range {
            start: 100,
            end: 200,
        },
        Message::Want { start: 0, end: 10 },
        Message::NoData {
            id: 12_345,
            start: 0,
            end: 5,
        },
        Message::Unwant { start: 0, end: 10 },
        Message::Cancel { id: 7 },
        Message::Range {
            start: 300,
            end: 400,
        },
    ];
    let (mut one_by_one, channel) = reader(now);
    for msg in batch.clone() {
        one_by_one.handle(Input::Message(PEER, channel, msg), now);
    }
    let (mut together, ch) = reader(now);
    assert_eq!(ch, channel);
    together.handle_messages(PEER, channel, batch, now);
    let mut expected: Vec<String> = outputs(&mut one_by_one)
        .iter()
        .map(|o| format!("{o:?}"))
        .collect();
    let mut got: Vec<String> = outputs(&mut together)
        .iter()
        .map(|o| format!("{o:?}"))
        .collect();
    assert!(
        expected.iter().any(|o| o.contains("RequestRun")),
        "the batch asks for blocks: {expected:?}"
    );
    // Requests may go out after the batch's other answers rather than between them.
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    one_by_one.check_timers().expect("timers one at a time");
    together.check_timers().expect("timers in one turn");
}

/// A reader missing blocks `40..length` that a peer holds whole, with `cfg`; the channel and
/// the run requests (id, start, end).
fn asking_runs(
    cfg: EngineConfig,
    length: u64,
    now: Instant,
) -> (Engine, u64, Vec<(u64, u64, u64)>) {
    let (engine, channel, out) = engine_with_peer_outputs(
        cfg,
        local_at(length, 40, false),
        Mode::Full,
        sync_at(length, length, false),
        now,
    );
    (engine, channel, run_requests(&out))
}

/// A reader missing blocks 40..200 that a peer holds whole, with `cfg`; the channel and the
/// first run request (id, start, end).
fn asking(cfg: EngineConfig, now: Instant) -> (Engine, u64, (u64, u64, u64)) {
    let (engine, channel, runs) = asking_runs(cfg, 200, now);
    let run = *runs.first().expect("a run is asked");
    (engine, channel, run)
}

/// `Data` answers to run `id` for `indices`, 100 bytes each.
fn answers(id: u64, indices: std::ops::Range<u64>) -> Vec<Message> {
    indices
        .map(|i| Message::Data {
            id,
            proof: junk_block(i, 100),
        })
        .collect()
}

/// The block indices a run apply task applies.
fn run_indices(task: &Task) -> Option<Vec<u64>> {
    let Task::ApplyRun { proofs, .. } = task else {
        return None;
    };
    Some(
        proofs
            .iter()
            .filter_map(|p| p.block.as_ref().map(|b| b.index))
            .collect(),
    )
}

/// The apply tasks among the engine's outputs, each as the block indices it applies.
fn applies(engine: &mut Engine) -> (Vec<Vec<u64>>, Vec<Task>) {
    let mut tasks = Vec::new();
    let mut indices = Vec::new();
    for o in outputs(engine) {
        if let Output::Task(_, t) = o
            && let Some(applied) = run_indices(&t)
        {
            indices.push(applied);
            tasks.push(t);
        }
    }
    (indices, tasks)
}

/// A reader asking for a run of at least `BESIDE + more` blocks that received its first
/// `BESIDE` (applied as one batch): the engine, the channel, the run's id and start, and the
/// time.
fn after_a_large_batch(more: u64) -> (Engine, u64, u64, u64, Instant) {
    let now = Instant::now();
    let (mut engine, channel, (id, start, end)) = asking(EngineConfig::default(), now);
    assert!(end - start >= BESIDE + more, "{start}..{end}");
    engine.handle_messages(PEER, channel, answers(id, start..start + BESIDE), now);
    (engine, channel, id, start, now)
}

/// The blocks of one read go to storage in one apply: the first block no longer starts an
/// apply of its own while the others wait for the next (a whole store's cores of 10 small
/// blocks took 2.3 applies each). A second apply starts while a large first one runs (it is
/// verified while the first is written); blocks that arrive while two run wait, and go
/// together once nothing applies or beside a large batch only.
#[test]
fn the_blocks_of_a_read_are_applied_together() {
    let (big, half) = (BESIDE, BESIDE / 2);
    let (mut engine, channel, id, start, now) = after_a_large_batch(half + 20);
    let (applied, mut tasks) = applies(&mut engine);
    assert_eq!(
        applied,
        vec![(start..start + big).collect::<Vec<_>>()],
        "one apply"
    );
    let second = start + big..start + big + half;
    engine.handle_messages(PEER, channel, answers(id, second.clone()), now);
    let (applied, second_task) = applies(&mut engine);
    tasks.extend(second_task);
    assert_eq!(
        applied,
        vec![second.clone().collect::<Vec<_>>()],
        "a second apply while the first runs"
    );
    // Two more reads while both run: nothing starts until the first ends, then both go as one.
    let rest = start + big + half;
    engine.handle_messages(PEER, channel, answers(id, rest..rest + 10), now);
    engine.handle_messages(PEER, channel, answers(id, rest + 10..rest + 20), now);
    assert!(applies(&mut engine).0.is_empty(), "two applies at a time");
    let stored = RunApplied {
        stored: (start..start + big).map(|i| (i, 100)).collect(),
        rejected: None,
    };
    let local = local_at(200, start + big, false);
    let done = run_applied(tasks.remove(0), ApplyOutcome::Done(stored), local);
    engine.handle(done, now);
    assert!(
        applies(&mut engine).0.is_empty(),
        "nothing beside the second, a small batch"
    );
    let stored = RunApplied {
        stored: second.map(|i| (i, 100)).collect(),
        rejected: None,
    };
    let local = local_at(200, rest, false);
    let done = run_applied(tasks.remove(0), ApplyOutcome::Done(stored), local);
    engine.handle(done, now);
    let (applied, _) = applies(&mut engine);
    assert_eq!(applied, vec![(rest..rest + 20).collect::<Vec<_>>()]);
    engine.check_timers().expect("timers");
}

/// The apply tasks among `out`, and whether it reports a peer's data invalid.
fn split_outputs(out: Vec<Output>) -> (Vec<Task>, usize) {
    let mut tasks = Vec::new();
    let mut invalid = 0;
    for o in out {
        match o {
            Output::Task(_, t @ Task::ApplyRun { .. }) => tasks.push(t),
            Output::Event(Event::Invalid { .. }) => invalid += 1,
            _ => {}
        }
    }
    (tasks, invalid)
}

/// Two applies: the first, of run 1, rejects its block 45 (`first_rejects`; the peer is
/// blamed for it) or stores everything; the second, started while the first ran, holds the
/// next blocks of run 1 (`same_run`) or the first of run 2, and fails at its first block.
/// Returns how many times the peer was blamed for the second.
fn blamed_for_the_second(first_rejects: bool, same_run: bool) -> usize {
    let now = Instant::now();
    let (mut engine, channel, runs) = asking_runs(EngineConfig::default(), 400, now);
    let (big, half) = (BESIDE, BESIDE / 2);
    let [(one, start, one_end), (two, two_start, _), ..] = runs[..] else {
        panic!("two runs are asked: {runs:?}")
    };
    assert!(one_end - start >= big + half, "{runs:?}");
    engine.handle_messages(PEER, channel, answers(one, start..start + big), now);
    let (mut first, _) = split_outputs(outputs(&mut engine));
    let (id, second_start) = if same_run {
        (one, start + big)
    } else {
        (two, two_start)
    };
    engine.handle_messages(
        PEER,
        channel,
        answers(id, second_start..second_start + half),
        now,
    );
    let (mut second, _) = split_outputs(outputs(&mut engine));
    assert_eq!((first.len(), second.len()), (1, 1), "two applies at once");
    let (stored_to, rejected) = if first_rejects {
        let err = crate::error::Error::InvalidArgument("forged");
        (start + 5, Some((start + 5, err)))
    } else {
        (start + big, None)
    };
    let applied = RunApplied {
        stored: (start..stored_to).map(|i| (i, 100)).collect(),
        rejected,
    };
    let local = local_at(400, stored_to, false);
    engine.handle(
        run_applied(first.remove(0), ApplyOutcome::Done(applied), local),
        now,
    );
    let (_, blamed_first) = split_outputs(outputs(&mut engine));
    assert_eq!(blamed_first, usize::from(first_rejects));
    // The second's first block relied on nodes the first did not store, when it rejected.
    let applied = RunApplied {
        stored: Vec::new(),
        rejected: Some((
            second_start,
            crate::error::Error::InvalidArgument("missing node"),
        )),
    };
    engine.handle(
        run_applied(second.remove(0), ApplyOutcome::Done(applied), local),
        now,
    );
    let (_, blamed_second) = split_outputs(outputs(&mut engine));
    engine.check_timers().expect("timers");
    blamed_second
}

/// A block that fails because an apply before it lost a block of its run is not blamed on
/// its peer (blamed once, for the block that failed first); one that fails on its own is,
/// and so is one of another run than the block lost.
#[test]
fn a_block_that_relied_on_one_an_earlier_apply_lost_is_not_blamed() {
    assert_eq!(
        blamed_for_the_second(true, true),
        0,
        "excused: its run lost a block"
    );
    assert_eq!(
        blamed_for_the_second(false, true),
        1,
        "blamed: nothing was lost"
    );
    assert_eq!(
        blamed_for_the_second(true, false),
        1,
        "blamed: another run lost a block"
    );
}

/// One block handled alone is applied in the same turn, as before.
#[test]
fn a_block_alone_is_applied_in_its_turn() {
    let now = Instant::now();
    let (mut engine, channel, (id, start, _)) = asking(EngineConfig::default(), now);
    for msg in answers(id, start..start + 1) {
        engine.handle(Input::Message(PEER, channel, msg), now);
    }
    assert_eq!(applies(&mut engine).0, vec![vec![start]]);
}

/// A read that passes the cap on held bytes still stores the blocks before the one over it:
/// the over-cap block breaks its run (its later blocks are asked again), and a broken run's
/// pending blocks are dropped, so they are applied first.
#[test]
fn the_blocks_before_one_over_the_held_cap_are_applied() {
    let now = Instant::now();
    let mut cfg = EngineConfig::default();
    cfg.fetch.max_held_bytes = 250;
    let (mut engine, channel, (id, start, end)) = asking(cfg, now);
    assert!(end - start >= 5, "{start}..{end}");
    // 100 bytes each: the third passes 250.
    engine.handle_messages(PEER, channel, answers(id, start..start + 5), now);
    assert_eq!(applies(&mut engine).0, vec![vec![start, start + 1]]);
}

/// The apply tasks among `out`: the runs' block indices and the number of upgrade applies.
fn applies_in(out: &[Output]) -> (Vec<Vec<u64>>, usize) {
    let tasks = || {
        out.iter().filter_map(|o| match o {
            Output::Task(_, t) => Some(t),
            _ => None,
        })
    };
    let upgrades = tasks()
        .filter(|t| matches!(t, Task::ApplyProof { .. }))
        .count();
    (tasks().filter_map(run_indices).collect(), upgrades)
}

/// A second apply starts beside the first only once it has half as many proofs (a smaller
/// one would be verified while the first still is, and hide nothing), and never beside a
/// batch of fewer than `MIN_BATCH_BESIDE` (it would only split their commits).
#[test]
fn a_second_apply_waits_for_half_of_a_large_first_batch() {
    let (big, half) = (BESIDE, BESIDE / 2);
    let (mut engine, channel, id, start, now) = after_a_large_batch(half);
    assert_eq!(applies_in(&outputs(&mut engine)).0.len(), 1);
    let second = start + big;
    engine.handle_messages(PEER, channel, answers(id, second..second + half - 1), now);
    assert!(
        applies_in(&outputs(&mut engine)).0.is_empty(),
        "less than half"
    );
    engine.handle_messages(
        PEER,
        channel,
        answers(id, second + half - 1..second + half),
        now,
    );
    assert_eq!(
        applies_in(&outputs(&mut engine)).0,
        vec![(second..second + half).collect::<Vec<_>>()],
        "half"
    );
    engine.check_timers().expect("timers");

    let (mut engine, channel, (id, start, _)) = asking(EngineConfig::default(), now);
    let small = big - 1;
    engine.handle_messages(PEER, channel, answers(id, start..start + small), now);
    assert_eq!(applies_in(&outputs(&mut engine)).0.len(), 1);
    let second = start + small;
    engine.handle_messages(PEER, channel, answers(id, second..second + small), now);
    assert!(
        applies_in(&outputs(&mut engine)).0.is_empty(),
        "nothing beside a small batch"
    );
}

/// An upgrade that arrives while two runs apply waits for both to end, and no run starts
/// before it: it is applied alone.
#[test]
fn an_upgrade_waits_for_the_runs_applying_and_goes_alone() {
    let (big, half) = (BESIDE, BESIDE / 2);
    let (mut engine, channel, id, start, now) = after_a_large_batch(half + 10);
    let (mut first, _) = split_outputs(outputs(&mut engine));
    let rest = start + big + half;
    engine.handle_messages(PEER, channel, answers(id, start + big..rest), now);
    let (mut second, _) = split_outputs(outputs(&mut engine));
    assert_eq!((first.len(), second.len()), (1, 1), "two applies at once");
    // The peer grew: asked for its upgrade, which it answers while both runs apply.
    engine.handle(Input::Message(PEER, channel, sync_at(300, 300, false)), now);
    let asked = outputs(&mut engine).into_iter().find_map(|o| match o {
        Output::Send(_, _, Message::Request { id, request }) if request.upgrade.is_some() => {
            Some(id)
        }
        _ => None,
    });
    let asked = asked.expect("the upgrade is asked");
    // Asked without a block.
    let mut proof = upgrade_answer(200, 100);
    proof.block = None;
    let answer = Message::Data { id: asked, proof };
    engine.handle(Input::Message(PEER, channel, answer), now);
    engine.handle_messages(PEER, channel, answers(id, rest..rest + 10), now);
    assert_eq!(
        applies_in(&outputs(&mut engine)),
        (vec![], 0),
        "both runs apply"
    );
    let ended = |from: u64, to: u64| {
        let applied = RunApplied {
            stored: (from..to).map(|i| (i, 100)).collect(),
            rejected: None,
        };
        (ApplyOutcome::Done(applied), local_at(200, to, false))
    };
    let (outcome, local) = ended(start, start + big);
    engine.handle(run_applied(first.remove(0), outcome, local), now);
    assert_eq!(
        applies_in(&outputs(&mut engine)),
        (vec![], 0),
        "one run applies"
    );
    let (outcome, local) = ended(start + big, rest);
    engine.handle(run_applied(second.remove(0), outcome, local), now);
    assert_eq!(
        applies_in(&outputs(&mut engine)),
        (vec![], 1),
        "the upgrade alone"
    );
    engine.check_timers().expect("timers");
}

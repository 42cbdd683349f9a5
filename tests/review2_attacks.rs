//! Attacks found by the second adversarial review, of the first review's fixes (ranges of
//! sources per peer, the channel's `sourced` watermark, pushes that withdraw an outstanding
//! upgrade). Each test is named after what must hold; its doc says how the attack worked before
//! the fix. All failed on the code they were written against and pass now.
//!
//! Engine-level tests drive a `replication::Engine` directly (a fixed clock, hand-made
//! authenticated channels, storage tasks answered by the test).

use std::time::{Duration, Instant};

use iroh_hypercore::{
    crypto::capability::{Role, capability},
    replication::{
        Engine, EngineConfig, Input, LocalInfo, Mode, Output, Task,
        engine::{Applied, ApplyOutcome},
        wire::{Message, SyncInfo},
    },
    tree::{BlockProof, Proof, UpgradeProof},
};

const ME: [u8; 32] = [1; 32];
const CORE: [u8; 32] = [2; 32];

fn local(length: u64, contiguous: u64) -> LocalInfo {
    LocalInfo {
        fork: 0,
        length,
        byte_length: length * 1024,
        contiguous,
        writable: false,
    }
}

fn sync_msg(length: u64, contiguous: u64) -> Message {
    Message::Sync(SyncInfo {
        fork: 0,
        length,
        contiguous,
        ask: false,
        downloading: false,
    })
}

fn drain(engine: &mut Engine) -> Vec<Output> {
    std::iter::from_fn(|| engine.poll_output()).collect()
}

/// Connects `peer` to `engine` (which opens the channel, `ME` being lower) and accepts it with
/// a valid capability. Returns the channel.
fn connect(engine: &mut Engine, peer: [u8; 32], now: Instant) -> u64 {
    connect_keeping(engine, peer, now, &mut Vec::new())
}

/// [`connect`], keeping the engine's other outputs in `rest`.
fn connect_keeping(
    engine: &mut Engine,
    peer: [u8; 32],
    now: Instant,
    rest: &mut Vec<Output>,
) -> u64 {
    engine.handle(Input::PeerConnected(peer), now);
    let mut ch = None;
    for o in drain(engine) {
        match o {
            Output::OpenChannel(_, c, _) => ch = Some(c),
            o => rest.push(o),
        }
    }
    let ch = ch.expect("the engine opens a channel to the new peer");
    let accept = Message::Accept {
        capability: capability(&CORE, Role::Acceptor, &ME, &peer),
    };
    engine.handle(Input::Message(peer, ch, accept), now);
    assert!(engine.is_authenticated(ch));
    ch
}

/// The run requests among `out` towards `peer`: (id, start, end).
fn run_requests(out: &[Output], peer: [u8; 32]) -> Vec<(u64, u64, u64)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(p, _, Message::RequestRun { id, start, end, .. }) if *p == peer => {
                Some((*id, *start, *end))
            }
            _ => None,
        })
        .collect()
}

/// **`NoData` splits a peer's source ranges without bound, and each split copies them all.**
/// `FetchQueue::on_no_data` cuts the *whole* `start..end` the peer names out of its ranges
/// (`ranges::remove`), not just the blocks of the request it answers, and leaves the request
/// open while blocks of it are outstanding. So a peer with one open request (it said it holds
/// the log; it is asked for the one missing block) sends `NoData { id, 2i, 2i + 1 }` for every
/// `i` below the reader's length: each one cuts a hole (one more range) and `ranges::remove`
/// rebuilds the whole vector, so building `n / 2` ranges costs `n² / 8` copies, and every
/// further 25-byte `NoData` (even a repeated one) allocates and copies all of them. Then it
/// cuts what it claimed of the queue (`NoData { id, c, n }`), which closes its request without
/// blame: it stays a peer with room in its window whose ranges hold no ready block, so
/// `next_request` → `assign` walks all `n / 2` ranges on every input the engine handles, for
/// as long as it stays connected: the scan the fix meant to remove, back.
#[test]
fn no_data_cannot_fragment_a_peers_ranges_into_a_scan_per_input() {
    let now = Instant::now();
    let (c, n) = (40_000u64, 40_010u64);
    let a: [u8; 32] = [9; 32];
    let h: [u8; 32] = [10; 32];
    let mut engine = Engine::new(ME, EngineConfig::default());
    engine.add_core(CORE, local(n, c), Mode::Full, now);
    // Another peer H, whose inputs (unrelated to A) are timed below.
    let hc = connect(&mut engine, h, now);
    engine.handle(Input::Message(h, hc, sync_msg(0, 0)), now);
    drain(&mut engine);
    let ac = connect(&mut engine, a, now);
    engine.handle(Input::Message(a, ac, sync_msg(n, n)), now);
    let out = drain(&mut engine);
    let (id, start, end) = *run_requests(&out, a)
        .first()
        .expect("A is asked for a run of the missing blocks");
    println!("A is asked for run {id}: {start}..{end}");

    let timed_input = |engine: &mut Engine| {
        let rounds = 20;
        let t = Instant::now();
        for _ in 0..rounds {
            engine.handle(Input::Backlog(h, 0), now);
            drain(engine);
        }
        t.elapsed() / rounds
    };
    let before = timed_input(&mut engine);

    let holes = c / 2;
    let nodata = |engine: &mut Engine, s: u64| {
        let m = Message::NoData {
            id,
            start: s,
            end: s + 1,
        };
        engine.handle(Input::Message(a, ac, m), now);
    };
    let t = Instant::now();
    for i in 0..1000 {
        nodata(&mut engine, 2 * i + 1);
    }
    let first = t.elapsed() / 1000;
    for i in 1000..holes - 1000 {
        nodata(&mut engine, 2 * i + 1);
    }
    let t = Instant::now();
    for i in holes - 1000..holes {
        nodata(&mut engine, 2 * i + 1);
    }
    let last = t.elapsed() / 1000;
    // What it claimed of the queue: its request closes, no blame.
    engine.handle(
        Input::Message(
            a,
            ac,
            Message::NoData {
                id,
                start: c,
                end: n,
            },
        ),
        now,
    );
    drain(&mut engine);
    let after = timed_input(&mut engine);
    println!(
        "engine time per 25-byte NoData: {first:?} for the first 1,000, {last:?} for the last \
         1,000 of {holes}; per unrelated input: {before:?} before, {after:?} after \
         (a log of {n} blocks; with 1,000,000 it is {}x that)",
        1_000_000 / n
    );
    assert!(
        last < first * 5 + Duration::from_micros(20),
        "each NoData costs {last:?} after {holes} of them (was {first:?}): \
         FetchQueue::on_no_data -> ranges::remove copies every range of the peer"
    );
    assert!(
        after < before * 5 + Duration::from_micros(100),
        "{after:?} per unrelated input (was {before:?}): FetchQueue::assign walks the {holes} \
         ranges A's NoData cut, on every schedule()"
    );
}

/// A block with its upgrade from `start`, signed (or not) by whoever made it.
fn upgrade_proof(start: u64, length: u64, block: Option<u64>, value: &[u8]) -> Proof {
    Proof {
        fork: 0,
        block: block.map(|index| BlockProof {
            index,
            value: value.to_vec(),
            nodes: vec![],
        }),
        upgrade: Some(UpgradeProof {
            start,
            length,
            nodes: vec![],
            additional_nodes: vec![],
            signature: vec![0; 64],
        }),
        ..Default::default()
    }
}

/// **A forged push withdraws the honest upgrade before anything is verified, and a peer that
/// reconnects can do it forever.** A reader R follows a log at length 10; the honest peer H
/// syncs length 20, so R asks H for the upgrade. `on_push` now takes a push that fits while an
/// upgrade request is outstanding, and *at once* removes H's request and sends H `Cancel`,
/// before the push's signature is checked. A peer A that knows the key (a ticket) pushes junk
/// (block 10, upgrade from 10, a zero signature) as soon as R asks: H's request is withdrawn,
/// the junk fails verification, R asks H again (a new id), and H's answer to the old id,
/// arriving a round trip later, is dropped as "late". A is blamed and backed off, but a
/// disconnect forgets its failures (`FetchQueue::remove_peer`), so A reconnects and repeats
/// (several ids do the same without reconnecting). Pushes that arrive while `busy` are
/// dropped without blame, so A can simply send one every millisecond. Before b27e0b7 a push
/// was not taken while an upgrade was asked, so this could not happen.
#[test]
fn a_forged_push_does_not_withdraw_an_honest_upgrade_request() {
    let t0 = Instant::now();
    let h: [u8; 32] = [9; 32];
    let a: [u8; 32] = [10; 32];
    let mut engine = Engine::new(ME, EngineConfig::default());
    engine.add_core(CORE, local(10, 10), Mode::Full, t0);
    let hc = connect(&mut engine, h, t0);
    let mut ac = connect(&mut engine, a, t0);
    drain(&mut engine);
    engine.handle(Input::Message(h, hc, sync_msg(20, 20)), t0);

    let rtt = Duration::from_millis(20);
    let mut now = t0;
    // H's answers in flight: (arrival, id).
    let mut in_flight: Vec<(Instant, u64)> = Vec::new();
    let (mut cancels, mut applied_from_h, mut forged) = (0, None, 0);
    let end = t0 + Duration::from_secs(10);
    let mut rest = Vec::new();
    while now < end && applied_from_h.is_none() {
        let mut asked_h = false;
        let mut task = None;
        rest.extend(drain(&mut engine));
        for o in std::mem::take(&mut rest) {
            match o {
                Output::Send(p, _, Message::Request { id, .. }) if p == h => {
                    in_flight.push((now + rtt, id));
                    asked_h = true;
                }
                Output::Send(p, _, Message::Cancel { .. }) if p == h => cancels += 1,
                Output::Task(_, Task::ApplyProof { proof, reply }) => {
                    if proof.block.as_ref().is_some_and(|b| b.value == b"honest") {
                        applied_from_h = Some(now - t0);
                    } else {
                        task = Some(reply);
                    }
                }
                _ => {}
            }
        }
        if let Some(t) = task {
            // The forged push fails verification.
            now += Duration::from_millis(1);
            let outcome = ApplyOutcome::Invalid("invalid signature".into());
            let local = local(10, 10);
            engine.handle(t.done(Applied { outcome, local }), now);
            // A forgets its blame by reconnecting.
            rest.extend(drain(&mut engine));
            engine.handle(Input::PeerDisconnected(a), now);
            ac = connect_keeping(&mut engine, a, now, &mut rest);
            continue;
        }
        if asked_h {
            // A pushes junk right after R asked H (or: it pushes every millisecond).
            now += Duration::from_millis(1);
            let push = Message::Push {
                proof: upgrade_proof(10, 1, Some(10), b"forged"),
            };
            engine.handle(Input::Message(a, ac, push), now);
            forged += 1;
            continue;
        }
        // H's answers arrive, each exactly what was asked.
        let next = in_flight.iter().map(|(t, _)| *t).min();
        let timer = engine.poll_timeout();
        let Some(next) = [next, timer].into_iter().flatten().min() else {
            break;
        };
        now = next.max(now);
        let due: Vec<u64> = in_flight
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, id)| *id)
            .collect();
        in_flight.retain(|(t, _)| *t > now);
        for id in due {
            let proof = upgrade_proof(10, 10, Some(10), b"honest");
            engine.handle(Input::Message(h, hc, Message::Data { id, proof }), now);
        }
        engine.handle_timeout(now);
    }
    println!(
        "{forged} forged pushes taken, {cancels} Cancels sent to the honest peer; H's upgrade \
         applied after {applied_from_h:?} (simulated {:?})",
        now - t0
    );
    assert!(
        applied_from_h.is_some(),
        "in {:?} R never applied H's answer: each forged push withdrew H's request \
         ({cancels} Cancels) before its signature was checked (src/replication/engine/push.rs, \
         on_push)",
        now - t0
    );
}

/// **An honest peer that could not serve a run once is never asked for those blocks again on
/// that channel** (not new in b27e0b7, but the `sourced` watermark now makes it final: before,
/// a `Range` could bring the blocks back). Reader R has the signed length 20 (from a writer
/// that then left) and no blocks; honest reader P holds blocks 0..10 at length 10. R asks P
/// for 0..10 *at length 20*; P cannot prove at a length it does not have
/// (`create_run_proofs_within`: "run out of range") and answers `NoData { 0, 10 }`, which cuts
/// 0..10 out of P's ranges. P then takes the upgrade to 20 (from R, say) and syncs
/// `length: 20, contiguous: 10`: `on_sync` adds only `sourced..contiguous` = 10..10, and a
/// `Range { 0, 10 }` starts at `max(0, sourced)` = 10. R never asks P for 0..10 again while P,
/// its only source, holds them: replication stalls until someone reconnects.
#[test]
fn a_peer_that_said_no_data_before_its_upgrade_is_asked_again_after_it() {
    let now = Instant::now();
    let p: [u8; 32] = [9; 32];
    let mut engine = Engine::new(ME, EngineConfig::default());
    engine.add_core(CORE, local(20, 0), Mode::Full, now);
    let pc = connect(&mut engine, p, now);
    drain(&mut engine);
    engine.handle(Input::Message(p, pc, sync_msg(10, 10)), now);
    let out = drain(&mut engine);
    let runs = run_requests(&out, p);
    println!("R asks P (length 10) for {runs:?} at length 20");
    assert!(!runs.is_empty());
    for (id, start, end) in runs {
        // What P's `on_served_run` answers when the run cannot be proven.
        engine.handle(
            Input::Message(p, pc, Message::NoData { id, start, end }),
            now,
        );
    }
    drain(&mut engine);
    // P upgrades to R's length, and even says again that it holds 0..10.
    let later = now + Duration::from_secs(1);
    engine.handle(Input::Message(p, pc, sync_msg(20, 10)), later);
    engine.handle(
        Input::Message(p, pc, Message::Range { start: 0, end: 10 }),
        later,
    );
    let mut asked = run_requests(&drain(&mut engine), p);
    let mut t = later;
    for _ in 0..20 {
        t += Duration::from_secs(1);
        engine.handle_timeout(t);
        asked.extend(run_requests(&drain(&mut engine), p));
    }
    println!("after P's upgrade to 20 (contiguous 10), R asks P for {asked:?}");
    assert!(
        !asked.is_empty(),
        "R never asks P for blocks 0..10 again although P holds them at R's length: \
         on_sync/on_range start from the channel's `sourced` (src/replication/engine/channels.rs)"
    );
}

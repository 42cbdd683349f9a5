//! Attacks found by the first adversarial review of the channel handshake, forward-only
//! states and resource bounds. Each test is named after what must hold; its doc says how the
//! attack worked before the fix. All failed on the code they were written against and pass now.
//!
//! Engine-level tests drive a `replication::Engine` directly (a fixed clock, a hand-made
//! authenticated channel, storage tasks answered by the test); network tests run real nodes on
//! `testnet::TestNet` against a raw hostile endpoint.

#[path = "common/attacker.rs"]
mod attacker;
#[path = "common/net.rs"]
mod net;

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    time::{Duration, Instant},
};

use iroh_hypercore::{
    Error,
    core::RunApplied,
    crypto::capability::{Role, capability},
    replication::{
        Engine, EngineConfig, Event, FetchConfig, Input, LocalInfo, Mode, Output, Task,
        engine::{Applied, ApplyOutcome},
        wire::{Message, SyncInfo},
    },
    tree::{BlockProof, Proof},
};

const ME: [u8; 32] = [1; 32];
const PEER: [u8; 32] = [9; 32];
const CORE: [u8; 32] = [2; 32];

fn local(length: u64, contiguous: u64, writable: bool) -> LocalInfo {
    LocalInfo {
        fork: 0,
        length,
        byte_length: length * 1024,
        contiguous,
        writable,
    }
}

fn sync_msg(length: u64, contiguous: u64, ask: bool) -> Message {
    Message::Sync(SyncInfo {
        fork: 0,
        length,
        contiguous,
        ask,
        downloading: false,
    })
}

fn drain(engine: &mut Engine) -> Vec<Output> {
    std::iter::from_fn(|| engine.poll_output()).collect()
}

/// An engine (`ME`) replicating `CORE` with one authenticated channel to `PEER`, opened by the
/// engine and accepted by the peer with a valid capability, then the peer's `remote` Sync.
/// Returns the engine, the channel and the outputs after the Sync.
fn engine_with_peer(
    cfg: EngineConfig,
    local: LocalInfo,
    remote: Message,
    now: Instant,
) -> (Engine, u64, Vec<Output>) {
    let mut engine = Engine::new(ME, cfg);
    engine.add_core(CORE, local, Mode::Full, now);
    engine.handle(Input::PeerConnected(PEER), now);
    let channel = drain(&mut engine)
        .into_iter()
        .find_map(|o| match o {
            Output::OpenChannel(_, ch, _) => Some(ch),
            _ => None,
        })
        .expect("the engine opens a channel to the new peer");
    let accept = Message::Accept {
        capability: capability(&CORE, Role::Acceptor, &ME, &PEER),
    };
    engine.handle(Input::Message(PEER, channel, accept), now);
    assert!(engine.is_authenticated(channel));
    engine.handle(Input::Message(PEER, channel, remote), now);
    let out = drain(&mut engine);
    (engine, channel, out)
}

/// The run requests among `out`: (id, start, end).
fn run_requests(out: &[Output]) -> Vec<(u64, u64, u64)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(_, _, Message::RequestRun { id, start, end, .. }) => {
                Some((*id, *start, *end))
            }
            _ => None,
        })
        .collect()
}

fn junk_block(index: u64, size: usize) -> Proof {
    Proof {
        block: Some(BlockProof {
            index,
            value: vec![0xee; size],
            nodes: vec![],
        }),
        ..Default::default()
    }
}

/// **A `NoData` whose `start` is after its `end` kills the engine.** A reader asks a peer for
/// a run; the peer answers `NoData { start: 5, end: 2 }`. `FetchQueue::on_no_data` calls
/// `BTreeSet::range(start..end)`, which panics when `start > end`. The engine runs inside the
/// driver task, outside any `catch_unwind`: one message from any peer that knows the key (a
/// ticket) ends replication of every core with every peer on the node.
#[test]
fn a_no_data_with_start_after_end_does_not_panic_the_engine() {
    let now = Instant::now();
    let (mut engine, channel, out) = engine_with_peer(
        EngineConfig::default(),
        local(10, 0, false),
        sync_msg(10, 10, false),
        now,
    );
    let (id, start, end) = *run_requests(&out)
        .first()
        .expect("the reader asks the peer for a run");
    println!("the reader asked for run {id}: {start}..{end}");
    let lie = Message::NoData {
        id,
        start: 5,
        end: 2,
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        engine.handle(Input::Message(PEER, channel, lie), now)
    }));
    assert!(
        result.is_ok(),
        "the engine panicked on NoData {{ start: 5, end: 2 }} (src/replication/fetch.rs, \
         FetchQueue::on_no_data: req.outstanding.range(start..end))"
    );
}

/// **A peer that answers every block with junk keeps being asked.** The fetch queue promises
/// exponential back-off and "removal after its last back-off" (`max_failures`, 6). Before the
/// fix `FetchQueue::on_received` reset the peer's failures and back-off as soon as a block
/// *arrived*, before it was verified: each next junk block wiped the count, and after 20
/// rejected blocks the peer was still asked for more. Now (requests never time out here, so
/// only the junk counts) the peer runs out of work: failures are kept until a block of its
/// verifies, a failed peer gets one probe at a time, and the rest of a run whose block was
/// rejected is not applied. At most `max_failures + 1` of its blocks are ever verified.
#[test]
fn a_peer_whose_blocks_never_verify_runs_out_of_work() {
    let now = Instant::now();
    // Requests never time out here: only the junk counts against the peer.
    let mut cfg = EngineConfig::default();
    cfg.fetch.timeout = Duration::from_secs(3600);
    cfg.upgrade_timeout = Duration::from_secs(3600);
    let max_failures = cfg.fetch.max_failures;
    let (mut engine, channel, out) =
        engine_with_peer(cfg, local(1000, 0, false), sync_msg(1000, 1000, false), now);
    let mut outstanding: Vec<(u64, u64)> = run_requests(&out)
        .into_iter()
        .flat_map(|(id, s, e)| (s..e).map(move |i| (id, i)))
        .collect();
    assert!(!outstanding.is_empty(), "the reader asks the peer for runs");
    let (mut invalid, mut dropped, mut asked_after) = (0u64, false, 0);
    let mut used = std::collections::HashSet::new();
    let mut t = now;
    for _ in 0..40 {
        // Junk for a block of a run it has not answered yet (the rest of a run whose block was
        // rejected is not applied at all: those blocks cannot verify without it).
        let mut outputs = Vec::new();
        if let Some(pos) = outstanding.iter().position(|(id, _)| !used.contains(id)) {
            let (id, index) = outstanding.remove(pos);
            used.insert(id);
            let data = Message::Data {
                id,
                proof: junk_block(index, 16),
            };
            engine.handle(Input::Message(PEER, channel, data), t);
            let task = drain(&mut engine).into_iter().find_map(|o| match o {
                Output::Task(_, Task::ApplyRun { proofs, reply }) => Some((reply, proofs)),
                _ => None,
            });
            // (A late answer to a run that timed out is not applied: it only counts against
            // the peer.)
            if let Some((task, proofs)) = task {
                let first = proofs[0].block.as_ref().unwrap().index;
                // Storage says: the first proof does not verify, nothing stored.
                let applied = RunApplied {
                    stored: vec![],
                    rejected: Some((first, Error::InvalidArgument("checksum mismatch"))),
                };
                let outcome = ApplyOutcome::Done(applied);
                let local = local(1000, 0, false);
                engine.handle(task.done(Applied { outcome, local }), t);
                outputs.extend(drain(&mut engine));
            }
        }
        // Its back-off ends; it is asked again (a one-block probe).
        t += Duration::from_secs(9);
        engine.handle_timeout(t);
        outputs.extend(drain(&mut engine));
        for o in outputs {
            match o {
                Output::Event(Event::Invalid { .. }) => invalid += 1,
                Output::Event(Event::PeerDropped(p)) if p == PEER => dropped = true,
                Output::Send(_, _, Message::RequestRun { id, start, end, .. }) => {
                    if dropped {
                        asked_after += 1;
                    }
                    outstanding.extend((start..end).map(|i| (id, i)));
                }
                _ => {}
            }
        }
        if dropped {
            break;
        }
    }
    println!(
        "{invalid} junk blocks rejected and blamed; peer dropped: {dropped}; \
         max_failures {max_failures}"
    );
    assert!(
        invalid <= u64::from(max_failures) + 1,
        "{invalid} rejected blocks (max_failures {max_failures}): the peer kept being asked"
    );
    assert!(
        outstanding.iter().all(|(id, _)| used.contains(id)),
        "the peer got new runs after its failures"
    );
    assert_eq!(asked_after, 0);
}

/// **Answers that are not requests ignore the backlog limit.** While a peer does not read, the
/// driver reports its backlog over `max_backlog_bytes` and the engine stops *serving requests*.
/// But a `Sync { ask: true }` is still answered with a `Sync`, and a `Want` with a `Range`,
/// each time: 10,000 of each give 20,000 queued messages towards a peer that reads nothing.
/// The backlog grows by what the attacker sends (about one byte queued per byte received),
/// without limit; see the network test below for the bytes.
#[test]
fn a_peer_over_its_backlog_limit_gets_no_more_queued_answers() {
    let now = Instant::now();
    let cfg = EngineConfig::default();
    let limit = cfg.max_backlog_bytes;
    let (mut engine, channel, _) =
        engine_with_peer(cfg, local(100, 100, true), sync_msg(0, 0, false), now);
    // The driver: the peer has not read what is queued, over the limit.
    engine.handle(Input::Backlog(PEER, 4 * limit), now);
    drain(&mut engine);
    let mut queued = 0;
    for _ in 0..10_000 {
        engine.handle(Input::Message(PEER, channel, sync_msg(0, 0, true)), now);
        let want = Message::Want {
            start: 0,
            end: u64::MAX,
        };
        engine.handle(Input::Message(PEER, channel, want), now);
        queued += drain(&mut engine)
            .iter()
            .filter(|o| matches!(o, Output::Send(..)))
            .count();
    }
    println!("backlog over the limit: 20,000 small messages in, {queued} messages queued out");
    assert!(
        queued <= 2,
        "{queued} messages queued towards a peer whose backlog is over the limit"
    );
}

/// **One small `Sync` makes the engine scan the whole fetch queue.** A reader catching up a
/// log of 1,000,000 blocks has 1,000,000 entries in its fetch queue. `on_sync` calls
/// `fetch.add_source(core, old.contiguous, new.contiguous)`, and a peer that alternates
/// `contiguous` between 0 and the length makes every second 10-byte `Sync` walk every entry
/// (`BTreeMap::range_mut(0..length)`). Compared with the same number of `Sync`s that do not
/// toggle, the engine's time per message grows by orders of magnitude.
#[test]
fn a_sync_does_not_make_the_engine_scan_the_whole_fetch_queue() {
    let now = Instant::now();
    let n = 1_000_000;
    // No requests go out (window 0 would be refused by the clamp; a held cap of 0 stops them).
    let cfg = EngineConfig {
        fetch: FetchConfig {
            max_held_bytes: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    let (mut engine, channel, _) =
        engine_with_peer(cfg, local(n, 0, false), sync_msg(n, 0, false), now);
    assert_eq!(engine.queued_blocks(), n as usize);
    let rounds = 100;
    let timed = |engine: &mut Engine, toggle: bool| {
        let start = Instant::now();
        for i in 0..rounds {
            let contiguous = if toggle && i % 2 == 0 { n } else { 0 };
            engine.handle(
                Input::Message(PEER, channel, sync_msg(n, contiguous, false)),
                now,
            );
            drain(engine);
        }
        start.elapsed()
    };
    let quiet = timed(&mut engine, false);
    // The first time the peer says it holds everything, each block records it as a source:
    // that walk is due once. Going down and up again must cost nothing more.
    engine.handle(Input::Message(PEER, channel, sync_msg(n, n, false)), now);
    drain(&mut engine);
    let toggled = timed(&mut engine, true);
    let per = toggled / rounds;
    println!(
        "{rounds} Syncs: {quiet:?} with a steady contiguous, {toggled:?} toggling it \
         ({per:?} per 10-byte message) against a fetch queue of {n} blocks"
    );
    assert!(
        per < Duration::from_millis(1),
        "{per:?} of engine time per Sync: on_sync -> fetch.add_source scans the queue"
    );
}

/// **Bytes held for blocks not yet stored are counted at the log's average block size, not at
/// the size received.** `max_held_bytes` caps what a reader holds while its disk is behind,
/// using the estimate `byte_length / length` (here 1 KiB). A peer answers the 64 blocks of its
/// window with 256 KiB blocks each while the first apply runs: the engine holds 16 MiB of
/// them in `pending` against a cap of 64 KiB (and with the defaults, 8,192 blocks of up to
/// 8 MiB: 64 GiB, against a cap of 64 MiB).
#[test]
fn blocks_held_before_they_are_stored_are_capped_by_their_real_size() {
    let now = Instant::now();
    let cap = 64 * 1024;
    let cfg = EngineConfig {
        fetch: FetchConfig {
            window_bytes: 64 * 1024,
            run_bytes: 16 * 1024,
            max_held_bytes: cap,
            ..Default::default()
        },
        ..Default::default()
    };
    let (mut engine, channel, out) =
        engine_with_peer(cfg, local(1000, 0, false), sync_msg(1000, 1000, false), now);
    let asked: Vec<(u64, u64)> = run_requests(&out)
        .into_iter()
        .flat_map(|(id, s, e)| (s..e).map(move |i| (id, i)))
        .collect();
    println!("{} blocks asked for (estimated 1 KiB each)", asked.len());
    let mut held: u64 = 0;
    let mut first_task = None;
    for (id, index) in asked {
        let proof = junk_block(index, 256 * 1024);
        engine.handle(
            Input::Message(PEER, channel, Message::Data { id, proof }),
            now,
        );
        for o in drain(&mut engine) {
            if let Output::Task(_, Task::ApplyRun { reply, .. }) = o {
                first_task.get_or_insert(reply);
            }
        }
        held += 256 * 1024;
    }
    // The first apply finishes (storage rejects the junk): everything else that arrived is in
    // the next apply task, which is what the engine held meanwhile.
    let task = first_task.expect("an apply task");
    let applied = RunApplied {
        stored: vec![],
        rejected: None,
    };
    let outcome = ApplyOutcome::Done(applied);
    let local = local(1000, 0, false);
    engine.handle(task.done(Applied { outcome, local }), now);
    let pending: u64 = drain(&mut engine)
        .iter()
        .filter_map(|o| match o {
            Output::Task(_, Task::ApplyRun { proofs: p, .. }) => Some(
                p.iter()
                    .filter_map(|p| p.block.as_ref())
                    .map(|b| b.value.len() as u64)
                    .sum::<u64>(),
            ),
            _ => None,
        })
        .sum();
    println!(
        "held {} KiB of received blocks not yet stored (cap {} KiB); {} KiB arrived in all",
        pending / 1024,
        cap / 1024,
        held / 1024
    );
    assert!(
        pending <= cap + 256 * 1024,
        "{} KiB held against a cap of {} KiB",
        pending / 1024,
        cap / 1024
    );
}

// ---------------------------------------------------------------------------------------------
// Network tests: real nodes on the test relay against a raw hostile endpoint.
// ---------------------------------------------------------------------------------------------

use iroh_hypercore::{
    Corestore, Hypercore, HypercoreProtocol,
    net::{MAX_BUFFERED_TOTAL, NodeStats},
    replication::{
        engine::PeerStats,
        wire::{MAX_FRAME, encode_frame},
    },
    testnet::{TestNet, Transport},
};
use net::{WAIT, append_numbered, wait_full};

const MIB: u64 = 1024 * 1024;

async fn stats(proto: &HypercoreProtocol, peer: [u8; 32]) -> (NodeStats, PeerStats) {
    let node = proto.node_stats().await.unwrap();
    let peer = proto
        .peer_stats()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.peer == peer)
        .unwrap_or_default();
    (node, peer)
}

/// **A peer that never reads still makes the node queue without limit.** The attacker knows
/// the key (a ticket), opens a channel, never reads, and sends 10-byte `Sync { ask: true }`
/// frames. Each is answered with a `Sync`, which the driver queues whatever the peer's
/// backlog: with `max_backlog_bytes` 256 KiB and runs read in parts of 64 KiB (a bound of
/// 512 KiB by the README's account), the writer's backlog towards it passes 16 times that (8 MiB,
/// the default limit) and keeps growing with what the attacker sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_cannot_grow_the_backlog_with_sync_asks() {
    net::init_tracing();
    let cfg = EngineConfig {
        max_backlog_bytes: 256 * 1024,
        serve_run_bytes: 64 * 1024,
        ..Default::default()
    };
    let bound = cfg.max_backlog_bytes + 4 * cfg.serve_run_bytes;
    let net = TestNet::new().await.unwrap();
    let store = Corestore::memory().await.unwrap();
    let writer = net.node_with(Transport::Direct, store, cfg).await.unwrap();
    let log = writer.store.get_named("log").await.unwrap();
    append_numbered(&log, 0, 100, 64).await;
    writer.proto.replicate(&log).await.unwrap();

    let (ep, conn) = attacker::connect_below(&net, &writer).await;
    let me = *ep.id().as_bytes();
    let (mut tx, rx) = attacker::open_channel(&conn, me, log.key())
        .await
        .expect("the writer accepts a channel with a valid capability");
    let ask = Message::Sync(SyncInfo {
        fork: 0,
        length: 0,
        contiguous: 0,
        ask: true,
        downloading: false,
    });
    let frame = encode_frame(&ask).unwrap();
    let batch: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 100_000)
        .collect();
    let sender = tokio::spawn(async move {
        let mut sent = 0u64;
        for _ in 0..20 {
            if tx.write_all(&batch).await.is_err() {
                break;
            }
            sent += batch.len() as u64;
        }
        (tx, sent)
    });
    let started = Instant::now();
    let (mut peak, mut last, mut same) = (0u64, u64::MAX, 0);
    while started.elapsed() < WAIT {
        let (_, p) = stats(&writer.proto, me).await;
        peak = peak.max(p.backlog_bytes);
        same = if p.backlog_bytes == last { same + 1 } else { 0 };
        last = p.backlog_bytes;
        if peak > 16 * bound || (sender.is_finished() && same >= 100) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, p) = stats(&writer.proto, me).await;
    println!(
        "never-reading peer sending Sync asks: writer's backlog towards it peaked at {:.1} MiB \
         after {:.1?} (max_backlog_bytes {} KiB, bound {} KiB); blocks up {}",
        peak as f64 / MIB as f64,
        started.elapsed(),
        256,
        bound / 1024,
        p.blocks_up
    );
    assert!(
        peak <= bound,
        "backlog {:.1} MiB towards a peer that reads nothing (bound {} KiB)",
        peak as f64 / MIB as f64,
        bound / 1024
    );
    drop(rx);
    conn.close(0u32.into(), b"done");
    ep.close().await;
    writer.shutdown().await;
}

/// **A stream whose first frame never completes is never timed out.** An attacker that knows
/// nothing opens 64 streams and on each writes the header of a 1 KiB frame and 1000 bytes of
/// it. The engine hears of a stream only at its first complete message, so no handshake
/// deadline starts: three handshake timeouts later the node still holds every byte and the
/// streams are still open. With 4,096 streams per connection that is 4 MiB per connection;
/// 64 connections (64 free endpoint ids) hold the node's whole `MAX_BUFFERED_TOTAL`, after
/// which any honest connection that buffers part of a frame is closed (see the next test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_finishes_its_open_is_closed_after_the_handshake_timeout() {
    net::init_tracing();
    let timeout = Duration::from_secs(1);
    let cfg = EngineConfig {
        handshake_timeout: timeout,
        ..Default::default()
    };
    let net = TestNet::new().await.unwrap();
    let store = Corestore::memory().await.unwrap();
    let target = net.node_with(Transport::Direct, store, cfg).await.unwrap();
    let log = target.store.get_named("log").await.unwrap();
    append_numbered(&log, 0, 10, 64).await;
    target.proto.replicate(&log).await.unwrap();

    let ep = net.endpoint(Transport::Direct).await.unwrap();
    let me = *ep.id().as_bytes();
    let conn = ep
        .connect(target.addr(), iroh_hypercore::ALPN)
        .await
        .unwrap();
    for _ in 0..64 {
        let (tx, rx) = conn.open_bi().await.unwrap();
        attacker::unfinished_frame(&conn, tx, rx, 1024, 1000);
    }
    let started = Instant::now();
    let held = 64 * 1004;
    loop {
        let (n, _) = stats(&target.proto, me).await;
        if n.buffered_bytes >= held {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the target buffers the frames: {n:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(3 * timeout).await;
    let (n, _) = stats(&target.proto, me).await;
    println!(
        "64 unfinished handshake frames: {} bytes still held {:?} after they arrived \
         (handshake timeout {timeout:?}); connections {}; connection closed: {:?}",
        n.buffered_bytes,
        started.elapsed(),
        n.connections,
        conn.close_reason()
    );
    assert_eq!(
        n.buffered_bytes, 0,
        "unfinished frames of streams that never proved anything are held past the handshake \
         timeout"
    );
    conn.close(0u32.into(), b"done");
    ep.close().await;
    target.shutdown().await;
}

/// **A few peers fill the node's global frame budget, and honest peers are cut off.** The
/// budget of unfinished frames is 32 MiB per connection and 256 MiB over all; what breaks it is
/// blamed on whichever connection asks next. Eight attacker endpoints (free ids) that know the
/// keys of the four logs a reader T follows each open a channel per log and hold an unfinished
/// 8 MiB frame on each (32 MiB per connection, within its budget): 256 MiB in all. The writer
/// then appends four blocks of 1 MiB; each spans several reads, so T's connection to the
/// *writer* hits the global budget and is closed as "a peer that broke framing", and T never
/// gets the blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attackers_filling_the_global_frame_budget_do_not_cut_off_honest_peers() {
    net::init_tracing();
    let net = TestNet::new().await.unwrap();
    let writer = net.node(Transport::Direct).await.unwrap();
    let reader = net.node(Transport::Direct).await.unwrap();
    let mut logs: Vec<(Hypercore, Hypercore)> = Vec::new();
    for i in 0..4 {
        let log = writer.store.get_named(&format!("log {i}")).await.unwrap();
        append_numbered(&log, 0, 1, 64).await;
        writer.proto.replicate(&log).await.unwrap();
        let copy = reader
            .proto
            .open_ticket(&writer.proto.ticket(&log))
            .await
            .unwrap();
        wait_full(&copy, 1).await;
        logs.push((log, copy));
    }
    let writer_id = *writer.endpoint.id().as_bytes();

    // Eight endpoints, four channels each, an unfinished frame of just under 8 MiB on each.
    let body = 8 * MIB - 16;
    let mut attackers = Vec::new();
    for _ in 0..8 {
        let (ep, conn) = attacker::connect_below(&net, &reader).await;
        let me = *ep.id().as_bytes();
        for (log, _) in &logs {
            let (tx, rx) = attacker::open_channel(&conn, me, log.key())
                .await
                .expect("the reader accepts a channel with a valid capability");
            attacker::unfinished_frame(&conn, tx, rx, MAX_FRAME as u32, body);
        }
        attackers.push((ep, conn));
    }
    let target = 8 * 4 * (body + 4);
    let started = Instant::now();
    loop {
        let (n, _) = stats(&reader.proto, writer_id).await;
        if n.buffered_bytes >= target {
            println!(
                "attackers hold {:.1} MiB of the reader's {} MiB budget after {:.1?}",
                n.buffered_bytes as f64 / MIB as f64,
                MAX_BUFFERED_TOTAL / MIB,
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the attackers' frames are buffered: {n:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The writer appends four blocks of 1 MiB to log 0; the reader follows it.
    let (log, copy) = &logs[0];
    let big: Vec<Vec<u8>> = (0..4).map(|i| vec![i as u8; MIB as usize]).collect();
    log.append_batch(big).await.unwrap();
    let got = copy.download(1..5).done(Duration::from_secs(30)).await;
    let (n, w) = stats(&reader.proto, writer_id).await;
    println!(
        "after the append: reader length {}, contiguous {}; download: {:?}; reader's \
         connections {}, buffered {:.1} MiB; writer still connected: {} (blocks from it {})",
        copy.info().length,
        copy.info().contiguous_length,
        got.as_ref().map(|_| ()),
        n.connections,
        n.buffered_bytes as f64 / MIB as f64,
        w.peer == writer_id,
        w.blocks_down
    );
    assert!(
        got.is_ok(),
        "the honest writer's blocks never arrived while 8 attackers hold the global budget"
    );
    for (ep, conn) in attackers {
        conn.close(0u32.into(), b"done");
        ep.close().await;
    }
    reader.shutdown().await;
    writer.shutdown().await;
}

/// **Silent peers that claim a longer log stall a reader's live following.** A reader at length
/// 10 follows the writer W, which pushes it block 10 with its signed upgrade. Three peers that
/// know the key (free endpoint ids, the key is in every ticket) say they have 1,000,000 blocks
/// and never answer. The reader asks the upgrade of one peer at a time, the one that claims
/// most, and drops W's push because that request is under way; when it times out (5 s) the
/// peer is backed off (250 ms, doubling) and the next liar is asked, then the first again.
/// W is asked only once every liar is backed off at once or dropped (7 failures each, about
/// 35 s each): the reader stays at length 10 for well over a minute, and a liar that reconnects
/// starts with a clean record.
#[test]
fn silent_peers_claiming_a_longer_log_do_not_stall_the_reader() {
    let t0 = Instant::now();
    let cfg = EngineConfig::default();
    let mut engine = Engine::new(ME, cfg);
    engine.add_core(CORE, local(10, 10, false), Mode::Full, t0);
    let w: [u8; 32] = [9; 32];
    let liars: Vec<[u8; 32]> = (0..3).map(|i| [20 + i; 32]).collect();
    let mut channel_of = std::collections::HashMap::new();
    for peer in liars.iter().chain([&w]) {
        engine.handle(Input::PeerConnected(*peer), t0);
        let ch = drain(&mut engine)
            .into_iter()
            .find_map(|o| match o {
                Output::OpenChannel(_, ch, _) => Some(ch),
                _ => None,
            })
            .unwrap();
        let accept = Message::Accept {
            capability: capability(&CORE, Role::Acceptor, &ME, peer),
        };
        engine.handle(Input::Message(*peer, ch, accept), t0);
        channel_of.insert(*peer, ch);
    }
    for liar in &liars {
        let claim = sync_msg(1_000_000, 1_000_000, false);
        engine.handle(Input::Message(*liar, channel_of[liar], claim), t0);
    }
    // W holds 11 blocks and pushes block 10 with the upgrade (the engine does not verify; the
    // storage task would).
    let ws = Message::Sync(SyncInfo {
        fork: 0,
        length: 11,
        contiguous: 11,
        ask: false,
        downloading: false,
    });
    let push = Message::Push {
        proof: Proof {
            fork: 0,
            block: Some(BlockProof {
                index: 10,
                value: b"block 10".to_vec(),
                nodes: vec![],
            }),
            upgrade: Some(iroh_hypercore::tree::UpgradeProof {
                start: 10,
                length: 1,
                nodes: vec![],
                additional_nodes: vec![],
                signature: vec![0; 64],
            }),
            ..Default::default()
        },
    };
    engine.handle(Input::Message(w, channel_of[&w], push), t0);
    engine.handle(Input::Message(w, channel_of[&w], ws), t0);

    let mut now = t0;
    let mut asked_liars = 0;
    let mut served_by_w = None;
    while now < t0 + Duration::from_secs(300) {
        for o in drain(&mut engine) {
            match o {
                Output::Task(_, Task::ApplyProof { .. }) => {
                    served_by_w.get_or_insert(now - t0);
                }
                Output::Send(p, _, Message::Request { .. }) if p == w => {
                    served_by_w.get_or_insert(now - t0);
                }
                Output::Send(p, _, Message::Request { .. }) if liars.contains(&p) => {
                    asked_liars += 1;
                }
                _ => {}
            }
        }
        if served_by_w.is_some() {
            break;
        }
        let Some(next) = engine.poll_timeout() else {
            break;
        };
        now = next.max(now + Duration::from_millis(1));
        engine.handle_timeout(now);
    }
    println!(
        "upgrade requests to the silent liars: {asked_liars}; W's push or W asked after {:?}",
        served_by_w
    );
    assert!(
        served_by_w.is_some_and(|t| t <= Duration::from_secs(10)),
        "the reader stayed behind W for {:?} ({asked_liars} requests to silent liars)",
        served_by_w.unwrap_or(now - t0)
    );
}

/// **After one `Sync`, every input the engine handles scans the whole fetch queue.** A reader
/// catches up a log of 1,000,000 blocks from an honest seeder H (its window full). A peer A
/// says once that it holds block 0 (`contiguous: 1`), which the reader already has: the fetch
/// queue now knows A, with room in its window and nothing it can give. From then on every
/// `schedule()` (run after *every* input: a message from anyone, a finished task, a timer)
/// calls `FetchQueue::next_request`, which tries A and walks every ready entry looking for a
/// block A has. The engine's cost per input goes from microseconds to a scan of the queue,
/// for as long as A stays connected, without A sending anything more.
#[test]
fn a_peer_with_nothing_to_give_does_not_make_every_input_scan_the_fetch_queue() {
    let now = Instant::now();
    let n = 1_000_000;
    let h: [u8; 32] = [9; 32];
    let a: [u8; 32] = [10; 32];
    let (mut engine, _hc, out) = engine_with_peer(
        EngineConfig::default(),
        local(n, 1, false),
        sync_msg(n, n, false),
        now,
    );
    assert!(!run_requests(&out).is_empty(), "H is asked for runs");
    engine.handle(Input::PeerConnected(a), now);
    let ac = drain(&mut engine)
        .into_iter()
        .find_map(|o| match o {
            Output::OpenChannel(_, ch, _) => Some(ch),
            _ => None,
        })
        .unwrap();
    let accept = Message::Accept {
        capability: capability(&CORE, Role::Acceptor, &ME, &a),
    };
    engine.handle(Input::Message(a, ac, accept), now);
    drain(&mut engine);
    let rounds = 5;
    let timed = |engine: &mut Engine| {
        let start = Instant::now();
        for _ in 0..rounds {
            engine.handle(Input::Backlog(h, 0), now);
            drain(engine);
        }
        start.elapsed() / rounds
    };
    let before = timed(&mut engine);
    engine.handle(Input::Message(a, ac, sync_msg(n, 1, false)), now);
    drain(&mut engine);
    let after = timed(&mut engine);
    println!(
        "engine time per unrelated input: {before:?} before A's one Sync, {after:?} after it \
         (fetch queue of {n} blocks)"
    );
    assert!(
        after < Duration::from_millis(1),
        "{after:?} per input: FetchQueue::next_request -> assign(A) walks every ready entry"
    );
}

/// **A peer replaying the writer's old signed states one at a time pins a reader far behind,
/// and is never blamed.** A reader R follows the writer W at length 10. A peer A that followed
/// the log too (so it holds every signed state W made, one per append) says it has 1,000,000
/// blocks. R asks A for the upgrade, because A claims the most; W then appends 30 blocks and
/// pushes each to R, which drops the pushes while A's request is under way. A answers each
/// request a second later with W's *oldest* state that is still newer than R's: the upgrade
/// from R's length by one block, with the block. It is signed, it answers exactly the question
/// (`start`, `block`), it moves R forward, so it is taken; A's claim is never questioned, so it
/// is asked again. R crawls one block a second (A can go just under `upgrade_timeout`) while W,
/// connected, is 30 blocks ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_replaying_old_states_one_by_one_does_not_pin_a_reader_behind() {
    use iroh_hypercore::tree::{IndexRequest, ProofRequest, UpgradeRequest};
    net::init_tracing();
    let net = TestNet::new().await.unwrap();
    let (writer, log) = net::writer_with_log(&net, "pinned", 10, 64).await;
    let (reader, core) = net::follower(&net, &writer, &log).await;
    wait_full(&core, 10).await;

    let (ep, conn) = attacker::connect_below(&net, &reader).await;
    let me = *ep.id().as_bytes();
    let (mut tx, mut rx) = attacker::open_channel(&conn, me, log.key())
        .await
        .expect("accepted");
    attacker::send(&mut tx, &sync_msg(1_000_000, 1_000_000, false)).await;
    let first = loop {
        match tokio::time::timeout(WAIT, attacker::read_msg(&mut rx))
            .await
            .unwrap()
        {
            Some(Message::Request { id, request }) => break (id, request),
            Some(_) => {}
            None => panic!("channel closed"),
        }
    };
    println!("R asked A: {:?}", first.1.upgrade);

    // W appends 30 blocks, one per append (each length signed); A keeps each signed state as
    // a follower would: the upgrade by one block with that block.
    let mut states = std::collections::HashMap::new();
    for i in 10..40u64 {
        log.append(net::numbered(i, 64)).await.unwrap();
        let proof = log
            .create_proof(ProofRequest {
                block: Some(IndexRequest { index: i, nodes: 0 }),
                upgrade: Some(UpgradeRequest {
                    start: i,
                    length: 1,
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        states.insert(i, proof);
    }
    let w_length = log.info().length;
    let started = Instant::now();
    // A answers every upgrade request with the next old state, a second later.
    let replayer = tokio::spawn(async move {
        let mut next = Some(first);
        let mut answered = 0;
        loop {
            let (id, request) = match next.take() {
                Some(r) => r,
                None => match attacker::read_msg(&mut rx).await {
                    Some(Message::Request { id, request }) => (id, request),
                    Some(_) => continue,
                    None => return answered,
                },
            };
            let Some(start) = request.upgrade.map(|u| u.start) else {
                continue;
            };
            let Some(proof) = states.get(&start).cloned() else {
                continue;
            };
            tokio::time::sleep(Duration::from_secs(1)).await;
            attacker::send(&mut tx, &Message::Data { id, proof }).await;
            answered += 1;
        }
    });
    let caught_up = core
        .download(0..w_length)
        .done(Duration::from_secs(10))
        .await;
    let at = core.info().length;
    let a = stats(&reader.proto, me).await.1;
    println!(
        "after {:.1?}: W at length {w_length}, R at {at}; A's answers blamed: {} (invalid), \
         blocks R took from A: {}",
        started.elapsed(),
        a.invalid,
        a.blocks_down
    );
    assert!(
        caught_up.is_ok(),
        "R is pinned at length {at} while the connected writer is at {w_length}: \
         A's one-block replays are taken and A is asked again"
    );
    conn.close(0u32.into(), b"done");
    let _ = replayer.await;
    ep.close().await;
    reader.shutdown().await;
    writer.shutdown().await;
}

/// **A dropped peer's pushes are still taken, and every one resets its record.** A reader
/// drops a peer from the fetch queue after its last back-off (`PeerDropped`), but `on_push`
/// checks only `fetch.is_backed_off`, not `Peer::dropped`; and the dropped peer's fetch state
/// was removed, so the next blame starts it again at one failure. A peer pushing an invalid
/// upgrade every 10 s (past `backoff_max`) has each one taken as the reader's upgrade (a
/// storage task, the upgrade slot held, the writer's own pushes dropped meanwhile), forever.
#[test]
fn a_dropped_peer_cannot_keep_pushing_invalid_upgrades() {
    let t0 = Instant::now();
    let cfg = EngineConfig::default();
    let max_failures = cfg.fetch.max_failures;
    let remote = Message::Sync(SyncInfo {
        fork: 0,
        length: 10,
        contiguous: 10,
        ask: false,
        downloading: true,
    });
    let (mut engine, channel, _) = engine_with_peer(cfg, local(10, 10, false), remote, t0);
    let push = || Message::Push {
        proof: Proof {
            fork: 0,
            block: Some(BlockProof {
                index: 10,
                value: b"forged".to_vec(),
                nodes: vec![],
            }),
            upgrade: Some(iroh_hypercore::tree::UpgradeProof {
                start: 10,
                length: 1,
                nodes: vec![],
                additional_nodes: vec![],
                signature: vec![0; 64],
            }),
            ..Default::default()
        },
    };
    let (mut taken, mut dropped_at) = (0, None);
    for k in 0..20u64 {
        let now = t0 + Duration::from_secs(10 * k);
        engine.handle_timeout(now);
        drain(&mut engine);
        engine.handle(Input::Message(PEER, channel, push()), now);
        let task = drain(&mut engine).into_iter().find_map(|o| match o {
            Output::Task(_, Task::ApplyProof { reply, .. }) => Some(reply),
            _ => None,
        });
        let Some(task) = task else { continue };
        taken += 1;
        let outcome = ApplyOutcome::Invalid("invalid signature".into());
        let local = local(10, 10, false);
        engine.handle(task.done(Applied { outcome, local }), now);
        for o in drain(&mut engine) {
            if let Output::Event(Event::PeerDropped(p)) = o
                && p == PEER
            {
                dropped_at.get_or_insert(taken);
            }
        }
    }
    println!(
        "invalid pushes taken: {taken} of 20; peer dropped after {dropped_at:?} \
         (max_failures {max_failures})"
    );
    assert!(dropped_at.is_some(), "the peer is dropped at some point");
    assert!(
        taken <= max_failures as usize + 1,
        "{taken} invalid pushes taken from a peer dropped after {dropped_at:?}"
    );
}

/// **A peer that leaves while it is being blamed stays in the fetch queue forever.** A peer
/// sends a junk block and disconnects before the reader has verified it. `on_disconnected`
/// removes it from the fetch queue; then the apply task fails and `blame` → `penalize` →
/// `peers.entry(peer).or_default()` puts it back, with no sources and no connection. It is
/// never removed again (only a disconnect removes a fetch peer): each such id is a little
/// memory for good, and once its back-off ends, every input makes `next_request` walk the
/// whole queue looking for a block this ghost has (as in the test above). Any number of
/// ghosts can be made with free endpoint ids.
#[test]
fn a_peer_that_leaves_while_it_is_blamed_leaves_nothing_behind() {
    let t0 = Instant::now();
    let n = 1_000_000;
    let (mut engine, channel, out) = engine_with_peer(
        EngineConfig::default(),
        local(n, 0, false),
        sync_msg(n, n, false),
        t0,
    );
    let (id, start, _) = run_requests(&out)[0];
    let data = Message::Data {
        id,
        proof: junk_block(start, 16),
    };
    engine.handle(Input::Message(PEER, channel, data), t0);
    let task = drain(&mut engine)
        .into_iter()
        .find_map(|o| match o {
            Output::Task(_, Task::ApplyRun { reply, .. }) => Some(reply),
            _ => None,
        })
        .expect("the junk block is applied");
    engine.handle(Input::PeerDisconnected(PEER), t0);
    drain(&mut engine);
    let later = t0 + Duration::from_secs(10);
    let rounds = 3;
    let timed = |engine: &mut Engine| {
        let start = Instant::now();
        for _ in 0..rounds {
            engine.handle(Input::Backlog([7; 32], 0), later);
            drain(engine);
        }
        start.elapsed() / rounds
    };
    let before = timed(&mut engine);
    let applied = RunApplied {
        stored: vec![],
        rejected: Some((start, Error::InvalidArgument("checksum mismatch"))),
    };
    let outcome = ApplyOutcome::Done(applied);
    let local = local(n, 0, false);
    engine.handle(task.done(Applied { outcome, local }), t0);
    drain(&mut engine);
    let after = timed(&mut engine);
    println!(
        "peers connected: {:?}; engine time per input {before:?} before the late blame, \
         {after:?} after it (fetch queue of {n} blocks)",
        engine.peers()
    );
    assert!(
        after < Duration::from_millis(1),
        "{after:?} per input: the blamed peer, gone, is back in the fetch queue for good"
    );
}

/// **The same `NoData`, on the wire, ends the node's replication.** A fresh reader R of a
/// writer's log meets a peer A that knows the key (a ticket) before it meets the writer. A
/// answers R's upgrade request with the writer's real signed state, so R asks it for blocks;
/// A answers the run with `NoData { start: 5, end: 2 }`. The engine panics inside the driver
/// task: R's protocol handle stops answering, and joining the honest writer afterwards gets
/// R no block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_no_data_from_a_peer_does_not_end_the_nodes_replication() {
    use iroh_hypercore::tree::{ProofRequest, UpgradeRequest};
    net::init_tracing();
    let net = TestNet::new().await.unwrap();
    let (writer, log) = net::writer_with_log(&net, "killed", 10, 64).await;
    let upgrade = log
        .create_proof(ProofRequest {
            upgrade: Some(UpgradeRequest {
                start: 0,
                length: 10,
            }),
            manifest: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let reader = net.node(Transport::Direct).await.unwrap();
    let core = reader.store.get_remote(log.key()).await.unwrap();
    reader.proto.replicate(&core).await.unwrap();

    let (ep, conn) = attacker::connect_below(&net, &reader).await;
    let me = *ep.id().as_bytes();
    let (mut tx, mut rx) = attacker::open_channel(&conn, me, log.key())
        .await
        .expect("accepted");
    attacker::send(&mut tx, &sync_msg(10, 10, false)).await;
    let mut sent = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, attacker::read_msg(&mut rx))
            .await
            .unwrap()
        {
            Some(Message::Request { id, .. }) => {
                let proof = upgrade.clone();
                attacker::send(&mut tx, &Message::Data { id, proof }).await;
                sent.push("Data (upgrade)");
            }
            Some(Message::RequestRun { id, start, end, .. }) => {
                println!("R asked A for blocks {start}..{end}");
                let lie = Message::NoData {
                    id,
                    start: 5,
                    end: 2,
                };
                attacker::send(&mut tx, &lie).await;
                sent.push("NoData 5..2");
                break;
            }
            Some(_) => {}
            None => panic!("channel closed"),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alive = tokio::time::timeout(Duration::from_secs(5), reader.proto.peer_stats()).await;
    let joined = reader.proto.join(&core, &[writer.addr()]).await;
    let got = core.download(0..10).done(Duration::from_secs(10)).await;
    println!(
        "A sent {sent:?}; then R's peer_stats: {:?}; join(writer): {:?}; download from the \
         writer: {:?}; R length {}",
        alive.as_ref().map(|r| r.as_ref().map(|v| v.len())),
        joined,
        got.as_ref().map(|_| ()),
        core.info().length
    );
    assert!(
        matches!(alive, Ok(Ok(_))) && got.is_ok(),
        "R's replication died on one NoData with start > end"
    );
    conn.close(0u32.into(), b"done");
    ep.close().await;
    reader.shutdown().await;
    writer.shutdown().await;
}

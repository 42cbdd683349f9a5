//! Never trust the wire (DESIGN, principle 5): a peer that lies, stays silent or cannot prove
//! what it claims is backed off and then dropped, while honest peers, slow ones included, keep
//! being asked and replication completes. Network tests run real nodes against a lying raw
//! endpoint; engine tests feed the sans-IO engine a hostile peer's inputs with a fixed clock;
//! simulations run honest networks whose storage is slow.

#[path = "common/attacker.rs"]
mod attacker;
mod common;
#[path = "common/net.rs"]
mod net;

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    time::{Duration, Instant},
};

use attacker::*;
use common::{forged_upgrade, reader_engine, upgrade_request};
use iroh::endpoint::{RecvStream, SendStream};
use iroh_hypercore::{
    CoreTicket, Error,
    core::RunApplied,
    replication::{
        Engine, EngineConfig, Event, Input, Mode, Output, Task,
        engine::{Applied, ApplyOutcome, testing::*},
        gossip::{GossipOp, topic},
        wire::{MAX_FRAME, Message, SyncInfo},
    },
    sim::{LinkConfig, Sim, SimConfig, StorageModel},
    testnet::Transport,
    tree::{BlockProof, Proof},
};
use net::*;

const LIE: u64 = 1_000_000;

/// Answers everything on one channel with lies, then floods the peer with requests.
async fn lie_on(mut tx: SendStream, mut rx: RecvStream) {
    let lie = Message::Sync(SyncInfo {
        fork: 0,
        length: LIE,
        contiguous: LIE,
        ask: false,
        downloading: false,
    });
    send(&mut tx, &lie).await;
    let mut flooded = false;
    while let Some(msg) = read_msg(&mut rx).await {
        match msg {
            Message::Request { id, request } => {
                let proof = match request.upgrade {
                    Some(u) => forged_upgrade(u.start, u.length, None),
                    None => Proof::default(),
                };
                send(&mut tx, &Message::Data { id, proof }).await;
            }
            Message::RequestRun { id, start, end, .. } => {
                for index in start..end {
                    let proof = Proof {
                        block: Some(BlockProof {
                            index,
                            value: b"forged".to_vec().into(),
                            nodes: vec![],
                        }),
                        ..Default::default()
                    };
                    send(&mut tx, &Message::Data { id, proof }).await;
                }
                if !flooded {
                    flooded = true;
                    for id in 0..3000 {
                        let flood = Message::RequestRun {
                            id: 1 << 40 | id,
                            fork: 0,
                            start: 0,
                            end: 1024,
                            length: 1024,
                        };
                        send(&mut tx, &flood).await;
                    }
                }
            }
            Message::Sync(SyncInfo { ask: true, .. }) => send(&mut tx, &lie).await,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liars_are_backed_off_and_honest_replication_completes() {
    let net = test_net().await;
    let (writer, log) = writer_with_log(&net, "honest", 3000, 512).await;
    let reader = net.node(Transport::Direct).await.unwrap();

    // The liar knows the key (it is public) and opens a channel with a valid capability.
    let liar_ep = net.endpoint(Transport::Direct).await.unwrap();
    let liar_id = *liar_ep.id().as_bytes();
    let liar_gossip = iroh_gossip::Gossip::builder().spawn(liar_ep.clone());
    let liar_router = iroh::protocol::Router::builder(liar_ep.clone())
        .accept(iroh_gossip::ALPN, liar_gossip.clone())
        .spawn();

    // The reader follows the ticket of the writer and of the liar.
    let ticket = CoreTicket::new(log.key(), vec![writer.addr()]);
    let core = reader.proto.open_ticket(&ticket).await.unwrap();
    // Kept open for the whole test.
    let _conn = play_on_core(&liar_ep, &reader, &log, lie_on).await;

    // It also lies in gossip.
    let gossip_topic = liar_gossip
        .subscribe(
            iroh_gossip::TopicId::from_bytes(topic(&log.key())),
            vec![reader.endpoint.id()],
        )
        .await
        .unwrap();
    let (gossip_tx, _gossip_rx) = gossip_topic.split();
    let announce = GossipOp::Announce {
        origin: liar_id,
        fork: 0,
        length: LIE,
        contiguous: LIE,
    };
    gossip_tx
        .broadcast(announce.encode(4096).unwrap().into())
        .await
        .unwrap();

    // A second peer breaks the framing with an oversized frame.
    let big_ep = net.endpoint(Transport::Direct).await.unwrap();
    let big = big_ep
        .connect(reader.addr(), iroh_hypercore::ALPN)
        .await
        .unwrap();
    let (mut btx, _brx) = big.open_bi().await.unwrap();
    btx.write_all(&((MAX_FRAME + 1) as u32).to_be_bytes())
        .await
        .unwrap();
    btx.write_all(&[0; 1024]).await.unwrap();

    wait_full(&core, 3000).await;
    assert_eq!(core.tree_hash(), log.tree_hash());
    assert_eq!(
        core.info().length,
        3000,
        "the lying length was never applied"
    );
    for i in (0..3000).step_by(97) {
        assert_eq!(core.get(i).await.unwrap(), log.get(i).await.unwrap());
    }
    // The lies were caught and blamed on the liar (which backs it off). The counters are the
    // check: the event channel may lag behind 3,000 downloads.
    let liar_stats = tokio::time::timeout(WAIT, async {
        loop {
            let stats = reader.proto.peer_stats().await.unwrap();
            if let Some(s) = stats
                .into_iter()
                .find(|s| s.peer == liar_id && s.invalid > 0)
            {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the liar's proofs were rejected");
    assert_eq!(liar_stats.blocks_down, 0);
    // The oversized frame got that connection closed.
    tokio::time::timeout(WAIT, big.closed()).await.unwrap();
    let writer_id = *writer.endpoint.id().as_bytes();
    let stats = tokio::time::timeout(WAIT, async {
        loop {
            let stats = reader.proto.peer_stats().await.unwrap();
            let honest = stats
                .iter()
                .find(|s| s.peer == writer_id)
                .map(|s| s.blocks_down);
            if honest == Some(3000) {
                return stats;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every block counted from the honest writer");
    // The writer's blocks that came after a forged one in the same batch were queued again,
    // not blamed on it (their proofs rely on the nodes of the writer's earlier blocks).
    let honest = stats.iter().find(|s| s.peer == writer_id).unwrap();
    assert_eq!(honest.invalid, 0, "{honest:?}");
    if let Some(s) = stats.iter().find(|s| s.peer == liar_id) {
        assert!(s.invalid > 0, "{s:?}");
        assert_eq!(s.blocks_down, 0);
    }
    drop(gossip_tx);
    liar_router.shutdown().await.ok();
    big_ep.close().await;
    shutdown(&[&reader, &writer]).await;
}

/// Attack 4: a peer claims a much longer log and answers every upgrade request with a valid
/// but empty proof. Each answer is a failed request for it (blamed, backed off) and the upgrade
/// goes to the writer, so the reader follows the writer's new blocks.
/// Says it holds one block more than the writer, and never answers anything.
async fn claim_one_more(mut tx: SendStream, mut rx: RecvStream) {
    let claim = Message::Sync(SyncInfo {
        fork: 0,
        length: 11,
        contiguous: 11,
        ask: false,
        downloading: false,
    });
    send(&mut tx, &claim).await;
    while let Some(msg) = read_msg(&mut rx).await {
        if let Message::Sync(SyncInfo { ask: true, .. }) = msg {
            send(&mut tx, &claim).await;
        }
    }
}

/// Four peers claim one block more than the writer (11 against 10) and never answer an
/// upgrade. `update().wait(30 s)` resolves with the writer's length at the update's own
/// deadline (`upgrade_timeout`), not after the liars were asked one after another (the
/// caller's whole 30 s); so does the next one. Each liar asked is penalized when its upgrade
/// times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_does_not_wait_out_peers_that_claim_what_they_never_prove() {
    let net = test_net().await;
    let (writer, log) = writer_with_log(&net, "honest", 10, 64).await;
    let timeout = Duration::from_secs(1);
    let config = EngineConfig {
        upgrade_timeout: timeout,
        ..Default::default()
    };
    let reader = node_with_config(&net, config).await;
    let core = joined(&reader, log.key(), &[writer.addr()]).await;
    wait_full(&core, 10).await;
    let mut events = reader.proto.events(&core);
    let mut liars = Vec::new();
    for _ in 0..4 {
        let ep = net.endpoint(Transport::Direct).await.unwrap();
        let conn = play_on_core(&ep, &reader, &log, claim_one_more).await;
        let id = ep.id();
        wait_event(&mut events, "a liar's channel opens", |e| {
            *e == iroh_hypercore::net::ReplicaEvent::PeerAdd(id)
        })
        .await;
        liars.push((ep, conn));
    }

    let started = Instant::now();
    let length = core.update().wait(Duration::from_secs(30)).await.unwrap();
    let first = started.elapsed();
    let started = Instant::now();
    let again = core.update().wait(Duration::from_secs(30)).await.unwrap();
    let second = started.elapsed();
    println!(
        "update with four liars: {first:.2?} (upgrade timeout {timeout:?}), then {second:.2?}"
    );
    assert_eq!((length, again), (10, 10), "the writer's length");
    assert!(first < timeout * 2, "took {first:?}");
    assert!(second < timeout * 2, "took {second:?}");
    for (ep, conn) in &liars {
        hang_up(ep, conn).await;
    }
    shutdown(&[&writer, &reader]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_prove_nothing_are_failures_and_the_writer_is_asked() {
    let net = test_net().await;
    let (writer, log, reader, core) = synced_pair(&net, "empty", 10, 64).await;
    let (intruder, mut tx, mut rx) = intrude(&net, &reader, log.key()).await;
    send(&mut tx, &sync(1_000_000, false)).await;
    let answered = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(msg) = read_msg(&mut rx).await {
            match msg {
                Message::Request { id, .. } => {
                    n += 1;
                    let proof = Proof::default();
                    send(&mut tx, &Message::Data { id, proof }).await;
                }
                Message::Sync(SyncInfo { ask: true, .. }) => {
                    send(&mut tx, &sync(1_000_000, false)).await
                }
                _ => {}
            }
        }
        n
    });
    let started = Instant::now();
    append_numbered(&log, 10, 5, 64).await;
    wait_full(&core, 15).await;
    assert_eq!(core.tree_hash(), log.tree_hash());
    let stats = reader.proto.peer_stats().await.unwrap();
    let liar = stats
        .iter()
        .find(|s| s.peer == intruder.me)
        .expect("liar stats");
    intruder.conn.close(0u32.into(), b"done");
    let n = answered.await.unwrap();
    println!(
        "followed 5 new blocks in {:?}; empty answers sent {n}, blamed {}",
        started.elapsed(),
        liar.invalid
    );
    assert!(liar.invalid >= 1 && n >= 1, "{liar:?}");
    intruder.ep.close().await;
    shutdown(&[&reader, &writer]).await;
}

/// Attack 6: the peer a reader asked for an upgrade (it claimed the longest log) never answers
/// and then goes away. The reader asks the writer at once, not after the upgrade timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_upgrade_peer_leaves_another_peer_is_asked_at_once() {
    let net = test_net().await;
    let (writer, log) = writer_with_log(&net, "left", 20, 64).await;
    let timeout = Duration::from_secs(120);
    let cfg = EngineConfig {
        upgrade_timeout: timeout,
        ..Default::default()
    };
    let reader = node_with_config(&net, cfg).await;
    let core = replica(&reader, log.key()).await;
    let mut events = reader.proto.subscribe();

    let (intruder, mut tx, mut rx) = intrude(&net, &reader, log.key()).await;
    send(&mut tx, &sync(1_000_000, false)).await;
    next_request(&mut rx).await;
    // The writer's state arrives while the upgrade is asked of the silent peer.
    reader.proto.join(&core, &[writer.addr()]).await.unwrap();
    let writer_id = *writer.endpoint.id().as_bytes();
    wait_event(
        &mut events,
        "the writer's channel",
        |e| matches!(e, Event::ChannelOpen { peer, .. } if *peer == writer_id),
    )
    .await;
    assert_eq!(core.info().length, 0, "still waiting on the silent peer");
    let left = Instant::now();
    intruder.conn.close(0u32.into(), b"gone");
    wait_full(&core, 20).await;
    let took = left.elapsed();
    println!("upgraded from the writer {took:?} after the silent peer left (timeout {timeout:?})");
    assert!(took < timeout / 4, "{took:?}");
    intruder.ep.close().await;
    shutdown(&[&reader, &writer]).await;
}

/// **A `NoData` whose `start` is after its `end` kills the engine.** A reader asks a peer for
/// a run; the peer answers `NoData { start: 5, end: 2 }`. `FetchQueue::on_no_data` calls
/// `BTreeSet::range(start..end)`, which panics when `start > end`. The engine runs inside the
/// driver task, outside any `catch_unwind`: one message from any peer that knows the key (a
/// ticket) ends replication of every core with every peer on the node.
#[test]
fn a_no_data_with_start_after_end_does_not_panic_the_engine() {
    let now = Instant::now();
    let (mut engine, channel, out) =
        reader_engine(EngineConfig::default(), 10, 0, sync_at(10, 10, false), now);
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
    let (mut engine, channel, out) = reader_engine(cfg, 1000, 0, sync_at(1000, 1000, false), now);
    let mut outstanding: Vec<(u64, u64)> = run_requests(&out)
        .into_iter()
        .flat_map(|(id, s, e)| (s..e).map(move |i| (id, i)))
        .collect();
    assert!(!outstanding.is_empty(), "the reader asks the peer for runs");
    let (mut invalid, mut dropped, mut asked_after) = (0u64, false, 0);
    let mut penalized_for = Duration::ZERO;
    let mut used = std::collections::HashSet::new();
    let mut t = now;
    for _ in 0..40 {
        // Junk for a block of a run it has not answered yet (the rest of a run whose block was
        // rejected is not applied at all: those blocks cannot verify without it).
        let mut seen = Vec::new();
        if let Some(pos) = outstanding.iter().position(|(id, _)| !used.contains(id)) {
            let (id, index) = outstanding.remove(pos);
            used.insert(id);
            let data = Message::Data {
                id,
                proof: junk_block(index, 16),
            };
            engine.handle(Input::Message(PEER, channel, data), t);
            let task = outputs(&mut engine).into_iter().find_map(|o| match o {
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
                let local = local_at(1000, 0, false);
                engine.handle(task.done(Applied { outcome, local }), t);
                seen.extend(outputs(&mut engine));
            }
        }
        // Its back-off ends; it is asked again (a one-block probe).
        t += Duration::from_secs(9);
        engine.handle_timeout(t);
        seen.extend(outputs(&mut engine));
        for o in seen {
            match o {
                Output::Event(Event::Invalid { .. }) => invalid += 1,
                Output::Event(Event::Penalized { peer, penalty }) if peer == PEER => {
                    dropped = true;
                    penalized_for = penalty;
                }
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
        "{invalid} junk blocks rejected and blamed; peer penalized: {dropped} for \
         {penalized_for:?}; max_failures {max_failures}"
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
    engine.add_core(CORE, local_at(10, 10, false), Mode::Full, t0);
    let w: [u8; 32] = [9; 32];
    let liars: Vec<[u8; 32]> = (0..3).map(|i| [20 + i; 32]).collect();
    let mut channel_of = std::collections::HashMap::new();
    for peer in liars.iter().chain([&w]) {
        channel_of.insert(*peer, connect(&mut engine, *peer, t0));
    }
    for liar in &liars {
        let claim = sync_at(1_000_000, 1_000_000, false);
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
        proof: forged_upgrade(10, 1, Some((10, b"block 10"))),
    };
    engine.handle(Input::Message(w, channel_of[&w], push), t0);
    engine.handle(Input::Message(w, channel_of[&w], ws), t0);

    let mut now = t0;
    let mut asked_liars = 0;
    let mut served_by_w = None;
    while now < t0 + Duration::from_secs(300) {
        for o in outputs(&mut engine) {
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

/// **A penalized peer's pushes are still taken, and every one resets its record.** A reader
/// takes a peer out of the fetch queue after its last back-off, but `on_push` checked only the
/// back-off, and the peer's record started afresh at the next blame. A peer pushing an invalid
/// upgrade every 10 s (past `backoff_max`) had each one taken as the reader's upgrade (a
/// storage task, the upgrade slot held, the writer's own pushes dropped meanwhile), forever.
/// Now no push of it is taken during a penalty; after one it gets one probe, whose failure
/// penalizes it again at once, for twice as long.
#[test]
fn a_penalized_peer_cannot_keep_pushing_invalid_upgrades() {
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
    let (mut engine, channel, _) = reader_engine(cfg, 10, 10, remote, t0);
    let push = || Message::Push {
        proof: forged_upgrade(10, 1, Some((10, b"forged"))),
    };
    let mut taken_at = Vec::new();
    let mut penalties = Vec::new();
    for k in 0..120u64 {
        let now = t0 + Duration::from_secs(10 * k);
        engine.handle_timeout(now);
        outputs(&mut engine);
        engine.handle(Input::Message(PEER, channel, push()), now);
        let task = outputs(&mut engine).into_iter().find_map(|o| match o {
            Output::Task(_, Task::ApplyProof { reply, .. }) => Some(reply),
            _ => None,
        });
        let Some(task) = task else { continue };
        taken_at.push(now);
        let outcome = ApplyOutcome::Invalid("invalid signature".into());
        let local = local_at(10, 10, false);
        engine.handle(task.done(Applied { outcome, local }), now);
        for o in outputs(&mut engine) {
            if let Output::Event(Event::Penalized { peer, penalty }) = o
                && peer == PEER
            {
                penalties.push((taken_at.len(), now, penalty));
            }
        }
    }
    println!(
        "invalid pushes taken: {} of 120; penalties (after the nth taken, for): {:?} \
         (max_failures {max_failures})",
        taken_at.len(),
        penalties
            .iter()
            .map(|(n, _, p)| (*n, *p))
            .collect::<Vec<_>>()
    );
    assert!(penalties.len() >= 2, "penalized, and again after the first");
    assert_eq!(penalties[0].0, max_failures as usize + 1);
    for (n, at, penalty) in &penalties {
        assert!(
            taken_at.iter().all(|t| *t <= *at || *t >= *at + *penalty),
            "a push was taken during the penalty that began with push {n}"
        );
    }
    assert_eq!(
        penalties[1].0,
        penalties[0].0 + 1,
        "one probe, then penalized again"
    );
    assert_eq!(
        penalties[1].2,
        penalties[0].2 * 2,
        "each penalty twice the last"
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
    let net = test_net().await;
    let (writer, log) = writer_with_log(&net, "killed", 10, 64).await;
    let upgrade = log.create_proof(upgrade_request(10)).await.unwrap();
    let reader = net.node(Transport::Direct).await.unwrap();
    let core = replica(&reader, log.key()).await;

    let (intruder, mut tx, mut rx) = intrude(&net, &reader, log.key()).await;
    attacker::send(&mut tx, &sync_at(10, 10, false)).await;
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
    intruder.hang_up().await;
    shutdown(&[&reader, &writer]).await;
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
    engine.add_core(CORE, local_at(20, 0, false), Mode::Full, now);
    let pc = connect(&mut engine, p, now);
    outputs(&mut engine);
    engine.handle(Input::Message(p, pc, sync_at(10, 10, false)), now);
    let out = outputs(&mut engine);
    let runs = run_requests_to(&out, p);
    println!("R asks P (length 10) for {runs:?} at length 20");
    assert!(!runs.is_empty());
    for (id, start, end) in runs {
        // What P's `on_served_run` answers when the run cannot be proven.
        engine.handle(
            Input::Message(p, pc, Message::NoData { id, start, end }),
            now,
        );
    }
    outputs(&mut engine);
    // P upgrades to R's length, and even says again that it holds 0..10.
    let later = now + Duration::from_secs(1);
    engine.handle(Input::Message(p, pc, sync_at(20, 10, false)), later);
    engine.handle(
        Input::Message(p, pc, Message::Range { start: 0, end: 10 }),
        later,
    );
    let mut asked = run_requests_to(&outputs(&mut engine), p);
    let mut t = later;
    for _ in 0..20 {
        t += Duration::from_secs(1);
        engine.handle_timeout(t);
        asked.extend(run_requests_to(&outputs(&mut engine), p));
    }
    println!("after P's upgrade to 20 (contiguous 10), R asks P for {asked:?}");
    assert!(
        !asked.is_empty(),
        "R never asks P for blocks 0..10 again although P holds them at R's length: \
         on_sync/on_range start from the channel's `sourced` (src/replication/engine/channels.rs)"
    );
}

/// Twelve honest nodes, each storage operation taking `per_op`.
fn slow_storage(seed: u64, per_op: Duration) -> SimConfig {
    SimConfig {
        seed,
        nodes: 12,
        blocks: 60,
        min_degree: 3,
        max_degree: 5,
        storage: StorageModel {
            per_op,
            per_block: Duration::from_millis(5),
        },
        links: LinkConfig::default(),
        ..Default::default()
    }
}

/// A writer whose storage is slow to serve the readers that all ask it at once: their
/// requests queue behind each other there and time out, and after its last back-off each
/// reader penalizes the writer. It was dropped until the connection ended, and, being the
/// only source, the network stalled for good with no timer left; now each reader asks it
/// again after its penalty, and every reader gets the log.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_honest_writer_is_not_dropped_for_good() {
    let mut sim = Sim::new(slow_storage(2, Duration::from_millis(900)))
        .await
        .unwrap();
    sim.run_until_synced(Duration::from_secs(600))
        .await
        .unwrap();
    sim.check_honest_logs().await.unwrap();
}

/// Storage a little slower than a third of the request timeout: some requests time out and
/// some peers are dropped, but the others serve and every node gets the log and follows it.
#[tokio::test(flavor = "current_thread")]
async fn storage_slower_than_a_third_of_the_timeouts_still_syncs_and_follows_live() {
    for seed in 0..4 {
        let mut sim = Sim::new(slow_storage(seed, Duration::from_millis(400)))
            .await
            .unwrap();
        sim.run_until_synced(Duration::from_secs(600))
            .await
            .unwrap();
        for _ in 0..10 {
            sim.append(1).await.unwrap();
            sim.run_for(Duration::from_millis(700)).await.unwrap();
        }
        sim.run_until_synced(Duration::from_secs(600))
            .await
            .unwrap();
        sim.check_honest_logs().await.unwrap();
    }
}

//! Every resource a peer can make us spend is bounded (DESIGN, principle 8): dials, queued
//! answers, buffered frames, parked channels, blocks held before they are stored, and the
//! engine's own work per input. Network tests make a real node (on the in-process relay) spend
//! what a hostile peer can, check that the bound holds and that honest replication still
//! completes, and print what they measured; engine tests feed the sans-IO engine the inputs of
//! a hostile peer with a fixed clock.

#[path = "common/attacker.rs"]
mod attacker;
mod common;
#[path = "common/net.rs"]
mod net;

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::reader_engine;
use iroh::{EndpointAddr, SecretKey, address_lookup::memory::MemoryLookup};
use iroh_hypercore::{
    ALPN, Error, Hypercore, HypercoreProtocol,
    core::RunApplied,
    net::{MAX_BUFFERED_PER_CONNECTION, MAX_BUFFERED_TOTAL, MAX_DIALS, NodeStats},
    replication::{
        Engine, EngineConfig, FetchConfig, Input, Mode, Output, Task,
        engine::{Applied, ApplyOutcome, PeerStats, testing::*},
        gossip::{GOSSIP_MAX_MESSAGE, GossipOp, topic},
        wire::{HEADER_LEN, MAX_FRAME, MAX_HANDSHAKE_FRAME, Message, SyncInfo, encode_frame},
    },
    testnet::{Node, TestNet, Transport},
};
use net::*;
use tokio::{sync::mpsc, task::JoinHandle};

const MIB: u64 = 1024 * 1024;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// A node's stats, and its stats of one peer (default if that peer is not connected).
#[derive(Debug, Default, Clone)]
struct Snapshot {
    node: NodeStats,
    peer: PeerStats,
}

/// [`stats`] as a [`Snapshot`].
async fn snapshot(proto: &HypercoreProtocol, peer: [u8; 32]) -> Snapshot {
    let (node, peer) = stats(proto, peer).await;
    Snapshot { node, peer }
}

/// Polls a node's stats until `done` holds (it may also record and assert on every snapshot),
/// failing after [`WAIT`].
async fn poll_until(
    proto: &HypercoreProtocol,
    peer: [u8; 32],
    what: &str,
    mut done: impl FnMut(&Snapshot) -> bool,
) -> Snapshot {
    tokio::time::timeout(WAIT, async {
        loop {
            let s = snapshot(proto, peer).await;
            if done(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Says on an intruder's channel that it downloads, and asks `times` for the whole log of
/// `length` blocks in one run.
async fn ask_for_the_whole_log(tx: &mut iroh::endpoint::SendStream, length: u64, times: u64) {
    let sync = SyncInfo {
        fork: 0,
        length: 0,
        contiguous: 0,
        ask: false,
        downloading: true,
    };
    attacker::send(tx, &Message::Sync(sync)).await;
    for id in 0..times {
        let run = Message::RequestRun {
            id,
            fork: 0,
            start: 0,
            end: length,
            length,
        };
        attacker::send(tx, &run).await;
    }
}

/// **Many peers that never read.** Sixteen attackers that know the key of a writer's log of
/// 64 blocks of 256 KiB each open a channel, ask 8 times for the whole log and never read.
/// With a per-peer backlog limit of 2 MiB, a node-wide budget of 8 MiB and 8 storage tasks
/// at once over all peers, the writer's backlog towards all of them stays within twice the
/// budget plus the answers being read (past twice the budget the largest holder loses its
/// connection; before the node-wide budget it reached sixteen times the per-peer limit), and
/// an honest follower of a second log completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_peers_that_never_read_share_a_node_wide_backlog_budget() {
    let cfg = EngineConfig {
        max_backlog_bytes: 2 * MIB,
        max_backlog_total: 8 * MIB,
        serve_run_bytes: 256 * 1024,
        serve_concurrency_total: 8,
        ..Default::default()
    };
    let net = test_net().await;
    let writer = node_with_config(&net, cfg.clone()).await;
    let big = log_on(&writer, "big", 64, 256 * 1024).await;
    let small = log_on(&writer, "small", 200, 1024).await;
    let mut intruders = Vec::new();
    for _ in 0..16 {
        let (intruder, mut tx, rx) = attacker::intrude(&net, &writer, big.key()).await;
        ask_for_the_whole_log(&mut tx, 64, 8).await;
        intruders.push((intruder, tx, rx));
    }
    let budget = cfg.max_backlog_total;
    let in_flight = cfg.serve_concurrency_total as u64 * (cfg.serve_run_bytes + 256 * 1024);
    let bound = 2 * budget + in_flight + MIB;
    let mut peak = 0;
    poll_until(&writer.proto, [0; 32], "the budget reached", |s| {
        peak = peak.max(s.node.backlog_bytes);
        assert!(peak <= bound, "backlog {} over {}", mib(peak), mib(bound));
        s.node.backlog_bytes >= budget
    })
    .await;
    let sampler = watch(&writer.proto, [0; 32]);
    let follower = net.node(Transport::Direct).await.unwrap();
    let small_at_f = follow(&follower, &writer, &small).await;
    wait_full(&small_at_f, 200).await;
    let after = snapshot(&writer.proto, [0; 32]).await;
    let _ = sampler.stop().await;
    peak = peak.max(after.node.backlog_bytes);
    println!(
        "16 never-reading peers: node backlog {} at most (budget {}, bound {}; the per-peer \
         bounds add up to {}); honest follower of 200 blocks completed",
        mib(peak),
        mib(budget),
        mib(bound),
        mib(16 * (cfg.max_backlog_bytes + cfg.serve_concurrency as u64 * cfg.serve_run_bytes)),
    );
    assert!(peak <= bound, "backlog {} over {}", mib(peak), mib(bound));
    for (intruder, tx, rx) in intruders {
        drop((tx, rx));
        intruder.hang_up().await;
    }
    shutdown(&[&follower, &writer]).await;
}

/// The highest values seen by a [`Watch`].
#[derive(Debug, Default, Clone, Copy)]
struct Peak {
    dials: usize,
    parked: usize,
    buffered: u64,
    peer_buffered: u64,
    backlog: u64,
}

/// Samples a node's stats (and those of one peer) in the background, keeping the peaks.
struct Watch {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Peak>,
}

fn watch(proto: &HypercoreProtocol, peer: [u8; 32]) -> Watch {
    let stop = Arc::new(AtomicBool::new(false));
    let (proto, stopped) = (proto.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let mut p = Peak::default();
        while !stopped.load(Ordering::Relaxed) {
            let s = snapshot(&proto, peer).await;
            p.dials = p.dials.max(s.node.dials_in_flight);
            p.parked = p.parked.max(s.node.parked_channels);
            p.buffered = p.buffered.max(s.node.buffered_bytes);
            p.peer_buffered = p.peer_buffered.max(s.peer.buffered_bytes);
            p.backlog = p.backlog.max(s.peer.backlog_bytes);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        p
    });
    Watch { stop, task }
}

impl Watch {
    async fn stop(self) -> Peak {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// A new node follows `log` of `writer` through its ticket: the time from the ticket to the
/// last block (the node's start-up not counted).
async fn follow_timed(net: &TestNet, writer: &Node, log: &Hypercore) -> Duration {
    let node = net.node(Transport::Direct).await.unwrap();
    let start = Instant::now();
    let core = follow(&node, writer, log).await;
    wait_full(&core, log.info().length).await;
    let took = start.elapsed();
    assert_eq!(core.tree_hash(), log.tree_hash());
    node.shutdown().await;
    took
}

/// Waits until the node of `proto` closes `conn` (opened by `me`) and then gives back every
/// buffer: why it closed, how long after `start`, and the node's stats then.
async fn closed_and_released(
    proto: &HypercoreProtocol,
    conn: &iroh::endpoint::Connection,
    me: [u8; 32],
    start: Instant,
) -> (iroh::endpoint::ConnectionError, Duration, Snapshot) {
    let reason = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("the connection is closed");
    let closed = start.elapsed();
    let after = poll_until(proto, me, "buffers given back", |s| {
        s.node.buffered_bytes == 0 && s.node.connections == 0
    })
    .await;
    (reason, closed, after)
}

/// **Gossip dial flood.** An attacker on a core's gossip topic announces, in four waves a
/// second apart, 200 made-up origins (ids of endpoints that do not exist, whose addresses lead
/// to a UDP socket that never answers, so every dial hangs until its timeout) with a longer
/// log. Expected: the target dials at most `gossip_dials_per_second` of them a second (the rest
/// count in `gossip_dials_skipped`), never has more than [`MAX_DIALS`] dials in flight, and an
/// honest follower of its log still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gossip_dial_flood_is_rate_limited_and_bounded() {
    let net = test_net().await;
    let (target, log) = writer_with_log(&net, "gossiped", 200, 1024).await;

    // The made-up origins: the target can look them up, but nothing answers there.
    let blackhole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let lookup = MemoryLookup::new();
    let origins: Vec<[u8; 32]> = (0..200)
        .map(|_| {
            let id = SecretKey::generate().public();
            lookup.add_endpoint_info(
                EndpointAddr::new(id).with_ip_addr(blackhole.local_addr().unwrap()),
            );
            *id.as_bytes()
        })
        .collect();
    target.endpoint.address_lookup().unwrap().add(lookup);

    let ep = net.endpoint(Transport::Direct).await.unwrap();
    let gossip = iroh_gossip::Gossip::builder().spawn(ep.clone());
    let router = iroh::protocol::Router::builder(ep.clone())
        .accept(iroh_gossip::ALPN, gossip.clone())
        .spawn();
    let topic_id = iroh_gossip::TopicId::from_bytes(topic(&log.key()));
    let joined = gossip.subscribe_and_join(topic_id, vec![target.endpoint.id()]);
    let (sender, _receiver) = tokio::time::timeout(WAIT, joined)
        .await
        .expect("joined the topic")
        .unwrap()
        .split();

    let watch = watch(&target.proto, [0; 32]);
    let start = Instant::now();
    // Paced, so that more dials pass the rate limit than MAX_DIALS while the first still hang.
    let mut pace = tokio::time::interval(Duration::from_millis(1100));
    for wave in origins.chunks(50) {
        pace.tick().await;
        for origin in wave {
            let op = GossipOp::Announce {
                origin: *origin,
                fork: 0,
                length: 1_000_000,
                contiguous: 1_000_000,
            };
            let bytes = op.encode(GOSSIP_MAX_MESSAGE).unwrap();
            sender.broadcast(bytes.into()).await.unwrap();
        }
    }
    let flooded = start.elapsed();
    poll_until(&target.proto, [0; 32], "gossip dials skipped", |s| {
        s.node.gossip_dials_skipped > 0
    })
    .await;
    let honest = follow_timed(&net, &target, &log).await;
    let skipped = snapshot(&target.proto, [0; 32])
        .await
        .node
        .gossip_dials_skipped;
    let peak = watch.stop().await;
    println!(
        "gossip flood: 200 announcements in {flooded:.1?}; dials skipped by the rate limit: {skipped}; \
         dials in flight at most {} (limit {MAX_DIALS}); honest follower of 200 blocks: {honest:.2?}",
        peak.dials
    );
    assert!(peak.dials <= MAX_DIALS, "{peak:?}");
    // Four waves over 3.3 s: about a second's worth of dials passes per wave (two spare).
    let per_second = EngineConfig::default().gossip_dials_per_second as u64;
    assert!(skipped > 0 && skipped >= 200 - 6 * per_second, "{skipped}");
    drop(sender);
    router.shutdown().await.ok();
    target.shutdown().await;
}

/// **A peer that never reads.** An attacker that knows the key of a writer's log of 128 blocks
/// of 256 KiB opens a channel, then asks 80 times for the whole log (`RequestRun 0..128`, 2.5
/// GiB of answers) and never reads. Expected: the writer's backlog towards it reaches
/// `max_backlog_bytes` and stays there, give or take the run parts being read when it crossed
/// (at most `serve_run_bytes` each, plus a block); and an honest follower of a second, small
/// log of the writer completes (its time with and without the attacker is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_holds_at_most_its_backlog_limit() {
    let cfg = EngineConfig::default();
    let net = test_net().await;
    let (writer, big) = writer_with_log(&net, "big", 128, 256 * 1024).await;
    let small = log_on(&writer, "small", 500, 1024).await;
    let quiet = follow_timed(&net, &writer, &small).await;

    let (intruder, mut tx, rx) = attacker::intrude(&net, &writer, big.key()).await;
    let me = intruder.me;
    ask_for_the_whole_log(&mut tx, 128, 80).await;

    let limit = cfg.max_backlog_bytes;
    let bound = limit + 4 * cfg.serve_run_bytes + 81 * MIB / 10;
    let mut peak = 0;
    let mut check = |s: &Snapshot| {
        peak = peak.max(s.peer.backlog_bytes);
        assert!(peak <= bound, "backlog {} over {}", mib(peak), mib(bound));
    };
    poll_until(&writer.proto, me, "the backlog limit reached", |s| {
        check(s);
        s.peer.backlog_bytes >= limit
    })
    .await;
    let sampler = watch(&writer.proto, me);
    let attacked = follow_timed(&net, &writer, &small).await;
    // Then the backlog settles: unchanged over 40 polls (at least 200 ms).
    let (mut last, mut same) = (0, 0);
    let settled = poll_until(&writer.proto, me, "the backlog settled", |s| {
        check(s);
        same = if s.peer.backlog_bytes == last {
            same + 1
        } else {
            0
        };
        last = s.peer.backlog_bytes;
        same >= 40
    })
    .await;
    let peak = peak.max(sampler.stop().await.backlog);
    println!(
        "never-reading peer: backlog held {} at most, settled at {} (limit {}, bound {}); \
         answered with {} of blocks; honest follower of 500 blocks: {quiet:.2?} without the attacker, \
         {attacked:.2?} with it",
        mib(peak),
        mib(settled.peer.backlog_bytes),
        mib(limit),
        mib(bound),
        mib(settled.peer.bytes_up),
    );
    assert!(peak <= bound && peak >= limit);
    drop((tx, rx));
    intruder.hang_up().await;
    writer.shutdown().await;
}

/// **Unfinished frames before the handshake.** An attacker that knows no key opens 96 streams
/// and on each writes the header of an 8 MiB frame and 256 KiB of it (24 MiB in all: under the
/// connection's budget of unfinished frames). Expected: a channel carries frames of at most
/// `MAX_HANDSHAKE_FRAME` bytes before its handshake, so the first such header gets the
/// connection closed, and the node never holds more than a handshake frame per stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_frames_before_the_handshake_close_the_connection() {
    let net = test_net().await;
    let (target, _log) = writer_with_log(&net, "log", 10, 64).await;
    let ep = net.endpoint(Transport::Direct).await.unwrap();
    let conn = ep.connect(target.addr(), ALPN).await.unwrap();
    let me = *ep.id().as_bytes();
    let sampler = watch(&target.proto, me);
    let start = Instant::now();
    let mut opened = 0;
    for _ in 0..96 {
        let Ok((tx, rx)) = conn.open_bi().await else {
            break;
        };
        attacker::unfinished_frame(&conn, tx, rx, 8 * MIB as u32, 256 * 1024);
        opened += 1;
    }
    let (reason, closed, after) = closed_and_released(&target.proto, &conn, me, start).await;
    let peak = sampler.stop().await;
    println!(
        "unfinished frames before the handshake: {opened} streams opened, connection closed \
         after {closed:.2?} ({reason}); \
         buffered at most {} bytes (node), {} bytes (connection), {} bytes after",
        peak.buffered, peak.peer_buffered, after.node.buffered_bytes
    );
    assert!(
        peak.buffered <= 96 * (MAX_HANDSHAKE_FRAME + HEADER_LEN) as u64,
        "{peak:?}"
    );
    ep.close().await;
    target.shutdown().await;
}

/// **Unfinished frames on authenticated channels.** An attacker that knows the keys of 6 cores
/// of a writer opens a channel for each, then on each writes the header of an 8 MiB frame and
/// 7.9 MiB of it, never finishing: 47 MiB of unfinished frames. Expected: the frames count
/// against the connection's budget (`MAX_BUFFERED_PER_CONNECTION`, 32 MiB, so the fifth
/// stream hits it), the connection is closed, its buffers are given back, and an honest
/// follower of one of the cores then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_frames_after_the_handshake_hit_the_connection_budget() {
    let net = test_net().await;
    let writer = net.node(Transport::Direct).await.unwrap();
    let logs = logs_on(&writer, 6, 100, 1024).await;
    let (ep, conn) = attacker::connect_below(&net, &writer).await;
    let me = *ep.id().as_bytes();
    let mut channels = Vec::new();
    for log in &logs {
        let ch = attacker::open_channel(&conn, me, log.key()).await;
        channels.push(ch.expect("the writer accepts a channel with a valid capability"));
    }
    let sampler = watch(&writer.proto, me);
    let start = Instant::now();
    for (tx, rx) in channels {
        attacker::unfinished_frame(&conn, tx, rx, 8 * MIB as u32, 79 * MIB / 10);
    }
    let (reason, closed, after) = closed_and_released(&writer.proto, &conn, me, start).await;
    let peak = sampler.stop().await;
    let honest = follow_timed(&net, &writer, &logs[0]).await;
    println!(
        "unfinished frames after the handshake: connection closed after {closed:.2?} ({reason}); \
         buffered at most {} (connection, budget {}), {} (node); {} after; \
         honest follower of 100 blocks: {honest:.2?}",
        mib(peak.peer_buffered),
        mib(MAX_BUFFERED_PER_CONNECTION),
        mib(peak.buffered),
        after.node.buffered_bytes
    );
    assert!(
        peak.peer_buffered <= MAX_BUFFERED_PER_CONNECTION,
        "{peak:?}"
    );
    ep.close().await;
    writer.shutdown().await;
}

/// **Parked channels.** An honest node H opens a channel for its new log X to a node T that
/// does not replicate X yet: T parks it. Then an attacker that knows no key opens 300 streams,
/// each with an `Open` for a made-up core. Expected: T parks at most `max_parked_per_peer` of
/// the attacker's channels and refuses the rest (with `Close`, counted in `refused`); a parked
/// channel that carries anything but its `Open` (a `Cancel`) is closed with `Close`; and when
/// T then replicates X, it adopts H's parked channel and downloads X from H.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_channels_are_capped_per_peer_and_an_honest_one_is_adopted() {
    let cap = EngineConfig::default().max_parked_per_peer;
    let net = test_net().await;
    let (t, c) = writer_with_log(&net, "c", 10, 64).await;
    let h = net.node(Transport::Direct).await.unwrap();
    let h_id = *h.endpoint.id().as_bytes();
    let c_at_h = h.store.get_remote(c.key()).await.unwrap();
    h.proto.join(&c_at_h, &[t.addr()]).await.unwrap();
    wait_full(&c_at_h, 10).await;
    // H and T are connected: a core H joins with T now is opened towards T, which does not
    // know it.
    let x = h.store.get_named("x").await.unwrap();
    append_numbered(&x, 0, 50, 256).await;
    let parked_at = Instant::now();
    h.proto.join(&x, &[t.addr()]).await.unwrap();
    poll_until(&t.proto, h_id, "H's channel parked", |s| {
        s.node.parked_channels == 1
    })
    .await;

    let (ep, conn) = attacker::connect_below(&net, &t).await;
    let me = *ep.id().as_bytes();
    let (answers_tx, mut answers) = mpsc::unbounded_channel();
    let mut streams = Vec::new();
    for i in 0..300 {
        let (mut tx, mut rx) = conn.open_bi().await.unwrap();
        let open = Message::Open {
            discovery_key: rand::random(),
            capability: rand::random(),
        };
        attacker::send(&mut tx, &open).await;
        let answers_tx = answers_tx.clone();
        tokio::spawn(async move {
            let first = attacker::read_msg(&mut rx).await;
            let ended = attacker::read_msg(&mut rx).await.is_none();
            let _ = answers_tx.send((i, first, ended));
        });
        streams.push(tx);
    }
    let mut refused = HashSet::new();
    while refused.len() < 300 - cap {
        let (i, first, ended) = tokio::time::timeout(WAIT, answers.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(first, Some(Message::Close { .. })) && ended,
            "{first:?}"
        );
        refused.insert(i);
    }
    let s = poll_until(&t.proto, me, "the attacker's channels counted", |s| {
        assert!(s.node.parked_channels <= cap + 1, "{:?}", s.node);
        s.peer.refused >= (300 - cap) as u64
    })
    .await;
    assert_eq!(s.node.parked_channels, cap + 1, "{:?}", s.node);
    let full = s;

    // A parked channel carries nothing but its Open: a Cancel on one gets it closed.
    let victim = (0..300).find(|i| !refused.contains(i)).unwrap();
    attacker::send(&mut streams[victim], &Message::Cancel { id: 1 }).await;
    let (i, first, ended) = tokio::time::timeout(WAIT, answers.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(i, victim);
    assert!(
        matches!(first, Some(Message::Close { .. })) && ended,
        "{first:?}"
    );
    let cancelled = poll_until(&t.proto, me, "the cancelled channel unparked", |s| {
        s.node.parked_channels == cap
    })
    .await;

    // T replicates X: it adopts H's parked channel and downloads X from H.
    let x_at_t = t.store.get_remote(x.key()).await.unwrap();
    t.proto.replicate(&x_at_t).await.unwrap();
    wait_full(&x_at_t, 50).await;
    let adopted = parked_at.elapsed();
    let done = poll_until(&t.proto, h_id, "H's channel adopted", |s| {
        s.node.parked_channels == cap - 1 && s.peer.blocks_down >= 50
    })
    .await;
    println!(
        "parked channels: {} parked of 301 (the attacker's cap {cap}, plus H's); attacker's \
         refused {}, dropped {} after its Cancel; parked after it: {}; H's channel adopted and \
         X downloaded {adopted:.2?} after it was parked (handshake timeout {:?}); parked now {}",
        full.node.parked_channels,
        full.peer.refused,
        cancelled.peer.dropped,
        cancelled.node.parked_channels,
        EngineConfig::default().handshake_timeout,
        done.node.parked_channels,
    );
    assert!(adopted < EngineConfig::default().handshake_timeout);
    assert_eq!(done.peer.refused + done.peer.dropped, 0, "{:?}", done.peer);
    drop(streams);
    ep.close().await;
    shutdown(&[&h, &t]).await;
}

/// **Keyless peers fill the parked slots.** Four attackers that know no key each open 40
/// channels for made-up cores to a node T whose table of parked channels holds 64 (16 a
/// peer): every slot is taken. Then an honest reader joins T for a log T's store holds but
/// does not replicate (served on demand). Expected: the reader's channel takes the oldest slot
/// of the peer holding the most (which is refused "no room"), T looks the log up and serves
/// it, and the reader downloads it well within the handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_peers_filling_the_parked_slots_do_not_shut_out_a_reader() {
    let net = test_net().await;
    let config = EngineConfig {
        max_parked: 64,
        max_parked_per_peer: 16,
        ..Default::default()
    };
    let t = node_with_config(&net, config).await;
    let x = t.store.get_named("x").await.unwrap();
    append_numbered(&x, 0, 20, 256).await;
    let mut attackers = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..4 {
        let (ep, conn) = attacker::connect_below(&net, &t).await;
        for _ in 0..40 {
            let (mut tx, rx) = conn.open_bi().await.unwrap();
            let open = Message::Open {
                discovery_key: rand::random(),
                capability: rand::random(),
            };
            attacker::send(&mut tx, &open).await;
            streams.push((tx, rx));
        }
        attackers.push((ep, conn));
    }
    let full = poll_until(&t.proto, [0; 32], "every parked slot taken", |s| {
        s.node.parked_channels == 64
    })
    .await;

    let started = Instant::now();
    let r = net.node(Transport::Direct).await.unwrap();
    let x_at_r = r.store.get_remote(x.key()).await.unwrap();
    r.proto.join(&x_at_r, &[t.addr()]).await.unwrap();
    wait_full(&x_at_r, 20).await;
    let took = started.elapsed();
    let after = snapshot(&t.proto, [0; 32]).await;
    println!(
        "parked slots: {} of 64 taken by 4 keyless peers; the reader's log served on demand \
         in {took:.2?}; parked now {}",
        full.node.parked_channels, after.node.parked_channels
    );
    assert!(
        took < EngineConfig::default().handshake_timeout,
        "took {took:?}"
    );
    assert!(after.node.parked_channels <= 64);
    drop(streams);
    for (ep, conn) in &attackers {
        attacker::hang_up(ep, conn).await;
    }
    shutdown(&[&r, &t]).await;
}

/// **A peer that never reads still makes the node queue without limit.** The attacker knows
/// the key (a ticket), opens a channel, never reads, and sends 10-byte `Sync { ask: true }`
/// frames. Each is answered with a `Sync`, which the driver queues whatever the peer's
/// backlog: with `max_backlog_bytes` 256 KiB and runs read in parts of 64 KiB (a bound of
/// 512 KiB by the README's account), the writer's backlog towards it passes 16 times that (8 MiB,
/// the default limit) and keeps growing with what the attacker sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_cannot_grow_the_backlog_with_sync_asks() {
    let cfg = EngineConfig {
        max_backlog_bytes: 256 * 1024,
        serve_run_bytes: 64 * 1024,
        ..Default::default()
    };
    let bound = cfg.max_backlog_bytes + 4 * cfg.serve_run_bytes;
    let net = test_net().await;
    let writer = node_with_config(&net, cfg).await;
    let log = log_on(&writer, "log", 100, 64).await;

    let (intruder, mut tx, rx) = attacker::intrude(&net, &writer, log.key()).await;
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
        let (_, p) = stats(&writer.proto, intruder.me).await;
        peak = peak.max(p.backlog_bytes);
        same = if p.backlog_bytes == last { same + 1 } else { 0 };
        last = p.backlog_bytes;
        if peak > 16 * bound || (sender.is_finished() && same >= 100) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, p) = stats(&writer.proto, intruder.me).await;
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
    intruder.hang_up().await;
    writer.shutdown().await;
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
    let net = test_net().await;
    let (writer, reader) = two_nodes(&net).await;
    let mut logs: Vec<(Hypercore, Hypercore)> = Vec::new();
    for log in logs_on(&writer, 4, 1, 64).await {
        let copy = follow(&reader, &writer, &log).await;
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
        attacker::hang_up(&ep, &conn).await;
    }
    shutdown(&[&reader, &writer]).await;
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
    let (mut engine, channel, _) = engine_with_peer_outputs(
        cfg,
        local_at(100, 100, true),
        Mode::Full,
        sync_at(0, 0, false),
        now,
    );
    // The driver: the peer has not read what is queued, over the limit.
    engine.handle(
        Input::Backlog {
            peer: PEER,
            bytes: 4 * limit,
            over: true,
        },
        now,
    );
    outputs(&mut engine);
    let mut queued = 0;
    for _ in 0..10_000 {
        engine.handle(Input::Message(PEER, channel, sync_at(0, 0, true)), now);
        let want = Message::Want {
            start: 0,
            end: u64::MAX,
        };
        engine.handle(Input::Message(PEER, channel, want), now);
        queued += outputs(&mut engine)
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

/// The engine's median time, over `rounds`, to handle an input that concerns no fetch: a
/// `Backlog` report of `peer` at `now`, and the outputs that follow.
fn time_per_input(engine: &mut Engine, peer: [u8; 32], rounds: u32, now: Instant) -> Duration {
    // The median of the rounds, each timed alone: a scan per input shows in every round,
    // while a round the machine preempted (a loaded CI host) does not move the figure.
    let mut took: Vec<Duration> = (0..rounds.max(1))
        .map(|_| {
            let start = Instant::now();
            engine.handle(
                Input::Backlog {
                    peer,
                    bytes: 0,
                    over: false,
                },
                now,
            );
            outputs(engine);
            start.elapsed()
        })
        .collect();
    took.sort();
    took[took.len() / 2]
}

/// Asserts that the engine took under a millisecond (`took`) per input; `why` says what it
/// means if not.
fn assert_under_a_millisecond(took: Duration, why: &str) {
    assert!(took < Duration::from_millis(1), "{took:?} {why}");
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
    let (mut engine, channel, _) = reader_engine(cfg, n, 0, sync_at(n, 0, false), now);
    assert_eq!(engine.queued_blocks(), n as usize);
    let rounds = 100;
    let timed = |engine: &mut Engine, toggle: bool| {
        let start = Instant::now();
        for i in 0..rounds {
            let contiguous = if toggle && i % 2 == 0 { n } else { 0 };
            engine.handle(
                Input::Message(PEER, channel, sync_at(n, contiguous, false)),
                now,
            );
            outputs(engine);
        }
        start.elapsed()
    };
    let quiet = timed(&mut engine, false);
    // The first time the peer says it holds everything, each block records it as a source:
    // that walk is due once. Going down and up again must cost nothing more.
    engine.handle(Input::Message(PEER, channel, sync_at(n, n, false)), now);
    outputs(&mut engine);
    let toggled = timed(&mut engine, true);
    let per = toggled / rounds;
    println!(
        "{rounds} Syncs: {quiet:?} with a steady contiguous, {toggled:?} toggling it \
         ({per:?} per 10-byte message) against a fetch queue of {n} blocks"
    );
    assert_under_a_millisecond(
        per,
        "of engine time per Sync: on_sync -> fetch.add_source scans the queue",
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
    let (mut engine, channel, out) = reader_engine(cfg, 1000, 0, sync_at(1000, 1000, false), now);
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
        for o in outputs(&mut engine) {
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
    let local = local_at(1000, 0, false);
    engine.handle(task.done(Applied { outcome, local }), now);
    let pending: u64 = outputs(&mut engine)
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
    let (mut engine, _hc, out) =
        reader_engine(EngineConfig::default(), n, 1, sync_at(n, n, false), now);
    assert!(!run_requests(&out).is_empty(), "H is asked for runs");
    let ac = connect(&mut engine, a, now);
    let before = time_per_input(&mut engine, h, 5, now);
    engine.handle(Input::Message(a, ac, sync_at(n, 1, false)), now);
    outputs(&mut engine);
    let after = time_per_input(&mut engine, h, 5, now);
    println!(
        "engine time per unrelated input: {before:?} before A's one Sync, {after:?} after it \
         (fetch queue of {n} blocks)"
    );
    assert_under_a_millisecond(
        after,
        "per input: FetchQueue::next_request -> assign(A) walks every ready entry",
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
    let (mut engine, channel, out) =
        reader_engine(EngineConfig::default(), n, 0, sync_at(n, n, false), t0);
    let (id, start, _) = run_requests(&out)[0];
    let data = Message::Data {
        id,
        proof: junk_block(start, 16),
    };
    engine.handle(Input::Message(PEER, channel, data), t0);
    let task = outputs(&mut engine)
        .into_iter()
        .find_map(|o| match o {
            Output::Task(_, Task::ApplyRun { reply, .. }) => Some(reply),
            _ => None,
        })
        .expect("the junk block is applied");
    engine.handle(Input::PeerDisconnected(PEER), t0);
    outputs(&mut engine);
    let later = t0 + Duration::from_secs(10);
    let before = time_per_input(&mut engine, [7; 32], 3, later);
    let applied = RunApplied {
        stored: vec![],
        rejected: Some((start, Error::InvalidArgument("checksum mismatch"))),
    };
    let outcome = ApplyOutcome::Done(applied);
    let local = local_at(n, 0, false);
    engine.handle(task.done(Applied { outcome, local }), t0);
    outputs(&mut engine);
    let after = time_per_input(&mut engine, [7; 32], 3, later);
    println!(
        "peers connected: {:?}; engine time per input {before:?} before the late blame, \
         {after:?} after it (fetch queue of {n} blocks)",
        engine.peers()
    );
    assert_under_a_millisecond(
        after,
        "per input: the blamed peer, gone, is back in the fetch queue for good",
    );
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
    engine.add_core(CORE, local_at(n, c, false), Mode::Full, now);
    // Another peer H, whose inputs (unrelated to A) are timed below.
    let hc = connect(&mut engine, h, now);
    engine.handle(Input::Message(h, hc, sync_at(0, 0, false)), now);
    outputs(&mut engine);
    let ac = connect(&mut engine, a, now);
    engine.handle(Input::Message(a, ac, sync_at(n, n, false)), now);
    let out = outputs(&mut engine);
    let (id, start, end) = *run_requests_to(&out, a)
        .first()
        .expect("A is asked for a run of the missing blocks");
    println!("A is asked for run {id}: {start}..{end}");

    let before = time_per_input(&mut engine, h, 20, now);

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
    outputs(&mut engine);
    let after = time_per_input(&mut engine, h, 20, now);
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

//! Test network 6: resource attacks. Each test makes a real node (on the in-process relay) spend
//! what a hostile peer can make it spend — dials, queued answers, buffered frames, parked
//! channels — checks that the bound holds and that honest replication still completes, and
//! prints what it measured.

#[path = "common/attacker.rs"]
mod attacker;
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

use iroh::{EndpointAddr, SecretKey, address_lookup::memory::MemoryLookup};
use iroh_hypercore::{
    ALPN, Hypercore, HypercoreProtocol,
    net::{MAX_BUFFERED_PER_CONNECTION, MAX_DIALS, NodeStats},
    replication::{
        EngineConfig,
        engine::PeerStats,
        gossip::{GOSSIP_MAX_MESSAGE, GossipOp, topic},
        wire::{HEADER_LEN, MAX_HANDSHAKE_FRAME, Message, SyncInfo},
    },
    testnet::{Node, TestNet, Transport},
};
use net::{WAIT, append_numbered, wait_full, writer_with_log};
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

async fn snapshot(proto: &HypercoreProtocol, peer: [u8; 32]) -> Snapshot {
    let node = proto.node_stats().await.unwrap();
    let peers = proto.peer_stats().await.unwrap();
    let peer = peers
        .into_iter()
        .find(|s| s.peer == peer)
        .unwrap_or_default();
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
    let core = node
        .proto
        .open_ticket(&writer.proto.ticket(log))
        .await
        .unwrap();
    wait_full(&core, log.info().length).await;
    let took = start.elapsed();
    assert_eq!(core.tree_hash(), log.tree_hash());
    node.shutdown().await;
    took
}

/// **Gossip dial flood.** An attacker on a core's gossip topic announces, in four waves a
/// second apart, 200 made-up origins (ids of endpoints that do not exist, whose addresses lead
/// to a UDP socket that never answers, so every dial hangs until its timeout) with a longer
/// log. Expected: the target dials at most `gossip_dials_per_second` of them a second (the rest
/// count in `gossip_dials_skipped`), never has more than [`MAX_DIALS`] dials in flight, and an
/// honest follower of its log still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gossip_dial_flood_is_rate_limited_and_bounded() {
    net::init_tracing();
    let net = TestNet::new().await.unwrap();
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
    let topic_id = iroh_gossip::TopicId::from_bytes(topic(&log.discovery_key()));
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
    net::init_tracing();
    let cfg = EngineConfig::default();
    let net = TestNet::new().await.unwrap();
    let (writer, big) = writer_with_log(&net, "big", 128, 256 * 1024).await;
    let small = writer.store.get_named("small").await.unwrap();
    append_numbered(&small, 0, 500, 1024).await;
    writer.proto.replicate(&small).await.unwrap();
    let quiet = follow_timed(&net, &writer, &small).await;

    let (ep, conn) = attacker::connect_below(&net, &writer).await;
    let me = *ep.id().as_bytes();
    let (mut tx, rx) = attacker::open_channel(&conn, me, big.key())
        .await
        .expect("the writer accepts a channel with a valid capability");
    let sync = SyncInfo {
        fork: 0,
        length: 0,
        contiguous: 0,
        ask: false,
        downloading: true,
    };
    attacker::send(&mut tx, &Message::Sync(sync)).await;
    for id in 0..80 {
        let run = Message::RequestRun {
            id,
            fork: 0,
            start: 0,
            end: 128,
            length: 128,
        };
        attacker::send(&mut tx, &run).await;
    }

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
    conn.close(0u32.into(), b"done");
    ep.close().await;
    writer.shutdown().await;
}

/// **Unfinished frames before the handshake.** An attacker that knows no key opens 96 streams
/// and on each writes the header of an 8 MiB frame and 256 KiB of it (24 MiB in all: under the
/// connection's budget of unfinished frames). Expected: a channel carries frames of at most
/// `MAX_HANDSHAKE_FRAME` bytes before its handshake, so the first such header gets the
/// connection closed, and the node never holds more than a handshake frame per stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_frames_before_the_handshake_close_the_connection() {
    net::init_tracing();
    let net = TestNet::new().await.unwrap();
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
    let reason = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("the connection is closed");
    let closed = start.elapsed();
    let after = poll_until(&target.proto, me, "buffers given back", |s| {
        s.node.buffered_bytes == 0 && s.node.connections == 0
    })
    .await;
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
    net::init_tracing();
    let net = TestNet::new().await.unwrap();
    let writer = net.node(Transport::Direct).await.unwrap();
    let mut logs = Vec::new();
    for i in 0..6 {
        let log = writer.store.get_named(&format!("log {i}")).await.unwrap();
        append_numbered(&log, 0, 100, 1024).await;
        writer.proto.replicate(&log).await.unwrap();
        logs.push(log);
    }
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
    let reason = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("the connection is closed");
    let closed = start.elapsed();
    let after = poll_until(&writer.proto, me, "buffers given back", |s| {
        s.node.buffered_bytes == 0 && s.node.connections == 0
    })
    .await;
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
    net::init_tracing();
    let cap = EngineConfig::default().max_parked_per_peer;
    let net = TestNet::new().await.unwrap();
    let (t, c) = writer_with_log(&net, "c", 10, 64).await;
    let h = net.node(Transport::Direct).await.unwrap();
    let h_id = *h.endpoint.id().as_bytes();
    let c_at_h = h.store.get_remote(c.key()).await.unwrap();
    h.proto.join(&c_at_h, &[t.addr()]).await.unwrap();
    wait_full(&c_at_h, 10).await;
    // H and T are connected: a core H adds now is opened towards T, which does not know it.
    let x = h.store.get_named("x").await.unwrap();
    append_numbered(&x, 0, 50, 256).await;
    let parked_at = Instant::now();
    h.proto.replicate(&x).await.unwrap();
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
    h.shutdown().await;
    t.shutdown().await;
}

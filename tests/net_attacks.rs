//! Attacks on what the protocol promises, each by a hostile raw peer against real nodes on the
//! test relay: reading without the key (1), rolling a log back with a replayed signature (3),
//! answers that prove nothing (4), poisoning a fresh reader's idea of the core's kind (5), an
//! upgrade peer that goes away (6), and numbers that overflow (7). The resource attacks
//! (gossip dials, a peer that never reads, unfinished frames, parked channels) are in
//! `net_attacks_resources.rs`.

#[path = "common/attacker.rs"]
mod attacker;
#[path = "common/net.rs"]
mod net;

use std::time::{Duration, Instant};

use attacker::{connect_below, endpoint_ordered, open_channel, read_all, read_msg, send};
use iroh::{
    Endpoint,
    endpoint::{Connection, RecvStream, SendStream},
    protocol::{AcceptError, ProtocolHandler, Router},
};
use iroh_hypercore::{
    Corestore, Error, Hypercore,
    replication::{
        EngineConfig, Event,
        gossip::{GossipOp, topic},
        wire::{Message, SyncInfo},
    },
    testnet::{Node, TestNet, Transport},
    tree::{BlockProof, Node as TreeNode, Proof, ProofRequest, UpgradeProof, UpgradeRequest},
};
use net::{WAIT, append_numbered, follower, numbered, wait_event, wait_full, writer_with_log};
use tokio::sync::mpsc;

fn sync(length: u64, downloading: bool) -> Message {
    Message::Sync(SyncInfo {
        fork: 0,
        length,
        contiguous: length,
        ask: false,
        downloading,
    })
}

/// Reads until the node asks a `Request`; returns its id.
async fn next_request(rx: &mut RecvStream) -> u64 {
    loop {
        match tokio::time::timeout(WAIT, read_msg(rx)).await.unwrap() {
            Some(Message::Request { id, .. }) => return id,
            Some(_) => {}
            None => panic!("the channel closed before the node asked"),
        }
    }
}

/// The names of the messages a stream carried, for assertions and printing.
fn kinds(msgs: &[Message]) -> Vec<&'static str> {
    msgs.iter()
        .map(|m| match m {
            Message::Open { .. } => "Open",
            Message::Accept { .. } => "Accept",
            Message::Close { .. } => "Close",
            Message::Sync(_) => "Sync",
            Message::Data { .. } => "Data",
            Message::NoData { .. } => "NoData",
            Message::Request { .. } => "Request",
            Message::RequestRun { .. } => "RequestRun",
            Message::Push { .. } => "Push",
            _ => "other",
        })
        .collect()
}

/// A raw endpoint that hands every connection it accepts on the hypercore ALPN to the test.
#[derive(Debug)]
struct Catch(mpsc::UnboundedSender<Connection>);

impl ProtocolHandler for Catch {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let _ = self.0.send(conn);
        Ok(())
    }
}

/// Gossip on `ep` and a router that serves it and hands hypercore connections to the test.
fn catch_connections(
    ep: &Endpoint,
) -> (
    iroh_gossip::Gossip,
    Router,
    mpsc::UnboundedReceiver<Connection>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let gossip = iroh_gossip::Gossip::builder().spawn(ep.clone());
    let router = Router::builder(ep.clone())
        .accept(iroh_hypercore::ALPN, Catch(tx))
        .accept(iroh_gossip::ALPN, gossip.clone())
        .spawn();
    (gossip, router, rx)
}

/// Attack 1a: a peer that knows nothing connects with an id above the writer's, so the writer
/// opens a channel for each of its logs towards it. Each channel carries the writer's `Open`
/// and then only its `Close`: no state, no manifest, no block, whether the peer sends requests
/// without proving the key, a made-up `Accept`, or the writer's own capability reflected back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_key_gets_nothing_on_channels_we_open() {
    net::init_tracing();
    let net = TestNet::new().await.unwrap();
    let writer = net.node(Transport::Direct).await.unwrap();
    for name in ["a", "b", "c"] {
        let log = writer.store.get_named(name).await.unwrap();
        append_numbered(&log, 0, 10, 64).await;
        writer.proto.replicate(&log).await.unwrap();
    }
    let ep = endpoint_ordered(&net, *writer.endpoint.id().as_bytes(), true).await;
    let conn = ep
        .connect(writer.addr(), iroh_hypercore::ALPN)
        .await
        .unwrap();
    for attempt in 0..3 {
        let (mut tx, mut rx) = tokio::time::timeout(WAIT, conn.accept_bi())
            .await
            .unwrap()
            .unwrap();
        let Some(Message::Open {
            capability: cap, ..
        }) = read_msg(&mut rx).await
        else {
            panic!("the writer's channel starts with Open");
        };
        match attempt {
            // Requests and a state of its own, without proving anything.
            0 => {
                send(&mut tx, &sync(0, true)).await;
                let request = ProofRequest {
                    upgrade: Some(UpgradeRequest {
                        start: 0,
                        length: 10,
                    }),
                    manifest: true,
                    ..Default::default()
                };
                send(&mut tx, &Message::Request { id: 1, request }).await;
            }
            // A made-up capability.
            1 => {
                send(
                    &mut tx,
                    &Message::Accept {
                        capability: [7; 32],
                    },
                )
                .await
            }
            // The writer's own capability, reflected.
            _ => send(&mut tx, &Message::Accept { capability: cap }).await,
        }
        let rest = read_all(&mut rx, WAIT).await;
        println!(
            "attempt {attempt}: the writer sent Open then {:?}",
            kinds(&rest)
        );
        assert_eq!(kinds(&rest), ["Close"], "attempt {attempt}");
    }
    let stats = writer.proto.peer_stats().await.unwrap();
    let me = stats
        .iter()
        .find(|s| s.peer == *ep.id().as_bytes())
        .unwrap();
    assert!(me.dropped >= 3, "{me:?}");
    assert_eq!(me.blocks_up, 0);
    conn.close(0u32.into(), b"done");
    ep.close().await;
    writer.shutdown().await;
}

/// Attack 1b: a peer that knows only the discovery key announces a longer log on the core's
/// gossip topic. The reader dials it and opens a channel, but sends nothing past its `Open`,
/// and closes the channel once the handshake timeout passes without the peer's `Accept`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gossip_announcer_that_knows_only_the_discovery_key_reads_nothing() {
    net::init_tracing();
    let net = TestNet::new().await.unwrap();
    let (writer, log) = writer_with_log(&net, "secret", 10, 64).await;
    let cfg = EngineConfig {
        handshake_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let reader = net
        .node_with(Transport::Direct, Corestore::memory().await.unwrap(), cfg)
        .await
        .unwrap();
    let core = reader
        .proto
        .open_ticket(&writer.proto.ticket(&log))
        .await
        .unwrap();
    wait_full(&core, 10).await;

    let ep = endpoint_ordered(&net, *reader.endpoint.id().as_bytes(), true).await;
    let (gossip, router, mut incoming) = catch_connections(&ep);
    let topic = gossip
        .subscribe_and_join(
            iroh_gossip::TopicId::from_bytes(topic(&log.discovery_key())),
            vec![reader.endpoint.id()],
        )
        .await
        .unwrap();
    let (gossip_tx, _gossip_rx) = topic.split();
    let announce = GossipOp::Announce {
        origin: *ep.id().as_bytes(),
        fork: 0,
        length: 1000,
        contiguous: 1000,
    };
    gossip_tx
        .broadcast(announce.encode(4096).unwrap().into())
        .await
        .unwrap();

    // The writer hears the announcement too and may dial first: take the reader's dial.
    let conn = tokio::time::timeout(WAIT, async {
        loop {
            let conn = incoming.recv().await.expect("connections");
            if conn.remote_id() == reader.endpoint.id() {
                return conn;
            }
        }
    })
    .await
    .expect("the reader dials the announcer");
    let (tx, mut rx) = tokio::time::timeout(WAIT, conn.accept_bi())
        .await
        .unwrap()
        .unwrap();
    let opened = Instant::now();
    assert!(matches!(
        read_msg(&mut rx).await,
        Some(Message::Open { .. })
    ));
    // It cannot prove the key, so it says nothing (anything it sent would close the channel
    // at once, as the writer's channels show in the test above).
    let rest = read_all(&mut rx, WAIT).await;
    let took = opened.elapsed();
    println!(
        "the reader sent Open then {:?}, closed after {took:?}",
        kinds(&rest)
    );
    assert_eq!(kinds(&rest), ["Close"]);
    // The reader's 2 s started when it opened the channel, a moment before we saw it.
    assert!(
        took >= Duration::from_millis(1500),
        "closed by the handshake timeout"
    );
    drop(tx);
    let stats = reader.proto.peer_stats().await.unwrap();
    let me = stats.iter().find(|s| s.peer == *ep.id().as_bytes());
    assert!(me.is_none_or(|s| s.blocks_up == 0), "{me:?}");
    drop(gossip_tx);
    router.shutdown().await.ok();
    reader.shutdown().await;
    writer.shutdown().await;
}

/// The writer's signed state at length 5 as anyone who read the log then saw it, and the log
/// grown to 10 blocks afterwards.
async fn log_with_old_signature(net: &TestNet) -> (Node, Hypercore, Proof) {
    let (writer, log) = writer_with_log(net, "rolled", 5, 64).await;
    let old = log
        .create_proof(ProofRequest {
            upgrade: Some(UpgradeRequest {
                start: 0,
                length: 5,
            }),
            manifest: true,
            ..Default::default()
        })
        .await
        .unwrap();
    append_numbered(&log, 5, 5, 64).await;
    (writer, log, old)
}

/// Attack 3a: a peer replays the writer's old signed state (length 5) to a reader at length
/// 10, as the answer to the upgrade the reader asks for and as a push. Both are rejected and
/// blamed; the reader keeps its 10 blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_old_signature_does_not_roll_a_reader_back() {
    net::init_tracing();
    let net = TestNet::new().await.unwrap();
    let (writer, log, old) = log_with_old_signature(&net).await;
    let (reader, core) = follower(&net, &writer, &log).await;
    wait_full(&core, 10).await;
    let mut events = reader.proto.subscribe();

    let (ep, conn) = connect_below(&net, &reader).await;
    let me = *ep.id().as_bytes();
    let (mut tx, mut rx) = open_channel(&conn, me, log.key()).await.expect("accepted");
    send(&mut tx, &sync(11, false)).await;
    let id = next_request(&mut rx).await;
    send(
        &mut tx,
        &Message::Data {
            id,
            proof: old.clone(),
        },
    )
    .await;
    send(&mut tx, &Message::Push { proof: old }).await;
    let ev = wait_event(
        &mut events,
        "the replay blamed",
        |e| matches!(e, Event::Invalid { peer, .. } if *peer == me),
    )
    .await;
    println!("replay rejected: {ev:?}");
    assert_eq!(core.info().length, 10, "not rolled back");
    assert_eq!(core.tree_hash(), log.tree_hash());
    assert_eq!(core.get(7).await.unwrap(), Some(numbered(7, 64).into()));
    // And it still follows the writer.
    log.append(b"eleven".to_vec()).await.unwrap();
    assert_eq!(&core.get(10).wait(WAIT).await.unwrap()[..], b"eleven");
    conn.close(0u32.into(), b"done");
    ep.close().await;
    reader.shutdown().await;
    writer.shutdown().await;
}

/// Attack 3b: the same replay aimed at the writer itself: a longer claimed length, the old
/// state pushed and sent as an unasked answer. The writer never asks a peer for its own state,
/// takes none, and keeps every acknowledged append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_old_signature_does_not_roll_the_writer_back() {
    net::init_tracing();
    let net = TestNet::new().await.unwrap();
    let (writer, log, old) = log_with_old_signature(&net).await;
    let (ep, conn) = connect_below(&net, &writer).await;
    let me = *ep.id().as_bytes();
    let (mut tx, mut rx) = open_channel(&conn, me, log.key()).await.expect("accepted");
    send(&mut tx, &sync(11, true)).await;
    send(&mut tx, &Message::Push { proof: old.clone() }).await;
    let unasked = Message::Data {
        id: 1 << 63,
        proof: old.clone(),
    };
    send(&mut tx, &unasked).await;
    // Messages are handled in order: once this is answered, the replay was handled too.
    let request = ProofRequest {
        block: Some(iroh_hypercore::tree::IndexRequest { index: 0, nodes: 0 }),
        ..Default::default()
    };
    send(&mut tx, &Message::Request { id: 9, request }).await;
    let mut seen = Vec::new();
    loop {
        let msg = tokio::time::timeout(WAIT, read_msg(&mut rx))
            .await
            .unwrap()
            .expect("the channel stays open");
        let answered = matches!(msg, Message::Data { id: 9, .. });
        seen.push(msg);
        if answered {
            break;
        }
    }
    println!("the writer sent {:?}", kinds(&seen));
    assert!(
        !kinds(&seen).contains(&"Request"),
        "the writer asked a peer for its state"
    );
    assert_eq!(log.info().length, 10);
    assert_eq!(log.get(7).await.unwrap(), Some(numbered(7, 64).into()));
    assert!(matches!(
        log.verify_and_apply_proof(old).await,
        Err(Error::Proof(_))
    ));
    log.append(b"eleven".to_vec()).await.unwrap();
    assert_eq!(log.info().length, 11);
    conn.close(0u32.into(), b"done");
    ep.close().await;
    writer.shutdown().await;
}

/// Attack 4: a peer claims a much longer log and answers every upgrade request with a valid
/// but empty proof. Each answer is a failed request for it (blamed, backed off) and the upgrade
/// goes to the writer, so the reader follows the writer's new blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_prove_nothing_are_failures_and_the_writer_is_asked() {
    net::init_tracing();
    let net = TestNet::new().await.unwrap();
    let (writer, log) = writer_with_log(&net, "empty", 10, 64).await;
    let (reader, core) = follower(&net, &writer, &log).await;
    wait_full(&core, 10).await;
    let (ep, conn) = connect_below(&net, &reader).await;
    let me = *ep.id().as_bytes();
    let (mut tx, mut rx) = open_channel(&conn, me, log.key()).await.expect("accepted");
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
    let liar = stats.iter().find(|s| s.peer == me).expect("liar stats");
    conn.close(0u32.into(), b"done");
    let n = answered.await.unwrap();
    println!(
        "followed 5 new blocks in {:?}; empty answers sent {n}, blamed {}",
        started.elapsed(),
        liar.invalid
    );
    assert!(liar.invalid >= 1 && n >= 1, "{liar:?}");
    ep.close().await;
    reader.shutdown().await;
    writer.shutdown().await;
}

/// Attack 5: before the writer is reachable, a peer answers a fresh reader's first upgrade
/// request with proofs that carry no manifest (an empty one, and one with a forged signature).
/// The reader stores nothing of them, so the writer's proofs still verify once it joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_reader_cannot_be_poisoned_about_the_kind_of_core() {
    net::init_tracing();
    let net = TestNet::new().await.unwrap();
    let (writer, log) = writer_with_log(&net, "poison", 10, 64).await;
    let reader = net.node(Transport::Direct).await.unwrap();
    let core = reader.store.get_remote(log.key()).await.unwrap();
    reader.proto.replicate(&core).await.unwrap();
    let mut events = reader.proto.subscribe();

    let (ep, conn) = connect_below(&net, &reader).await;
    let me = *ep.id().as_bytes();
    let (mut tx, mut rx) = open_channel(&conn, me, log.key()).await.expect("accepted");
    send(&mut tx, &sync(10, false)).await;
    let forged = Proof {
        upgrade: Some(UpgradeProof {
            start: 0,
            length: 10,
            nodes: vec![],
            additional_nodes: vec![],
            signature: vec![0; 64],
        }),
        ..Default::default()
    };
    for proof in [Proof::default(), forged] {
        let id = next_request(&mut rx).await;
        send(&mut tx, &Message::Data { id, proof }).await;
        wait_event(
            &mut events,
            "the poison rejected",
            |e| matches!(e, Event::Invalid { peer, .. } if *peer == me),
        )
        .await;
        // Back-off passes, the reader asks again (the peer still claims the longest log).
        send(&mut tx, &sync(10, false)).await;
    }
    assert_eq!(core.info().length, 0);
    assert!(core.manifest().is_none(), "nothing was stored");
    conn.close(0u32.into(), b"done");
    ep.close().await;

    reader.proto.join(&core, &[writer.addr()]).await.unwrap();
    wait_full(&core, 10).await;
    assert_eq!(core.tree_hash(), log.tree_hash());
    assert_eq!(core.manifest(), log.manifest());
    reader.shutdown().await;
    writer.shutdown().await;
}

/// Attack 6: the peer a reader asked for an upgrade (it claimed the longest log) never answers
/// and then goes away. The reader asks the writer at once, not after the upgrade timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_upgrade_peer_leaves_another_peer_is_asked_at_once() {
    net::init_tracing();
    let net = TestNet::new().await.unwrap();
    let (writer, log) = writer_with_log(&net, "left", 20, 64).await;
    let timeout = Duration::from_secs(120);
    let cfg = EngineConfig {
        upgrade_timeout: timeout,
        ..Default::default()
    };
    let reader = net
        .node_with(Transport::Direct, Corestore::memory().await.unwrap(), cfg)
        .await
        .unwrap();
    let core = reader.store.get_remote(log.key()).await.unwrap();
    reader.proto.replicate(&core).await.unwrap();
    let mut events = reader.proto.subscribe();

    let (ep, conn) = connect_below(&net, &reader).await;
    let me = *ep.id().as_bytes();
    let (mut tx, mut rx) = open_channel(&conn, me, log.key()).await.expect("accepted");
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
    conn.close(0u32.into(), b"gone");
    wait_full(&core, 20).await;
    let took = left.elapsed();
    println!("upgraded from the writer {took:?} after the silent peer left (timeout {timeout:?})");
    assert!(took < timeout / 4, "{took:?}");
    ep.close().await;
    reader.shutdown().await;
    writer.shutdown().await;
}

/// Attack 7: a push whose proof carries a node of size `u64::MAX`, so that adding sizes
/// overflows. It is rejected and blamed, and the reader's engine lives on: it follows the
/// writer's next block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_size_u64_max_is_an_error_not_a_panic() {
    net::init_tracing();
    let net = TestNet::new().await.unwrap();
    let (writer, log) = writer_with_log(&net, "overflow", 10, 64).await;
    let (reader, core) = follower(&net, &writer, &log).await;
    wait_full(&core, 10).await;
    let mut events = reader.proto.subscribe();
    let (ep, conn) = connect_below(&net, &reader).await;
    let me = *ep.id().as_bytes();
    let (tx, rx) = open_channel(&conn, me, log.key()).await.expect("accepted");
    tokio::spawn(push_overflowing(tx, rx));
    let ev = wait_event(
        &mut events,
        "the overflowing push blamed",
        |e| matches!(e, Event::Invalid { peer, .. } if *peer == me),
    )
    .await;
    println!("{ev:?}");
    assert_eq!(core.info().length, 10);
    log.append(b"after".to_vec()).await.unwrap();
    assert_eq!(&core.get(10).wait(WAIT).await.unwrap()[..], b"after");
    conn.close(0u32.into(), b"done");
    ep.close().await;
    reader.shutdown().await;
    writer.shutdown().await;
}

/// Says it holds the same 10 blocks and downloads; once the reader says the same, pushes
/// block 10 with an upgrade to 12 whose node 21 (blocks 10 and 11) has size `u64::MAX`.
async fn push_overflowing(mut tx: SendStream, mut rx: RecvStream) {
    send(&mut tx, &sync(10, true)).await;
    while let Some(msg) = read_msg(&mut rx).await {
        if let Message::Sync(s) = msg
            && s.downloading
            && s.length == 10
        {
            let proof = Proof {
                block: Some(BlockProof {
                    index: 10,
                    value: b"x".to_vec(),
                    nodes: vec![],
                }),
                upgrade: Some(UpgradeProof {
                    start: 10,
                    length: 2,
                    nodes: vec![TreeNode {
                        index: 21,
                        size: u64::MAX,
                        hash: [0; 32],
                    }],
                    additional_nodes: vec![],
                    signature: vec![0; 64],
                }),
                ..Default::default()
            };
            send(&mut tx, &Message::Push { proof }).await;
            break;
        }
    }
    // Keep the channel open until the test ends.
    while read_msg(&mut rx).await.is_some() {}
}

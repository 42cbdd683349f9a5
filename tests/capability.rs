//! Knowing the discovery key is not enough (DESIGN, principle 6): a channel carries nothing
//! until both sides proved the core key, each in its own role and bound to both endpoint ids.
//! Each test is an attacker with a raw endpoint against real nodes on the test relay.

#[path = "common/attacker.rs"]
mod attacker;
mod common;
#[path = "common/net.rs"]
mod net;

use std::time::{Duration, Instant};

use attacker::*;
use iroh_hypercore::{
    replication::{
        EngineConfig, Event,
        engine::testing::sync,
        gossip::{GossipOp, topic},
        wire::Message,
    },
    testnet::Transport,
};
use n0_future::StreamExt;
use net::*;

/// Attack 1a: a peer that knows nothing connects to a writer that was told it has its logs
/// (a ticket naming the wrong node), so the writer opens a channel for each of its logs towards
/// it. Each channel carries the writer's `Open` and then only its `Close`: no state, no
/// manifest, no block, whether the peer sends requests without proving the key, a made-up
/// `Accept`, or the writer's own capability reflected back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_key_gets_nothing_on_channels_we_open() {
    let net = test_net().await;
    let writer = net.node(Transport::Direct).await.unwrap();
    let logs = logs_on(&writer, 3, 10, 64).await;
    let ep = endpoint_ordered(&net, *writer.endpoint.id().as_bytes(), true).await;
    let conn = ep
        .connect(writer.addr(), iroh_hypercore::ALPN)
        .await
        .unwrap();
    for log in &logs {
        writer.proto.join(log, &[ep.addr()]).await.unwrap();
    }
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
                let request = common::upgrade_request(10);
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
    hang_up(&ep, &conn).await;
    writer.shutdown().await;
}

/// A stranger learns nothing of what a node replicates: it connects (with an id above the
/// node's, which once made the node open a channel, and so show a discovery key, for every
/// core it replicates) and the node opens no channel towards it. The first channels it gets
/// are those of the cores the node then joins with it as a node, in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_that_connects_learns_no_core_we_replicate() {
    let net = test_net().await;
    let node = net.node(Transport::Direct).await.unwrap();
    logs_on(&node, 3, 2, 64).await;
    let mut events = node.proto.subscribe();
    let ep = endpoint_ordered(&net, *node.endpoint.id().as_bytes(), true).await;
    let me = *ep.id().as_bytes();
    let conn = ep.connect(node.addr(), iroh_hypercore::ALPN).await.unwrap();
    wait_event(
        &mut events,
        "the stranger connected",
        |e| matches!(e, Event::PeerAdd(p) if *p == me),
    )
    .await;

    let mut joined = Vec::new();
    for name in ["told 0", "told 1"] {
        let log = node.store.get_named(name).await.unwrap();
        node.proto.join(&log, &[ep.addr()]).await.unwrap();
        joined.push(log.discovery_key());
    }
    let mut shown = Vec::new();
    while shown.len() < joined.len() {
        let (_tx, mut rx) = tokio::time::timeout(WAIT, conn.accept_bi())
            .await
            .expect("a channel opens")
            .unwrap();
        match read_msg(&mut rx).await {
            Some(Message::Open { discovery_key, .. }) => shown.push(discovery_key),
            other => panic!("a channel starts with Open: {other:?}"),
        }
    }
    assert_eq!(shown, joined, "only the cores it was named for, in order");
    hang_up(&ep, &conn).await;
    node.shutdown().await;
}

/// Attack 1b: a peer that learnt the core's gossip topic (a neighbour on it shows it) but not
/// the key announces a longer log on it. The reader dials it and opens a channel, but sends nothing past its `Open`,
/// and closes the channel once the handshake timeout passes without the peer's `Accept`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gossip_announcer_that_cannot_prove_the_key_reads_nothing() {
    let net = test_net().await;
    let (writer, log) = writer_with_log(&net, "secret", 10, 64).await;
    let cfg = EngineConfig {
        handshake_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let reader = node_with_config(&net, cfg).await;
    let core = follow(&reader, &writer, &log).await;
    wait_full(&core, 10).await;

    let ep = endpoint_ordered(&net, *reader.endpoint.id().as_bytes(), true).await;
    let (gossip, router, mut incoming) = catch_connections(&ep);
    let topic = gossip
        .subscribe_and_join(
            iroh_gossip::TopicId::from_bytes(topic(&log.key())),
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
    shutdown(&[&reader, &writer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_key_alone_cannot_open_a_channel() {
    use iroh_hypercore::replication::wire::{Message, decode_body, encode_frame, frame_len};
    let net = test_net().await;
    let (writer, log) = writer_with_log(&net, "secret", 1, 7).await;
    let mut events = writer.proto.subscribe();

    // An eavesdropper knows the discovery key and guesses a capability.
    let spy = net.endpoint(Transport::Direct).await.unwrap();
    let conn = spy
        .connect(writer.addr(), iroh_hypercore::ALPN)
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let open = Message::Open {
        discovery_key: log.discovery_key(),
        capability: log.discovery_key(),
    };
    send.write_all(&encode_frame(&open).unwrap()).await.unwrap();
    let request = Message::RequestRun {
        id: 1,
        fork: 0,
        start: 0,
        end: 1,
        length: 1,
    };
    send.write_all(&encode_frame(&request).unwrap())
        .await
        .unwrap();
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.unwrap();
    let mut body = vec![0; frame_len(header).unwrap()];
    recv.read_exact(&mut body).await.unwrap();
    match decode_body(&body).unwrap() {
        Message::Close { reason } => assert!(reason.contains("capability"), "{reason}"),
        other => panic!("expected Close, got {other:?}"),
    }
    // Nothing but refusals follows: the stream ends without a block.
    let rest = tokio::time::timeout(WAIT, recv.read_to_end(1 << 20))
        .await
        .unwrap()
        .unwrap_or_default();
    let mut at = 0;
    while at + 4 <= rest.len() {
        let len = frame_len(rest[at..at + 4].try_into().unwrap()).unwrap();
        let msg = decode_body(&rest[at + 4..at + 4 + len]).unwrap();
        assert!(matches!(msg, Message::Close { .. }), "{msg:?}");
        at += 4 + len;
    }
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Event::ChannelRefused { reason, .. }) = events.next().await {
                return reason;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(refused, "invalid capability");
    spy.close().await;
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
    let timeout = Duration::from_secs(1);
    let cfg = EngineConfig {
        handshake_timeout: timeout,
        ..Default::default()
    };
    let net = test_net().await;
    let target = node_with_config(&net, cfg).await;
    let _log = log_on(&target, "log", 10, 64).await;

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
    hang_up(&ep, &conn).await;
    target.shutdown().await;
}

/// A peer that knows only the discovery key of a core the store holds (and the node does not
/// replicate) opens a channel for it. The node looks the core up, finds that no parked channel
/// proves the key, and does not serve it: the application's reads on its own log go on
/// untouched (the core is its, not the protocol's, to stop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_for_a_peer_without_the_key_leaves_the_applications_reads_alone() {
    let net = test_net().await;
    let cfg = EngineConfig {
        handshake_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let node = node_with_config(&net, cfg).await;
    // A log of the node's store that it does not replicate, and a local read waiting for its
    // next block.
    let log = node.store.get_named("local").await.unwrap();
    append_numbered(&log, 0, 1, 8).await;
    let waiting = tokio::spawn(log.get(1).wait(WAIT));

    let spy = net.endpoint(Transport::Direct).await.unwrap();
    let conn = spy
        .connect(node.addr(), iroh_hypercore::ALPN)
        .await
        .unwrap();
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    let open = Message::Open {
        discovery_key: log.discovery_key(),
        capability: [7; 32],
    };
    send(&mut tx, &open).await;
    // The channel is parked, the core looked up and not served; the channel is refused at its
    // handshake timeout, after the lookup.
    let refused = tokio::time::timeout(WAIT, async {
        while let Some(msg) = read_msg(&mut rx).await {
            if matches!(msg, Message::Close { .. }) {
                return true;
            }
        }
        false
    });
    assert!(refused.await.unwrap(), "the channel is refused");
    assert!(!waiting.is_finished(), "the application's read was ended");
    append_numbered(&log, 1, 1, 8).await;
    let got = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert!(
        got.is_ok(),
        "the application's read on its own log failed: {got:?}"
    );
    hang_up(&spy, &conn).await;
    node.shutdown().await;
}

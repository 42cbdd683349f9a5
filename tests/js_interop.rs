#![cfg(unix)]
//! Against real JS Hypercore 11 and Corestore 7 (`interop/js`, installed by `npm ci` from its
//! lock file), over TCP on loopback: blocks pass both ways, full and sparse, live, across a
//! truncation, for a store of 100 cores over one stream, and from a peer that goes
//! mid-transfer. Without `node` these tests say so and pass; with it, any failing step fails
//! them.

#[path = "common/js.rs"]
mod js;
#[path = "common/net.rs"]
mod net;

use std::path::Path;

use iroh_hypercore::{Hypercore, Mode, replication::Event, testnet::Transport};
use js::Peer;
use serde_json::json;

/// A block as `peer.js` writes and checks it: "block i " then `x` up to `size` bytes.
fn js_block(i: u64, size: usize) -> Vec<u8> {
    let mut b = format!("block {i} ").into_bytes();
    b.resize(size.max(b.len()), b'x');
    b
}

fn hex_key(s: &serde_json::Value) -> [u8; 32] {
    data_encoding::HEXLOWER
        .decode(s.as_str().unwrap().as_bytes())
        .unwrap()
        .try_into()
        .unwrap()
}

/// Starts a JS peer off the runtime's threads.
async fn js_peer(mode: &'static str, dir: &Path, opts: serde_json::Value) -> Peer {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || Peer::run(mode, &dir, opts))
        .await
        .unwrap()
}

/// The peer's next line, off the runtime's threads.
async fn next_line(peer: Peer) -> (Peer, serde_json::Value) {
    tokio::task::spawn_blocking(move || {
        let mut peer = peer;
        let line = peer.next_line();
        (peer, line)
    })
    .await
    .unwrap()
}

async fn stop(peer: Peer) -> Option<i32> {
    tokio::task::spawn_blocking(move || peer.stop())
        .await
        .unwrap()
}

/// Accepts every TCP connection on a fresh port and replicates over it (as the responder).
async fn listen(proto: &iroh_hypercore::HypercoreProtocol) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let proto = proto.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tcp.set_nodelay(true).unwrap();
            let _ = proto.replicate_stream(tcp, false).await;
        }
    });
    port
}

/// Dials a JS peer's port and replicates over it (as the initiator).
async fn dial(proto: &iroh_hypercore::HypercoreProtocol, port: u64) -> [u8; 32] {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port as u16))
        .await
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    proto.replicate_stream(tcp, true).await.unwrap().peer()
}

/// A JS writer of `opts` (its store in the returned directory), and a node on a fresh test
/// network with the writer's first core replicated (not connected yet).
async fn js_writer_and_node(
    opts: serde_json::Value,
) -> (
    Peer,
    tempfile::TempDir,
    iroh_hypercore::testnet::TestNet,
    iroh_hypercore::testnet::Node,
    Hypercore,
) {
    let w = tempfile::tempdir().unwrap();
    let writer = js_peer("write", w.path(), opts).await;
    let net = net::test_net().await;
    let node = net.node(Transport::Direct).await.unwrap();
    let core = net::replica(&node, hex_key(&writer.line["key"])).await;
    (writer, w, net, node, core)
}

/// Dials the JS writer's port from `node`.
async fn dial_writer(node: &iroh_hypercore::testnet::Node, writer: &Peer) -> [u8; 32] {
    dial(&node.proto, writer.line["port"].as_u64().unwrap()).await
}

async fn rust_log(node: &iroh_hypercore::testnet::Node, name: &str, n: u64) -> Hypercore {
    let log = node.store.get_named(name).await.unwrap();
    let blocks: Vec<Vec<u8>> = (0..n).map(|i| js_block(i, 1024)).collect();
    for chunk in blocks.chunks(500) {
        log.append_batch(chunk.to_vec()).await.unwrap();
    }
    node.proto.replicate(&log).await.unwrap();
    log
}

#[test]
fn a_js_reader_follows_a_js_writer_over_tcp() {
    if js::node().is_none() {
        return;
    }
    let (w, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let writer = Peer::run("write", w.path(), json!({"count": 2000, "size": 1024}));
    assert_eq!(writer.line["length"], 2000);
    let key = writer.line["key"].clone();
    let port = writer.line["port"].clone();
    let reader = Peer::run(
        "read",
        r.path(),
        json!({"keys": [key], "port": port, "count": 2000}),
    );
    assert_eq!(reader.line["length"], 2000);
    assert_eq!(reader.line["bytes"], 2000 * 1024);
    assert_eq!(reader.stop(), Some(0));
    assert_eq!(writer.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_reader_follows_a_js_writer_live_and_across_a_truncation() {
    if js::node().is_none() {
        return;
    }
    let (writer, _w, _net, node, core) =
        js_writer_and_node(json!({"count": 1000, "size": 1024})).await;
    let mut events = node.proto.subscribe();
    let peer = dial_writer(&node, &writer).await;
    net::wait_full(&core, 1000).await;
    for i in [0, 1, 499, 998, 999] {
        assert_eq!(
            core.get(i).await.unwrap().unwrap(),
            js_block(i, 1024),
            "block {i}"
        );
    }
    net::wait_event(
        &mut events,
        "a download from the JS peer",
        |e| matches!(e, Event::Download { peer: p, .. } if *p == peer),
    )
    .await;

    // Live: the JS writer appends, the Rust reader follows.
    let mut writer = writer;
    writer.say("append 5");
    let (writer, line) = next_line(writer).await;
    assert_eq!(line, json!({"length": 1005, "fork": 0}));
    net::wait_full(&core, 1005).await;
    assert_eq!(core.get(1004).await.unwrap().unwrap(), js_block(1004, 1024));

    // The writer truncates to 500 (fork 1) and appends 10 on the new fork.
    let mut writer = writer;
    writer.say("truncate 500");
    let (mut writer, line) = next_line(writer).await;
    assert_eq!(line, json!({"length": 500, "fork": 1}));
    writer.say("append 10");
    let (writer, line) = next_line(writer).await;
    assert_eq!(line, json!({"length": 510, "fork": 1}));
    tokio::time::timeout(net::WAIT, async {
        while core.info().fork != 1 || core.info().length != 510 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the reader is at {:?}", core.info()));
    net::wait_full(&core, 510).await;
    assert_eq!(core.get(509).await.unwrap().unwrap(), js_block(509, 1024));
    net::shutdown(&[&node]).await;
    assert_eq!(stop(writer).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_reader_follows_a_rust_writer_live_and_across_a_truncation() {
    if js::node().is_none() {
        return;
    }
    let net = net::test_net().await;
    let node = net.node(Transport::Direct).await.unwrap();
    let log = rust_log(&node, "for js", 1000).await;
    let mut events = node.proto.subscribe();
    let port = listen(&node.proto).await;
    let key = data_encoding::HEXLOWER.encode(&log.key());
    let r = tempfile::tempdir().unwrap();
    let reader = js_peer(
        "read",
        r.path(),
        json!({"keys": [key], "port": port, "count": 1000, "follow": true}),
    )
    .await;
    assert_eq!(reader.line["length"], 1000);
    assert_eq!(reader.line["bytes"], 1000 * 1024);
    net::wait_event(&mut events, "an upload to the JS reader", |e| {
        matches!(e, Event::Upload { .. })
    })
    .await;

    // Live appends, then a truncation to a new fork and more appends.
    log.append(js_block(1000, 1024)).await.unwrap();
    let (reader, line) = next_line(reader).await;
    assert_eq!(line["length"], 1001);
    log.truncate(400).await.unwrap();
    let (reader, line) = next_line(reader).await;
    assert_eq!(line, json!({"length": 400, "fork": 1}));
    log.append(js_block(400, 1024)).await.unwrap();
    let (reader, line) = next_line(reader).await;
    assert_eq!(line["length"], 401);
    assert_eq!(stop(reader).await, Some(0));
    net::shutdown(&[&node]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_reads_fetch_only_the_blocks_asked_for_both_ways() {
    if js::node().is_none() {
        return;
    }
    // Rust reads two blocks of a JS writer's log.
    let w = tempfile::tempdir().unwrap();
    let writer = js_peer("write", w.path(), json!({"count": 1000, "size": 1024})).await;
    let net = net::test_net().await;
    let node = net.node(Transport::Direct).await.unwrap();
    let core = node
        .store
        .get_remote(hex_key(&writer.line["key"]))
        .await
        .unwrap();
    let mut events = node.proto.subscribe();
    node.proto
        .replicate_with(&core, Mode::Sparse)
        .await
        .unwrap();
    dial(&node.proto, writer.line["port"].as_u64().unwrap()).await;
    for i in [5, 700] {
        let value = core.get(i).wait(net::WAIT).await.unwrap();
        assert_eq!(value, js_block(i, 1024));
        net::wait_event(
            &mut events,
            "the block stored",
            |e| matches!(e, Event::Download { index, .. } if *index == i),
        )
        .await;
    }
    assert_eq!(
        core.stored().await.unwrap().blocks,
        2,
        "only the blocks asked for"
    );
    assert_eq!(core.info().length, 1000);

    // JS reads two blocks of a Rust writer's log.
    let log = rust_log(&node, "sparse for js", 1000).await;
    let port = listen(&node.proto).await;
    let r = tempfile::tempdir().unwrap();
    let key = data_encoding::HEXLOWER.encode(&log.key());
    let reader = js_peer(
        "read",
        r.path(),
        json!({"keys": [key], "port": port, "sparse": [3, 999]}),
    )
    .await;
    assert_eq!(reader.line["bytes"], 2 * 1024);
    assert_eq!(reader.line["length"], 1000);
    assert_eq!(stop(reader).await, Some(0));
    net::shutdown(&[&node]).await;
    assert_eq!(stop(writer).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_100_cores_replicates_over_one_stream_both_ways() {
    if js::node().is_none() {
        return;
    }
    // A JS Corestore's 100 cores, read by Rust over one TCP stream.
    let w = tempfile::tempdir().unwrap();
    let writer = js_peer(
        "write",
        w.path(),
        json!({"count": 10, "size": 100, "cores": 100}),
    )
    .await;
    let keys: Vec<[u8; 32]> = writer.line["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(hex_key)
        .collect();
    assert_eq!(keys.len(), 100);
    let net = net::test_net().await;
    let node = net.node(Transport::Direct).await.unwrap();
    let mut cores = Vec::new();
    for key in &keys {
        cores.push(net::replica(&node, *key).await);
    }
    dial(&node.proto, writer.line["port"].as_u64().unwrap()).await;
    for core in &cores {
        net::wait_full(core, 10).await;
        assert_eq!(core.get(9).await.unwrap().unwrap(), js_block(9, 100));
    }
    assert_eq!(
        node.proto.node_stats().await.unwrap().connections,
        0,
        "no iroh connection"
    );

    // A Rust store's 100 logs, read by a JS Corestore over one stream: the reader opens a
    // channel for each, and the store serves them on demand.
    let writer2 = net.node(Transport::Direct).await.unwrap();
    let mut keys = Vec::new();
    for i in 0..100 {
        let log = writer2.store.get_named(&format!("log {i}")).await.unwrap();
        let blocks: Vec<Vec<u8>> = (0..10).map(|b| js_block(b, 100)).collect();
        log.append_batch(blocks).await.unwrap();
        keys.push(data_encoding::HEXLOWER.encode(&log.key()));
    }
    let port = listen(&writer2.proto).await;
    let r = tempfile::tempdir().unwrap();
    let reader = js_peer(
        "read",
        r.path(),
        json!({"keys": keys, "port": port, "count": 10}),
    )
    .await;
    assert_eq!(reader.line["bytes"], 100 * 10 * 100);
    assert_eq!(stop(reader).await, Some(0));
    net::shutdown(&[&node, &writer2]).await;
    assert_eq!(stop(writer).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_writer_that_goes_mid_transfer_leaves_only_verified_blocks_and_another_finishes() {
    if js::node().is_none() {
        return;
    }
    let (writer, w, _net, node, core) =
        js_writer_and_node(json!({"count": 20000, "size": 1024})).await;
    let key = core.key();
    let mut events = node.proto.subscribe();
    let first = dial_writer(&node, &writer).await;
    // Some blocks arrive, then the writer's process is killed.
    net::wait_event(
        &mut events,
        "the hundredth block",
        |e| matches!(e, Event::Download { index, .. } if *index >= 100),
    )
    .await;
    drop(writer);
    net::wait_event(
        &mut events,
        "the writer gone",
        |e| matches!(e, Event::PeerRemove(p) if *p == first),
    )
    .await;
    let held = core.stored().await.unwrap().blocks;
    assert!(held < 20000, "the transfer was cut: {held} blocks");
    // Every block held verified: read back and checked.
    for i in 0..20000u64 {
        if let Some(v) = core.get(i).await.ok().flatten() {
            assert_eq!(v, js_block(i, 1024), "block {i}");
        }
    }
    // The writer comes back on its store and the reader finishes from it.
    let second = js_peer("write", w.path(), json!({"count": 20000, "size": 1024})).await;
    assert_eq!(hex_key(&second.line["key"]), key);
    dial(&node.proto, second.line["port"].as_u64().unwrap()).await;
    net::wait_full(&core, 20000).await;
    assert_eq!(
        core.get(19999).await.unwrap().unwrap(),
        js_block(19999, 1024)
    );
    net::shutdown(&[&node]).await;
    assert_eq!(stop(second).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_cores_read_both_ways_and_the_key_never_travels() {
    if js::node().is_none() {
        return;
    }
    let secret = [7u8; 32];
    let secret_hex = data_encoding::HEXLOWER.encode(&secret);
    // JS encrypts, Rust reads with the key.
    let (writer, _w, net, node, core) =
        js_writer_and_node(json!({"count": 300, "size": 1024, "encryptionKey": secret_hex})).await;
    core.set_encryption_key(secret).unwrap();
    dial_writer(&node, &writer).await;
    net::wait_full(&core, 300).await;
    assert_eq!(core.info().byte_length, 300 * (1024 + 8));
    for i in [0, 150, 299] {
        assert_eq!(core.get(i).await.unwrap().unwrap(), js_block(i, 1024));
    }

    // Rust encrypts, JS reads with the key; a relay node without the key serves it.
    let log = node.store.get_named("encrypted for js").await.unwrap();
    log.set_encryption_key(secret).unwrap();
    let blocks: Vec<Vec<u8>> = (0..300).map(|i| js_block(i, 1024)).collect();
    log.append_batch(blocks).await.unwrap();
    node.proto.replicate(&log).await.unwrap();
    let relay = net.node(Transport::Direct).await.unwrap();
    let copy = net::follow(&relay, &node, &log).await;
    net::wait_full(&copy, 300).await;
    assert!(!copy.is_encrypted());
    let stored = copy.get(0).await.unwrap().unwrap();
    assert_ne!(
        &stored[8..],
        &js_block(0, 1024)[..],
        "the relay holds ciphertext"
    );
    let port = listen(&relay.proto).await;
    let r = tempfile::tempdir().unwrap();
    let reader = js_peer(
        "read",
        r.path(),
        json!({
            "keys": [data_encoding::HEXLOWER.encode(&log.key())],
            "port": port,
            "count": 300,
            "encryptionKey": secret_hex,
        }),
    )
    .await;
    assert_eq!(reader.line["bytes"], 300 * 1024);
    // The key is in no ticket.
    let ticket = node.proto.ticket(&log).to_string();
    assert!(!ticket.contains(&secret_hex));
    assert_eq!(stop(reader).await, Some(0));
    net::shutdown(&[&node, &relay]).await;
    assert_eq!(stop(writer).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_messages_cross_a_cores_channel_both_ways() {
    if js::node().is_none() {
        return;
    }
    let (writer, _w, _net, node, core) =
        js_writer_and_node(json!({"count": 10, "size": 64, "extension": "chat"})).await;
    let chat = node.proto.extension("chat").await.unwrap();
    let mut heard = chat.subscribe();
    let peer = dial_writer(&node, &writer).await;
    net::wait_full(&core, 10).await;

    // Rust → JS: the payload in hypercore's default encoding (a length, then the bytes).
    let sent = chat.broadcast(&core, &b"\x05hello"[..]).await.unwrap();
    assert_eq!(sent, 1);
    let (mut writer, line) = next_line(writer).await;
    assert_eq!(line, json!({"extension": "chat", "message": "hello"}));

    // JS → Rust, on the core's channel, from that peer.
    writer.say("ext hi");
    let msg = tokio::time::timeout(net::WAIT, n0_future::StreamExt::next(&mut heard))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&msg.bytes[..], b"\x02hi");
    assert_eq!(msg.core, Some(core.key()));
    assert_eq!(*msg.peer.as_bytes(), peer);
    net::shutdown(&[&node]).await;
    assert_eq!(stop(writer).await, Some(0));
}

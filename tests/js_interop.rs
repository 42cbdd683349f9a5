#![cfg(unix)]
//! Against real JS Hypercore 11 (`interop/js`, installed by `npm ci` from its lock file): the
//! harness the interoperability work builds on. A JS reader follows a JS writer over TCP on
//! loopback, every block checked, which is also the JS ← JS baseline of the wire benchmarks.
//! Without `node` these tests say so and pass; with it, any failing step fails them.

#[path = "common/js.rs"]
mod js;

use js::Peer;

#[test]
fn a_js_reader_follows_a_js_writer_over_tcp() {
    if js::node().is_none() {
        return;
    }
    let (w, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let writer = Peer::start(&["write", w.path().to_str().unwrap(), "2000", "1024"]);
    assert_eq!(writer.line["length"], 2000);
    let key = writer.line["key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 64);
    let port = writer.line["port"].to_string();
    let reader = Peer::start(&["read", r.path().to_str().unwrap(), &key, &port, "2000"]);
    assert_eq!(reader.line["length"], 2000);
    assert_eq!(reader.line["bytes"], 2000 * 1024);
    assert_eq!(reader.stop(), Some(0));
    assert_eq!(writer.stop(), Some(0));
}

#[path = "common/net.rs"]
mod net;

use iroh_hypercore::{replication::Event, testnet::Transport};

/// A block as `peer.js` writes and checks it: "block i " then `x` up to `size` bytes.
fn js_block(i: u64, size: usize) -> Vec<u8> {
    let mut b = format!("block {i} ").into_bytes();
    b.resize(size.max(b.len()), b'x');
    b
}

fn key_of(writer: &Peer) -> [u8; 32] {
    let hex = writer.line["key"].as_str().unwrap();
    data_encoding::HEXLOWER
        .decode(hex.as_bytes())
        .unwrap()
        .try_into()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_reader_follows_a_js_writer_live_over_tcp() {
    if js::node().is_none() {
        return;
    }
    let w = tempfile::tempdir().unwrap();
    let dir = w.path().to_str().unwrap().to_string();
    let mut writer =
        tokio::task::spawn_blocking(move || Peer::start(&["write", &dir, "1000", "1024"]))
            .await
            .unwrap();
    let key = key_of(&writer);
    let port = writer.line["port"].as_u64().unwrap() as u16;

    let net = net::test_net().await;
    let node = net.node(Transport::Direct).await.unwrap();
    let mut events = node.proto.subscribe();
    let core = net::replica(&node, key).await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let peer = node.proto.replicate_stream(tcp, true).await.unwrap();
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
    writer.say("append 5");
    net::wait_full(&core, 1005).await;
    assert_eq!(core.get(1004).await.unwrap().unwrap(), js_block(1004, 1024));
    assert_eq!(core.info().length, 1005);
    net::shutdown(&[&node]).await;
    assert_eq!(
        tokio::task::spawn_blocking(move || writer.stop())
            .await
            .unwrap(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_reader_follows_a_rust_writer_live_over_tcp() {
    if js::node().is_none() {
        return;
    }
    let net = net::test_net().await;
    let node = net.node(Transport::Direct).await.unwrap();
    let log = node.store.get_named("for js").await.unwrap();
    let blocks: Vec<Vec<u8>> = (0..1000).map(|i| js_block(i, 1024)).collect();
    for chunk in blocks.chunks(500) {
        log.append_batch(chunk.to_vec()).await.unwrap();
    }
    node.proto.replicate(&log).await.unwrap();
    let mut events = node.proto.subscribe();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let proto = node.proto.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = proto.replicate_stream(tcp, false).await;
        }
    });
    let key = data_encoding::HEXLOWER.encode(&log.key());
    let r = tempfile::tempdir().unwrap();
    let dir = r.path().to_str().unwrap().to_string();
    let reader =
        tokio::task::spawn_blocking(move || Peer::start(&["read", &dir, &key, &port, "1005"]));
    // Once the JS reader is connected, the writer appends five blocks live.
    net::wait_event(&mut events, "the JS reader's channel", |e| {
        matches!(e, Event::ChannelOpen { .. })
    })
    .await;
    let more: Vec<Vec<u8>> = (1000..1005).map(|i| js_block(i, 1024)).collect();
    log.append_batch(more).await.unwrap();
    let reader = tokio::time::timeout(js::WAIT, reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reader.line["length"], 1005);
    assert_eq!(reader.line["bytes"], 1005 * 1024);
    assert_eq!(
        tokio::task::spawn_blocking(move || reader.stop())
            .await
            .unwrap(),
        Some(0)
    );
    net::shutdown(&[&node]).await;
}

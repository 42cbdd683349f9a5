//! Helpers for the network tests: waiting on protocol events with a timeout.

#![allow(dead_code)]

use std::time::Duration;

use iroh_hypercore::{
    Corestore, Hypercore, HypercoreProtocol,
    net::{Events, NodeStats},
    replication::{Event, engine::PeerStats},
    testnet::{Node, TestNet, Transport},
};
use n0_future::StreamExt;

/// Generous bound for one step of a test on a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(60);

/// Logs to stderr when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Waits for the first item of `events` (all events, or one core's) matching `pred`,
/// failing the test after [`WAIT`].
pub async fn wait_event<T>(
    events: &mut (impl n0_future::Stream<Item = T> + Unpin),
    what: &str,
    mut pred: impl FnMut(&T) -> bool,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.next().await {
                Some(ev) if pred(&ev) => return ev,
                Some(_) => {}
                None => panic!("events closed: {what}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The events already delivered to `events`, without waiting for more.
pub async fn drain(events: &mut Events) -> Vec<Event> {
    let mut out = Vec::new();
    // A zero timeout still polls the stream once before it expires.
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::ZERO, events.next()).await {
        out.push(ev);
    }
    out
}

/// Waits until `core` holds blocks `0..length` (fetched by its replication).
pub async fn wait_full(core: &Hypercore, length: u64) {
    core.download(0..length)
        .done(WAIT)
        .await
        .unwrap_or_else(|e| panic!("download of {length} blocks: {e}"));
    assert!(core.info().length >= length);
}

/// Appends `n` blocks named after their index, in batches, starting at `from`.
pub async fn append_numbered(core: &Hypercore, from: u64, n: u64, size: usize) {
    let blocks: Vec<Vec<u8>> = (from..from + n).map(|i| numbered(i, size)).collect();
    for chunk in blocks.chunks(1000) {
        core.append_batch(chunk.to_vec()).await.unwrap();
    }
}

/// A direct node writing the log `name` of `n` numbered blocks of `size` bytes, replicated.
pub async fn writer_with_log(net: &TestNet, name: &str, n: u64, size: usize) -> (Node, Hypercore) {
    let writer = net.node(Transport::Direct).await.unwrap();
    let log = writer.store.get_named(name).await.unwrap();
    append_numbered(&log, 0, n, size).await;
    writer.proto.replicate(&log).await.unwrap();
    (writer, log)
}

/// A direct node following `log` of `writer` through its ticket (not waiting for any block).
pub async fn follower(net: &TestNet, writer: &Node, log: &Hypercore) -> (Node, Hypercore) {
    follower_with(net, writer, log, Corestore::memory().await.unwrap()).await
}

/// [`follower`], on `store`.
pub async fn follower_with(
    net: &TestNet,
    writer: &Node,
    log: &Hypercore,
    store: Corestore,
) -> (Node, Hypercore) {
    let node = net
        .node_with(Transport::Direct, store, Default::default())
        .await
        .unwrap();
    let core = node
        .proto
        .open_ticket(&writer.proto.ticket(log))
        .await
        .unwrap();
    (node, core)
}

/// Block `i` of a numbered log: its index, padded to `size` bytes.
pub fn numbered(i: u64, size: usize) -> Vec<u8> {
    let mut v = format!("block {i} ").into_bytes();
    v.resize(size.max(v.len()), b'.');
    v
}

/// Peers (as bytes) with an open channel for `core`.
pub async fn core_peers(proto: &HypercoreProtocol, core: &Hypercore) -> Vec<[u8; 32]> {
    let mut v: Vec<[u8; 32]> = proto
        .peers(core)
        .await
        .unwrap()
        .into_iter()
        .map(|id| *id.as_bytes())
        .collect();
    v.sort();
    v
}

/// What `proto` holds over all peers, and the counters of `peer`.
pub async fn stats(proto: &HypercoreProtocol, peer: [u8; 32]) -> (NodeStats, PeerStats) {
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

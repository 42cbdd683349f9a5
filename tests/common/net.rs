//! Helpers for the network tests: waiting on protocol events with a timeout.

#![allow(dead_code)]

use std::{path::Path, time::Duration};

use iroh::EndpointAddr;

use iroh_hypercore::{
    CoreKey, Corestore, Hypercore, HypercoreProtocol, StoreOptions,
    net::{Events, NodeStats},
    replication::{EngineConfig, Event, engine::PeerStats},
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

/// A fresh test network, logging to stderr when `RUST_LOG` is set.
pub async fn test_net() -> TestNet {
    init_tracing();
    TestNet::new().await.unwrap()
}

/// Shuts `nodes` down, one after the other.
pub async fn shutdown(nodes: &[&Node]) {
    for node in nodes {
        node.shutdown().await;
    }
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

/// Waits for `peer` to be blamed (an `Invalid` event) on `events`, which is `what`.
pub async fn wait_blamed(events: &mut Events, peer: [u8; 32], what: &str) -> Event {
    wait_event(
        events,
        what,
        |e| matches!(e, Event::Invalid { peer: p, .. } if *p == peer),
    )
    .await
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

/// [`wait_full`], then checks that the last block is the numbered one of `size` bytes.
pub async fn wait_full_numbered(core: &Hypercore, length: u64, size: usize) {
    wait_full(core, length).await;
    let last = core.get(length - 1).await.unwrap();
    assert_eq!(last.unwrap(), numbered(length - 1, size));
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
    let log = log_on(&writer, name, n, size).await;
    (writer, log)
}

/// The log `name` of `node`, with `n` numbered blocks of `size` bytes appended, replicated.
pub async fn log_on(node: &Node, name: &str, n: u64, size: usize) -> Hypercore {
    let log = node.store.get_named(name).await.unwrap();
    append_numbered(&log, 0, n, size).await;
    node.proto.replicate(&log).await.unwrap();
    log
}

/// Two direct nodes on new memory stores.
pub async fn two_nodes(net: &TestNet) -> (Node, Node) {
    let a = net.node(Transport::Direct).await.unwrap();
    let b = net.node(Transport::Direct).await.unwrap();
    (a, b)
}

/// A direct node with a store in `dir` (default options): restarted there, it has the same id.
pub async fn node_in_dir(net: &TestNet, dir: &Path) -> Node {
    net.node_in(Transport::Direct, dir, StoreOptions::default())
        .await
        .unwrap()
}

/// `count` logs of `node` named `log 0`, `log 1`, ..., each a [`log_on`] of `n` blocks.
pub async fn logs_on(node: &Node, count: u64, n: u64, size: usize) -> Vec<Hypercore> {
    let mut logs = Vec::new();
    for i in 0..count {
        logs.push(log_on(node, &format!("log {i}"), n, size).await);
    }
    logs
}

/// A direct node on a new memory store, its engine tuned by `config`.
pub async fn node_with_config(net: &TestNet, config: EngineConfig) -> Node {
    let store = Corestore::memory().await.unwrap();
    net.node_with(Transport::Direct, store, config)
        .await
        .unwrap()
}

/// `log` of `writer`, opened on `node` through its ticket (not waiting for any block).
pub async fn follow(node: &Node, writer: &Node, log: &Hypercore) -> Hypercore {
    node.proto
        .open_ticket(&writer.proto.ticket(log))
        .await
        .unwrap()
}

/// Core `key`, opened on `node` by its key and replicated (meeting no peer yet).
pub async fn replica(node: &Node, key: CoreKey) -> Hypercore {
    let core = node.store.get_remote(key).await.unwrap();
    node.proto.replicate(&core).await.unwrap();
    core
}

/// Core `key`, opened on `node` by its key and joined with `peers`.
pub async fn joined(node: &Node, key: CoreKey, peers: &[EndpointAddr]) -> Hypercore {
    let core = node.store.get_remote(key).await.unwrap();
    node.proto.join(&core, peers).await.unwrap();
    core
}

/// A direct node following `log` of `writer` through its ticket (not waiting for any block).
pub async fn follower(net: &TestNet, writer: &Node, log: &Hypercore) -> (Node, Hypercore) {
    follower_with(net, writer, log, Corestore::memory().await.unwrap()).await
}

/// [`writer_with_log`] and a [`synced_follower`] of its log: `(writer, log, reader, core)`.
pub async fn synced_pair(
    net: &TestNet,
    name: &str,
    n: u64,
    size: usize,
) -> (Node, Hypercore, Node, Hypercore) {
    let (writer, log) = writer_with_log(net, name, n, size).await;
    let (reader, core) = synced_follower(net, &writer, &log).await;
    (writer, log, reader, core)
}

/// [`follower`], once it holds every block `log` has now.
pub async fn synced_follower(net: &TestNet, writer: &Node, log: &Hypercore) -> (Node, Hypercore) {
    let (node, core) = follower(net, writer, log).await;
    wait_full(&core, log.info().length).await;
    (node, core)
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
    let core = follow(&node, writer, log).await;
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

//! Peers come back (DESIGN, principle 10): a core remembers the peers it learnt, persisted
//! with its store, and while it has none it dials them again with back-off and jitter; an
//! `update` right after a ticket is opened waits for the first peer.

#[path = "common/net.rs"]
mod net;

use std::{net::SocketAddr, time::Duration};

use iroh_hypercore::{
    Corestore,
    net::ReplicaEvent,
    replication::EngineConfig,
    testnet::{Node, TestNet},
};
use net::*;

/// A writer on a store in `dir`, bound at `at`, sharing its log `live`.
async fn writer_at(net: &TestNet, dir: &std::path::Path, at: SocketAddr) -> Node {
    let store = Corestore::persistent(dir).await.unwrap();
    let node = net
        .node_at(at, store, EngineConfig::default())
        .await
        .unwrap();
    let log = node.store.get_named("live").await.unwrap();
    node.proto.replicate(&log).await.unwrap();
    node
}

/// The writer of a live log stops and starts again on its directory five times: four times
/// on the same port, once on another one (the same endpoint id each time, from its store),
/// appending ten blocks after each start. A follower that opened the ticket once, and never
/// again, follows through every restart: it says it has no peer and retries, and it reads
/// every block once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_follows_a_writer_restarted_five_times() {
    let net = test_net().await;
    let dir = tempfile::tempdir().unwrap();
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut writer = writer_at(&net, dir.path(), any_port).await;
    let mut log = writer.store.get_named("live").await.unwrap();
    append_numbered(&log, 0, 10, 32).await;
    let (reader, core) = follower(&net, &writer, &log).await;
    let mut events = reader.proto.events(&core);
    // Reads every block in order as it arrives, as `hyper follow` prints them.
    let reads = tokio::spawn({
        let core = core.clone();
        async move {
            let mut blocks = Vec::new();
            for i in 0..60 {
                blocks.push(core.get(i).wait(Duration::from_secs(120)).await.unwrap());
            }
            blocks
        }
    });
    wait_full(&core, 10).await;

    for round in 1..=5u64 {
        let port = writer.endpoint.bound_sockets()[0];
        let at = if round == 3 { any_port } else { port };
        writer.shutdown().await;
        // The port is free once the last handle on the old endpoint is gone.
        drop((writer, log));
        wait_event(&mut events, "the follower has no peer", |e| {
            *e == ReplicaEvent::NoPeers
        })
        .await;
        wait_event(&mut events, "the follower retries", |e| {
            matches!(e, ReplicaEvent::Reconnecting { .. })
        })
        .await;
        writer = writer_at(&net, dir.path(), at).await;
        log = writer.store.get_named("live").await.unwrap();
        append_numbered(&log, round * 10, 10, 32).await;
        wait_full(&core, (round + 1) * 10).await;
        println!(
            "restart {round} on {} ({}): the follower has {} blocks",
            writer.endpoint.bound_sockets()[0],
            if at == any_port {
                "a new port"
            } else {
                "the same port"
            },
            core.info().length
        );
    }
    let blocks = tokio::time::timeout(WAIT, reads).await.unwrap().unwrap();
    let expected: Vec<Vec<u8>> = (0..60).map(|i| numbered(i, 32)).collect();
    assert_eq!(blocks, expected, "every block once, in order");
    shutdown(&[&writer, &reader]).await;
}

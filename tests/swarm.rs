//! Swarms: live appends through a chain of readers, a late joiner
//! served by readers alone, a seeder leaving mid-download, a truncate reaching readers, 200
//! cores over one connection, and a reader resuming from its database file.

#[path = "common/net.rs"]
mod net;

use std::collections::HashSet;

use iroh_hypercore::{CoreTicket, replication::Event, testnet::Transport};
use net::{
    WAIT, append_numbered, drain, follow, follower, node_in_dir, numbered, shutdown,
    synced_follower, synced_pair, test_net, wait_event, wait_full, writer_with_log,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_live_including_a_reader_behind_a_reader() {
    let net = test_net().await;
    let (writer, log) = writer_with_log(&net, "live", 1, 64).await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(follower(&net, &writer, &log).await);
    }
    // The fifth node cannot look anyone up and is given only the first reader's address.
    let hidden = net.unlisted_node(Transport::Direct).await.unwrap();
    let hidden_core = follow(&hidden, &readers[0].0, &readers[0].1).await;
    let mut hidden_events = hidden.proto.subscribe();

    for i in 1..=50u64 {
        log.append(numbered(i, 64)).await.unwrap();
    }
    for (_, core) in &readers {
        wait_full(core, 51).await;
    }
    wait_full(&hidden_core, 51).await;
    assert_eq!(hidden_core.tree_hash(), log.tree_hash());
    assert_eq!(
        &hidden_core.get(50).await.unwrap().unwrap()[..],
        &numbered(50, 64)[..]
    );
    let only_peer = net::core_peers(&hidden.proto, &hidden_core).await;
    assert_eq!(only_peer, vec![*readers[0].0.endpoint.id().as_bytes()]);
    // Live: the next append reaches the hidden node through the reader.
    log.append(b"latest".to_vec()).await.unwrap();
    let got = hidden_core.get(51).wait(WAIT).await.unwrap();
    assert_eq!(&got[..], b"latest");
    let ev = wait_event(&mut hidden_events, "a download", |e| {
        matches!(e, Event::Download { .. })
    })
    .await;
    let Event::Download { peer, .. } = ev else {
        unreachable!()
    };
    assert_eq!(peer, *readers[0].0.endpoint.id().as_bytes());
    for (node, _) in &readers {
        node.shutdown().await;
    }
    shutdown(&[&hidden, &writer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_catches_up_from_readers_while_the_writer_is_offline() {
    let net = test_net().await;
    let (writer, log) = writer_with_log(&net, "late", 2000, 256).await;
    let (a, _ca) = synced_follower(&net, &writer, &log).await;
    let b = net.node(Transport::RelayOnly).await.unwrap();
    let cb = follow(&b, &writer, &log).await;
    wait_full(&cb, 2000).await;
    let writer_id = *writer.endpoint.id().as_bytes();
    let hash = log.tree_hash();
    writer.shutdown().await;

    let late = net.node(Transport::Direct).await.unwrap();
    let mut events = late.proto.subscribe();
    let readers = CoreTicket::new(log.key(), vec![a.addr(), b.addr()]);
    let core = late.proto.open_ticket(&readers).await.unwrap();
    wait_full(&core, 2000).await;
    assert_eq!(core.tree_hash(), hash);
    let mut from = HashSet::new();
    wait_event(&mut events, "downloads", |e| {
        if let Event::Download { peer, .. } = e {
            from.insert(*peer);
        }
        !from.is_empty()
    })
    .await;
    for ev in drain(&mut events).await {
        if let Event::Download { peer, .. } = ev {
            from.insert(peer);
        }
    }
    assert!(!from.contains(&writer_id));
    for n in [a, b, late] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_completes_when_a_seeder_disappears() {
    const N: u64 = 5_000;
    let net = test_net().await;
    let (writer, log) = writer_with_log(&net, "big", N, 1024).await;
    let (s1, _c1) = synced_follower(&net, &writer, &log).await;
    let (s2, _c2) = synced_follower(&net, &writer, &log).await;
    writer.shutdown().await;

    let d = net.node(Transport::Direct).await.unwrap();
    let mut events = d.proto.subscribe();
    let seeders = CoreTicket::new(log.key(), vec![s1.addr(), s2.addr()]);
    let core = d.proto.open_ticket(&seeders).await.unwrap();
    let s1_id = *s1.endpoint.id().as_bytes();
    // Mid-download, with the first seeder among the peers the core replicates with: counted
    // by the node, not from the events (a subscriber that lags behind thousands of downloads
    // on a loaded machine misses some of them). Which seeder serves how much is the fetch
    // queue's choice, so the first one's share is not asked for.
    let mid = tokio::time::timeout(WAIT, async {
        loop {
            let peers = d.proto.peers(&core).await.unwrap();
            let has = core.info().contiguous_length;
            if has >= 100 && peers.iter().any(|p| *p.as_bytes() == s1_id) {
                return;
            }
            // Any event (a download, a channel, a lag) is a reason to look again.
            let _ = n0_future::StreamExt::next(&mut events).await;
        }
    })
    .await;
    if mid.is_err() {
        let stats = d.proto.peer_stats().await.unwrap();
        panic!(
            "no point mid-download with the first seeder: {} blocks, peers {stats:?}",
            core.info().contiguous_length
        );
    }
    s1.shutdown().await;
    // Thousands of download events may pass meanwhile: a lagging subscriber may miss the
    // removal, which is checked on the peer list at the end.
    wait_event(&mut events, "the first seeder leaving", |e| {
        matches!(e, Event::PeerRemove(p) if *p == s1_id) || matches!(e, Event::Lagged(_))
    })
    .await;
    wait_full(&core, N).await;
    assert!(core.info().contiguous_length == N);
    let peers = d.proto.peer_stats().await.unwrap();
    assert!(
        peers.iter().all(|p| p.peer != s1_id),
        "the first seeder is gone"
    );
    assert_eq!(core.tree_hash(), log.tree_hash());
    shutdown(&[&s2, &d]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_on_the_writer_reaches_readers() {
    let net = test_net().await;
    let (writer, log, reader, core) = synced_pair(&net, "forks", 100, 32).await;
    let mut events = reader.proto.subscribe();
    log.truncate(50).await.unwrap();
    log.append_batch((0..10).map(|i| format!("new {i}").into_bytes()))
        .await
        .unwrap();
    wait_event(&mut events, "the truncate", |e| {
        matches!(e, Event::Truncate { fork: 1, .. })
    })
    .await;
    let got = core.get(55).wait(WAIT).await.unwrap();
    assert_eq!(&got[..], b"new 5");
    wait_full(&core, 60).await;
    let info = core.info();
    assert_eq!((info.fork, info.length), (1, 60));
    assert_eq!(core.tree_hash(), log.tree_hash());
    assert_eq!(
        &core.get(49).await.unwrap().unwrap()[..],
        &numbered(49, 32)[..]
    );
    shutdown(&[&reader, &writer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_cores_over_one_connection() {
    let net = test_net().await;
    let writer = net.node(Transport::Direct).await.unwrap();
    let reader = net.node(Transport::Direct).await.unwrap();
    let mut logs = Vec::new();
    for i in 0..200 {
        let log = writer.store.get_named(&format!("core {i}")).await.unwrap();
        log.append_batch((0..5).map(|j| format!("{i}/{j}").into_bytes()))
            .await
            .unwrap();
        writer.proto.replicate(&log).await.unwrap();
        logs.push(log);
    }
    let mut remotes = Vec::new();
    for log in &logs {
        remotes.push(follow(&reader, &writer, log).await);
    }
    for (log, core) in logs.iter().zip(&remotes) {
        wait_full(core, 5).await;
        assert_eq!(core.tree_hash(), log.tree_hash());
    }
    // Counters follow the commits a moment later.
    let stats = tokio::time::timeout(WAIT, async {
        loop {
            let stats = reader.proto.peer_stats().await.unwrap();
            if stats.iter().map(|s| s.blocks_down).sum::<u64>() >= 1000 {
                return stats;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("download counters");
    assert_eq!(stats.len(), 1, "one connection");
    assert_eq!(stats[0].channels, 200);
    assert_eq!(stats[0].blocks_down, 1000);
    let w = writer.proto.peer_stats().await.unwrap();
    assert_eq!(w.len(), 1);
    assert!(w[0].blocks_up >= 1000);
    shutdown(&[&reader, &writer]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_restarts_from_its_file_without_downloading_again() {
    let net = test_net().await;
    let (writer, log) = writer_with_log(&net, "resume", 2000, 128).await;
    let ticket = writer.proto.ticket(&log);
    let dir = tempfile::tempdir().unwrap();

    let reader = node_in_dir(&net, dir.path()).await;
    let core = reader.proto.open_ticket(&ticket).await.unwrap();
    wait_full(&core, 2000).await;
    reader.shutdown().await;
    drop(core);

    append_numbered(&log, 2000, 100, 128).await;
    let again = node_in_dir(&net, dir.path()).await;
    let mut events = again.proto.subscribe();
    let core = again.proto.open_ticket(&ticket).await.unwrap();
    assert_eq!(
        core.info().contiguous_length,
        2000,
        "kept across the restart"
    );
    wait_full(&core, 2100).await;
    let mut downloaded = HashSet::new();
    wait_event(&mut events, "100 downloads", |e| {
        if let Event::Download { index, .. } = e {
            downloaded.insert(*index);
        }
        downloaded.len() >= 100
    })
    .await;
    for ev in drain(&mut events).await {
        if let Event::Download { index, .. } = ev {
            downloaded.insert(index);
        }
    }
    assert_eq!(downloaded, (2000..2100).collect::<HashSet<u64>>());
    let stats = again.proto.peer_stats().await.unwrap();
    assert_eq!(stats.iter().map(|s| s.blocks_down).sum::<u64>(), 100);
    shutdown(&[&again, &writer]).await;
}

//! Replication between two nodes on the test relay: 10,000 blocks direct and relay-only, sparse
//! reads fetching only what is asked for, and simultaneous dials ending with one connection.
//! (A peer that knows only the discovery key is in `capability.rs`.)

#[path = "common/net.rs"]
mod net;

use iroh_hypercore::{
    replication::Event,
    testnet::{Node, Transport},
};
use n0_future::StreamExt;
use net::{WAIT, wait_full};

async fn replicate_two(transport: Transport, blocks: u64) {
    let net = net::test_net().await;
    let writer = net.node(Transport::Direct).await.unwrap();
    let reader = net.node(transport).await.unwrap();
    let log = net::log_on(&writer, "log", blocks, 0).await;
    let remote = net::follow(&reader, &writer, &log).await;
    wait_full(&remote, blocks).await;
    assert_eq!(remote.info().length, blocks);
    assert_eq!(remote.info().contiguous_length, blocks);
    assert_eq!(remote.tree_hash(), log.tree_hash());
    for i in [0, blocks / 2, blocks - 1] {
        assert_eq!(remote.get(i).await.unwrap(), log.get(i).await.unwrap());
    }
    // Live: a new append reaches the reader.
    log.append(b"live".to_vec()).await.unwrap();
    let got = remote.get(blocks).wait(WAIT).await.unwrap();
    assert_eq!(&got[..], b"live");
    // Following live: once the reader holds the whole log and the writer has heard so, the
    // writer pushes each new block instead of waiting to be asked.
    let mut length = blocks + 1;
    while pushes(&reader, &writer).await == 0 {
        assert!(length < blocks + 100, "no push after 100 live appends");
        wait_full(&remote, length).await;
        log.append(format!("live {length}").into_bytes())
            .await
            .unwrap();
        let got = remote.get(length).wait(WAIT).await.unwrap();
        assert_eq!(got, format!("live {length}").into_bytes());
        length += 1;
    }
    let sent = writer.proto.peer_stats().await.unwrap();
    assert!(sent.iter().any(|s| s.pushes_sent > 0));
    wait_full(&remote, length).await;
    assert_eq!(remote.tree_hash(), log.tree_hash());
    net::shutdown(&[&writer, &reader]).await;
}

/// Pushes from `writer` that `reader` took.
async fn pushes(reader: &Node, writer: &Node) -> u64 {
    let writer_id = *writer.endpoint.id().as_bytes();
    reader
        .proto
        .peer_stats()
        .await
        .unwrap()
        .iter()
        .filter(|s| s.peer == writer_id)
        .map(|s| s.pushes_taken)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_direct() {
    replicate_two(Transport::Direct, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_relay_only() {
    replicate_two(Transport::RelayOnly, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_replication_fetches_only_what_is_asked_for() {
    use iroh_hypercore::Mode;
    let net = net::test_net().await;
    let (writer, reader) = net::two_nodes(&net).await;
    let log = writer.store.get_named("sparse").await.unwrap();
    let blocks: Vec<Vec<u8>> = (0..1000u64).map(|i| format!("s{i}").into_bytes()).collect();
    log.append_batch(blocks).await.unwrap();
    writer.proto.replicate(&log).await.unwrap();
    let ticket = writer.proto.ticket(&log);

    let core = reader.store.get_remote(ticket.key()).await.unwrap();
    let mut events = reader.proto.subscribe();
    reader
        .proto
        .replicate_with(&core, Mode::Sparse)
        .await
        .unwrap();
    reader.proto.join(&core, ticket.nodes()).await.unwrap();
    let got = core.get(500).wait(WAIT).await.unwrap();
    assert_eq!(&got[..], b"s500");
    let range = core.download(700..710);
    range.progress().await.unwrap();
    range.done(WAIT).await.unwrap();
    let mut downloaded = std::collections::BTreeSet::new();
    tokio::time::timeout(WAIT, async {
        while downloaded.len() < 11 {
            if let Some(Event::Download { index, .. }) = events.next().await {
                downloaded.insert(index);
            }
        }
    })
    .await
    .unwrap();
    let expected: std::collections::BTreeSet<u64> = std::iter::once(500).chain(700..710).collect();
    assert_eq!(downloaded, expected);
    assert_eq!(core.info().length, 1000, "the length is followed");
    assert_eq!(core.info().contiguous_length, 0);
    assert!(core.get(0).await.unwrap().is_none(), "nothing else fetched");
    assert!(core.get(999).await.unwrap().is_none());
    net::shutdown(&[&reader, &writer]).await;
}

/// Both endpoints dial each other at once: the race ends with one connection that carries the
/// core both ways (each side keeps the connection dialed by the lower id), 50 times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_end_with_one_connection_that_replicates() {
    let net = net::test_net().await;
    for round in 0..50u64 {
        let (a, b) = net::two_nodes(&net).await;
        let log = a.store.get_named("race").await.unwrap();
        log.append(format!("round {round}").into_bytes())
            .await
            .unwrap();
        let remote = b.store.get_remote(log.key()).await.unwrap();
        a.proto.replicate(&log).await.unwrap();
        b.proto.replicate(&remote).await.unwrap();
        let (a_addr, b_addr) = ([a.addr()], [b.addr()]);
        let (ra, rb) = tokio::join!(a.proto.join(&log, &b_addr), b.proto.join(&remote, &a_addr));
        ra.unwrap();
        rb.unwrap();
        wait_full(&remote, 1).await;
        // A block appended after the race reaches the reader over the connection kept.
        log.append(b"after".to_vec()).await.unwrap();
        let got = remote.get(1).wait(WAIT).await.unwrap();
        assert_eq!(&got[..], b"after", "round {round}");
        for node in [&a, &b] {
            assert_eq!(node.proto.node_stats().await.unwrap().connections, 1);
        }
        net::shutdown(&[&a, &b]).await;
    }
}

/// Blocks around and far past the size whose value is shared with its frame rather than
/// copied (written as its own bytes, read as a slice of the frame) replicate byte for byte, in
/// a run and live, and the tree the reader verified is the writer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blocks_shared_with_their_frames_arrive_whole() {
    use iroh_hypercore::replication::wire::SHARED_VALUE_BYTES;
    let net = net::test_net().await;
    let (writer, reader) = net::two_nodes(&net).await;
    let log = writer.store.get_named("large").await.unwrap();
    let sizes = [
        SHARED_VALUE_BYTES - 1,
        SHARED_VALUE_BYTES,
        SHARED_VALUE_BYTES + 1,
        1 << 20,
        3 << 20,
    ];
    let value = |i: usize, len: usize| -> Vec<u8> {
        (0..len).map(|j| (j * 31 + i * 7 + j / 251) as u8).collect()
    };
    let blocks: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| value(i, n))
        .collect();
    log.append_batch(blocks.clone()).await.unwrap();
    writer.proto.replicate(&log).await.unwrap();
    let remote = net::follow(&reader, &writer, &log).await;
    let n = sizes.len() as u64;
    wait_full(&remote, n).await;
    for (i, block) in blocks.iter().enumerate() {
        let got = remote.get(i as u64).await.unwrap().unwrap();
        assert!(got == *block, "block {i} of {} bytes", block.len());
    }
    let live = value(9, 2 << 20);
    log.append(live.clone()).await.unwrap();
    let got = remote.get(n).wait(WAIT).await.unwrap();
    assert!(got == live, "the live block");
    wait_full(&remote, n + 1).await;
    assert_eq!(remote.info().length, n + 1);
    assert_eq!(remote.tree_hash(), log.tree_hash());
    net::shutdown(&[&writer, &reader]).await;
}

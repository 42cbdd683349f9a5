//! What a library user reaches for in the first hour, over real endpoints on the test relay:
//! a peer connected for the whole store (and connected again after a restart), events
//! subscribed before the first peer arrives, what is stored of a log and of its blobs, which
//! providers served a blob, and the names of named cores kept in the store's database.

#[path = "common/net.rs"]
mod net;

use std::time::Duration;

use iroh_hypercore::{Corestore, Error, Mode, net::ReplicaEvent, testnet::Transport};
use net::{
    WAIT, append_numbered, log_on, node_in_dir, shutdown, synced_pair, test_net, wait_event,
    wait_full,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_joined_for_the_store_gets_every_core_and_is_connected_again_after_a_restart() {
    let net = test_net().await;
    let writer = net.node(Transport::Direct).await.unwrap();
    let a = log_on(&writer, "a", 3, 8).await;
    let b = log_on(&writer, "b", 4, 8).await;
    let dir = tempfile::tempdir().unwrap();
    let reader = node_in_dir(&net, dir.path()).await;
    for log in [&a, &b] {
        reader.store.get_remote(log.key()).await.unwrap();
    }
    // One call for the store: no core is joined by itself.
    reader.proto.replicate_store(Mode::Full).await.unwrap();
    reader.proto.join_store(&[writer.addr()]).await.unwrap();
    for log in [&a, &b] {
        let core = reader.store.get(log.key()).await.unwrap().unwrap();
        wait_full(&core, log.info().length).await;
    }
    let remembered: Vec<_> = reader
        .store
        .store_peers()
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(remembered, vec![writer.endpoint.id()]);
    reader.shutdown().await;
    drop(reader);

    // A core the reader never met a peer for: only the remembered store peer can bring it.
    let c = log_on(&writer, "c", 5, 8).await;
    append_numbered(&b, 4, 2, 8).await;
    let reader = node_in_dir(&net, dir.path()).await;
    let new = reader.store.get_remote(c.key()).await.unwrap();
    reader.proto.replicate_store(Mode::Full).await.unwrap();
    wait_full(&new, 5).await;
    let old = reader.store.get(b.key()).await.unwrap().unwrap();
    wait_full(&old, 6).await;
    reader.store.forget_store_peers().await.unwrap();
    assert!(reader.store.store_peers().await.unwrap().is_empty());
    shutdown(&[&writer, &reader]).await;
}

/// A writer with a log of `n` blocks of `size` bytes, and a reader that opened its ticket
/// with the events subscribed first: `(writer, reader, the reader's core, its events)`.
async fn ticket_follower(
    net: &iroh_hypercore::testnet::TestNet,
    n: u64,
    size: usize,
) -> (
    iroh_hypercore::testnet::Node,
    iroh_hypercore::testnet::Node,
    iroh_hypercore::Hypercore,
    iroh_hypercore::net::ReplicaEvents,
) {
    let writer = net.node(Transport::Direct).await.unwrap();
    let log = log_on(&writer, "log", n, size).await;
    let reader = net.node(Transport::Direct).await.unwrap();
    let (core, events) = reader
        .proto
        .open_ticket_with_events(&writer.proto.ticket(&log))
        .await
        .unwrap();
    (writer, reader, core, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_subscribed_with_open_ticket_see_the_first_peer() {
    let net = test_net().await;
    let (writer, reader, core, mut events) = ticket_follower(&net, 2, 8).await;
    let writer_id = writer.endpoint.id();
    wait_event(
        &mut events,
        "the first peer",
        |e| matches!(e, ReplicaEvent::PeerAdd(p) if *p == writer_id),
    )
    .await;
    wait_event(&mut events, "a download", |e| {
        matches!(e, ReplicaEvent::Download { .. })
    })
    .await;
    wait_full(&core, 2).await;
    shutdown(&[&writer, &reader]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_stored_of_a_log_and_its_blobs_can_be_asked() {
    let net = test_net().await;
    let writer = net.node(Transport::Direct).await.unwrap();
    let log = log_on(&writer, "log", 10, 100).await;
    let blob = vec![9u8; 300_000];
    let blob_index = log.append_blob(blob.clone()).await.unwrap();
    let reader = net.node(Transport::Direct).await.unwrap();
    let core = reader.store.get_remote(log.key()).await.unwrap();
    reader
        .proto
        .replicate_with(&core, Mode::Sparse)
        .await
        .unwrap();
    reader.proto.join(&core, &[writer.addr()]).await.unwrap();
    core.download(2..4).done(WAIT).await.unwrap();

    let stored = core.stored().await.unwrap();
    assert_eq!((stored.blocks, stored.bytes), (2, 200));
    assert!(core.has(2, 4).await.unwrap());
    assert!(!core.has(0, 4).await.unwrap());
    assert!(matches!(
        core.blob_ref(blob_index).await,
        Err(Error::BlockNotAvailable(i)) if i == blob_index
    ));
    assert!(!core.has_blob(blob_index).await.unwrap());
    assert_eq!(core.blob_ref(2).await.unwrap(), None, "an ordinary block");

    let get = core.get_blob(blob_index);
    let progress = get.progress();
    let fetched = get.fetch(WAIT).await.unwrap();
    assert_eq!(fetched.size, 300_000);
    assert_eq!(core.blob_ref(blob_index).await.unwrap(), Some(fetched));
    assert!(core.has_blob(blob_index).await.unwrap());
    // The provider that sent the bytes, and how many.
    let last = tokio::time::timeout(Duration::from_secs(5), async {
        use n0_future::StreamExt;
        let seen: Vec<_> = progress.collect().await;
        seen.last().cloned()
    })
    .await
    .ok()
    .flatten();
    let served = last.map(|p| p.served).unwrap_or_default();
    assert_eq!(served, vec![(writer.endpoint.id(), 300_000)]);
    shutdown(&[&writer, &reader]).await;
}

#[tokio::test]
async fn names_of_named_cores_are_kept_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Corestore::persistent(dir.path()).await.unwrap();
    let chat = store.get_named("chat").await.unwrap().key();
    let notes = store.get_named("notes").await.unwrap().key();
    store.namespace("other").get_named("chat").await.unwrap();
    store.create(Default::default()).await.unwrap();
    store.close().await.unwrap();

    let store = Corestore::persistent(dir.path()).await.unwrap();
    assert_eq!(
        store.names().await.unwrap(),
        vec![("chat".to_string(), chat), ("notes".to_string(), notes)]
    );
    assert_eq!(
        store.namespace("other").names().await.unwrap().len(),
        1,
        "each namespace its own names"
    );
    assert_eq!(
        store.name_of(notes).await.unwrap().as_deref(),
        Some("notes")
    );
    store.delete(notes).await.unwrap();
    assert_eq!(store.name_of(notes).await.unwrap(), None);
    assert_eq!(store.names().await.unwrap().len(), 1);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_appear_in_irohs_registry_beside_irohs_own() {
    use iroh_metrics::{MetricsSource, Registry};
    let net = test_net().await;
    let (writer, reader, _core, mut events) = ticket_follower(&net, 5, 100).await;
    // The counters are the engine's: it counts a block when it hears the block is stored,
    // which may come after the core says so. Its events come from the same place.
    let mut downloads = 0;
    wait_event(&mut events, "five downloads", |e| {
        downloads += u32::from(matches!(e, ReplicaEvent::Download { .. }));
        downloads == 5
    })
    .await;

    let mut registry = Registry::default();
    registry.register_all(reader.endpoint.metrics());
    registry.register_all(reader.proto.metrics());
    reader.proto.update_metrics().await.unwrap();
    let text = registry.encode_openmetrics_to_string().unwrap();
    let values = iroh_metrics::parse_prometheus_metrics(&text);
    assert_eq!(
        values.get("hypercore_peers_blocks_down_total"),
        Some(&5.0),
        "{text}"
    );
    assert_eq!(values.get("hypercore_peers_bytes_down_total"), Some(&500.0));
    assert_eq!(values.get("hypercore_node_connections"), Some(&1.0));
    assert!(
        values
            .get("hypercore_storage_commits_total")
            .is_some_and(|c| *c >= 1.0)
    );
    assert!(
        values.keys().any(|k| k.starts_with("socket_")),
        "iroh's own metrics in the same registry: {text}"
    );

    // The writer's upload counters survive the reader going away.
    writer.proto.update_metrics().await.unwrap();
    // Each block once, or more if one was asked for again.
    let sent = writer.proto.metrics().peers.blocks_up.get();
    assert!(sent >= 5, "{sent}");
    reader.shutdown().await;
    let mut events = writer.proto.subscribe();
    let _ = tokio::time::timeout(WAIT, async {
        while !writer.proto.peer_stats().await.unwrap().is_empty() {
            let _ = n0_future::StreamExt::next(&mut events).await;
        }
    })
    .await;
    writer.proto.update_metrics().await.unwrap();
    assert_eq!(writer.proto.metrics().peers.blocks_up.get(), sent);
    assert_eq!(writer.proto.metrics().node.connections.get(), 0);
    writer.shutdown().await;
}

/// A log line writer into memory, for a test's own subscriber.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// On the test's one thread (every task of a current-thread runtime runs there), the log
/// says which peer connected and which core each channel is for, by discovery key, and
/// never the core's key.
#[tokio::test]
async fn logs_say_which_peer_and_which_core() {
    let captured = Captured::default();
    let writer_fn = {
        let captured = captured.clone();
        move || captured.clone()
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("iroh_hypercore=debug")
        .with_writer(writer_fn)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let net = test_net().await;
    let (writer, log, reader, _core) = synced_pair(&net, "log", 3, 8).await;
    shutdown(&[&writer, &reader]).await;
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let short = |b: &[u8]| hex::encode(&b[..5]);
    let writer_id = short(writer.endpoint.id().as_bytes());
    let dk = short(&log.discovery_key());
    assert!(
        text.lines()
            .any(|l| l.contains("peer connected") && l.contains(&writer_id)),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("channel open") && l.contains(&dk) && l.contains(&writer_id)),
        "{text}"
    );
    assert!(
        !text.contains(&hex::encode(log.key())),
        "the key is never logged"
    );
    assert!(!text.contains(&short(&log.key())), "not even its start");
}

/// Fetches `hash` from `from` over iroh-blobs directly (no log, no ticket): what a peer that
/// learnt a hash could try.
async fn raw_fetch(
    reader: &iroh_hypercore::testnet::Node,
    from: &iroh_hypercore::testnet::Node,
    hash: iroh_blobs::Hash,
) -> bool {
    let conn = reader
        .endpoint
        .connect(from.addr(), iroh_blobs::ALPN)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, reader.store.blobs().remote().fetch(conn, hash))
        .await
        .expect("answered")
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_blobs_named_by_a_served_core_are_served() {
    let net = test_net().await;
    let store = Corestore::memory().await.unwrap();
    let writer = net
        .node_built(Transport::Direct, store, |b| b.serve_store(false))
        .await
        .unwrap();
    let public = writer.store.get_named("public").await.unwrap();
    let private = writer.store.get_named("private").await.unwrap();
    let shown = public.append_blob(vec![1u8; 20_000]).await.unwrap();
    let hidden = private.append_blob(vec![2u8; 20_000]).await.unwrap();
    writer.proto.replicate(&public).await.unwrap();
    let unnamed = writer
        .store
        .blobs()
        .add_bytes(vec![3u8; 20_000])
        .await
        .unwrap()
        .hash;
    let hash_of = |core: &iroh_hypercore::Hypercore, i| {
        let core = core.clone();
        async move { core.blob_ref(i).await.unwrap().unwrap().hash }
    };
    let (shown, hidden) = (
        hash_of(&public, shown).await,
        hash_of(&private, hidden).await,
    );

    let reader = net.node(Transport::Direct).await.unwrap();
    assert!(
        raw_fetch(&reader, &writer, shown).await,
        "a served core's blob"
    );
    assert!(
        !raw_fetch(&reader, &writer, hidden).await,
        "the blob of a core not served"
    );
    assert!(
        !raw_fetch(&reader, &writer, unnamed).await,
        "a blob no block names"
    );
    // A named blob whose bytes are the hash of a hidden one, asked for as a list of hashes
    // (root and children): refused, and nothing of the hidden blob comes.
    let pointer = public
        .append_blob(hidden.as_bytes().to_vec())
        .await
        .unwrap();
    let pointer = hash_of(&public, pointer).await;
    let conn = reader
        .endpoint
        .connect(writer.addr(), iroh_blobs::ALPN)
        .await
        .unwrap();
    let listed = tokio::time::timeout(
        WAIT,
        reader
            .store
            .blobs()
            .remote()
            .execute_get(conn, iroh_blobs::protocol::GetRequest::all(pointer)),
    )
    .await
    .expect("answered");
    assert!(listed.is_err(), "a request past the blob itself is refused");
    assert!(
        !matches!(
            reader.store.blobs().status(hidden).await.unwrap(),
            iroh_blobs::api::proto::BlobStatus::Complete { .. }
        ),
        "no byte of the hidden blob"
    );
    // A get-many: all named (even one hash many times) is served, up to 64 hashes; past
    // that, or with one hash not named, nothing is. (Of a blob not held here yet: a client
    // does not ask for what it holds.)
    let get_many = |hashes: Vec<iroh_blobs::Hash>| {
        let (reader, writer) = (&reader, &writer);
        async move {
            // As a peer may send it: the same hash repeated is kept (the builder would merge).
            let request = iroh_blobs::protocol::GetManyRequest::new(
                hashes,
                iroh_blobs::protocol::ChunkRangesSeq::from_ranges_infinite([
                    iroh_blobs::protocol::ChunkRanges::all(),
                ]),
            );
            let conn = reader
                .endpoint
                .connect(writer.addr(), iroh_blobs::ALPN)
                .await
                .unwrap();
            tokio::time::timeout(
                WAIT,
                reader
                    .store
                    .blobs()
                    .remote()
                    .execute_get_many(conn, request),
            )
            .await
            .expect("answered")
            .is_ok()
        }
    };
    assert!(!get_many(vec![pointer; 65]).await, "65 hashes");
    assert!(
        !get_many(vec![pointer, hidden]).await,
        "one hidden among them"
    );
    assert!(get_many(vec![pointer; 64]).await, "64 named hashes");
    // Replicated now: served.
    writer.proto.replicate(&private).await.unwrap();
    assert!(raw_fetch(&reader, &writer, hidden).await);
    shutdown(&[&writer, &reader]).await;
}

/// Runs of up to 1,024 blocks are stored at once: each block is still an event, and a
/// subscriber that keeps up is never told it lagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_block_of_a_long_run_is_an_event_and_a_subscriber_keeping_up_never_lags() {
    let net = test_net().await;
    let (_writer, _reader, _core, mut events) = ticket_follower(&net, 1000, 100).await;
    let mut seen = std::collections::BTreeSet::new();
    wait_event(&mut events, "an event for each of 1,000 blocks", |e| {
        match e {
            ReplicaEvent::Download { index, .. } => {
                seen.insert(*index);
            }
            ReplicaEvent::Lagged(n) => panic!("told it lagged by {n} while keeping up"),
            _ => {}
        }
        seen.len() == 1000
    })
    .await;
}

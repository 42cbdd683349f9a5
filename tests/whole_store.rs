//! Whole-store replication over real endpoints on the test relay: a store serves any core it
//! holds to a peer that proves its key, `serve_store(false)` does not, `replicate_store`
//! follows every core (the ones created later too), `leave` stops a core, the per-core event
//! stream reports peers and uploads, and a restarted writer keeps its endpoint id, so a
//! ticket printed before the restart still works.

#[path = "common/net.rs"]
mod net;

use std::time::Duration;

use iroh_hypercore::{
    CoreKey, Corestore, Error, Hypercore, Mode,
    net::ReplicaEvent,
    replication::{EngineConfig, Event},
    testnet::{Node, TestNet, Transport},
};
use n0_future::StreamExt;
use net::{
    WAIT, append_numbered, joined, log_on, node_in_dir, node_with_config, numbered, shutdown,
    synced_follower, synced_pair, test_net, two_nodes, wait_event, wait_full, wait_full_numbered,
    writer_with_log,
};

/// Two memory stores, ordered by their endpoint ids (lower first): which side of a
/// connection opens the channels depends on the order.
async fn two_stores() -> (Corestore, Corestore) {
    let a = Corestore::memory().await.unwrap();
    let b = Corestore::memory().await.unwrap();
    if a.endpoint_secret_key().public() < b.endpoint_secret_key().public() {
        (a, b)
    } else {
        (b, a)
    }
}

/// A direct node on `store`.
async fn node(net: &TestNet, store: Corestore) -> Node {
    net.node_with(Transport::Direct, store, EngineConfig::default())
        .await
        .unwrap()
}

/// The writer's store holds a log the writer never replicates: a reader with its key gets it
/// all, whichever of the two has the lower endpoint id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_the_store_holds_is_served_without_being_replicated() {
    let net = test_net().await;
    for writer_is_lower in [true, false] {
        let (lo, hi) = two_stores().await;
        let (w_store, r_store) = if writer_is_lower { (lo, hi) } else { (hi, lo) };
        let writer = node(&net, w_store).await;
        let log = writer.store.get_named("unreplicated").await.unwrap();
        append_numbered(&log, 0, 200, 100).await;

        let reader = node(&net, r_store).await;
        let core = joined(&reader, log.key(), &[writer.addr()]).await;
        wait_full_numbered(&core, 200, 100).await;
        shutdown(&[&writer, &reader]).await;
    }
}

/// With `serve_store(false)` the same reader gets nothing: its channel waits parked and is
/// refused once the handshake timeout passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_store_false_serves_only_what_is_replicated() {
    let net = test_net().await;
    let config = EngineConfig {
        handshake_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let store = Corestore::memory().await.unwrap();
    let writer = net
        .node_built(Transport::Direct, store, |b| {
            b.config(config).serve_store(false)
        })
        .await
        .unwrap();
    let log = writer.store.get_named("private").await.unwrap();
    append_numbered(&log, 0, 10, 10).await;

    let reader = net.node(Transport::Direct).await.unwrap();
    let core = reader.store.get_remote(log.key()).await.unwrap();
    let mut events = writer.proto.subscribe();
    reader.proto.join(&core, &[writer.addr()]).await.unwrap();
    wait_event(
        &mut events,
        "the reader's channel refused",
        |e| matches!(e, Event::ChannelRefused { reason, .. } if reason == "unknown core"),
    )
    .await;
    assert_eq!(core.info().length, 0, "nothing was served");
    assert!(core.get(0).wait(Duration::from_millis(200)).await.is_err());
    reader.shutdown().await;
    writer.proto.shutdown().await;
    writer.router.shutdown().await.unwrap();
}

/// `replicate_store(Full)` on the reader follows every core the writer's store serves to it,
/// over one connection, and a core the writer creates later reaches a reader that follows
/// the writer's whole store too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_store_follows_every_core_and_new_ones() {
    let net = test_net().await;
    let writer = net.node(Transport::Direct).await.unwrap();
    let mut keys = Vec::new();
    for i in 0..20 {
        let log = writer.store.get_named(&format!("log {i}")).await.unwrap();
        append_numbered(&log, 0, 10, 50).await;
        keys.push(log.key());
    }
    writer.proto.replicate_store(Mode::Full).await.unwrap();

    // The reader knows the keys (as if it had 20 tickets) and follows its whole store.
    let reader = net.node(Transport::Direct).await.unwrap();
    for core in &follow_store(&reader, &writer, keys).await {
        wait_full(core, 10).await;
    }
    let stats = writer.proto.node_stats().await.unwrap();
    assert_eq!(stats.connections, 1, "one connection carries every core");

    // A core created on the writer after replicate_store is followed there; the reader
    // opens it by key and gets it over the same connection.
    let late = writer.store.get_named("late").await.unwrap();
    append_numbered(&late, 0, 5, 50).await;
    let late_reader = reader.store.get_remote(late.key()).await.unwrap();
    wait_full(&late_reader, 5).await;
    shutdown(&[&writer, &reader]).await;
}

/// `leave` closes the core's channels (the peer sees the channel go), fails pending waits
/// with `Error::Left`, and stops replication until `replicate` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_stops_a_core_and_replicate_resumes_it() {
    let net = test_net().await;
    let (writer, log, reader, core) = synced_pair(&net, "left", 10, 10).await;
    let mut writer_events = writer.proto.events(&log);

    // A read past the end waits for the log to grow; leaving fails it.
    let pending = tokio::spawn(core.get(50).wait(WAIT));
    let download = tokio::spawn(core.download(10..20).done(WAIT));
    tokio::task::yield_now().await;
    assert!(reader.proto.leave(&core).await.unwrap());
    let err = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
    assert!(matches!(err, Err(Error::Left(_))), "{err:?}");
    let err = tokio::time::timeout(WAIT, download).await.unwrap().unwrap();
    assert!(matches!(err, Err(Error::Left(_))), "{err:?}");
    let reader_id = reader.endpoint.id();
    wait_event(
        &mut writer_events,
        "the writer saw the reader leave the core",
        |e| *e == ReplicaEvent::PeerRemove(reader_id),
    )
    .await;
    assert!(reader.proto.peers(&core).await.unwrap().is_empty());
    assert!(!reader.proto.leave(&core).await.unwrap(), "left already");

    // New appends do not reach it while it is left ...
    append_numbered(&log, 10, 5, 10).await;
    assert!(core.get(12).wait(Duration::from_millis(300)).await.is_err());
    assert!(core.info().length <= 10);
    // ... and do once it replicates again.
    reader.proto.join(&core, &[writer.addr()]).await.unwrap();
    wait_full(&core, 15).await;
    shutdown(&[&writer, &reader]).await;
}

/// The per-core event stream reports the peer added, each block uploaded, and the peer
/// removed when it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_events_report_peers_and_uploads() {
    let net = test_net().await;
    let (writer, log) = writer_with_log(&net, "watched", 20, 10).await;
    let mut events = writer.proto.events(&log);

    let (reader, _core) = synced_follower(&net, &writer, &log).await;
    let reader_id = reader.endpoint.id();
    let mut added = false;
    let mut uploaded = std::collections::BTreeSet::new();
    tokio::time::timeout(WAIT, async {
        while !(added && uploaded.len() == 20) {
            match events.next().await.expect("events ended") {
                ReplicaEvent::PeerAdd(p) => added |= p == reader_id,
                ReplicaEvent::Upload { index, peer, bytes } => {
                    assert_eq!(peer, reader_id);
                    assert_eq!(bytes, numbered(index, 10).len() as u64);
                    uploaded.insert(index);
                }
                _ => {}
            }
        }
    })
    .await
    .expect("PeerAdd and 20 uploads");
    assert_eq!(uploaded, (0..20).collect());

    reader.shutdown().await;
    wait_event(&mut events, "PeerRemove when the reader went", |e| {
        *e == ReplicaEvent::PeerRemove(reader_id)
    })
    .await;
    writer.shutdown().await;
}

/// A writer restarted from its directory has the same endpoint id: a reader holding the
/// ticket printed before the restart reconnects and follows the new appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_outlives_a_writer_restart() {
    let net = test_net().await;
    let dir = tempfile::tempdir().unwrap();
    let writer = node_in_dir(&net, dir.path()).await;
    let log = log_on(&writer, "durable", 10, 10).await;
    let ticket = writer.proto.ticket(&log).to_string();
    let id = writer.endpoint.id();
    writer.shutdown().await;
    drop((writer, log));

    let writer = node_in_dir(&net, dir.path()).await;
    assert_eq!(writer.endpoint.id(), id, "same identity after the restart");
    let log = writer.store.get_named("durable").await.unwrap();
    writer.proto.replicate(&log).await.unwrap();
    append_numbered(&log, 10, 5, 10).await;

    let reader = net.node(Transport::Direct).await.unwrap();
    let core = reader
        .proto
        .open_ticket(&ticket.parse().unwrap())
        .await
        .unwrap();
    wait_full(&core, 15).await;
    append_numbered(&log, 15, 1, 10).await;
    assert_eq!(core.get(15).wait(WAIT).await.unwrap(), numbered(15, 10));
    shutdown(&[&writer, &reader]).await;
}

/// The writer makes `n` named cores of one block it does not replicate; the reader knows
/// their keys, follows its whole store over one connection and gets every block.
async fn follow_named_cores(writer: &Node, reader: &Node, n: u64) {
    let mut keys = Vec::new();
    for i in 0..n {
        let log = writer.store.get_named(&format!("log {i}")).await.unwrap();
        log.append(numbered(i, 20)).await.unwrap();
        keys.push(log.key());
    }
    let cores = follow_store(reader, writer, keys).await;
    for (i, core) in cores.iter().enumerate() {
        wait_full(core, 1).await;
        assert_eq!(core.get(0).await.unwrap().unwrap(), numbered(i as u64, 20));
    }
}

/// The cores `keys`, opened on `reader` by key, which then follows its whole store and joins
/// `writer` (over one connection that carries them all).
async fn follow_store(reader: &Node, writer: &Node, keys: Vec<CoreKey>) -> Vec<Hypercore> {
    let mut cores = Vec::new();
    for key in keys {
        cores.push(reader.store.get_remote(key).await.unwrap());
    }
    reader.proto.replicate_store(Mode::Full).await.unwrap();
    reader
        .proto
        .join(&cores[0], &[writer.addr()])
        .await
        .unwrap();
    cores
}

/// A hundred cores the writer never replicates, all followed by a reader at once: more
/// channels than a peer parks while it looks cores up, so the opener paces them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_cores_are_served_on_demand_over_one_connection() {
    let net = test_net().await;
    let (writer, reader) = two_nodes(&net).await;
    follow_named_cores(&writer, &reader, 100).await;
    let stats = writer.proto.peer_stats().await.unwrap();
    assert_eq!(stats[0].channels, 100);
    assert_eq!(stats[0].refused, 0, "no channel refused");
    shutdown(&[&writer, &reader]).await;
}

/// Replicating many cores costs no task per core: 300 cores served on demand by the writer and
/// followed by the reader's whole store add a handful of tasks (the connection's), where a
/// task per core on each side would add 600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_cores_are_replicated_without_a_task_per_core() {
    let net = test_net().await;
    let (writer, reader) = two_nodes(&net).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    follow_named_cores(&writer, &reader, 300).await;
    let added = metrics.num_alive_tasks().saturating_sub(before);
    assert_eq!(writer.proto.node_stats().await.unwrap().cores, 300);
    assert_eq!(reader.proto.node_stats().await.unwrap().cores, 300);
    assert!(added < 100, "{added} tasks for 300 cores on two nodes");
    shutdown(&[&writer, &reader]).await;
}

/// Dropping the last handle of a core the application replicates ends its replication on a
/// node that does not serve its store (its peer sees it go, and `replicate` again resumes
/// it); a node that serves its store keeps replicating it, and an append through a handle
/// opened later reaches the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_handle_dropped_ends_replication_unless_the_store_is_served() {
    let net = test_net().await;
    for serve_store in [false, true] {
        let store = Corestore::memory().await.unwrap();
        let writer = net
            .node_built(Transport::Direct, store, |b| b.serve_store(serve_store))
            .await
            .unwrap();
        let log = log_on(&writer, "dropped", 5, 10).await;
        let (reader, core) = synced_follower(&net, &writer, &log).await;
        let mut reader_events = reader.proto.events(&core);
        drop(log);
        let writer_id = writer.endpoint.id();
        if !serve_store {
            wait_event(
                &mut reader_events,
                "the writer's channel closed when its last handle went",
                |e| *e == ReplicaEvent::PeerRemove(writer_id),
            )
            .await;
            assert_eq!(writer.proto.node_stats().await.unwrap().cores, 0);
        }
        let log = writer.store.get_named("dropped").await.unwrap();
        if !serve_store {
            writer.proto.replicate(&log).await.unwrap();
        }
        append_numbered(&log, 5, 1, 10).await;
        wait_full_numbered(&core, 6, 10).await;
        shutdown(&[&writer, &reader]).await;
    }
}

/// A core deleted while the whole store is followed, then created again under the same name:
/// the new core is followed (the deleted one does not count as left), and its blocks reach a
/// reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_deleted_and_created_again_is_followed() {
    let net = test_net().await;
    let writer = net.node(Transport::Direct).await.unwrap();
    writer.proto.replicate_store(Mode::Full).await.unwrap();
    let log = writer.store.get_named("phoenix").await.unwrap();
    append_numbered(&log, 0, 3, 10).await;
    let key = log.key();
    drop(log);
    writer.store.delete(key).await.unwrap();

    let log = writer.store.get_named("phoenix").await.unwrap();
    append_numbered(&log, 0, 2, 30).await;
    let reader = net.node(Transport::Direct).await.unwrap();
    let core = joined(&reader, key, &[writer.addr()]).await;
    wait_full_numbered(&core, 2, 30).await;
    assert!(
        !writer.proto.peers(&log).await.unwrap().is_empty(),
        "the new core is replicated by the writer"
    );
    shutdown(&[&writer, &reader]).await;
}

/// `update().wait(..)` asks the peers and resolves with their newest signed length: after
/// each acknowledged append of the writer, a sparse reader's update returns that length; with
/// no peer it returns the local length at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_wait_returns_the_newest_length_of_the_peers() {
    let net = test_net().await;
    let writer = net.unlisted_node(Transport::Direct).await.unwrap();
    let log = log_on(&writer, "updates", 1, 8).await;
    let reader = net.unlisted_node(Transport::Direct).await.unwrap();
    let core = reader.store.get_remote(log.key()).await.unwrap();
    reader
        .proto
        .replicate_with(&core, Mode::Sparse)
        .await
        .unwrap();
    assert_eq!(core.update().wait(WAIT).await.unwrap(), 0, "no peer yet");
    // Subscribe before joining: the peer may be added before `join` returns.
    let mut added = reader.proto.events(&core);
    reader.proto.join(&core, &[writer.addr()]).await.unwrap();
    let writer_id = writer.endpoint.id();
    wait_event(&mut added, "the writer added", |e| {
        *e == ReplicaEvent::PeerAdd(writer_id)
    })
    .await;
    for length in 2..=20u64 {
        append_numbered(&log, length - 1, 1, 8).await;
        assert_eq!(core.update().wait(WAIT).await.unwrap(), length);
    }
    assert!(
        core.get(5).await.unwrap().is_none(),
        "sparse: no block fetched"
    );
    shutdown(&[&writer, &reader]).await;
}

/// More cores than a peer's channel cap: idle channels close to make room, and every core
/// gets its log over the one connection. A core whose channel closed idle keeps its peer:
/// neither side reports it without peers (they did, and looked for them, and reopened and
/// closed its channel again and again, at 10,000 cores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_cores_than_the_channel_cap_take_turns() {
    let net = test_net().await;
    let capped = || EngineConfig {
        max_channels_per_peer: 8,
        // Fewer handshakes in flight than the cap: the cap is reached as handshakes end.
        max_opening_per_peer: 4,
        ..Default::default()
    };
    let writer = node_with_config(&net, capped()).await;
    let reader = node_with_config(&net, capped()).await;
    let mut events = [reader.proto.subscribe(), writer.proto.subscribe()];
    follow_named_cores(&writer, &reader, 30).await;
    let stats = reader.proto.peer_stats().await.unwrap();
    assert!(stats[0].channels <= 8, "{} channels", stats[0].channels);
    // Every channel closed to make room closed before the core it made room for opened its
    // own, so its events are in the subscriptions by now.
    let mut idle_closes = 0;
    for events in &mut events {
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::ZERO, events.next()).await {
            match ev {
                Event::NoPeers { .. } => {
                    panic!("a core closed idle was reported without peers: {ev:?}")
                }
                Event::Lagged(_) => panic!("lagged"),
                Event::ChannelClosed { .. } => idle_closes += 1,
                _ => {}
            }
        }
    }
    assert!(idle_closes >= 22, "{idle_closes} channels closed");
    shutdown(&[&writer, &reader]).await;
}

/// An event never describes a change older than a state the caller has seen: a sparse
/// reader's `download(0..20).done()` returns, and a stream of the core's events made then
/// tells of no `Download` of those blocks (the protocol hears of a stored block after the
/// core's state shows it). Twenty rounds, each on a new log; each ends at the `Download` of
/// block 20, asked for after the stream was made, which it does tell of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_older_than_a_state_the_caller_saw() {
    let net = test_net().await;
    let writer = net.node(Transport::Direct).await.unwrap();
    let reader = net.node(Transport::Direct).await.unwrap();
    for round in 0..20 {
        let log = log_on(&writer, &format!("log {round}"), 21, 64).await;
        writer.proto.replicate(&log).await.unwrap();
        let core = reader.store.get_remote(log.key()).await.unwrap();
        reader
            .proto
            .replicate_with(&core, Mode::Sparse)
            .await
            .unwrap();
        reader.proto.join(&core, &[writer.addr()]).await.unwrap();
        core.download(0..20).done(WAIT).await.unwrap();
        let mut events = reader.proto.events(&core);
        core.download(20..21).done(WAIT).await.unwrap();
        tokio::time::timeout(WAIT, async {
            while let Some(ev) = events.next().await {
                match ev {
                    ReplicaEvent::Download { index: 20, .. } => return,
                    ReplicaEvent::Download { index, .. } => {
                        panic!("round {round}: a Download of block {index}, stored before")
                    }
                    _ => {}
                }
            }
        })
        .await
        .expect("the Download of block 20");
    }
    shutdown(&[&writer, &reader]).await;
}

/// A peer joined before `replicate_store` is a store peer too: a reader that joins the writer
/// for one core and then follows its whole store gets every core over that connection (a
/// channel opens only to peers known to have a core, and these are).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_joined_before_replicate_store_gets_every_core() {
    let net = test_net().await;
    let (writer, reader) = two_nodes(&net).await;
    let mut cores = Vec::new();
    for i in 0..10 {
        let log = writer.store.get_named(&format!("log {i}")).await.unwrap();
        log.append(numbered(i, 20)).await.unwrap();
        cores.push(reader.store.get_remote(log.key()).await.unwrap());
    }
    reader
        .proto
        .join(&cores[0], &[writer.addr()])
        .await
        .unwrap();
    wait_full(&cores[0], 1).await;
    reader.proto.replicate_store(Mode::Full).await.unwrap();
    for (i, core) in cores.iter().enumerate() {
        wait_full(core, 1).await;
        assert_eq!(core.get(0).await.unwrap().unwrap(), numbered(i as u64, 20));
    }
    shutdown(&[&writer, &reader]).await;
}

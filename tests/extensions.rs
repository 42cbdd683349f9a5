//! Extensions over real endpoints on the test relay: the Corestore proposal's flow (on
//! `PeerAdd`, A tells B the key of a core over the store channel; B opens it and replicates
//! it), messages on a core's channel to one peer and to all, and limits: unknown names are
//! counted and dropped without closing anything, oversized messages are refused.

#[path = "common/net.rs"]
mod net;

use iroh_hypercore::{
    Error,
    net::{ExtensionMessage, ReplicaEvent},
    replication::{Event, engine::MAX_EXTENSION_PAYLOAD},
    testnet::Transport,
};
use n0_future::StreamExt;
use net::{WAIT, follow, log_on, two_nodes, wait_event, wait_full, writer_with_log};

async fn next_message(messages: &mut iroh_hypercore::net::ExtensionMessages) -> ExtensionMessage {
    tokio::time::timeout(WAIT, messages.next())
        .await
        .expect("a message in time")
        .expect("messages go on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_peer_add_a_tells_b_of_a_core_and_b_replicates_it() {
    let net = net::test_net().await;
    let (a, b) = two_nodes(&net).await;
    // A has a core B has never heard of; a second core of A's brings the two together.
    let secret = log_on(&a, "told", 10, 32).await;
    let a_cores = a.proto.extension("cores").await.unwrap();
    let b_cores = b.proto.extension("cores").await.unwrap();
    let mut told = b_cores.subscribe();
    let mut a_events = a.proto.subscribe();
    let mut b_events = b.proto.subscribe();

    let meeting = a.store.get_named("meeting").await.unwrap();
    a.proto.join(&meeting, &[b.addr()]).await.unwrap();
    let b_id = b.endpoint.id();
    let added = wait_event(
        &mut a_events,
        "PeerAdd of B",
        |e| matches!(e, Event::PeerAdd(p) if *p == *b_id.as_bytes()),
    )
    .await;
    assert!(matches!(added, Event::PeerAdd(_)));
    assert!(
        a_cores
            .send_to_peer(b_id, secret.key().to_vec())
            .await
            .unwrap()
    );

    let msg = next_message(&mut told).await;
    assert_eq!(msg.core, None, "sent with no core");
    assert_eq!(msg.peer, a.endpoint.id());
    assert_eq!(told.missed(), 0);
    // Extension messages do not crowd the replication events.
    assert!(
        !net::drain(&mut b_events)
            .await
            .iter()
            .any(|e| matches!(e, Event::Extension { .. }))
    );
    let key: [u8; 32] = msg.bytes[..].try_into().unwrap();
    let core = b.store.get_remote(key).await.unwrap();
    // A is known to have it (it told us): we join it with A, over the connection we have.
    b.proto
        .join(&core, &[iroh::EndpointAddr::new(msg.peer)])
        .await
        .unwrap();
    wait_full(&core, 10).await;
    assert_eq!(a.proto.node_stats().await.unwrap().connections, 1);
    net::shutdown(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_go_on_a_cores_channel_and_unknown_names_are_counted() {
    let net = net::test_net().await;
    let (writer, log) = writer_with_log(&net, "room", 1, 8).await;
    let mut room = writer.proto.events(&log);
    let mut readers = Vec::new();
    let mut inboxes = Vec::new();
    for _ in 0..2 {
        let r = net.node(Transport::Direct).await.unwrap();
        let ext = r.proto.extension("chat").await.unwrap();
        inboxes.push(ext.subscribe());
        let core = follow(&r, &writer, &log).await;
        wait_full(&core, 1).await;
        readers.push((r, core, ext));
    }
    let chat = writer.proto.extension("chat").await.unwrap();
    let mut writer_inbox = chat.subscribe();
    // Both channels are open on the writer's side.
    let mut added = 0;
    while added < 2 {
        let ev = tokio::time::timeout(WAIT, room.next())
            .await
            .unwrap()
            .unwrap();
        added += usize::from(matches!(ev, ReplicaEvent::PeerAdd(_)));
    }
    assert_eq!(chat.broadcast(&log, &b"to all"[..]).await.unwrap(), 2);
    for inbox in &mut inboxes {
        let msg = next_message(inbox).await;
        assert_eq!(msg.core, Some(log.key()));
        assert_eq!(msg.peer, writer.endpoint.id());
        assert_eq!(&msg.bytes[..], b"to all");
    }
    let (r0, core0, ext0) = &readers[0];
    assert!(
        ext0.send(core0, writer.endpoint.id(), &b"to you"[..])
            .await
            .unwrap()
    );
    let msg = next_message(&mut writer_inbox).await;
    assert_eq!(
        (msg.peer, &msg.bytes[..]),
        (r0.endpoint.id(), &b"to you"[..])
    );

    // A name the writer never registered: dropped and counted; the channel stays open and
    // the next message of a registered name still arrives.
    let other = r0.proto.extension("other").await.unwrap();
    assert!(
        other
            .send(core0, writer.endpoint.id(), &b"?"[..])
            .await
            .unwrap()
    );
    ext0.send(core0, writer.endpoint.id(), &b"again"[..])
        .await
        .unwrap();
    let msg = next_message(&mut writer_inbox).await;
    assert_eq!(&msg.bytes[..], b"again");
    let stats = writer.proto.peer_stats().await.unwrap();
    let s = stats
        .iter()
        .find(|s| s.peer == *r0.endpoint.id().as_bytes())
        .unwrap();
    assert_eq!(s.extensions_dropped, 1);
    assert_eq!(s.extensions_received, 2);
    assert_eq!(writer.proto.peers(&log).await.unwrap().len(), 2);

    let too_big = vec![0u8; MAX_EXTENSION_PAYLOAD + 1];
    let err = chat.broadcast(&log, too_big).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    writer.shutdown().await;
    for (r, _, _) in readers {
        r.shutdown().await;
    }
}

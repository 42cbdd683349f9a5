//! Test network 5: lying peers. One answers with forged proofs and claims lengths it cannot
//! prove (in sync and in gossip), then floods requests; another sends an oversized frame.
//! Honest replication still completes, nothing unverified is stored, the liars are backed off
//! or disconnected.

#[path = "common/attacker.rs"]
mod attacker;
#[path = "common/net.rs"]
mod net;

use attacker::{accept_for, open_channel, read_msg, send};
use iroh::{
    Endpoint,
    endpoint::{Connection, RecvStream, SendStream},
};
use iroh_hypercore::{
    CoreTicket, Error, Hypercore,
    replication::{
        Event,
        gossip::{GossipOp, topic},
        wire::{MAX_FRAME, Message, SyncInfo},
    },
    testnet::{Node, TestNet, Transport},
    tree::{BlockProof, Proof, UpgradeProof},
};
use net::{WAIT, follower, wait_event, wait_full, writer_with_log};

const LIE: u64 = 1_000_000;

/// Answers everything on one channel with lies, then floods the peer with requests.
async fn lie_on(mut tx: SendStream, mut rx: RecvStream) {
    let lie = Message::Sync(SyncInfo {
        fork: 0,
        length: LIE,
        contiguous: LIE,
        ask: false,
        downloading: false,
    });
    send(&mut tx, &lie).await;
    let mut flooded = false;
    while let Some(msg) = read_msg(&mut rx).await {
        match msg {
            Message::Request { id, request } => {
                let upgrade = request.upgrade.map(|u| UpgradeProof {
                    start: u.start,
                    length: u.length,
                    nodes: vec![],
                    additional_nodes: vec![],
                    signature: vec![0; 64],
                });
                let proof = Proof {
                    upgrade,
                    ..Default::default()
                };
                send(&mut tx, &Message::Data { id, proof }).await;
            }
            Message::RequestRun { id, start, end, .. } => {
                for index in start..end {
                    let proof = Proof {
                        block: Some(BlockProof {
                            index,
                            value: b"forged".to_vec(),
                            nodes: vec![],
                        }),
                        ..Default::default()
                    };
                    send(&mut tx, &Message::Data { id, proof }).await;
                }
                if !flooded {
                    flooded = true;
                    for id in 0..3000 {
                        let flood = Message::RequestRun {
                            id: 1 << 40 | id,
                            fork: 0,
                            start: 0,
                            end: 1024,
                            length: 1024,
                        };
                        send(&mut tx, &flood).await;
                    }
                }
            }
            Message::Sync(SyncInfo { ask: true, .. }) => send(&mut tx, &lie).await,
            _ => {}
        }
    }
}

/// Connects `ep` to `reader` and plays `answer` on a channel of `log` it opens (with a valid
/// capability: the key is public) once the reader accepted it, and on every channel the reader
/// opens to it, after the reader's `Open` and our `Accept`: the reader may keep its own channel
/// rather than ours.
async fn play_on_core<F, Fut>(
    ep: &Endpoint,
    reader: &Node,
    log: &Hypercore,
    answer: F,
) -> Connection
where
    F: Fn(SendStream, RecvStream) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let conn = ep
        .connect(reader.addr(), iroh_hypercore::ALPN)
        .await
        .unwrap();
    let accepted = conn.clone();
    let (key, me, them) = (
        log.key(),
        *ep.id().as_bytes(),
        *reader.endpoint.id().as_bytes(),
    );
    tokio::spawn(async move {
        while let Ok((mut tx, mut rx)) = accepted.accept_bi().await {
            let _ = read_msg(&mut rx).await;
            send(&mut tx, &accept_for(&key, them, me)).await;
            tokio::spawn(answer(tx, rx));
        }
    });
    let ours = conn.clone();
    tokio::spawn(async move {
        // The reader proves the key (or keeps its own channel and closes ours).
        if let Some((tx, rx)) = open_channel(&ours, me, key).await {
            answer(tx, rx).await;
        }
    });
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liars_are_backed_off_and_honest_replication_completes() {
    net::init_tracing();
    let net = TestNet::new().await.unwrap();
    let (writer, log) = writer_with_log(&net, "honest", 3000, 512).await;
    let reader = net.node(Transport::Direct).await.unwrap();

    // The liar knows the key (it is public) and opens a channel with a valid capability.
    let liar_ep = net.endpoint(Transport::Direct).await.unwrap();
    let liar_id = *liar_ep.id().as_bytes();
    let liar_gossip = iroh_gossip::Gossip::builder().spawn(liar_ep.clone());
    let liar_router = iroh::protocol::Router::builder(liar_ep.clone())
        .accept(iroh_gossip::ALPN, liar_gossip.clone())
        .spawn();

    // The reader follows the ticket of the writer and of the liar.
    let ticket = CoreTicket::new(log.key(), vec![writer.addr()]);
    let core = reader.proto.open_ticket(&ticket).await.unwrap();
    // Kept open for the whole test.
    let _conn = play_on_core(&liar_ep, &reader, &log, lie_on).await;

    // It also lies in gossip.
    let dk = log.discovery_key();
    let gossip_topic = liar_gossip
        .subscribe(
            iroh_gossip::TopicId::from_bytes(topic(&dk)),
            vec![reader.endpoint.id()],
        )
        .await
        .unwrap();
    let (gossip_tx, _gossip_rx) = gossip_topic.split();
    let announce = GossipOp::Announce {
        origin: liar_id,
        fork: 0,
        length: LIE,
        contiguous: LIE,
    };
    gossip_tx
        .broadcast(announce.encode(4096).unwrap().into())
        .await
        .unwrap();

    // A second peer breaks the framing with an oversized frame.
    let big_ep = net.endpoint(Transport::Direct).await.unwrap();
    let big = big_ep
        .connect(reader.addr(), iroh_hypercore::ALPN)
        .await
        .unwrap();
    let (mut btx, _brx) = big.open_bi().await.unwrap();
    btx.write_all(&((MAX_FRAME + 1) as u32).to_be_bytes())
        .await
        .unwrap();
    btx.write_all(&[0; 1024]).await.unwrap();

    wait_full(&core, 3000).await;
    assert_eq!(core.tree_hash(), log.tree_hash());
    assert_eq!(
        core.info().length,
        3000,
        "the lying length was never applied"
    );
    for i in (0..3000).step_by(97) {
        assert_eq!(core.get(i).await.unwrap(), log.get(i).await.unwrap());
    }
    // The lies were caught and blamed on the liar (which backs it off). The counters are the
    // check: the event channel may lag behind 3,000 downloads.
    let liar_stats = tokio::time::timeout(WAIT, async {
        loop {
            let stats = reader.proto.peer_stats().await.unwrap();
            if let Some(s) = stats
                .into_iter()
                .find(|s| s.peer == liar_id && s.invalid > 0)
            {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the liar's proofs were rejected");
    assert_eq!(liar_stats.blocks_down, 0);
    // The oversized frame got that connection closed.
    tokio::time::timeout(WAIT, big.closed()).await.unwrap();
    let writer_id = *writer.endpoint.id().as_bytes();
    let stats = tokio::time::timeout(WAIT, async {
        loop {
            let stats = reader.proto.peer_stats().await.unwrap();
            let honest = stats
                .iter()
                .find(|s| s.peer == writer_id)
                .map(|s| s.blocks_down);
            if honest == Some(3000) {
                return stats;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every block counted from the honest writer");
    // The writer's blocks that came after a forged one in the same batch were queued again,
    // not blamed on it (their proofs rely on the nodes of the writer's earlier blocks).
    let honest = stats.iter().find(|s| s.peer == writer_id).unwrap();
    assert_eq!(honest.invalid, 0, "{honest:?}");
    if let Some(s) = stats.iter().find(|s| s.peer == liar_id) {
        assert!(s.invalid > 0, "{s:?}");
        assert_eq!(s.blocks_down, 0);
    }
    drop(gossip_tx);
    liar_router.shutdown().await.ok();
    big_ep.close().await;
    reader.shutdown().await;
    writer.shutdown().await;
}

/// A peer pushes a forged block with a forged upgrade to a reader that follows live: the push
/// is taken for verification, rejected and blamed, nothing is stored, and the writer's next
/// block still reaches the reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_push_is_rejected_and_live_replication_goes_on() {
    net::init_tracing();
    let net = TestNet::new().await.unwrap();
    let (writer, log) = writer_with_log(&net, "pushed", 10, 64).await;
    let (reader, core) = follower(&net, &writer, &log).await;
    wait_full(&core, 10).await;
    let mut events = reader.proto.subscribe();

    let liar_ep = net.endpoint(Transport::Direct).await.unwrap();
    let liar_id = *liar_ep.id().as_bytes();
    let conn = play_on_core(&liar_ep, &reader, &log, push_forged).await;

    wait_event(
        &mut events,
        "the forged push rejected",
        |e| matches!(e, Event::Invalid { peer, .. } if *peer == liar_id),
    )
    .await;
    let stats = reader.proto.peer_stats().await.unwrap();
    let liar = stats
        .iter()
        .find(|s| s.peer == liar_id)
        .expect("liar stats");
    assert_eq!(liar.pushes_taken, 1, "{liar:?}");
    assert_eq!(liar.blocks_down, 0);
    assert_eq!(core.info().length, 10, "the forged upgrade was not applied");
    assert!(
        matches!(core.get(10).await, Err(Error::OutOfRange { .. })),
        "nothing of the forged block was stored"
    );

    log.append(b"real".to_vec()).await.unwrap();
    let got = core.get(10).wait(WAIT).await.unwrap();
    assert_eq!(&got[..], b"real");
    wait_full(&core, 11).await;
    assert_eq!(core.tree_hash(), log.tree_hash());
    conn.close(0u32.into(), b"done");
    liar_ep.close().await;
    reader.shutdown().await;
    writer.shutdown().await;
}

/// Says it holds the same 10 blocks, and once the reader says it downloads and holds them too,
/// pushes a forged block 10 with a forged upgrade; then reads until the channel ends.
async fn push_forged(mut tx: SendStream, mut rx: RecvStream) {
    let same = Message::Sync(SyncInfo {
        fork: 0,
        length: 10,
        contiguous: 10,
        ask: false,
        downloading: true,
    });
    send(&mut tx, &same).await;
    let mut pushed = false;
    while let Some(msg) = read_msg(&mut rx).await {
        if let Message::Sync(s) = msg
            && s.downloading
            && s.length == 10
            && !pushed
        {
            pushed = true;
            let forged = Proof {
                block: Some(BlockProof {
                    index: 10,
                    value: b"forged".to_vec(),
                    nodes: vec![],
                }),
                upgrade: Some(UpgradeProof {
                    start: 10,
                    length: 1,
                    nodes: vec![],
                    additional_nodes: vec![],
                    signature: vec![0; 64],
                }),
                ..Default::default()
            };
            send(&mut tx, &Message::Push { proof: forged }).await;
        }
    }
}

//! A signed state only moves forward, over the wire (DESIGN, principle 7): replayed old
//! signatures, forged pushes, proofs that would plant a kind or overflow a size are refused,
//! the peer blamed, and replication goes on. (`signed_state.rs` checks the same rules on a
//! core alone.)

#[path = "common/attacker.rs"]
mod attacker;
mod common;
#[path = "common/net.rs"]
mod net;

use std::time::{Duration, Instant};

use attacker::*;
use common::{forged_upgrade, upgrade_request};
use iroh::endpoint::{RecvStream, SendStream};
use iroh_hypercore::{
    Error, Hypercore,
    replication::{
        Engine, EngineConfig, Input, Mode, Output, Task,
        engine::{Applied, ApplyOutcome, testing::*},
        wire::{Message, SyncInfo},
    },
    testnet::{Node, TestNet, Transport},
    tree::{Node as TreeNode, Proof, ProofRequest},
};
use net::*;

/// The writer's signed state at length 5 as anyone who read the log then saw it, and the log
/// grown to 10 blocks afterwards.
async fn log_with_old_signature(net: &TestNet) -> (Node, Hypercore, Proof) {
    let (writer, log) = writer_with_log(net, "rolled", 5, 64).await;
    let old = log.create_proof(upgrade_request(5)).await.unwrap();
    append_numbered(&log, 5, 5, 64).await;
    (writer, log, old)
}

/// Attack 3a: a peer replays the writer's old signed state (length 5) to a reader at length
/// 10, as the answer to the upgrade the reader asks for and as a push. Both are rejected and
/// blamed; the reader keeps its 10 blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_old_signature_does_not_roll_a_reader_back() {
    let net = test_net().await;
    let (writer, log, old) = log_with_old_signature(&net).await;
    let (reader, core) = synced_follower(&net, &writer, &log).await;
    let mut events = reader.proto.subscribe();

    let (intruder, mut tx, mut rx) = intrude(&net, &reader, log.key()).await;
    send(&mut tx, &sync(11, false)).await;
    let id = next_request(&mut rx).await;
    send(
        &mut tx,
        &Message::Data {
            id,
            proof: old.clone(),
        },
    )
    .await;
    send(&mut tx, &Message::Push { proof: old }).await;
    let ev = wait_blamed(&mut events, intruder.me, "the replay blamed").await;
    println!("replay rejected: {ev:?}");
    assert_eq!(core.info().length, 10, "not rolled back");
    assert_eq!(core.tree_hash(), log.tree_hash());
    assert_eq!(core.get(7).await.unwrap(), Some(numbered(7, 64).into()));
    // And it still follows the writer.
    log.append(b"eleven".to_vec()).await.unwrap();
    assert_eq!(&core.get(10).wait(WAIT).await.unwrap()[..], b"eleven");
    intruder.hang_up().await;
    shutdown(&[&reader, &writer]).await;
}

/// Attack 3b: the same replay aimed at the writer itself: a longer claimed length, the old
/// state pushed and sent as an unasked answer. The writer never asks a peer for its own state,
/// takes none, and keeps every acknowledged append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_old_signature_does_not_roll_the_writer_back() {
    let net = test_net().await;
    let (writer, log, old) = log_with_old_signature(&net).await;
    let (intruder, mut tx, mut rx) = intrude(&net, &writer, log.key()).await;
    send(&mut tx, &sync(11, true)).await;
    send(&mut tx, &Message::Push { proof: old.clone() }).await;
    let unasked = Message::Data {
        id: 1 << 63,
        proof: old.clone(),
    };
    send(&mut tx, &unasked).await;
    // Messages are handled in order: once this is answered, the replay was handled too.
    let request = ProofRequest {
        block: Some(iroh_hypercore::tree::IndexRequest { index: 0, nodes: 0 }),
        ..Default::default()
    };
    send(&mut tx, &Message::Request { id: 9, request }).await;
    let mut seen = Vec::new();
    loop {
        let msg = tokio::time::timeout(WAIT, read_msg(&mut rx))
            .await
            .unwrap()
            .expect("the channel stays open");
        let answered = matches!(msg, Message::Data { id: 9, .. });
        seen.push(msg);
        if answered {
            break;
        }
    }
    println!("the writer sent {:?}", kinds(&seen));
    assert!(
        !kinds(&seen).contains(&"Request"),
        "the writer asked a peer for its state"
    );
    assert_eq!(log.info().length, 10);
    assert_eq!(log.get(7).await.unwrap(), Some(numbered(7, 64).into()));
    assert!(matches!(
        log.verify_and_apply_proof(old).await,
        Err(Error::Proof(_))
    ));
    log.append(b"eleven".to_vec()).await.unwrap();
    assert_eq!(log.info().length, 11);
    intruder.hang_up().await;
    writer.shutdown().await;
}

/// Attack 5: before the writer is reachable, a peer answers a fresh reader's first upgrade
/// request with proofs that carry no manifest (an empty one, and one with a forged signature).
/// The reader stores nothing of them, so the writer's proofs still verify once it joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_reader_cannot_be_poisoned_about_the_kind_of_core() {
    let net = test_net().await;
    let (writer, log) = writer_with_log(&net, "poison", 10, 64).await;
    let reader = net.node(Transport::Direct).await.unwrap();
    let core = replica(&reader, log.key()).await;
    let mut events = reader.proto.subscribe();

    let (intruder, mut tx, mut rx) = intrude(&net, &reader, log.key()).await;
    send(&mut tx, &sync(10, false)).await;
    for proof in [Proof::default(), forged_upgrade(0, 10, None)] {
        let id = next_request(&mut rx).await;
        send(&mut tx, &Message::Data { id, proof }).await;
        wait_blamed(&mut events, intruder.me, "the poison rejected").await;
        // Back-off passes, the reader asks again (the peer still claims the longest log).
        send(&mut tx, &sync(10, false)).await;
    }
    assert_eq!(core.info().length, 0);
    assert!(core.manifest().is_none(), "nothing was stored");
    intruder.hang_up().await;

    reader.proto.join(&core, &[writer.addr()]).await.unwrap();
    wait_full(&core, 10).await;
    assert_eq!(core.tree_hash(), log.tree_hash());
    assert_eq!(core.manifest(), log.manifest());
    shutdown(&[&reader, &writer]).await;
}

/// Attack 7: a push whose proof carries a node of size `u64::MAX`, so that adding sizes
/// overflows. It is rejected and blamed, and the reader's engine lives on: it follows the
/// writer's next block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_size_u64_max_is_an_error_not_a_panic() {
    let net = test_net().await;
    let (writer, log, reader, core) = synced_pair(&net, "overflow", 10, 64).await;
    let mut events = reader.proto.subscribe();
    let (intruder, tx, rx) = intrude(&net, &reader, log.key()).await;
    tokio::spawn(push_overflowing(tx, rx));
    let ev = wait_blamed(&mut events, intruder.me, "the overflowing push blamed").await;
    println!("{ev:?}");
    assert_eq!(core.info().length, 10);
    log.append(b"after".to_vec()).await.unwrap();
    assert_eq!(&core.get(10).wait(WAIT).await.unwrap()[..], b"after");
    intruder.hang_up().await;
    shutdown(&[&reader, &writer]).await;
}

/// Says it holds the same 10 blocks and downloads; once the reader says the same, pushes
/// block 10 with an upgrade to 12 whose node 21 (blocks 10 and 11) has size `u64::MAX`.
async fn push_overflowing(mut tx: SendStream, mut rx: RecvStream) {
    send(&mut tx, &sync(10, true)).await;
    while let Some(msg) = read_msg(&mut rx).await {
        if let Message::Sync(s) = msg
            && s.downloading
            && s.length == 10
        {
            let mut proof = forged_upgrade(10, 2, Some((10, b"x")));
            proof.upgrade.as_mut().unwrap().nodes.push(TreeNode {
                index: 21,
                size: u64::MAX,
                hash: [0; 32],
            });
            send(&mut tx, &Message::Push { proof }).await;
            break;
        }
    }
    // Keep the channel open until the test ends.
    while read_msg(&mut rx).await.is_some() {}
}

/// **A peer replaying the writer's old signed states one at a time pins a reader far behind,
/// and is never blamed.** A reader R follows the writer W at length 10. A peer A that followed
/// the log too (so it holds every signed state W made, one per append) says it has 1,000,000
/// blocks. R asks A for the upgrade, because A claims the most; W then appends 30 blocks and
/// pushes each to R, which drops the pushes while A's request is under way. A answers each
/// request a second later with W's *oldest* state that is still newer than R's: the upgrade
/// from R's length by one block, with the block. It is signed, it answers exactly the question
/// (`start`, `block`), it moves R forward, so it is taken; A's claim is never questioned, so it
/// is asked again. R crawls one block a second (A can go just under `upgrade_timeout`) while W,
/// connected, is 30 blocks ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_replaying_old_states_one_by_one_does_not_pin_a_reader_behind() {
    use iroh_hypercore::tree::{IndexRequest, ProofRequest, UpgradeRequest};
    let net = test_net().await;
    let (writer, log, reader, core) = synced_pair(&net, "pinned", 10, 64).await;

    let (intruder, mut tx, mut rx) = intrude(&net, &reader, log.key()).await;
    attacker::send(&mut tx, &sync_at(1_000_000, 1_000_000, false)).await;
    let first = loop {
        match tokio::time::timeout(WAIT, attacker::read_msg(&mut rx))
            .await
            .unwrap()
        {
            Some(Message::Request { id, request }) => break (id, request),
            Some(_) => {}
            None => panic!("channel closed"),
        }
    };
    println!("R asked A: {:?}", first.1.upgrade);

    // W appends 30 blocks, one per append (each length signed); A keeps each signed state as
    // a follower would: the upgrade by one block with that block.
    let mut states = std::collections::HashMap::new();
    for i in 10..40u64 {
        log.append(net::numbered(i, 64)).await.unwrap();
        let proof = log
            .create_proof(ProofRequest {
                block: Some(IndexRequest { index: i, nodes: 0 }),
                upgrade: Some(UpgradeRequest {
                    start: i,
                    length: 1,
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        states.insert(i, proof);
    }
    let w_length = log.info().length;
    let started = Instant::now();
    // A answers every upgrade request with the next old state, a second later.
    let replayer = tokio::spawn(async move {
        let mut next = Some(first);
        let mut answered = 0;
        loop {
            let (id, request) = match next.take() {
                Some(r) => r,
                None => match attacker::read_msg(&mut rx).await {
                    Some(Message::Request { id, request }) => (id, request),
                    Some(_) => continue,
                    None => return answered,
                },
            };
            let Some(start) = request.upgrade.map(|u| u.start) else {
                continue;
            };
            let Some(proof) = states.get(&start).cloned() else {
                continue;
            };
            tokio::time::sleep(Duration::from_secs(1)).await;
            attacker::send(&mut tx, &Message::Data { id, proof }).await;
            answered += 1;
        }
    });
    let caught_up = core
        .download(0..w_length)
        .done(Duration::from_secs(10))
        .await;
    let at = core.info().length;
    let a = stats(&reader.proto, intruder.me).await.1;
    println!(
        "after {:.1?}: W at length {w_length}, R at {at}; A's answers blamed: {} (invalid), \
         blocks R took from A: {}",
        started.elapsed(),
        a.invalid,
        a.blocks_down
    );
    assert!(
        caught_up.is_ok(),
        "R is pinned at length {at} while the connected writer is at {w_length}: \
         A's one-block replays are taken and A is asked again"
    );
    intruder.conn.close(0u32.into(), b"done");
    let _ = replayer.await;
    intruder.ep.close().await;
    shutdown(&[&reader, &writer]).await;
}

/// A peer pushes a forged block with a forged upgrade to a reader that follows live: the push
/// is taken for verification, rejected and blamed, nothing is stored, and the writer's next
/// block still reaches the reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_push_is_rejected_and_live_replication_goes_on() {
    let net = test_net().await;
    let (writer, log, reader, core) = synced_pair(&net, "pushed", 10, 64).await;
    let mut events = reader.proto.subscribe();

    let liar_ep = net.endpoint(Transport::Direct).await.unwrap();
    let liar_id = *liar_ep.id().as_bytes();
    let conn = play_on_core(&liar_ep, &reader, &log, push_forged).await;

    wait_blamed(&mut events, liar_id, "the forged push rejected").await;
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
    hang_up(&liar_ep, &conn).await;
    shutdown(&[&reader, &writer]).await;
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
            let forged = forged_upgrade(10, 1, Some((10, b"forged")));
            send(&mut tx, &Message::Push { proof: forged }).await;
        }
    }
}

/// **A forged push withdraws the honest upgrade before anything is verified, and a peer that
/// reconnects can do it forever.** A reader R follows a log at length 10; the honest peer H
/// syncs length 20, so R asks H for the upgrade. `on_push` now takes a push that fits while an
/// upgrade request is outstanding, and *at once* removes H's request and sends H `Cancel`,
/// before the push's signature is checked. A peer A that knows the key (a ticket) pushes junk
/// (block 10, upgrade from 10, a zero signature) as soon as R asks: H's request is withdrawn,
/// the junk fails verification, R asks H again (a new id), and H's answer to the old id,
/// arriving a round trip later, is dropped as "late". A is blamed and backed off, but a
/// disconnect forgets its failures (`FetchQueue::remove_peer`), so A reconnects and repeats
/// (several ids do the same without reconnecting). Pushes that arrive while `busy` are
/// dropped without blame, so A can simply send one every millisecond. Before b27e0b7 a push
/// was not taken while an upgrade was asked, so this could not happen.
#[test]
fn a_forged_push_does_not_withdraw_an_honest_upgrade_request() {
    let t0 = Instant::now();
    let h: [u8; 32] = [9; 32];
    let a: [u8; 32] = [10; 32];
    let mut engine = Engine::new(ME, EngineConfig::default());
    engine.add_core(CORE, local_at(10, 10, false), Mode::Full, t0);
    let hc = connect(&mut engine, h, t0);
    let mut ac = connect(&mut engine, a, t0);
    outputs(&mut engine);
    engine.handle(Input::Message(h, hc, sync_at(20, 20, false)), t0);

    let rtt = Duration::from_millis(20);
    let mut now = t0;
    // H's answers in flight: (arrival, id).
    let mut in_flight: Vec<(Instant, u64)> = Vec::new();
    let (mut cancels, mut applied_from_h, mut forged) = (0, None, 0);
    let end = t0 + Duration::from_secs(10);
    let mut rest = Vec::new();
    while now < end && applied_from_h.is_none() {
        let mut asked_h = false;
        let mut task = None;
        rest.extend(outputs(&mut engine));
        for o in std::mem::take(&mut rest) {
            match o {
                Output::Send(p, _, Message::Request { id, .. }) if p == h => {
                    in_flight.push((now + rtt, id));
                    asked_h = true;
                }
                Output::Send(p, _, Message::Cancel { .. }) if p == h => cancels += 1,
                Output::Task(_, Task::ApplyProof { proof, reply }) => {
                    if proof
                        .block
                        .as_ref()
                        .is_some_and(|b| b.value == b"honest"[..])
                    {
                        applied_from_h = Some(now - t0);
                    } else {
                        task = Some(reply);
                    }
                }
                _ => {}
            }
        }
        if let Some(t) = task {
            // The forged push fails verification.
            now += Duration::from_millis(1);
            let outcome = ApplyOutcome::Invalid("invalid signature".into());
            let local = local_at(10, 10, false);
            engine.handle(t.done(Applied { outcome, local }), now);
            // A forgets its blame by reconnecting.
            rest.extend(outputs(&mut engine));
            engine.handle(Input::PeerDisconnected(a), now);
            ac = connect_keeping(&mut engine, a, now, &mut rest);
            continue;
        }
        if asked_h {
            // A pushes junk right after R asked H (or: it pushes every millisecond).
            now += Duration::from_millis(1);
            let push = Message::Push {
                proof: forged_upgrade(10, 1, Some((10, b"forged"))),
            };
            engine.handle(Input::Message(a, ac, push), now);
            forged += 1;
            continue;
        }
        // H's answers arrive, each exactly what was asked.
        let next = in_flight.iter().map(|(t, _)| *t).min();
        let timer = engine.poll_timeout();
        let Some(next) = [next, timer].into_iter().flatten().min() else {
            break;
        };
        now = next.max(now);
        let due: Vec<u64> = in_flight
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, id)| *id)
            .collect();
        in_flight.retain(|(t, _)| *t > now);
        for id in due {
            let proof = forged_upgrade(10, 10, Some((10, b"honest")));
            engine.handle(Input::Message(h, hc, Message::Data { id, proof }), now);
        }
        engine.handle_timeout(now);
    }
    println!(
        "{forged} forged pushes taken, {cancels} Cancels sent to the honest peer; H's upgrade \
         applied after {applied_from_h:?} (simulated {:?})",
        now - t0
    );
    assert!(
        applied_from_h.is_some(),
        "in {:?} R never applied H's answer: each forged push withdrew H's request \
         ({cancels} Cancels) before its signature was checked (src/replication/engine/push.rs, \
         on_push)",
        now - t0
    );
}

//! A signed state only moves forward (DESIGN principle 7), checked on cores without a network:
//! replays of older states, an equivocating writer's other state of the same length, a lower
//! fork, upgrades offered to a writer, proofs that prove nothing or that would teach a fresh
//! reader the wrong kind of core, and sizes that overflow. Each is an error and leaves the
//! core as it was.

#[path = "common/mod.rs"]
mod common;

use common::{created, forged_upgrade, remote_reader, verified_reader};
use iroh_hypercore::{
    CoreKind, Error, Hypercore, KeyPair,
    tree::{BlockProof, Node, Proof, ProofRequest, UpgradeRequest},
};

/// A new core of `kind` signed by `key_pair`, holding `blocks`.
async fn writer_with(key_pair: &KeyPair, kind: CoreKind, blocks: &[&str]) -> Hypercore {
    let core = created(key_pair, kind).await;
    for b in blocks {
        core.append(b.as_bytes().to_vec()).await.unwrap();
    }
    core
}

async fn upgrade(writer: &Hypercore, start: u64, manifest: bool) -> Proof {
    writer
        .create_proof(ProofRequest {
            upgrade: Some(UpgradeRequest {
                start,
                length: writer.info().length - start,
            }),
            manifest,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// The reader's state, to check that a rejected proof changed nothing.
fn state(core: &Hypercore) -> (u64, u64, [u8; 32], Option<Vec<u8>>) {
    let info = core.info();
    (info.length, info.fork, core.tree_hash(), core.manifest())
}

async fn rejected(core: &Hypercore, proof: Proof, what: &str) {
    let before = state(core);
    let result = core.verify_and_apply_proof(proof).await;
    assert!(
        matches!(result, Err(Error::Proof(_) | Error::Signature(_))),
        "{what}: {result:?}"
    );
    assert_eq!(state(core), before, "{what}: nothing changed");
}

#[tokio::test]
async fn an_older_signed_state_of_the_same_fork_is_rejected() {
    let kp = KeyPair::generate();
    let writer = writer_with(&kp, CoreKind::Default, &["a", "b", "c", "d", "e"]).await;
    let old = upgrade(&writer, 0, true).await;
    for b in ["f", "g", "h", "i", "j"] {
        writer.append(b.as_bytes().to_vec()).await.unwrap();
    }
    let reader = verified_reader(&writer).await;
    assert_eq!(reader.info().length, 10);
    rejected(&reader, old.clone(), "the old state from scratch").await;
    let mut from_here = old;
    if let Some(u) = &mut from_here.upgrade {
        u.start = 10;
    }
    rejected(&reader, from_here, "the old state relabelled").await;
    assert_eq!(reader.tree_hash(), writer.tree_hash());
}

#[tokio::test]
async fn another_state_of_the_same_length_and_fork_is_rejected() {
    // Two writers with one key pair sign different logs of the same length on fork 0.
    let kp = KeyPair::generate();
    let honest = writer_with(&kp, CoreKind::Default, &["a", "b", "c"]).await;
    let other = writer_with(&kp, CoreKind::Default, &["x", "y", "z"]).await;
    let reader = verified_reader(&honest).await;
    rejected(
        &reader,
        upgrade(&other, 0, true).await,
        "equal length, from scratch",
    )
    .await;
    other.append(b"w".to_vec()).await.unwrap();
    // Longer, but not an extension of the reader's tree.
    rejected(
        &reader,
        upgrade(&other, 3, false).await,
        "a longer divergent tree",
    )
    .await;
}

#[tokio::test]
async fn a_lower_fork_is_rejected_and_a_higher_one_keeps_the_common_blocks() {
    let kp = KeyPair::generate();
    let writer = writer_with(&kp, CoreKind::Default, &["a", "b", "c", "d"]).await;
    let fork0 = upgrade(&writer, 0, true).await;
    writer.truncate(2).await.unwrap();
    writer.append(b"C".to_vec()).await.unwrap();
    let reader = verified_reader(&writer).await;
    assert_eq!(reader.info().fork, 1);
    rejected(&reader, fork0, "the state of fork 0").await;

    // A reader on fork 0 moves to fork 1 and keeps the blocks both forks share.
    let behind = remote_reader(writer.key()).await;
    behind
        .verify_and_apply_proof(upgrade_of(&kp, &["a", "b", "c", "d"]).await)
        .await
        .unwrap();
    behind
        .verify_and_apply_proof(upgrade(&writer, 0, false).await)
        .await
        .unwrap();
    assert_eq!((behind.info().length, behind.info().fork), (3, 1));
    assert_eq!(behind.tree_hash(), writer.tree_hash());
}

/// The state of fork 0 of a log, signed by `kp`.
async fn upgrade_of(kp: &KeyPair, blocks: &[&str]) -> Proof {
    upgrade(&writer_with(kp, CoreKind::Default, blocks).await, 0, true).await
}

#[tokio::test]
async fn a_writable_core_takes_no_signed_state_from_a_peer() {
    let kp = KeyPair::generate();
    let writer = writer_with(&kp, CoreKind::Default, &["a", "b"]).await;
    let longer = writer_with(&kp, CoreKind::Default, &["a", "b", "c"]).await;
    rejected(&writer, upgrade(&longer, 2, false).await, "a longer state").await;
    rejected(&writer, upgrade(&longer, 0, true).await, "from scratch").await;
    writer.append(b"c".to_vec()).await.unwrap();
    assert_eq!(writer.info().length, 3);
}

#[tokio::test]
async fn a_fresh_reader_learns_the_kind_only_from_a_proof_by_the_key() {
    let kp = KeyPair::generate();
    let writer = writer_with(&kp, CoreKind::Default, &["a", "b"]).await;
    let reader = remote_reader(writer.key()).await;
    rejected(&reader, Proof::default(), "an empty proof").await;
    let block_only = Proof {
        block: Some(BlockProof {
            index: 0,
            value: b"a".to_vec(),
            nodes: vec![],
        }),
        ..Default::default()
    };
    rejected(&reader, block_only, "a block without manifest or upgrade").await;
    rejected(&reader, upgrade(&writer, 0, false).await, "no manifest").await;
    assert!(reader.manifest().is_none());
    reader
        .verify_and_apply_proof(upgrade(&writer, 0, true).await)
        .await
        .unwrap();
    assert_eq!(reader.tree_hash(), writer.tree_hash());

    // A compat core has no manifest: its kind is learnt from a signature by the key itself.
    let compat = writer_with(&KeyPair::generate(), CoreKind::Compat, &["a"]).await;
    let reader = remote_reader(compat.key()).await;
    rejected(&reader, Proof::default(), "an empty proof").await;
    reader
        .verify_and_apply_proof(upgrade(&compat, 0, false).await)
        .await
        .unwrap();
    assert_eq!(reader.tree_hash(), compat.tree_hash());
}

#[tokio::test]
async fn sizes_that_overflow_are_an_error() {
    let kp = KeyPair::generate();
    let writer = writer_with(&kp, CoreKind::Default, &["a", "b"]).await;
    let reader = verified_reader(&writer).await;
    let huge = |index| Node {
        index,
        size: u64::MAX,
        hash: [0; 32],
    };
    let mut grow = forged_upgrade(2, 2, Some((2, b"c")));
    grow.block.as_mut().unwrap().nodes.push(huge(6));
    rejected(&reader, grow, "a block path that overflows").await;
    let mut roots = forged_upgrade(2, 2, None);
    roots.upgrade.as_mut().unwrap().nodes.push(huge(5));
    rejected(&reader, roots, "an upgrade that overflows").await;
}

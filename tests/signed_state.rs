//! A signed state only moves forward (DESIGN principle 7), checked on cores without a network:
//! replays of older states, an equivocating writer's other state of the same length, a lower
//! fork, upgrades offered to a writer, proofs that prove nothing or that would teach a fresh
//! reader the wrong kind of core, and sizes that overflow. Each is an error and leaves the
//! core as it was.

#[path = "common/mod.rs"]
mod common;

use common::{block_proof, created, forged_upgrade, remote_reader, verified_reader};
use iroh_hypercore::{
    CoreKind, Error, Hypercore, KeyPair,
    tree::{BlockProof, IndexRequest, Node, Proof, ProofRequest, UpgradeRequest},
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
            value: b"a".to_vec().into(),
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

/// A parent's hash commits to the sum of its children's sizes, not to each: a peer answering
/// an upgrade to length 3 with leaf 4 and the extra node 6 (to prove the signed length 4) can
/// move bytes from one to the other, and the signature still checks. Such sizes are not
/// stored: `seek` says the node is not available rather than answer from a lie, a stored
/// node is never replaced from a proof, and the block that fixes the sizes brings them.
#[tokio::test]
async fn sizes_that_only_their_sum_proves_are_not_stored() {
    let kp = KeyPair::generate();
    let writer = created(&kp, CoreKind::Default).await;
    for size in [100, 100, 100, 300] {
        writer.append(vec![b'x'; size]).await.unwrap();
    }
    let mut proof = writer
        .create_proof(ProofRequest {
            upgrade: Some(UpgradeRequest {
                start: 0,
                length: 3,
            }),
            manifest: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let up = proof.upgrade.as_mut().unwrap();
    assert_eq!((up.nodes[1].index, up.additional_nodes[0].index), (4, 6));
    up.nodes[1].size += 50;
    up.additional_nodes[0].size -= 50;
    let reader = remote_reader(writer.key()).await;
    reader.verify_and_apply_proof(proof).await.unwrap();
    assert_eq!(reader.info().length, 4, "the signed state is the writer's");
    assert_eq!(reader.info().byte_length, 600);
    for index in [4, 6] {
        assert_eq!(
            reader.tree_node(index).await.unwrap(),
            None,
            "node {index}: its size is proven only in sum"
        );
    }
    assert!(
        matches!(reader.seek(300).await, Err(Error::NodeNotAvailable(4))),
        "no answer from an unproven size"
    );
    for index in [1, 3, 5] {
        assert_eq!(
            reader.tree_node(index).await.unwrap(),
            writer.tree_node(index).await.unwrap(),
            "node {index}: hashed here, or a sibling of one"
        );
    }

    // Block 2's proof hashes leaf 4 from its value: node 6 is proven by it.
    let lacking = reader.missing_nodes(2).await.unwrap();
    assert_eq!(lacking, 1, "leaf 4; node 5 is stored");
    let block = block_proof(&writer, 2, lacking).await;
    reader.verify_and_apply_proof(block).await.unwrap();
    for index in [4, 6] {
        assert_eq!(
            reader.tree_node(index).await.unwrap(),
            writer.tree_node(index).await.unwrap(),
            "node {index} as the writer has it"
        );
    }
    assert_eq!(reader.seek(300).await.unwrap(), (3, 0));

    // A proof cannot replace a stored node: the hash of block 2's node with a lie beside it.
    let mut hash = writer
        .create_proof(ProofRequest {
            hash: Some(IndexRequest { index: 4, nodes: 0 }),
            ..Default::default()
        })
        .await
        .unwrap();
    let h = hash.hash.as_mut().unwrap();
    h.nodes[0].size -= 50;
    let _ = reader.verify_and_apply_proof(hash).await;
    assert_eq!(
        reader.tree_node(6).await.unwrap(),
        writer.tree_node(6).await.unwrap()
    );
    assert_eq!(reader.seek(300).await.unwrap(), (3, 0));
}

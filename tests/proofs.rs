//! Property tests: random histories of batch appends and truncates; proofs of random blocks
//! (with and without upgrades) verify on fresh readers; any mutation is rejected and leaves the
//! reader unchanged.

use iroh_hypercore::{
    CoreKind, CoreOptions, Corestore, Hypercore, KeyPair,
    tree::{IndexRequest, Proof, ProofRequest, UpgradeRequest},
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Vec<u8>>),
    Truncate(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..20).prop_map(Op::Append),
        1 => (0u64..100).prop_map(Op::Truncate),
    ]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn writer(kind: CoreKind, ops: &[Op]) -> (Corestore, Hypercore, Vec<Vec<u8>>) {
    let store = Corestore::memory().await.unwrap();
    let core = store
        .create(CoreOptions {
            key_pair: Some(KeyPair::generate()),
            kind,
        })
        .await
        .unwrap();
    let mut model: Vec<Vec<u8>> = Vec::new();
    for op in ops {
        apply_op(&core, &mut model, op).await;
    }
    (store, core, model)
}

/// Applies one operation to the writer and to the model of its blocks.
async fn apply_op(core: &Hypercore, model: &mut Vec<Vec<u8>>, op: &Op) {
    match op {
        Op::Append(blocks) => {
            core.append_batch(blocks.clone()).await.unwrap();
            model.extend(blocks.iter().cloned());
        }
        Op::Truncate(n) => {
            let n = *n % (model.len() as u64 + 1);
            core.truncate(n).await.unwrap();
            model.truncate(n as usize);
        }
    }
}

/// Every way to corrupt a proof that carries a block and an upgrade.
fn mutations(p: &Proof) -> Vec<(&'static str, Proof)> {
    let mut out = Vec::new();
    let mut m = p.clone();
    if let Some(b) = &mut m.block {
        let mut value = b.value.to_vec();
        if value.is_empty() {
            value.push(1);
        } else {
            value[0] ^= 1;
        }
        b.value = value.into();
        out.push(("value bit", m));
    }
    for part in 0..2 {
        let count = match part {
            0 => p.block.as_ref().map_or(0, |b| b.nodes.len()),
            _ => p.upgrade.as_ref().map_or(0, |u| u.nodes.len()),
        };
        for i in 0..count {
            let mut m = p.clone();
            let nodes = match part {
                0 => &mut m.block.as_mut().unwrap().nodes,
                _ => &mut m.upgrade.as_mut().unwrap().nodes,
            };
            nodes[i].hash[5] ^= 0x10;
            out.push(("node hash", m));
            let mut m = p.clone();
            let nodes = match part {
                0 => &mut m.block.as_mut().unwrap().nodes,
                _ => &mut m.upgrade.as_mut().unwrap().nodes,
            };
            nodes[i].size += 1;
            out.push(("node size", m));
        }
    }
    if p.upgrade.is_some() {
        let mut m = p.clone();
        let sig = &mut m.upgrade.as_mut().unwrap().signature;
        let last = sig.len() - 3;
        sig[last] ^= 1;
        out.push(("signature", m));
        let mut m = p.clone();
        m.upgrade.as_mut().unwrap().length += 1;
        out.push(("length", m));
        let mut m = p.clone();
        m.fork += 1;
        out.push(("fork", m));
        let mut m = p.clone();
        m.upgrade.as_mut().unwrap().additional_nodes.clear();
        if m != *p {
            out.push(("additional nodes", m));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn proofs_verify_and_mutations_are_rejected(
        ops in prop::collection::vec(op(), 1..12),
        compat in any::<bool>(),
        pick in any::<prop::sample::Index>(),
        upgrade_to in any::<prop::sample::Index>(),
    ) {
        let kind = if compat { CoreKind::Compat } else { CoreKind::Default };
        rt().block_on(async move {
            let (_store, core, model) = writer(kind, &ops).await;
            let length = model.len() as u64;
            prop_assert_eq!(core.info().length, length);
            for (i, b) in model.iter().enumerate() {
                let got = core.get(i as u64).await.unwrap();
                prop_assert_eq!(got.as_deref(), Some(b.as_slice()));
            }
            if length == 0 {
                return Ok(());
            }
            let index = pick.index(length as usize) as u64;
            // Proofs with an upgrade to a length below the signed one carry additional nodes.
            let target = index + 1 + upgrade_to.index((length - index) as usize) as u64;
            let proof = core.create_proof(ProofRequest {
                fork: 0,
                block: Some(IndexRequest { index, nodes: 0 }),
                upgrade: Some(UpgradeRequest { start: 0, length: target }),
                manifest: true,
                ..Default::default()
            }).await.unwrap();

            let reader_store = Corestore::memory().await.unwrap();
            let reader = reader_store.get_remote(core.key()).await.unwrap();
            for (what, bad) in mutations(&proof) {
                let before = reader.info();
                prop_assert!(reader.verify_and_apply_proof(bad).await.is_err(), "{} accepted", what);
                prop_assert_eq!(reader.info(), before);
                prop_assert!(reader.tree_node(2 * index).await.unwrap().is_none(), "{} stored a node", what);
            }
            reader.verify_and_apply_proof(proof).await.unwrap();
            prop_assert_eq!(reader.info().length, length);
            prop_assert_eq!(reader.tree_hash(), core.tree_hash());
            let got = reader.get(index).await.unwrap();
            prop_assert_eq!(got.as_deref(), Some(model[index as usize].as_slice()));

            // A block without upgrade, proven against the nodes the reader now has.
            let other = (index + length / 2 + 1) % length;
            let nodes = reader.missing_nodes(other).await.unwrap();
            let proof = core.create_proof(ProofRequest {
                fork: core.info().fork,
                block: Some(IndexRequest { index: other, nodes }),
                ..Default::default()
            }).await.unwrap();
            for (what, bad) in mutations(&proof) {
                let before = reader.info();
                prop_assert!(reader.verify_and_apply_proof(bad).await.is_err(), "{} accepted", what);
                prop_assert_eq!(reader.info(), before);
            }
            reader.verify_and_apply_proof(proof).await.unwrap();
            let got = reader.get(other).await.unwrap();
            prop_assert_eq!(got.as_deref(), Some(model[other as usize].as_slice()));
            Ok(())
        })?;
    }

    #[test]
    fn a_reader_follows_appends_and_truncates(ops in prop::collection::vec(op(), 1..14)) {
        rt().block_on(async move {
            let (_store, core, _) = writer(CoreKind::Default, &[]).await;
            let reader_store = Corestore::memory().await.unwrap();
            let reader = reader_store.get_remote(core.key()).await.unwrap();
            let mut model: Vec<Vec<u8>> = Vec::new();
            for op in &ops {
                apply_op(&core, &mut model, op).await;
                let w = core.info();
                let r = reader.info();
                if w.length == 0 || (w.fork == r.fork && w.length == r.length) {
                    continue;
                }
                // Another fork: ask for every root (start 0); same fork: grow from our length.
                let start = if w.fork != r.fork { 0 } else { r.length };
                let proof = core.create_proof(ProofRequest {
                    fork: r.fork,
                    upgrade: Some(UpgradeRequest { start, length: w.length - start }),
                    manifest: r.length == 0,
                    ..Default::default()
                }).await.unwrap();
                reader.verify_and_apply_proof(proof).await.unwrap();
                prop_assert_eq!(reader.info().length, w.length);
                prop_assert_eq!(reader.info().fork, w.fork);
                prop_assert_eq!(reader.tree_hash(), core.tree_hash());
                // What the reader kept from before is still right; fetch the rest.
                for i in 0..w.length {
                    if let Some(v) = reader.get(i).await.unwrap() {
                        prop_assert_eq!(v.as_ref(), model[i as usize].as_slice(), "stale block {} kept", i);
                        continue;
                    }
                    let nodes = reader.missing_nodes(i).await.unwrap();
                    let proof = core.create_proof(ProofRequest {
                        fork: w.fork,
                        block: Some(IndexRequest { index: i, nodes }),
                        ..Default::default()
                    }).await.unwrap();
                    reader.verify_and_apply_proof(proof).await.unwrap();
                    let got = reader.get(i).await.unwrap();
                    prop_assert_eq!(got.as_deref(), Some(model[i as usize].as_slice()));
                }
                prop_assert_eq!(reader.info().contiguous_length, w.length);
            }
            Ok(())
        })?;
    }
}

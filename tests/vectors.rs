//! Reproduces every value of the JS Hypercore 11.37.1 / Corestore 7.12.5 test vectors
//! (`tests/data/hypercore-11.37.1.json`; its README says where they come from).

#[path = "common/mod.rs"]
mod common;

use common::{block_proof, created, remote_reader, upgrade_request};
use iroh_hypercore::{
    CoreKind, Corestore, KeyPair, StoreOptions,
    crypto::{
        Manifest,
        derive::{DEFAULT_NAMESPACE, child_namespace, derive_seed},
        discovery_key,
        hash::{leaf_hash, parent_hash},
        namespace::{CORESTORE_NS, NS},
        signer::signable,
    },
    tree::{IndexRequest, Node, ProofRequest, flat},
};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/hypercore-11.37.1.json"
    );
    let text = std::fs::read_to_string(path).expect("the test vectors in tests/data");
    serde_json::from_str(&text).expect("valid JSON")
}

fn h(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn h32(v: &Value) -> [u8; 32] {
    h(v).try_into().expect("32 bytes")
}

fn u(v: &Value) -> u64 {
    v.as_u64().expect("number")
}

fn nodes_eq(ours: &[Node], theirs: &Value) {
    let theirs = theirs.as_array().expect("node list");
    assert_eq!(ours.len(), theirs.len(), "node count");
    for (a, b) in ours.iter().zip(theirs) {
        assert_eq!(a.index, u(&b["index"]));
        assert_eq!(a.size, u(&b["size"]));
        assert_eq!(a.hash.to_vec(), h(&b["hash"]), "hash of node {}", a.index);
    }
}

#[test]
fn keys_and_namespaces() {
    let v = vectors();
    let kp = KeyPair::from_seed(h32(&v["seed"]));
    assert_eq!(kp.public_key().to_vec(), h(&v["publicKey"]));
    let mut secret = kp.seed().to_vec();
    secret.extend_from_slice(&kp.public_key());
    assert_eq!(secret, h(&v["secretKey"]));
    assert_eq!(
        discovery_key(&kp.public_key()).to_vec(),
        h(&v["discoveryKeyOfPublicKey"])
    );
    let ns = &v["namespaces"];
    assert_eq!(NS.tree.to_vec(), h(&ns["TREE"]));
    assert_eq!(
        NS.replicate_initiator.to_vec(),
        h(&ns["REPLICATE_INITIATOR"])
    );
    assert_eq!(
        NS.replicate_responder.to_vec(),
        h(&ns["REPLICATE_RESPONDER"])
    );
    assert_eq!(NS.manifest.to_vec(), h(&ns["MANIFEST"]));
    assert_eq!(NS.default_namespace.to_vec(), h(&ns["DEFAULT_NAMESPACE"]));
    assert_eq!(NS.default_encryption.to_vec(), h(&ns["DEFAULT_ENCRYPTION"]));
    assert_eq!(v["explicitManifestV1EqualsDefault"], Value::Bool(true));
}

async fn check_mode(mode: &str, kind: CoreKind) {
    let v = vectors();
    let m = &v[mode];
    let kp = KeyPair::from_seed(h32(&v["seed"]));
    let manifest = Manifest::single(kp.public_key());
    assert_eq!(manifest.encode(), h(&m["manifestEncoded"]));
    assert_eq!(manifest.hash().to_vec(), h(&m["manifestHash"]));
    assert_eq!(
        Manifest::decode(&h(&m["manifestEncoded"])).unwrap(),
        manifest
    );
    let ms = &m["manifest"];
    assert_eq!(u(&ms["version"]), 1);
    assert_eq!(u(&ms["quorum"]), manifest.quorum as u64);
    assert_eq!(ms["allowPatch"], Value::Bool(manifest.allow_patch));
    assert_eq!(
        manifest.signers[0].namespace.to_vec(),
        h(&ms["signers"][0]["namespace"])
    );
    assert_eq!(
        manifest.signers[0].public_key.to_vec(),
        h(&ms["signers"][0]["publicKey"])
    );

    let core = created(&kp, kind).await;
    assert_eq!(core.key().to_vec(), h(&m["key"]));
    assert_eq!(core.discovery_key().to_vec(), h(&m["discoveryKey"]));
    assert_eq!(m["compat"], Value::Bool(kind == CoreKind::Compat));

    for step in m["appends"].as_array().unwrap() {
        let data = h(&step["appendedHex"]);
        assert_eq!(data, step["appended"].as_str().unwrap().as_bytes());
        core.append(data.clone()).await.unwrap();
        let info = core.info();
        assert_eq!(info.length, u(&step["length"]));
        assert_eq!(info.byte_length, u(&step["byteLength"]));
        assert_eq!(info.fork, u(&step["fork"]));
        assert_eq!(leaf_hash(&data).to_vec(), h(&step["leafHash"]));
        let leaf = core
            .tree_node(2 * (info.length - 1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(leaf.hash.to_vec(), h(&step["leafHash"]));
        let roots: Vec<Node> = futures_roots(&core, info.length).await;
        nodes_eq(&roots, &step["roots"]);
        assert_eq!(core.tree_hash().to_vec(), h(&step["treeHash"]));
        assert_eq!(core.tree_hash().to_vec(), h(&step["treeHashApi"]));
        let sable = signable(kind, &core.key(), &core.tree_hash(), info.length, info.fork);
        assert_eq!(sable, h(&step["signable"]));
        if kind == CoreKind::Default {
            assert_eq!(sable, h(&step["signableApi"]));
        } else {
            // The API signable of a compat core is the v1 form with the public key as key.
            let api = signable(
                CoreKind::Default,
                &core.key(),
                &core.tree_hash(),
                info.length,
                info.fork,
            );
            assert_eq!(api, h(&step["signableApi"]));
        }
        let sig = core.signature().unwrap();
        assert_eq!(sig, h(&step["signature"]));
        assert_eq!(
            kp.sign_raw(&sable).to_vec(),
            h(&step["signatureRawEd25519"])
        );
        assert_eq!(step["signatureVerifies"], Value::Bool(true));
    }

    // All tree nodes at length 10.
    let expected = m["treeNodesAtLength10"].as_array().unwrap();
    let mut ours = Vec::new();
    for n in expected {
        ours.push(
            core.tree_node(u(&n["index"]))
                .await
                .unwrap()
                .expect("node stored"),
        );
    }
    nodes_eq(&ours, &m["treeNodesAtLength10"]);
    assert!(
        core.tree_node(20).await.unwrap().is_none(),
        "no node past the tree"
    );
    assert_eq!(leaf_hash(b"block-0").to_vec(), h(&m["leafHashBlock0"]));
    let (n0, n2) = (ours[0], ours[2]);
    assert_eq!(
        parent_hash((&n0.hash, n0.size), (&n2.hash, n2.size)).to_vec(),
        h(&m["parentHashNodes0and2"])
    );
    let roots: Vec<u64> = m["fullRootsAtLength10"]
        .as_array()
        .unwrap()
        .iter()
        .map(u)
        .collect();
    assert_eq!(flat::full_roots(20), roots);

    // Block 3 with an upgrade from 0 to 10.
    let pv = &m["proofBlock3WithUpgrade"];
    let proof = core
        .create_proof(ProofRequest {
            fork: 0,
            block: Some(IndexRequest { index: 3, nodes: 0 }),
            manifest: kind == CoreKind::Default,
            ..upgrade_request(10)
        })
        .await
        .unwrap();
    assert_eq!(proof.fork, u(&pv["fork"]));
    let block = proof.block.as_ref().unwrap();
    assert_eq!(block.index, 3);
    assert_eq!(block.value, h(&pv["block"]["value"]));
    nodes_eq(&block.nodes, &pv["block"]["nodes"]);
    assert!(pv["hash"].is_null() && pv["seek"].is_null());
    let up = proof.upgrade.as_ref().unwrap();
    assert_eq!(
        (up.start, up.length),
        (u(&pv["upgrade"]["start"]), u(&pv["upgrade"]["length"]))
    );
    nodes_eq(&up.nodes, &pv["upgrade"]["nodes"]);
    nodes_eq(&up.additional_nodes, &pv["upgrade"]["additionalNodes"]);
    assert_eq!(up.signature, h(&pv["upgrade"]["signature"]));

    // It verifies on a fresh reader that knows only the key.
    let reader = remote_reader(core.key()).await;
    reader.verify_and_apply_proof(proof).await.unwrap();
    assert_eq!(reader.info().length, 10);
    assert_eq!(reader.info().kind, Some(kind));
    assert_eq!(
        reader.get(3).await.unwrap().as_deref(),
        Some(&b"block-3"[..])
    );
    assert_eq!(reader.tree_hash(), core.tree_hash());
    assert_eq!(m["proofBlock3VerifiesOnFreshReader"], Value::Bool(true));

    // Block 3 when the requester lacks three levels, no upgrade.
    let pv = &m["proofBlock3Nodes3"];
    let proof = block_proof(&core, 3, 3).await;
    nodes_eq(&proof.block.as_ref().unwrap().nodes, &pv["block"]["nodes"]);
    assert!(proof.upgrade.is_none() && pv["upgrade"].is_null());

    // Truncate to 7.
    let t = &m["afterTruncateTo7"];
    core.truncate(7).await.unwrap();
    let info = core.info();
    assert_eq!(info.length, u(&t["length"]));
    assert_eq!(info.byte_length, u(&t["byteLength"]));
    assert_eq!(info.fork, u(&t["fork"]));
    nodes_eq(&futures_roots(&core, 7).await, &t["roots"]);
    assert_eq!(core.tree_hash().to_vec(), h(&t["treeHash"]));
    assert_eq!(
        signable(kind, &core.key(), &core.tree_hash(), 7, 1),
        h(&t["signable"])
    );
    assert_eq!(core.signature().unwrap(), h(&t["signature"]));
}

async fn futures_roots(core: &iroh_hypercore::Hypercore, length: u64) -> Vec<Node> {
    let mut out = Vec::new();
    for i in flat::full_roots(2 * length) {
        out.push(core.tree_node(i).await.unwrap().expect("root stored"));
    }
    out
}

#[tokio::test]
async fn default_core_matches_js() {
    check_mode("default", CoreKind::Default).await;
}

#[tokio::test]
async fn compat_core_matches_js() {
    check_mode("compat", CoreKind::Compat).await;
}

#[tokio::test]
async fn corestore_derivation_matches_js() {
    let v = vectors();
    let c = &v["corestore"];
    let pk = h32(&c["primaryKey"]);
    assert_eq!(CORESTORE_NS.to_vec(), h(&c["corestoreNS"]));
    assert_eq!(DEFAULT_NAMESPACE.to_vec(), h(&c["defaultNamespace"]));
    let name = c["name"].as_str().unwrap();
    assert_eq!(
        derive_seed(&pk, &DEFAULT_NAMESPACE, name).to_vec(),
        h(&c["seed"])
    );
    let kp = KeyPair::from_seed(derive_seed(&pk, &DEFAULT_NAMESPACE, name));
    assert_eq!(kp.public_key().to_vec(), h(&c["publicKey"]));
    assert_eq!(kp.public_key().to_vec(), h(&c["publicKeyRederived"]));

    let store = Corestore::memory_with(StoreOptions {
        primary_key: Some(pk),
        ..Default::default()
    })
    .await
    .unwrap();
    let core = store.get_named(name).await.unwrap();
    assert_eq!(core.key().to_vec(), h(&c["key"]));
    assert_eq!(c["keyEqualsPublicKey"], Value::Bool(false));
    assert_eq!(c["keyIsManifestHash"], Value::Bool(true));
    assert_eq!(core.discovery_key().to_vec(), h(&c["discoveryKey"]));

    let n = &c["namespaced"];
    let ns_name = n["namespace"].as_str().unwrap();
    assert_eq!(
        child_namespace(&DEFAULT_NAMESPACE, ns_name).to_vec(),
        h(&n["namespaceBytes"])
    );
    let child = store
        .namespace(ns_name)
        .get_named(n["name"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(child.key().to_vec(), h(&n["key"]));
    let kp = KeyPair::from_seed(derive_seed(
        &pk,
        &h32(&n["namespaceBytes"]),
        n["name"].as_str().unwrap(),
    ));
    assert_eq!(kp.public_key().to_vec(), h(&n["publicKey"]));
}

/// JS Hypercore 11.37.1's encrypted core (`encryption: { key }`): writer seed 01×32,
/// encryption key 05×32, blocks "a" and "b". The stored bytes, the tree and the signature are
/// JS's; reads give the text back.
#[tokio::test]
async fn encrypted_core_matches_js() {
    let hex = |s: &str| data_encoding::HEXLOWER.decode(s.as_bytes()).unwrap();
    let store = iroh_hypercore::Corestore::memory().await.unwrap();
    let core = store
        .create(iroh_hypercore::CoreOptions {
            key_pair: Some(iroh_hypercore::KeyPair::from_seed([1; 32])),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        core.key().to_vec(),
        hex("d8c3a0597903b28d751c6e0b7107775e388ec5a3cf669bdd1e7ec41b8b8f6e72")
    );
    core.set_encryption_key([5; 32]).unwrap();
    assert!(
        core.set_encryption_key([6; 32]).is_err(),
        "another key is refused"
    );
    core.append_batch(["a", "b"]).await.unwrap();
    assert_eq!(
        core.tree_hash().to_vec(),
        hex("eaab6886044adf15722f479d594f33bf192ef53221831890342801b95b5ce29f")
    );
    assert_eq!(
        core.signature().unwrap(),
        hex(
            "01008aaded22e873367ab0a8143624291fa5941d5ed4e9c2304b7c84f45aa1b104a869b5f67bd970817afbf3f124f559595ae80322c5271a3ab87f3dd1c6acb97e0d0000"
        )
    );
    assert_eq!(core.info().byte_length, 18);
    assert_eq!(core.get(0).await.unwrap().unwrap(), "a");
    assert_eq!(
        core.get_stored(0..2, 1 << 20).await.unwrap(),
        vec!["a", "b"]
    );
    // Another handle of the same core decrypts too; the stored bytes are JS's.
    let again = store.get(core.key()).await.unwrap().unwrap();
    assert_eq!(again.get(1).await.unwrap().unwrap(), "b");
}

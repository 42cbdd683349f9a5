//! Helpers shared by the integration tests: a fresh reader that verifies a writer's log.

#![allow(dead_code)]

pub mod mem_file;

use std::time::Instant;

use iroh_hypercore::{
    CoreKey, CoreKind, CoreOptions, Corestore, Hypercore, KeyPair,
    replication::{
        Engine, EngineConfig, Mode, Output,
        engine::testing::{engine_with_peer_outputs, local_at},
        wire::Message,
    },
    tree::{BlockProof, IndexRequest, Proof, ProofRequest, UpgradeProof, UpgradeRequest},
};

/// An engine tuned by `cfg` that reads `CORE` in full, at `length` blocks of which the first
/// `stored` are stored, with one channel to `PEER`, whose state is `remote`: the engine, the
/// channel and the outputs that followed `remote`.
pub fn reader_engine(
    cfg: EngineConfig,
    length: u64,
    stored: u64,
    remote: Message,
    now: Instant,
) -> (Engine, u64, Vec<Output>) {
    engine_with_peer_outputs(
        cfg,
        local_at(length, stored, false),
        Mode::Full,
        remote,
        now,
    )
}

/// A request for the upgrade from length 0 to `length`, with the manifest.
pub fn upgrade_request(length: u64) -> ProofRequest {
    ProofRequest {
        upgrade: Some(UpgradeRequest { start: 0, length }),
        manifest: true,
        ..Default::default()
    }
}

/// A forger's proof: the upgrade from `start` by `length` under a zero signature, with no
/// nodes, carrying `block` (index and value) if any.
pub fn forged_upgrade(start: u64, length: u64, block: Option<(u64, &[u8])>) -> Proof {
    Proof {
        block: block.map(|(index, value)| BlockProof {
            index,
            value: value.to_vec().into(),
            nodes: vec![],
        }),
        upgrade: Some(UpgradeProof {
            start,
            length,
            nodes: vec![],
            additional_nodes: vec![],
            signature: vec![0; 64],
        }),
        ..Default::default()
    }
}

/// A new core of `kind` signed by `key_pair`, in a new memory store.
pub async fn created(key_pair: &KeyPair, kind: CoreKind) -> Hypercore {
    Corestore::memory()
        .await
        .unwrap()
        .create(CoreOptions {
            key_pair: Some(key_pair.clone()),
            kind,
        })
        .await
        .unwrap()
}

/// A reader of `key` in a new memory store, knowing nothing of the log yet.
pub async fn remote_reader(key: CoreKey) -> Hypercore {
    Corestore::memory()
        .await
        .unwrap()
        .get_remote(key)
        .await
        .unwrap()
}

/// A reader in a new memory store, upgraded (by a verified proof) to the writer's length.
pub async fn verified_reader(writer: &Hypercore) -> Hypercore {
    let reader = remote_reader(writer.key()).await;
    let proof = writer
        .create_proof(upgrade_request(writer.info().length))
        .await
        .unwrap();
    reader.verify_and_apply_proof(proof).await.unwrap();
    reader
}

/// The proof of block `index` that `core` makes for a reader lacking `nodes` levels of it.
pub async fn block_proof(core: &Hypercore, index: u64, nodes: u64) -> Proof {
    core.create_proof(ProofRequest {
        block: Some(IndexRequest { index, nodes }),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Fetches block `index` from the writer into the reader through a verified proof.
pub async fn fetch_block(writer: &Hypercore, reader: &Hypercore, index: u64) {
    let nodes = reader.missing_nodes(index).await.unwrap();
    let proof = block_proof(writer, index, nodes).await;
    reader.verify_and_apply_proof(proof).await.unwrap();
}

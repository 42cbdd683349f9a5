//! Helpers shared by the integration tests: a fresh reader that verifies a writer's log.

#![allow(dead_code)]

pub mod mem_file;

use iroh_hypercore::{
    CoreKey, Corestore, Hypercore,
    tree::{IndexRequest, ProofRequest, UpgradeRequest},
};

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
        .create_proof(ProofRequest {
            upgrade: Some(UpgradeRequest {
                start: 0,
                length: writer.info().length,
            }),
            manifest: true,
            ..Default::default()
        })
        .await
        .unwrap();
    reader.verify_and_apply_proof(proof).await.unwrap();
    reader
}

/// Fetches block `index` from the writer into the reader through a verified proof.
pub async fn fetch_block(writer: &Hypercore, reader: &Hypercore, index: u64) {
    let nodes = reader.missing_nodes(index).await.unwrap();
    let proof = writer
        .create_proof(ProofRequest {
            block: Some(IndexRequest { index, nodes }),
            ..Default::default()
        })
        .await
        .unwrap();
    reader.verify_and_apply_proof(proof).await.unwrap();
}

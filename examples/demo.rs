//! Demo: a writer appends to a log and a follower replicates it live, verifying every block.
//!
//! The two stores live in one process and exchange proofs directly; the iroh network layer
//! (`HypercoreProtocol`) is what carries the same proofs between machines.
//!
//! ```text
//! cargo run --release --example demo
//! ```

use std::time::{Duration, Instant};

use iroh_hypercore::{
    CoreEvent, Corestore,
    tree::{IndexRequest, ProofRequest, UpgradeRequest},
};
use n0_future::StreamExt;

const BLOCKS: u64 = 2_000;

#[tokio::main]
async fn main() -> iroh_hypercore::Result<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let writer_store = Corestore::persistent(dir.path().join("writer")).await?;
    let log = writer_store.get_named("chat").await?;
    println!("writer: core {}", hex(&log.key()));

    let follower_store = Corestore::persistent(dir.path().join("follower")).await?;
    let follower = follower_store.get_remote(log.key()).await?;

    // The follower reacts to every append of the writer: it asks for an upgrade, verifies it,
    // then fetches and verifies each new block.
    let mut appends = log.subscribe();
    let sync = {
        let (log, follower) = (log.clone(), follower.clone());
        tokio::spawn(async move {
            while let Some(ev) = appends.next().await {
                let CoreEvent::Append { length, .. } = ev else {
                    continue;
                };
                let have = follower.info().length;
                if length <= have {
                    continue;
                }
                let proof = log
                    .create_proof(ProofRequest {
                        upgrade: Some(UpgradeRequest {
                            start: have,
                            length: length - have,
                        }),
                        manifest: have == 0,
                        ..Default::default()
                    })
                    .await?;
                follower.verify_and_apply_proof(proof).await?;
                for i in follower.info().contiguous_length..follower.info().length {
                    let nodes = follower.missing_nodes(i).await?;
                    let proof = log
                        .create_proof(ProofRequest {
                            block: Some(IndexRequest { index: i, nodes }),
                            ..Default::default()
                        })
                        .await?;
                    follower.verify_and_apply_proof(proof).await?;
                }
                if follower.info().contiguous_length >= BLOCKS {
                    break;
                }
            }
            Ok::<_, iroh_hypercore::Error>(())
        })
    };

    let start = Instant::now();
    for i in 0..BLOCKS {
        log.append(format!("message {i}").into_bytes()).await?;
        if (i + 1) % 500 == 0 {
            println!(
                "writer length {:>5}   follower verified {:>5}",
                log.info().length,
                follower.info().contiguous_length
            );
        }
    }
    tokio::time::timeout(Duration::from_secs(60), sync)
        .await
        .expect("follower caught up in time")
        .expect("sync task")?;
    let elapsed = start.elapsed();
    assert_eq!(follower.tree_hash(), log.tree_hash());
    assert_eq!(
        follower.get(BLOCKS - 1).await?.as_deref(),
        Some(format!("message {}", BLOCKS - 1).as_bytes())
    );
    println!(
        "follower holds the verified log: {} blocks in {:.2?} ({:.0} blocks/s, every append fsynced)",
        follower.info().length,
        elapsed,
        BLOCKS as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

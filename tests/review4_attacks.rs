//! Liveness of the replication engine's timers over the simulator: honest networks whose
//! storage is slow still get the log.

use std::time::Duration;

use iroh_hypercore::sim::{LinkConfig, Sim, SimConfig, StorageModel};

/// Twelve honest nodes, each storage operation taking `per_op`.
fn slow_storage(seed: u64, per_op: Duration) -> SimConfig {
    SimConfig {
        seed,
        nodes: 12,
        blocks: 60,
        min_degree: 3,
        max_degree: 5,
        storage: StorageModel {
            per_op,
            per_block: Duration::from_millis(5),
        },
        links: LinkConfig::default(),
        ..Default::default()
    }
}

/// A writer whose storage is slow to serve the readers that all ask it at once: their
/// requests queue behind each other there and time out, and after its last back-off each
/// reader drops the writer until the connection ends. Nothing ends it, and the writer is the
/// only source: the network stalls for good with no timer left (the event queue runs dry).
#[tokio::test(flavor = "current_thread")]
#[ignore = "an honest writer slower than the request timeout is dropped for good"]
async fn a_slow_honest_writer_is_not_dropped_for_good() {
    let mut sim = Sim::new(slow_storage(2, Duration::from_millis(900)))
        .await
        .unwrap();
    sim.run_until_synced(Duration::from_secs(600))
        .await
        .unwrap();
    sim.check_honest_logs().await.unwrap();
}

/// Storage a little slower than a third of the request timeout: some requests time out and
/// some peers are dropped, but the others serve and every node gets the log and follows it.
#[tokio::test(flavor = "current_thread")]
async fn storage_slower_than_a_third_of_the_timeouts_still_syncs_and_follows_live() {
    for seed in 0..4 {
        let mut sim = Sim::new(slow_storage(seed, Duration::from_millis(400)))
            .await
            .unwrap();
        sim.run_until_synced(Duration::from_secs(600))
            .await
            .unwrap();
        for _ in 0..10 {
            sim.append(1).await.unwrap();
            sim.run_for(Duration::from_millis(700)).await.unwrap();
        }
        sim.run_until_synced(Duration::from_secs(600))
            .await
            .unwrap();
        sim.check_honest_logs().await.unwrap();
    }
}

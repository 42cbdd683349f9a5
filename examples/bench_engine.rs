//! The replication hot path without sockets: a writer and one reader in the simulator (real
//! engines, real memory stores, simulated links and clock), replicating `blocks` blocks of
//! 1 KiB, then `live` more appended one at a time. Deterministic, so instruction counts are
//! repeatable:
//!
//! ```text
//! cargo build --release --example bench_engine
//! valgrind --tool=callgrind ./target/release/examples/bench_engine [blocks] [live]
//! ```
//!
//! Prints the wall time, the blocks delivered and the trace digest (the same for the same
//! code and arguments).

use std::time::{Duration, Instant};

use iroh_hypercore::sim::{LinkConfig, Sim, SimConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let arg = |i: usize, default: u64| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (blocks, live) = (arg(1, 20_000), arg(2, 1_000));
    let started = Instant::now();
    let mut sim = Sim::new(SimConfig {
        nodes: 2,
        blocks,
        block_size: 1024,
        min_degree: 1,
        max_degree: 1,
        seed: 7,
        links: LinkConfig {
            loss: 0.0,
            ..Default::default()
        },
        ..Default::default()
    })
    .await?;
    sim.run_until_synced(Duration::from_secs(3600)).await?;
    for _ in 0..live {
        sim.append(1).await?;
        sim.run_until_synced(Duration::from_secs(3600)).await?;
    }
    sim.check_honest_logs().await?;
    println!(
        "{} blocks delivered in {:.2?} (simulated {:.1?}), digest {}",
        sim.trace().blocks_delivered,
        started.elapsed(),
        sim.now(),
        sim.digest()
    );
    Ok(())
}

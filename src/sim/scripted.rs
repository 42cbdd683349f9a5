//! The hostile-node scenario that the `hostile_node` fuzz target and a proptest of
//! `cargo test` run: a writer, one node driven by a [`Script`](super::Script) and two honest
//! readers, all connected. While the script runs, every turn of every honest engine is checked
//! (its signed state only moves forward, its timers and its bounds hold: the simulator does
//! that) and, every simulated second, every honest node holds only what the writer signed: a
//! state the writer had, with its tree hash, and blocks equal to the writer's. Then the hostile
//! node goes, and every honest node must converge on the writer's log.

use std::{collections::BTreeMap, time::Duration};

use super::{Sim, SimConfig, SimError};
use crate::crypto::Hash;

/// Simulated time the script runs, in steps of one second; the writer appends halfway.
const STEPS: u32 = 8;

/// How long the honest nodes get to converge once the hostile node is gone.
const CONVERGE: Duration = Duration::from_secs(300);

/// The hostile node.
const HOSTILE: usize = 1;

/// What one scenario did.
#[derive(Debug, Clone)]
pub struct ScriptedRun {
    /// Messages the hostile node rewrote, dropped or made up.
    pub lies: u64,
    /// Times an honest node rejected data from it.
    pub blamed: u64,
    /// Simulated time the honest nodes took to converge once it was gone.
    pub converged_in: Duration,
}

/// Runs the scenario with `seed` (links and timing) and `script`; an error names the
/// invariant that broke.
pub async fn scripted_run(seed: u64, script: &[u8]) -> Result<ScriptedRun, SimError> {
    let cfg = SimConfig {
        seed,
        nodes: 4,
        blocks: 12,
        block_size: 64,
        min_degree: 3,
        max_degree: 3,
        ..Default::default()
    };
    let mut sim = Sim::new(cfg).await?;
    sim.set_script(HOSTILE, script.to_vec());
    let mut signed = BTreeMap::new();
    record_signed(&sim, &mut signed);
    for step in 0..STEPS {
        if step == STEPS / 2 {
            sim.append(4).await?;
            record_signed(&sim, &mut signed);
        }
        sim.run_for(Duration::from_secs(1)).await?;
        check_signed_only(&sim, &signed).await?;
    }
    sim.set_online(HOSTILE, false).await;
    let converged_in = sim.run_until_synced(CONVERGE).await?;
    sim.check_honest_logs().await?;
    Ok(ScriptedRun {
        lies: sim.lies(),
        blamed: sim.blamed(),
        converged_in,
    })
}

/// Keeps the writer's state now: (fork, length) and its tree hash.
fn record_signed(sim: &Sim, signed: &mut BTreeMap<(u64, u64), Hash>) {
    let info = sim.writer().info();
    signed.insert((info.fork, info.length), sim.writer().tree_hash());
}

/// Fails unless every honest reader holds a state the writer signed, with the writer's tree
/// hash at it, and only blocks equal to the writer's.
async fn check_signed_only(sim: &Sim, signed: &BTreeMap<(u64, u64), Hash>) -> Result<(), SimError> {
    let writer = sim.writer();
    for (n, node) in sim.nodes().iter().enumerate().skip(1) {
        if !sim.is_honest(n) {
            continue;
        }
        let info = node.core.info();
        if info.length == 0 {
            continue; // nothing taken yet
        }
        let diverged = |reason: String| SimError::Diverged { node: n, reason };
        match signed.get(&(info.fork, info.length)) {
            Some(hash) if *hash == node.core.tree_hash() => {}
            Some(_) => return Err(diverged(format!("tree hash at {}", info.length))),
            None => return Err(diverged(format!("unsigned state {info:?}"))),
        }
        for i in 0..info.length {
            if let Some(block) = node.core.get(i).await?
                && Some(block) != writer.get(i).await?
            {
                return Err(diverged(format!("block {i}")));
            }
        }
    }
    Ok(())
}

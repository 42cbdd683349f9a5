//! A deterministic simulation of many replicating nodes in one process, as iroh-gossip's
//! `proto::sim` is for gossip. Enabled by the `test-utils` feature.
//!
//! Each node is a real [`Engine`] with a real [`Hypercore`] on its own memory store; the
//! simulation is their driver. Time is simulated: a timed event queue carries messages over
//! links with latency, bandwidth and loss ([`links`]), storage operations that take modelled
//! time ([`StorageModel`]), and engine timers. Nodes join, leave and restart from their store;
//! partitions split the network and heal; hostile nodes ([`Hostility`]) lie in what they send.
//!
//! Everything random (node ids, the writer's key, topology, latency, loss, churn, lies) comes
//! from one seeded RNG, and every collection whose order reaches an output is ordered, so a
//! seed replays a run exactly: [`Sim::digest`] hashes every message, storage operation and
//! event in order. `SIM_DEBUG=1` prints every message as it is sent.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::Duration;
//! use iroh_hypercore::sim::{Sim, SimConfig};
//!
//! let mut sim = Sim::new(SimConfig { nodes: 8, blocks: 20, seed: 1, ..Default::default() })
//!     .await
//!     .unwrap();
//! sim.run_until_synced(Duration::from_secs(60)).await.unwrap();
//! sim.append(5).await.unwrap();
//! sim.run_until_synced(Duration::from_secs(60)).await.unwrap();
//! sim.check_honest_logs().await.unwrap();
//! println!("trace digest {}", sim.digest());
//! # }
//! ```

mod hostile;
pub mod links;
mod node;
mod queue;
mod run;
mod script;
mod scripted;
#[cfg(test)]
mod tests;
mod trace;

use std::{collections::BTreeSet, time::Duration};

pub use hostile::{Hostile, Hostility};
pub use links::{LinkConfig, Links};
pub use node::{Node, Serving, StorageModel};
pub use queue::EventQueue;
pub use run::SimError;
pub use script::Script;
pub use scripted::{ScriptedRun, scripted_run};
pub use trace::{Kind, Trace};

use crate::replication::{EngineConfig, FetchConfig};

/// A simulation's setup.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Nodes, the writer (node 0) included.
    pub nodes: usize,
    /// Blocks the writer holds at the start.
    pub blocks: u64,
    /// Bytes of each block.
    pub block_size: usize,
    /// Each node connects to this many random others, at least (fewer if it cannot reach
    /// them) ...
    pub min_degree: usize,
    /// ... and at most; a node connects to no more when asked to by its engine.
    pub max_degree: usize,
    /// Links.
    pub links: LinkConfig,
    /// Storage timing.
    pub storage: StorageModel,
    /// Share of the readers that leave per simulated minute, each coming back from its store
    /// 5 to 20 s later.
    pub churn_per_minute: f64,
    /// How a node that comes back finds the swarm. `false`: it connects to random nodes, as a
    /// discovery service would give it. `true`: only through the peers it remembers (its
    /// engine dials them, with back-off while none answers), and the peers that remember it.
    /// Either way a node is dialed by id, so a restart on a new address, which a real node's
    /// address lookup resolves, is the same as one on the old address.
    pub rejoin_by_redial: bool,
    /// Nodes `1..=hostile` are hostile, of the kinds in `hostile_kinds` in turn.
    pub hostile: usize,
    /// The kinds of hostile nodes, taken in turn (all three kinds by default).
    pub hostile_kinds: Vec<Hostility>,
    /// The engines' tuning.
    pub engine: EngineConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            nodes: 100,
            blocks: 100,
            block_size: 256,
            min_degree: 5,
            max_degree: 8,
            links: LinkConfig::default(),
            storage: StorageModel::default(),
            churn_per_minute: 0.0,
            rejoin_by_redial: false,
            hostile: 0,
            hostile_kinds: vec![Hostility::Liar, Hostility::Silent, Hostility::Flooder],
            engine: EngineConfig {
                fetch: FetchConfig {
                    run_bytes: 16 * 1024,
                    timeout: Duration::from_millis(1500),
                    ..Default::default()
                },
                upgrade_timeout: Duration::from_millis(1500),
                handshake_timeout: Duration::from_secs(3),
                ..Default::default()
            },
        }
    }
}

/// The simulation; its methods are in the `run` module.
#[derive(Debug)]
pub struct Sim {
    cfg: SimConfig,
    rng: rand::rngs::StdRng,
    /// The instant simulated time 0 stands for.
    epoch: std::time::Instant,
    now: Duration,
    queue: EventQueue<run::Ev>,
    nodes: Vec<Node>,
    index: std::collections::BTreeMap<crate::replication::PeerId, usize>,
    links: Links,
    /// Open streams, by either end: (node, channel) to (node, channel, connection epoch).
    pipes: std::collections::BTreeMap<(usize, u64), (usize, u64, u64)>,
    /// Nodes offline because of churn (they come back by themselves).
    churned: BTreeSet<usize>,
    churn: bool,
    trace: Trace,
    /// Times an honest node rejected data from a hostile one.
    blamed: u64,
    /// Connections made because an engine asked to dial a peer.
    dials_connected: u64,
    /// Nodes that came back after leaving.
    rejoins: u64,
    /// A broken invariant found while running: a node whose signed state went back (found
    /// while running a storage operation), or whose engine's timers are out of step.
    went_back: Option<SimError>,
    /// A signed state of the log at an older length, which hostile nodes replay.
    old_state: crate::tree::Proof,
}

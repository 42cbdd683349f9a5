//! A simulated node: an engine, the core it replicates on a real memory store, and the
//! driver-side state the simulation keeps for it (timer, storage queue, incarnation).

use std::time::Duration;

use super::hostile::Hostile;
use crate::{
    core::Hypercore,
    replication::{Engine, PeerId, Task, engine::ChannelId},
};

/// How long storage operations take: a fixed cost per operation and a cost per block.
#[derive(Debug, Clone)]
pub struct StorageModel {
    /// Cost of any operation (a transaction).
    pub per_op: Duration,
    /// Cost per block read, verified or written.
    pub per_block: Duration,
}

impl Default for StorageModel {
    fn default() -> Self {
        Self {
            per_op: Duration::from_micros(200),
            per_block: Duration::from_micros(20),
        }
    }
}

impl StorageModel {
    /// How long `task` takes.
    pub fn cost(&self, task: &Task) -> Duration {
        let blocks = match task {
            Task::CreateProof { .. } | Task::ApplyProof { .. } => 1,
            Task::CreateRun { start, end, .. } => end.saturating_sub(*start).min(1024),
            Task::ApplyRun { proofs, .. } => proofs.len() as u64,
        };
        self.per_op + self.per_block * u32::try_from(blocks).unwrap_or(u32::MAX)
    }
}

/// What a node does with the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Serving {
    /// It replicates the core (fully).
    #[default]
    Replicate,
    /// Its store holds the core but it does not replicate it: it serves it to peers that
    /// open a channel for it (whole-store serving), following its length sparsely.
    StoreOnly,
    /// It left the core: it neither replicates nor serves it.
    Left,
}

/// A node of the simulation.
#[derive(Debug)]
pub struct Node {
    /// Endpoint id.
    pub id: PeerId,
    /// The replicated core, on the node's own memory store: it outlives the engine, so a node
    /// that restarts comes back with what it stored.
    pub core: Hypercore,
    /// `None` while the node is offline.
    pub engine: Option<Engine>,
    /// Bumped when the node goes offline: what was in flight for the old engine is dropped.
    pub incarnation: u64,
    /// Id of the next channel a peer opens to this node.
    pub next_incoming: ChannelId,
    /// When the node's earliest queued timer fires.
    pub timer: Option<Duration>,
    /// When the node's storage is done with the operations queued so far.
    pub storage_free_at: Duration,
    /// `Some` for a hostile node.
    pub hostile: Option<Hostile>,
    /// The furthest signed state (fork, length) the node held: it never goes back.
    pub furthest: (u64, u64),
    /// What it does with the core.
    pub serving: Serving,
    /// The peers its engine knew for the core when it went offline, as the driver's peer
    /// book keeps them in the store: handed to its next engine.
    pub remembered: Vec<PeerId>,
}

impl Node {
    /// Whether the node is online.
    pub fn online(&self) -> bool {
        self.engine.is_some()
    }
}

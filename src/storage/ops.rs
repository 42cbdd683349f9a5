//! The typed write operations the storage actor executes: plain data, built by `core/` and
//! `store/`, applied in call order inside the batch's transaction.

use std::sync::Arc;

use bytes::Bytes;

use super::{schema::CoreHeader, slot::CoreSlot};
use crate::{
    crypto::{CoreKey, Verifier},
    tree::{Node, Proof, TreeState, VerifiedProof},
};

/// One write. Every write to a core carries its [`CoreSlot`] and the `(length, fork)` it was
/// prepared against (where it matters): a write prepared against another staged state is
/// rejected with [`StorageError::Rejected`](super::StorageError::Rejected), alone.
#[derive(Debug)]
pub(crate) enum Op {
    /// Stores the store's primary key, unless one is stored already.
    SetPrimaryKey([u8; 32]),
    /// Stores the secret key of the store's endpoint, unless one is stored already.
    SetEndpointKey([u8; 32]),
    /// Stores a new core under `key` with `header`, unless one is stored under that key.
    CreateCore {
        /// The core key.
        key: CoreKey,
        /// Its first header (boxed: a rare op should not make every op larger).
        header: Box<CoreHeader>,
        /// The name it is made with, recorded in the same transaction (a named core).
        name: Option<Box<super::schema::CoreName>>,
    },
    /// Records the name of the stored core `key` (a named core made before names were
    /// stored); rejected if no core is stored under `key` or the name is too long.
    SetName {
        /// The core key.
        key: CoreKey,
        /// Its name.
        name: Box<super::schema::CoreName>,
    },
    /// Replaces the record of the peers the whole store is replicated with (opaque bytes, at
    /// most [`MAX_PEERS_BYTES`](super::schema::MAX_PEERS_BYTES)).
    SetStorePeers(Vec<u8>),
    /// Deletes the core stored under `key` and every byte of it; `slot` is the open core, if
    /// any, which is written no more.
    DeleteCore {
        /// The core key.
        key: CoreKey,
        /// The open core.
        slot: Option<Arc<CoreSlot>>,
    },
    /// Appends `values` (with their tree `nodes`) at `base.0`; the core's tree becomes `tree`,
    /// signed at the end of the batch.
    Append {
        /// The core.
        slot: Arc<CoreSlot>,
        /// `(length, fork)` the append was prepared against.
        base: (u64, u64),
        /// The roots of the tree the append was prepared against: an append is applied only
        /// on that tree, not on another one of the same length.
        base_roots: Vec<Node>,
        /// Block values.
        values: Vec<Bytes>,
        /// New tree nodes.
        nodes: Vec<Node>,
        /// The tree after the append (unsigned).
        tree: TreeState,
    },
    /// Truncates to `tree.length` on the new fork of `tree`.
    Truncate {
        /// The core.
        slot: Arc<CoreSlot>,
        /// `(length, fork)` the truncate was prepared against.
        base: (u64, u64),
        /// The new tree (unsigned).
        tree: TreeState,
    },
    /// Frees blocks `start..end` (the tree is kept).
    Clear {
        /// The core.
        slot: Arc<CoreSlot>,
        /// First block.
        start: u64,
        /// End of the range (exclusive).
        end: u64,
    },
    /// Stores a proof from a peer that verified (boxed: it is the largest op).
    ApplyProof(Box<ApplyProof>),
    /// Stores the blocks of `proofs[..count]`, a verified run, with `nodes`, if the core is
    /// still on `fork`.
    ApplyRun {
        /// The core.
        slot: Arc<CoreSlot>,
        /// Fork the run was verified on.
        fork: u64,
        /// The run's proofs (their block values are stored, not copied before).
        proofs: Arc<Vec<Proof>>,
        /// How many leading proofs verified.
        count: usize,
        /// Every node the verified proofs delivered, sorted by index (shared with the core's
        /// next apply, which may rely on them before they are written).
        nodes: Arc<Vec<Node>>,
    },
    /// Replaces the record of the peers the core remembers (opaque bytes, at most
    /// [`MAX_PEERS_BYTES`](super::schema::MAX_PEERS_BYTES); rejected once the core is
    /// deleted).
    SetPeers {
        /// The core.
        slot: Arc<CoreSlot>,
        /// The record.
        peers: Vec<u8>,
    },
    /// Writes nothing: resolves once every write queued before it committed.
    Barrier,
    /// Runs a test's code inside the batch.
    #[cfg(test)]
    Probe(Probe),
}

/// The code of a [`Probe`].
#[cfg(test)]
type ProbeFn =
    Box<dyn FnOnce(&mut super::batch::Batch<'_>) -> Result<(), super::StorageError> + Send>;

/// Test code run inside a batch by [`Op::Probe`].
#[cfg(test)]
pub(crate) struct Probe(pub ProbeFn);

#[cfg(test)]
impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Probe")
    }
}

/// A proof from a peer that verified against `base`, to store: see [`Op::ApplyProof`].
#[derive(Debug)]
pub(crate) struct ApplyProof {
    /// The core.
    pub slot: Arc<CoreSlot>,
    /// `(length, fork)` of the tree the proof was verified against.
    pub base: (u64, u64),
    /// What verified.
    pub verified: VerifiedProof,
    /// The proof, for its block value.
    pub proof: Arc<Proof>,
    /// The verifier it was checked with (gives the core's kind and manifest).
    pub verifier: Verifier,
    /// Length to cut the tree back to before an upgrade to another fork.
    pub keep: Option<u64>,
}

/// What a committed write reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Written.
    Done,
    /// [`Op::CreateCore`]: the core's id, and whether this write created it.
    Core {
        /// The core's id.
        id: u64,
        /// False if the core was stored already.
        created: bool,
    },
    /// [`Op::DeleteCore`]: whether a core was stored under the key.
    Deleted(bool),
    /// [`Op::SetPrimaryKey`], [`Op::SetEndpointKey`]: the key stored now (the earlier one, if
    /// there was).
    Key([u8; 32]),
}

//! The proofs of one core waiting to be applied, and the one storage task applying them: an
//! upgrade proof first, then the block proofs of runs in arrival order as one batch.

use std::collections::BTreeSet;

use super::super::{PeerId, TaskId};
use crate::tree::Proof;

/// Broken run requests remembered per core.
const MAX_BROKEN_RUNS: usize = 1024;

/// The storage task applying data to a core.
#[derive(Debug)]
pub(super) enum Applying {
    /// Task `id` applies an upgrade proof from `peer`, with `block` (index and size) if one
    /// came with it.
    Upgrade {
        id: TaskId,
        peer: PeerId,
        block: Option<(u64, u64)>,
    },
    /// Task `id` applies block proofs: each one's block index, peer and run request.
    Run {
        id: TaskId,
        proofs: Vec<(u64, PeerId, u64)>,
    },
}

/// The proofs of one core waiting to be applied.
#[derive(Debug, Default)]
pub(super) struct ApplyQueue {
    /// An upgrade proof waiting for the core's writer slot.
    pub(super) upgrade_proof: Option<(PeerId, Proof)>,
    /// Block proofs received and not yet applied, in arrival order, with the run request
    /// each answers.
    pub(super) pending: Vec<(PeerId, u64, Proof)>,
    /// Run requests one of whose proofs was not stored (cut from a batch by another's
    /// failure, or dropped over the held cap): their later proofs rely on its nodes, so they
    /// are queued again rather than applied, and nobody is blamed for them.
    pub(super) broken_runs: BTreeSet<u64>,
    /// The storage task applying data to this core, if one runs (one at a time).
    pub(super) applying: Option<Applying>,
}

impl ApplyQueue {
    /// A proof of run `id` was not stored: the rest of that run is queued again, unapplied.
    /// At most [`MAX_BROKEN_RUNS`] are remembered.
    pub(super) fn break_run(&mut self, id: u64) {
        self.broken_runs.insert(id);
        // Request ids only grow: the oldest are long answered.
        while self.broken_runs.len() > MAX_BROKEN_RUNS {
            self.broken_runs.pop_first();
        }
    }
}

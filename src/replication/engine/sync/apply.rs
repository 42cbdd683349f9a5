//! The proofs of one core waiting to be applied, and the storage tasks applying them: an
//! upgrade proof first and alone, then the block proofs of runs in arrival order as batches,
//! up to [`MAX_RUN_APPLIES`] at once (one is verified while the one before it is written; see
//! `core::apply_turns`).

use std::collections::BTreeSet;

use super::super::{PeerId, TaskId};
use crate::tree::Proof;

/// Broken run requests remembered per core.
const MAX_BROKEN_RUNS: usize = 1024;

/// Run applies a core may have at once: one verified while the one before it is written.
pub(super) const MAX_RUN_APPLIES: usize = 2;

/// Proofs a run apply holds at least for a second to start beside it.
pub(in crate::replication::engine) const MIN_BATCH_BESIDE: usize = 64;

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
        /// Run requests an apply started before this one failed to store a proof of, after
        /// this one started: a proof of them here may rely on the nodes it lacks, and fails
        /// through no fault of its peer.
        excused: BTreeSet<u64>,
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
    /// The storage tasks applying data to this core, in the order they started: an upgrade
    /// alone, or up to [`MAX_RUN_APPLIES`] runs.
    pub(super) applying: Vec<Applying>,
}

impl ApplyQueue {
    /// Whether a storage task applies data to this core.
    pub(super) fn is_applying(&self) -> bool {
        !self.applying.is_empty()
    }

    /// The peer whose upgrade is being applied, if one is.
    pub(super) fn upgrade_applying(&self) -> Option<PeerId> {
        self.applying.iter().find_map(|a| match a {
            Applying::Upgrade { peer, .. } => Some(*peer),
            Applying::Run { .. } => None,
        })
    }

    /// Whether a run apply may start now: no upgrade applies or waits to (it goes first,
    /// alone), and fewer than [`MAX_RUN_APPLIES`] runs apply.
    pub(super) fn has_room_for_run(&self) -> bool {
        self.upgrade_proof.is_none()
            && self.upgrade_applying().is_none()
            && self.applying.len() < MAX_RUN_APPLIES
    }

    /// Whether the proofs pending start a run apply now: there is room for one, and either
    /// nothing applies, or a run of at least [`MIN_BATCH_BESIDE`] proofs applies and the
    /// pending proofs are at least half its batch. A smaller batch started beside it would be
    /// verified while that one still is and hide nothing (measured: batches of about 40 proofs
    /// beside ones of 7,000); beside a batch of a few large blocks, a second apply only splits
    /// their commits (measured: 1 MiB blocks downloaded 5–8% slower).
    pub(super) fn run_may_start(&self) -> bool {
        if self.pending.is_empty() || !self.has_room_for_run() {
            return false;
        }
        match self.applying.as_slice() {
            [] => true,
            [Applying::Run { proofs, .. }] => {
                proofs.len() >= MIN_BATCH_BESIDE
                    && self.pending.len().saturating_mul(2) >= proofs.len()
            }
            _ => false,
        }
    }

    /// Takes the apply of task `id`, if it runs, with its place among those running (they
    /// end in the order they started, so it is the first).
    pub(super) fn take(&mut self, id: TaskId) -> Option<(usize, Applying)> {
        let at = self.applying.iter().position(|a| match a {
            Applying::Upgrade { id: i, .. } | Applying::Run { id: i, .. } => *i == id,
        })?;
        Some((at, self.applying.remove(at)))
    }

    /// Run requests `runs` lost a proof in the apply that ended at place `at`: the run applies
    /// started after it are not blamed for a proof of them that fails (it may rely on a node
    /// that apply did not store).
    pub(super) fn excuse_after(&mut self, at: usize, runs: &BTreeSet<u64>) {
        for a in self.applying.iter_mut().skip(at) {
            if let Applying::Run { excused, .. } = a {
                excused.extend(runs);
            }
        }
    }

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

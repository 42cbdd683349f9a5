//! Applying what arrived: one storage task per core at a time, an upgrade proof first, then
//! the block proofs of runs in arrival order as one batch. [`ApplyQueue`] is each core's
//! queue of proofs waiting; the engine's methods here start the tasks and take in their
//! results, blaming the peer whose proof did not verify.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use super::{ApplyOutcome, Engine, LocalInfo, PeerId, Task, TaskCtx};
use crate::{core::RunApplied, crypto::CoreKey, tree::Proof};

/// Broken run requests remembered per core.
const MAX_BROKEN_RUNS: usize = 1024;

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
    /// A storage task applying data to this core is running.
    pub(super) running: bool,
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

impl Engine {
    /// Starts applying what arrived, one storage task per core at a time, upgrades first.
    pub(super) fn maybe_apply(&mut self, core: CoreKey) {
        let Some(r) = self.cores.get_mut(&core) else {
            return;
        };
        if r.apply.running {
            return;
        }
        // An answer that arrived while a push was applied, and that the push made stale:
        // dropped, not blamed (it answered what was asked).
        if r.apply.upgrade_proof.as_ref().is_some_and(|(_, p)| {
            p.fork == r.local.fork
                && p.upgrade
                    .as_ref()
                    .is_some_and(|u| u.start != r.local.length)
        }) {
            r.apply.upgrade_proof = None;
        }
        let epoch = r.epoch;
        if let Some((peer, proof)) = r.apply.upgrade_proof.take() {
            r.apply.running = true;
            let block = proof
                .block
                .as_ref()
                .map(|b| (b.index, b.value.len() as u64));
            self.new_task(
                core,
                Task::ApplyProof(proof),
                TaskCtx::ApplyUpgrade {
                    core,
                    epoch,
                    peer,
                    block,
                },
            );
            return;
        }
        if r.apply.pending.is_empty() || r.local.length == 0 {
            return;
        }
        let (pending, broken): (Vec<_>, Vec<_>) = std::mem::take(&mut r.apply.pending)
            .into_iter()
            .partition(|(_, id, _)| !r.apply.broken_runs.contains(id));
        let index = |proof: &Proof| proof.block.as_ref().map_or(u64::MAX, |b| b.index);
        for (_, _, proof) in &broken {
            self.fetch.on_store_failed(&core, index(proof));
        }
        if pending.is_empty() {
            return;
        }
        r.apply.running = true;
        let meta = pending
            .iter()
            .map(|(peer, id, proof)| (index(proof), *peer, *id))
            .collect();
        let proofs = pending.into_iter().map(|(_, _, p)| p).collect();
        self.new_task(
            core,
            Task::ApplyRun(proofs),
            TaskCtx::ApplyRun {
                core,
                epoch,
                proofs: meta,
            },
        );
    }

    /// A proof of run `id` was not stored: the rest of that run is queued again, unapplied.
    pub(super) fn break_run(&mut self, core: CoreKey, id: u64) {
        if let Some(r) = self.cores.get_mut(&core) {
            r.apply.break_run(id);
        }
    }

    /// An upgrade proof from `peer` (with `block`: index and size, if one came with it) was
    /// applied. The request a push took the place of is settled, and the next upgrade asked.
    pub(super) fn on_upgrade_applied(
        &mut self,
        core: CoreKey,
        peer: PeerId,
        block: Option<(u64, u64)>,
        outcome: ApplyOutcome<()>,
        local: LocalInfo,
        now: Instant,
    ) {
        let mut asked = None;
        if let Some(r) = self.cores.get_mut(&core) {
            r.apply.running = false;
            self.upgrades.take(&core);
            asked = self.upgrades.take_superseded(&core);
        }
        let done = matches!(outcome, ApplyOutcome::Done(()));
        if let Some(u) = asked {
            self.settle_superseded(core, u, done);
        }
        match outcome {
            ApplyOutcome::Done(()) => {
                if let Some((index, bytes)) = block {
                    self.fetch.on_committed(&core, index);
                    self.count_download(core, peer, index, bytes);
                }
            }
            ApplyOutcome::Invalid(reason) => self.blame(core, peer, reason, now),
            ApplyOutcome::Failed(e) => tracing::warn!("storing an upgrade failed: {e}"),
        }
        self.update_local(core, local, now);
        self.maybe_apply(core);
        self.maybe_upgrade(core, now);
    }

    /// A batch of run proofs was applied up to its first failure. That proof's peer is
    /// blamed; the proofs after it (of any peer) are queued again without blame, and their
    /// runs marked broken, since later proofs of those runs rely on the nodes they carried.
    pub(super) fn on_run_applied(
        &mut self,
        core: CoreKey,
        proofs: Vec<(u64, PeerId, u64)>,
        outcome: ApplyOutcome<RunApplied>,
        local: LocalInfo,
        now: Instant,
    ) {
        if let Some(r) = self.cores.get_mut(&core) {
            r.apply.running = false;
        }
        let mut stored = BTreeSet::new();
        match outcome {
            ApplyOutcome::Done(applied) => {
                let by_index: BTreeMap<u64, (PeerId, u64)> =
                    proofs.iter().map(|(i, p, id)| (*i, (*p, *id))).collect();
                for (index, bytes) in &applied.stored {
                    stored.insert(*index);
                    self.fetch.on_committed(&core, *index);
                    if let Some(r) = self.cores.get_mut(&core) {
                        r.wanted.remove(index);
                    }
                    if let Some((peer, _)) = by_index.get(index).copied() {
                        self.count_download(core, peer, *index, *bytes);
                    }
                }
                if let Some((index, err)) = applied.rejected
                    && let Some((peer, id)) = by_index.get(&index).copied()
                {
                    stored.insert(index);
                    // Back to the queue; the peer is penalized once, by the blame.
                    self.fetch.on_store_failed(&core, index);
                    self.break_run(core, id);
                    self.blame(core, peer, err.to_string(), now);
                }
            }
            ApplyOutcome::Invalid(e) | ApplyOutcome::Failed(e) => {
                tracing::warn!("applying a run failed: {e}");
            }
        }
        for (index, _, id) in &proofs {
            if !stored.contains(index) {
                self.fetch.on_store_failed(&core, *index);
                self.break_run(core, *id);
            }
        }
        self.update_local(core, local, now);
        self.maybe_apply(core);
    }
}

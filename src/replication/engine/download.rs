//! Fetching: upgrades, the fetch queue's runs, applying what arrives, and following the local
//! state of each core.

use std::time::Instant;

use super::{
    ApplyOutcome, ChannelId, Engine, Event, LocalInfo, Mode, PeerId, Sent, Task, TaskCtx,
    TaskResult, UPGRADE_ID_BIT, Upgrading,
};
use crate::{
    crypto::CoreKey,
    replication::fetch::Arrival,
    replication::wire::{Message, SyncInfo},
    tree::{IndexRequest, Proof, ProofRequest, UpgradeRequest},
};

/// Broken run requests remembered per core.
const MAX_BROKEN_RUNS: usize = 1024;

impl Engine {
    /// Asks the peer furthest ahead for a signed upgrade, if none is in flight.
    pub(super) fn maybe_upgrade(&mut self, core: CoreKey, now: Instant) {
        let Some(r) = self.cores.get(&core) else {
            return;
        };
        // A writer's state comes from its own appends, never from the wire.
        if r.upgrading.is_some() || r.upgrade_proof.is_some() || r.local.writable {
            return;
        }
        let local = r.local;
        let ahead = |s: &SyncInfo| {
            s.length > 0
                && (s.fork > local.fork || (s.fork == local.fork && s.length > local.length))
        };
        let best = self
            .channels
            .iter()
            .filter(|(_, c)| c.core == core && self.may_ask(&c.peer, now))
            .filter_map(|(id, c)| c.remote.map(|s| (*id, c.peer, s)))
            .filter(|(_, _, s)| ahead(s))
            .max_by_key(|(id, _, s)| (s.fork, s.length, std::cmp::Reverse(*id)));
        let Some((channel, peer, remote)) = best else {
            // A peer ahead that is backed off is asked once its back-off ends.
            let waiting = self.channels.values().any(|c| {
                c.core == core
                    && c.remote.as_ref().is_some_and(ahead)
                    && self.peers.get(&c.peer).is_some_and(|p| !p.dropped)
            });
            if waiting {
                self.upgrade_after_backoff.insert(core);
            }
            return;
        };
        let start = if remote.fork == local.fork {
            local.length
        } else {
            0
        };
        let id = UPGRADE_ID_BIT | self.next_upgrade_id;
        self.next_upgrade_id += 1;
        // Following live: ask for the first new block with the upgrade, saving a round trip.
        let first_block = r.mode == Mode::Full
            && local.length > 0
            && start == local.length
            && local.contiguous == local.length
            && remote.contiguous > local.length;
        let request = ProofRequest {
            fork: local.fork,
            block: first_block.then_some(IndexRequest {
                index: local.length,
                nodes: 0,
            }),
            upgrade: Some(UpgradeRequest {
                start,
                length: remote.length - start,
            }),
            manifest: local.length == 0,
            ..Default::default()
        };
        if let Some(c) = self.channels.get_mut(&channel) {
            let block = request.block.map(|b| b.index);
            let length = remote.length - start;
            c.requests.insert(
                id,
                Sent::Upgrade {
                    start,
                    length,
                    block,
                },
            );
        }
        if let Some(r) = self.cores.get_mut(&core) {
            r.upgrading = Some(Upgrading {
                peer,
                channel,
                id,
                deadline: now + self.cfg.upgrade_timeout,
            });
        }
        self.send(peer, channel, Message::Request { id, request });
    }

    pub(super) fn on_data(&mut self, channel: ChannelId, id: u64, proof: Proof, now: Instant) {
        let Some(c) = self.channels.get_mut(&channel) else {
            return;
        };
        let (peer, core) = (c.peer, c.core);
        match c.requests.get(&id).copied() {
            Some(Sent::Upgrade {
                start,
                length,
                block,
            }) => {
                c.requests.remove(&id);
                // An answer must answer the question: an upgrade from where we asked to the
                // length the peer claimed, and the block we asked for. Anything else (no upgrade
                // at all, or an older state that proves less than it claimed) fails the request.
                let answers = proof
                    .upgrade
                    .as_ref()
                    .is_some_and(|u| u.start == start && u.length >= length)
                    && proof.block.as_ref().map(|b| b.index) == block
                    && proof.hash.is_none()
                    && proof.seek.is_none();
                if !answers {
                    self.upgrade_failed(core, channel);
                    self.blame(
                        core,
                        peer,
                        "an answer that does not answer the upgrade asked for".into(),
                        now,
                    );
                    self.maybe_upgrade(core, now);
                    return;
                }
                if let Some(r) = self.cores.get_mut(&core) {
                    r.upgrade_proof = Some((peer, proof));
                }
                self.maybe_apply(core);
            }
            Some(Sent::Run) => {
                let arrival = match proof.block.as_ref() {
                    Some(b) => self
                        .fetch
                        .on_received(id, b.index, b.value.len() as u64, now),
                    None => Arrival::Unexpected,
                };
                if !self.fetch.is_open(id)
                    && let Some(c) = self.channels.get_mut(&channel)
                {
                    c.requests.remove(&id);
                }
                let broken = self
                    .cores
                    .get(&core)
                    .is_some_and(|r| r.broken_runs.contains(&id));
                match arrival {
                    Arrival::Taken if broken => {
                        // An earlier block of this run was not stored: this one cannot verify.
                        if let Some(b) = &proof.block {
                            self.fetch.on_store_failed(&core, b.index);
                        }
                        return;
                    }
                    Arrival::Taken => {}
                    // Storage is behind and the blocks are larger than expected: asked again
                    // later, nobody blamed.
                    Arrival::OverCap => {
                        self.break_run(core, id);
                        return;
                    }
                    // Not a block of this run: an answer nobody asked for.
                    Arrival::Unexpected => {
                        self.fetch.penalize(peer, now);
                        return;
                    }
                }
                if let Some(r) = self.cores.get_mut(&core) {
                    r.pending.push((peer, id, proof));
                }
                self.maybe_apply(core);
            }
            // Late answer to a request that timed out or was cancelled.
            None => {}
        }
    }

    pub(super) fn on_no_data(
        &mut self,
        channel: ChannelId,
        id: u64,
        start: u64,
        end: u64,
        now: Instant,
    ) {
        let Some(c) = self.channels.get_mut(&channel) else {
            return;
        };
        let core = c.core;
        match c.requests.get(&id).copied() {
            Some(Sent::Upgrade { .. }) => {
                c.requests.remove(&id);
                self.upgrade_failed(core, channel);
                self.maybe_upgrade(core, now);
            }
            Some(Sent::Run) => {
                // What the peer lacks now it may hold later: its next `Sync` records it again.
                c.sourced = c.sourced.min(start);
                self.fetch.on_no_data(id, start, end);
                if !self.fetch.is_open(id) {
                    c.requests.remove(&id);
                }
            }
            None => {}
        }
    }

    /// The upgrade asked of `channel`'s peer failed: it cannot prove the length it claimed, so
    /// it is not believed until it syncs again (it is asked to), and the upgrade may be asked
    /// of another peer.
    pub(super) fn upgrade_failed(&mut self, core: CoreKey, channel: ChannelId) {
        let Some(r) = self.cores.get_mut(&core) else {
            return;
        };
        if r.upgrading.as_ref().is_some_and(|u| u.channel == channel) {
            r.upgrading = None;
        }
        let length = r.local.length;
        let Some(c) = self.channels.get_mut(&channel) else {
            return;
        };
        let peer = c.peer;
        if let Some(remote) = c.remote.as_mut() {
            remote.length = remote.length.min(length);
        }
        // An honest peer that was only slow says its length again and is asked again (after
        // its back-off); a liar says its lie again and runs out of back-offs.
        if self.has_room(&peer)
            && let Some(info) = self.sync_info(&core, true)
        {
            self.send(peer, channel, Message::Sync(info));
        }
    }

    /// Whether `peer` may be asked for data at `now`: not backed off, not dropped.
    pub(super) fn may_ask(&self, peer: &PeerId, now: Instant) -> bool {
        !self.fetch.is_backed_off(peer, now) && self.peers.get(peer).is_some_and(|p| !p.dropped)
    }

    /// Starts applying what arrived, one storage task per core at a time, upgrades first.
    pub(super) fn maybe_apply(&mut self, core: CoreKey) {
        let Some(r) = self.cores.get_mut(&core) else {
            return;
        };
        if r.applying {
            return;
        }
        // An answer that arrived while a push was applied, and that the push made stale:
        // dropped, not blamed (it answered what was asked).
        if r.upgrade_proof.as_ref().is_some_and(|(_, p)| {
            p.fork == r.local.fork
                && p.upgrade
                    .as_ref()
                    .is_some_and(|u| u.start != r.local.length)
        }) {
            r.upgrade_proof = None;
        }
        if let Some((peer, proof)) = r.upgrade_proof.take() {
            r.applying = true;
            let block = proof
                .block
                .as_ref()
                .map(|b| (b.index, b.value.len() as u64));
            self.new_task(
                core,
                Task::ApplyProof(proof),
                TaskCtx::ApplyUpgrade { core, peer, block },
            );
            return;
        }
        if r.pending.is_empty() || r.local.length == 0 {
            return;
        }
        let (pending, broken): (Vec<_>, Vec<_>) = std::mem::take(&mut r.pending)
            .into_iter()
            .partition(|(_, id, _)| !r.broken_runs.contains(id));
        let index = |proof: &Proof| proof.block.as_ref().map_or(u64::MAX, |b| b.index);
        for (_, _, proof) in &broken {
            self.fetch.on_store_failed(&core, index(proof));
        }
        if pending.is_empty() {
            return;
        }
        r.applying = true;
        let meta = pending
            .iter()
            .map(|(peer, id, proof)| (index(proof), *peer, *id))
            .collect();
        let proofs = pending.into_iter().map(|(_, _, p)| p).collect();
        self.new_task(
            core,
            Task::ApplyRun(proofs),
            TaskCtx::ApplyRun { core, proofs: meta },
        );
    }

    /// The request that a push superseded while the push was applied: withdrawn once the push
    /// stored, or asked for again (it is still outstanding) if the push failed, so that a
    /// forged push cannot cancel an honest upgrade.
    fn settle_superseded(&mut self, core: CoreKey, asked: super::Upgrading, push_stored: bool) {
        let outstanding = self
            .channels
            .get(&asked.channel)
            .is_some_and(|c| c.requests.contains_key(&asked.id));
        if !outstanding {
            return;
        }
        if push_stored {
            if let Some(c) = self.channels.get_mut(&asked.channel) {
                c.requests.remove(&asked.id);
            }
            self.send(asked.peer, asked.channel, Message::Cancel { id: asked.id });
        } else if let Some(r) = self.cores.get_mut(&core) {
            r.upgrading = Some(asked);
        }
    }

    /// A proof of run `id` was not stored: the rest of that run is queued again, unapplied.
    /// At most [`MAX_BROKEN_RUNS`] are remembered.
    fn break_run(&mut self, core: CoreKey, id: u64) {
        if let Some(r) = self.cores.get_mut(&core) {
            r.broken_runs.insert(id);
            // Request ids only grow: the oldest are long answered.
            while r.broken_runs.len() > MAX_BROKEN_RUNS {
                r.broken_runs.pop_first();
            }
        }
    }

    pub(super) fn on_task_done(&mut self, id: u64, result: TaskResult, now: Instant) {
        let Some(ctx) = self.tasks.remove(&id) else {
            return;
        };
        match (ctx, result) {
            (TaskCtx::Serve { peer, channel, id }, TaskResult::Proof(r)) => {
                self.on_served(peer, channel, id, r)
            }
            (
                TaskCtx::ServeRun {
                    peer,
                    channel,
                    request,
                },
                TaskResult::Run(r),
            ) => self.on_served_run(peer, channel, request, r),
            (TaskCtx::Push { peer, channel }, TaskResult::Proof(r)) => {
                self.on_pushed(peer, channel, r)
            }
            (TaskCtx::ApplyUpgrade { core, peer, block }, TaskResult::Applied(outcome, local)) => {
                let mut asked = None;
                if let Some(r) = self.cores.get_mut(&core) {
                    r.applying = false;
                    r.upgrading = None;
                    asked = r.asked_meanwhile.take();
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
            (TaskCtx::ApplyRun { core, proofs }, TaskResult::RunApplied(outcome, local)) => {
                if let Some(r) = self.cores.get_mut(&core) {
                    r.applying = false;
                }
                self.on_run_applied(core, proofs, outcome, local, now);
            }
            (ctx, result) => {
                tracing::error!("task result {result:?} does not match its task {ctx:?}");
            }
        }
    }

    /// A batch of run proofs was applied up to its first failure. That proof's peer is
    /// blamed; the proofs after it (of any peer) are queued again without blame, and their
    /// runs marked broken, since later proofs of those runs rely on the nodes they carried.
    fn on_run_applied(
        &mut self,
        core: CoreKey,
        proofs: Vec<(u64, PeerId, u64)>,
        outcome: ApplyOutcome<crate::core::RunApplied>,
        local: LocalInfo,
        now: Instant,
    ) {
        let mut stored = std::collections::BTreeSet::new();
        match outcome {
            ApplyOutcome::Done(applied) => {
                let by_index: std::collections::BTreeMap<u64, (PeerId, u64)> =
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

    /// A verified block from `peer` was stored: counted, and the peer's failures forgiven.
    fn count_download(&mut self, core: CoreKey, peer: PeerId, index: u64, bytes: u64) {
        self.fetch.on_verified(&peer);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.blocks_down += 1;
            p.stats.bytes_down += bytes;
        }
        self.emit(Event::Download {
            core,
            index,
            bytes,
            peer,
        });
    }

    /// Records bad data from `peer` and backs it off.
    /// A peer that left is not penalized: the fetch queue keeps state only for connected ones.
    pub(super) fn blame(&mut self, core: CoreKey, peer: PeerId, reason: String, now: Instant) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.invalid += 1;
            self.fetch.penalize(peer, now);
        }
        self.emit(Event::Invalid { core, peer, reason });
    }

    /// Takes in the core's new local state: tells peers, queues new blocks, emits events.
    pub(super) fn update_local(&mut self, core: CoreKey, new: LocalInfo, now: Instant) {
        let Some(r) = self.cores.get_mut(&core) else {
            return;
        };
        let old = r.local;
        if old == new {
            return;
        }
        r.local = new;
        if let Some(avg) = new.byte_length.checked_div(new.length) {
            self.fetch.set_block_size(core, avg);
        }
        if new.fork != old.fork {
            // Everything in flight was for the old fork.
            r.pending.clear();
            r.queued_to = new.contiguous;
            self.fetch.remove_core(&core);
            for c in self.channels.values_mut() {
                if c.core == core {
                    c.requests.retain(|_, s| matches!(s, Sent::Upgrade { .. }));
                }
            }
            self.emit(Event::Truncate {
                core,
                length: new.length,
                fork: new.fork,
            });
        } else if new.length < old.length {
            self.fetch.truncate(&core, new.length);
            r.queued_to = r.queued_to.min(new.length);
        }
        if new.length > old.length || new.fork != old.fork {
            self.emit(Event::Append {
                core,
                length: new.length,
                fork: new.fork,
            });
            self.announce(core, now);
        }
        self.push_new_blocks(core, old, new);
        self.broadcast_sync(core, false);
        self.enqueue_missing(core);
    }

    /// Queues the blocks this core should fetch and that are not queued yet.
    pub(super) fn enqueue_missing(&mut self, core: CoreKey) {
        let Some(r) = self.cores.get_mut(&core) else {
            return;
        };
        let length = r.local.length;
        let ranges: Vec<(u64, u64)> = match r.mode {
            Mode::Full => {
                // Wanted blocks within the length are queued below like every other.
                r.wanted = r.wanted.split_off(&length);
                let start = r.queued_to.max(r.local.contiguous);
                r.queued_to = length.max(r.queued_to);
                if start < length {
                    vec![(start, length)]
                } else {
                    vec![]
                }
            }
            Mode::Sparse => r
                .wanted
                .range(..length)
                .filter(|i| !self.fetch.contains(&core, **i))
                .map(|i| (*i, i + 1))
                .collect(),
        };
        for (s, e) in ranges {
            self.fetch.add(core, s, e);
            self.add_sources(core, s, e);
        }
    }

    pub(super) fn on_want(&mut self, core: CoreKey, start: u64, end: u64) {
        let Some(r) = self.cores.get_mut(&core) else {
            return;
        };
        let from = start.max(if r.mode == Mode::Full { r.queued_to } else { 0 });
        // Full mode queues every block anyway; a want only matters beyond the known length.
        for i in from..end.min(from.saturating_add(1 << 20)) {
            r.wanted.insert(i);
        }
        for (peer, ch) in self.open_channels(&core) {
            self.send(peer, ch, Message::Want { start, end });
        }
        if let Some(r) = self.cores.get(&core)
            && r.mode == Mode::Sparse
        {
            self.enqueue_missing(core);
        }
    }

    /// Asks again for the upgrades whose peer went away, then sends every request the fetch
    /// queue has room for.
    pub(super) fn schedule(&mut self, now: Instant) {
        while let Some(core) = self.retry_upgrade.pop_first() {
            self.maybe_upgrade(core, now);
        }
        while let Some(a) = self.fetch.next_request(now) {
            let channel = self
                .peers
                .get(&a.peer)
                .and_then(|p| p.channels.get(&a.core))
                .copied();
            let local = self.cores.get(&a.core).map(|r| r.local);
            let (Some(channel), Some(local)) = (channel, local) else {
                self.fetch.cancel(a.id);
                self.fetch.remove_source(&a.core, &a.peer);
                continue;
            };
            if let Some(c) = self.channels.get_mut(&channel) {
                c.requests.insert(a.id, Sent::Run);
            }
            self.send(
                a.peer,
                channel,
                Message::RequestRun {
                    id: a.id,
                    fork: local.fork,
                    start: a.start,
                    end: a.end,
                    length: local.length,
                },
            );
        }
        for notice in self.fetch.take_notices() {
            match notice {
                crate::replication::fetch::PeerNotice::BackedOff(p, _) => {
                    self.emit(Event::Backoff(p))
                }
                crate::replication::fetch::PeerNotice::Dropped(p) => {
                    if let Some(peer) = self.peers.get_mut(&p) {
                        peer.dropped = true;
                    }
                    self.emit(Event::PeerDropped(p))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::{Engine, EngineConfig, Input, LocalInfo, Mode};

    /// In full mode, a read waiting past the length is remembered only until the length
    /// covers it: every block below the length is queued anyway.
    #[test]
    fn full_mode_forgets_wants_the_length_covers() {
        let now = Instant::now();
        let mut engine = Engine::new([1; 32], EngineConfig::default());
        let core = [2; 32];
        engine.add_core(core, LocalInfo::default(), Mode::Full, now);
        engine.handle(Input::Want(core, 5, 7), now);
        assert_eq!(engine.cores[&core].wanted.len(), 2);
        let grown = LocalInfo {
            length: 6,
            byte_length: 6,
            ..Default::default()
        };
        engine.handle(Input::LocalChanged(core, grown), now);
        let wanted: Vec<u64> = engine.cores[&core].wanted.iter().copied().collect();
        assert_eq!(wanted, [6]);
    }
}

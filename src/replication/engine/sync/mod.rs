//! The sync part of one core ([`CoreSync`]): everything the engine does for one replicated
//! core once a channel for it is authenticated.
//!
//! - its local state as the engine knows it, its mode and the blocks the application waits
//!   for;
//! - what each of its channels' peers holds (`remote`), recorded as sources in the fetch queue;
//! - the upgrade: asking the peer furthest ahead for a signed proof of its length, checking
//!   that the answer answers the question, asking another when it fails or times out
//!   (`upgrade`);
//! - fetching: the blocks to fetch go into the fetch queue; the run requests it hands out
//!   are sent on the peer's channel, and their answers go back to it;
//! - applying: an upgrade proof first and alone, then the block proofs of runs in arrival
//!   order as batches, up to two at once: one verified while the one before it is written
//!   (`apply`);
//! - pushing: a writer sends its new blocks with their upgrade to the readers that follow it
//!   live, before they ask;
//! - `update`: asking every peer for its state and saying when all have answered.
//!
//! It owns that state alone; the rest of the engine it reaches through [`Cx`]: outputs, the
//! fetch queue, timers, task ids, peers' counters, and [`Note`]s for what other parts must do
//! (announce the core, reopen its idle channels, retry an upgrade at the end of the turn).

mod apply;
mod remote;
mod update;
mod upgrade;

use std::collections::{BTreeMap, BTreeSet};

#[cfg(test)]
pub(super) use apply::MIN_BATCH_BESIDE;

use apply::{ApplyQueue, Applying};
use remote::{Remote, Sent};
use update::PendingUpdate;
use upgrade::{UpgradeSlot, Upgrading};

use super::{
    Applied, ChannelId, Event, LocalInfo, Mode, Output, PeerId, Task, TaskId,
    cx::{Cx, Note},
    task::{ProofRead, Reply},
    timer::Timer,
};
use crate::{
    core::{MAX_RUN, RunApplied},
    crypto::CoreKey,
    replication::{
        ApplyOutcome,
        fetch::{Arrival, Assignment},
        ranges,
        wire::{Message, SyncInfo},
    },
    tree::{IndexRequest, Proof, ProofRequest, UpgradeRequest},
};

/// Ranges one channel's peer may tell us it holds beyond its contiguous blocks.
const MAX_REMOTE_RANGES: usize = 1024;

/// Blocks one `Want` (or `Unwant`) counts, from its start: a want of more is cut there.
const MAX_WANTED_RANGE: u64 = 1 << 20;

/// The sync part of one replicated core; see the module docs.
#[derive(Debug)]
pub(super) struct CoreSync {
    key: CoreKey,
    /// Its local state.
    local: LocalInfo,
    /// What to fetch of it.
    mode: Mode,
    /// Blocks the application is waiting for (past the length, or any in sparse mode), with
    /// how many reads want each.
    wanted: BTreeMap<u64, u32>,
    /// Full mode: blocks below this were queued (or held).
    queued_to: u64,
    /// Its authenticated channels, with what each peer holds and what we asked it. Boxed: a
    /// map's first node has room for eleven entries, which unboxed cost every core about
    /// 1.8 KiB for its one or two channels.
    remotes: BTreeMap<ChannelId, Box<Remote>>,
    /// The channel of each peer.
    by_peer: BTreeMap<PeerId, ChannelId>,
    /// The upgrade in flight.
    upgrade: UpgradeSlot,
    /// Proofs received and not yet applied, and the task applying them.
    apply: ApplyQueue,
    /// Pushes being read, by task: their channels.
    pushes: BTreeMap<TaskId, ChannelId>,
    /// The `update` under way.
    update: Option<PendingUpdate>,
}

impl CoreSync {
    /// The sync part of core `key`, with local state `local`, fetched in `mode`.
    pub(super) fn new(key: CoreKey, local: LocalInfo, mode: Mode) -> Self {
        Self {
            key,
            local,
            mode,
            wanted: BTreeMap::new(),
            queued_to: local.contiguous,
            remotes: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            upgrade: UpgradeSlot::default(),
            apply: ApplyQueue::default(),
            pushes: BTreeMap::new(),
            update: None,
        }
    }

    /// Its local state.
    pub(super) fn local(&self) -> LocalInfo {
        self.local
    }

    /// What is fetched of it.
    pub(super) fn mode(&self) -> Mode {
        self.mode
    }

    /// Fetches `mode` from now on; returns whether it changed.
    pub(super) fn set_mode(&mut self, mode: Mode) -> bool {
        std::mem::replace(&mut self.mode, mode) != mode
    }

    /// Our state, as a `Sync` says it (`ask`: the peer should answer with its own).
    fn sync_info(&self, ask: bool) -> SyncInfo {
        SyncInfo {
            fork: self.local.fork,
            length: self.local.length,
            contiguous: self.local.contiguous,
            ask,
            downloading: self.downloads_all(),
        }
    }

    /// Whether this core is a reader that downloads every block (full mode).
    fn downloads_all(&self) -> bool {
        self.mode == Mode::Full && !self.local.writable
    }

    /// The channels whose peer has synced, with their peers, in channel order.
    pub(super) fn open_channels(&self) -> Vec<(PeerId, ChannelId)> {
        self.remotes
            .iter()
            .filter(|(_, r)| r.sync.is_some())
            .map(|(ch, r)| (r.peer, *ch))
            .collect()
    }

    // Channels.

    /// Channel `channel` with `peer` is authenticated: our state goes first.
    pub(super) fn channel_up(&mut self, peer: PeerId, channel: ChannelId, cx: &mut Cx) {
        self.remotes.insert(channel, Box::new(Remote::new(peer)));
        self.by_peer.insert(peer, channel);
        // An update under way waits for this peer's state too (it may replace a channel the
        // update was waiting for): it is asked, as the others were.
        let mut updating = false;
        if let Some(u) = self.update.as_mut().filter(|u| !u.expired) {
            u.waiting.insert(channel);
            updating = true;
        }
        cx.send(peer, channel, Message::Sync(self.sync_info(updating)));
    }

    /// Whether the core has an authenticated channel.
    pub(super) fn has_channels(&self) -> bool {
        !self.remotes.is_empty()
    }

    /// Channel `channel` is gone: its requests fail without blame, its peer is no longer a
    /// source of the core (the fetch queue forgets a peer whose connection went by itself),
    /// and an upgrade asked on it is asked of another peer at the end of the turn. Returns
    /// whether it was a channel of this core.
    pub(super) fn channel_down(
        &mut self,
        channel: ChannelId,
        peer_gone: bool,
        given_up: bool,
        cx: &mut Cx,
    ) -> bool {
        let Some(r) = self.remotes.remove(&channel) else {
            return false;
        };
        cx.peers.ranges_changed(&r.peer, r.ranges.len(), 0);
        if self.by_peer.get(&r.peer) == Some(&channel) {
            self.by_peer.remove(&r.peer);
        }
        if self.remotes.is_empty() {
            // An emptied map keeps its node: a core closed idle holds none.
            self.remotes = BTreeMap::new();
            self.by_peer = BTreeMap::new();
        }
        let unanswered = self
            .update
            .as_ref()
            .is_some_and(|p| p.waiting.contains(&channel));
        self.update_answered(channel);
        if unanswered
            && self.remotes.is_empty()
            && let Some(pending) = &mut self.update
        {
            // The only peer asked went without answering (a channel replaced as both sides
            // opened one, a restart): the update waits for the next peer's state, within its
            // time, rather than answer with the local length as if the peers had nothing.
            pending.first_peer = true;
        }
        if r.sync.is_some() {
            cx.emit(Event::ChannelClosed {
                core: self.key,
                peer: r.peer,
            });
        }
        let deadline = cx.timers.get(Timer::Upgrade(self.key));
        let upgrading = self.upgrade.take_on(self.key, channel, cx.timers).is_some();
        // Giving the channel up (or the connection: the fetch queue sees to its requests then)
        // with requests or the upgrade unanswered for more than half their timeout is a
        // failure, as their timing out would be: else a peer that claims more than it has
        // would open its channel again before each deadline and be asked first for ever. One
        // that goes right after being asked (a restart, a connection replaced) is not blamed.
        let half = cx.cfg.upgrade_timeout / 2;
        let late_upgrade =
            upgrading && deadline.is_some_and(|d| d.saturating_duration_since(cx.now) < half);
        let late_requests =
            !peer_gone && cx.fetch.has_late_requests(&r.peer, Some(&self.key), cx.now);
        if given_up && (late_upgrade || late_requests) {
            cx.fetch.penalize(r.peer, cx.now);
        }
        if !peer_gone {
            cx.fetch.remove_source(&self.key, &r.peer);
        }
        if upgrading {
            cx.note(Note::RetryUpgrade(self.key));
        }
        true
    }

    /// A message of channel `channel` for this core's sync (`Sync`, `Range`, `Want`,
    /// `Unwant`, `Data`, `NoData`, `Push`); others are ignored.
    pub(super) fn on_message(&mut self, channel: ChannelId, msg: Message, cx: &mut Cx) {
        match msg {
            Message::Sync(info) => self.on_sync(channel, info, cx),
            Message::Range { start, end } => self.on_range(channel, start, end, cx),
            Message::Want { start, end } => self.on_remote_want(channel, start, end, cx),
            Message::Data { id, proof } => self.on_data(channel, id, proof, cx),
            Message::NoData { id, start, end } => self.on_no_data(channel, id, start, end, cx),
            Message::Push { proof } => self.on_push(channel, proof, cx),
            // What a peer no longer wants changes nothing we send: we tell of what we hold
            // only when asked.
            _ => {}
        }
    }

    // What the remotes hold.

    fn on_sync(&mut self, channel: ChannelId, info: SyncInfo, cx: &mut Cx) {
        let local = self.local;
        let Some(r) = self.remotes.get_mut(&channel) else {
            return;
        };
        let peer = r.peer;
        let first = r.sync.is_none();
        let old = r.sync.replace(info);
        if old.is_some_and(|o| o.fork != info.fork) {
            cx.peers.ranges_changed(&peer, r.ranges.len(), 0);
            r.ranges.clear();
            r.sourced = 0;
        }
        // Only blocks not recorded before: a peer whose `contiguous` goes down and up again
        // does not make us walk the fetch queue each time.
        let mut new_source = None;
        if info.fork == local.fork {
            let (from, to) = (r.sourced, info.contiguous.min(local.length));
            if to > from {
                r.sourced = to;
                new_source = Some((from, to));
            }
        }
        self.update_answered(channel);
        if first {
            if let Some(pending) = &mut self.update {
                // The first peer's state answers an update that waited for one.
                pending.first_peer = false;
            }
            cx.emit(Event::ChannelOpen {
                core: self.key,
                peer,
            });
        }
        // Answered only while the peer reads what we send: a peer that asks and never reads
        // must not grow its backlog one `Sync` at a time.
        if info.ask && cx.has_room(&peer) {
            cx.send(peer, channel, Message::Sync(self.sync_info(false)));
        }
        if let Some((from, to)) = new_source {
            cx.fetch.add_source(self.key, from, to, peer);
        }
        self.maybe_upgrade(cx);
    }

    fn on_range(&mut self, channel: ChannelId, start: u64, end: u64, cx: &mut Cx) {
        let Some(r) = self.remotes.get_mut(&channel) else {
            return;
        };
        // Only what no earlier `Sync` or `Range` of this channel covered: each block is
        // recorded once per channel however often a peer repeats itself.
        let start = start.max(r.sourced);
        if start >= end || r.ranges.len() >= MAX_REMOTE_RANGES || !cx.peers.has_range_room(&r.peer)
        {
            return;
        }
        let before = r.ranges.len();
        let new = ranges::insert(&mut r.ranges, start, end);
        cx.peers.ranges_changed(&r.peer, before, r.ranges.len());
        if r.sync.map(|s| s.fork) == Some(self.local.fork) {
            for (s, e) in new {
                cx.fetch
                    .add_source(self.key, s, e.min(self.local.length), r.peer);
            }
        }
    }

    /// A peer wants blocks: tell it which of them we hold beyond what `Sync` said, while it
    /// reads what we send.
    fn on_remote_want(&mut self, channel: ChannelId, start: u64, end: u64, cx: &mut Cx) {
        let Some(r) = self.remotes.get(&channel) else {
            return;
        };
        if !cx.has_room(&r.peer) {
            return;
        }
        let end = end.min(self.local.contiguous);
        if start < end {
            cx.send(r.peer, channel, Message::Range { start, end });
        }
    }

    /// Records which peers have blocks `start..end`, for the fetch queue.
    fn add_sources(&self, start: u64, end: u64, cx: &mut Cx) {
        for r in self.remotes.values() {
            let Some(remote) = r.sync else { continue };
            if remote.fork != self.local.fork {
                continue;
            }
            cx.fetch
                .add_source(self.key, start, end.min(remote.contiguous), r.peer);
            for (s, e) in &r.ranges {
                cx.fetch
                    .add_source(self.key, start.max(*s), end.min(*e), r.peer);
            }
        }
    }

    /// A gossip announcement said `peer` (with `channel`) holds `fork` and `length`: ask for
    /// its state, unless its last `Sync` told us that much already (a writer's `Sync` and
    /// push travel beside its announcement).
    pub(super) fn ask_if_untold(
        &mut self,
        channel: ChannelId,
        fork: u64,
        length: u64,
        cx: &mut Cx,
    ) {
        let Some(r) = self.remotes.get(&channel) else {
            return;
        };
        let told = r.sync.is_some_and(|s| (s.fork, s.length) >= (fork, length));
        if !told {
            cx.send(r.peer, channel, Message::Sync(self.sync_info(true)));
        }
    }

    /// Sends our state on every open channel, but those with a push being read: their
    /// `Sync` follows the push.
    pub(super) fn broadcast_sync(&self, ask: bool, cx: &mut Cx) {
        self.send_sync(ask, |_| true, cx);
    }

    /// Sends our changed state to the peers it tells anything. A reader that downloads every
    /// block sends a state that still lacks blocks of its length only to peers that do not
    /// hold at least as much of the same fork: such a peer fetches nothing from us and pushes
    /// us nothing (it pushes only to a reader holding its whole log), and our whole state,
    /// which comes next, reaches it. In a whole store that is the reader's state after each
    /// core's first upgrade: one message of about 19 a core. A sparse reader's state is
    /// always sent: it may never hold its whole log, and a peer needs its length to see their
    /// channel idle.
    fn tell_change(&self, cx: &mut Cx) {
        let local = self.local;
        let partial = self.downloads_all() && local.contiguous < local.length;
        let holds_ours = |theirs: &SyncInfo| {
            theirs.fork == local.fork
                && theirs.length >= local.length
                && theirs.contiguous >= local.contiguous
        };
        self.send_sync(false, |theirs| !(partial && holds_ours(theirs)), cx);
    }

    /// Sends our state (asking for theirs if `ask`) on every channel whose peer synced, is not
    /// being pushed to, and whose state `to` accepts.
    fn send_sync(&self, ask: bool, to: impl Fn(&SyncInfo) -> bool, cx: &mut Cx) {
        let info = self.sync_info(ask);
        for (ch, r) in &self.remotes {
            if let Some(theirs) = &r.sync
                && !r.pushing
                && to(theirs)
            {
                cx.send(r.peer, *ch, Message::Sync(info));
            }
        }
    }

    // The local state.

    /// Takes in the core's new local state: tells peers, queues new blocks, emits events,
    /// and notes that the core is announced and its idle channels reopened.
    pub(super) fn local_changed(&mut self, new: LocalInfo, cx: &mut Cx) {
        let old = self.local;
        if old == new {
            return;
        }
        self.local = new;
        if let Some(avg) = new.byte_length.checked_div(new.length) {
            cx.fetch.set_block_size(self.key, avg);
        }
        if new.fork != old.fork {
            // Everything in flight was for the old fork.
            self.apply.pending.clear();
            self.queued_to = new.contiguous;
            cx.fetch.remove_core(&self.key);
            for r in self.remotes.values_mut() {
                r.requests.retain(|_, s| matches!(s, Sent::Upgrade { .. }));
            }
            cx.emit(Event::Truncate {
                core: self.key,
                length: new.length,
                fork: new.fork,
            });
        } else if new.length < old.length {
            cx.fetch.truncate(&self.key, new.length);
            self.queued_to = self.queued_to.min(new.length);
        }
        if new.length > old.length || new.fork != old.fork {
            cx.emit(Event::Append {
                core: self.key,
                length: new.length,
                fork: new.fork,
            });
            cx.note(Note::Announce(self.key));
        }
        if new.length != old.length || new.fork != old.fork {
            cx.note(Note::Reopen(self.key));
        }
        self.push_new_blocks(old, new, cx);
        self.tell_change(cx);
        self.enqueue_missing(cx);
    }

    // Fetching.

    /// Queues the blocks this core should fetch (every block in full mode, the wanted ones in
    /// sparse mode) that are not queued yet.
    pub(super) fn enqueue_missing(&mut self, cx: &mut Cx) {
        let length = self.local.length;
        let ranges: Vec<(u64, u64)> = match self.mode {
            Mode::Full => {
                // Wanted blocks within the length are queued below like every other.
                self.wanted = self.wanted.split_off(&length);
                let start = self.queued_to.max(self.local.contiguous);
                self.queued_to = length.max(self.queued_to);
                if start < length {
                    vec![(start, length)]
                } else {
                    vec![]
                }
            }
            Mode::Sparse => self
                .wanted
                .range(..length)
                .map(|(i, _)| *i)
                .filter(|i| !cx.fetch.contains(&self.key, *i))
                .map(|i| (i, i + 1))
                .collect(),
        };
        for (s, e) in ranges {
            cx.fetch.add(self.key, s, e);
            self.add_sources(s, e, cx);
        }
    }

    /// The application wants blocks `start..end`.
    pub(super) fn want(&mut self, start: u64, end: u64, cx: &mut Cx) {
        let from = start.max(if self.mode == Mode::Full {
            self.queued_to
        } else {
            0
        });
        // Full mode queues every block anyway; a want only matters beyond the known length.
        for i in from..end.min(from.saturating_add(MAX_WANTED_RANGE)) {
            let n = self.wanted.entry(i).or_default();
            *n = n.saturating_add(1);
        }
        for (peer, ch) in self.open_channels() {
            cx.send(peer, ch, Message::Want { start, end });
        }
        cx.note(Note::Reopen(self.key));
        if self.mode == Mode::Sparse {
            self.enqueue_missing(cx);
        }
    }

    /// The application no longer wants blocks `start..end`: each loses one want, and those
    /// nobody wants leave the fetch queue (sparse mode); run requests left with nothing
    /// wanted are cancelled, and the peers told.
    pub(super) fn unwant(&mut self, start: u64, end: u64, cx: &mut Cx) {
        // The same blocks its `Want` counted.
        let from = start.max(if self.mode == Mode::Full {
            self.queued_to
        } else {
            0
        });
        let to = end.min(from.saturating_add(MAX_WANTED_RANGE));
        let mut gone = Vec::new();
        for (i, n) in self.wanted.range_mut(from..to.max(from)) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                gone.push(*i);
            }
        }
        for i in &gone {
            self.wanted.remove(i);
        }
        if self.mode == Mode::Sparse && !gone.is_empty() {
            for id in cx.fetch.remove_blocks(&self.key, &gone) {
                let found = self
                    .remotes
                    .iter_mut()
                    .find(|(_, r)| r.requests.contains_key(&id));
                if let Some((ch, r)) = found {
                    r.requests.remove(&id);
                    cx.send(r.peer, *ch, Message::Cancel { id });
                }
            }
        }
        for (peer, ch) in self.open_channels() {
            cx.send(peer, ch, Message::Unwant { start, end });
        }
    }

    /// Sends the run request the fetch queue handed out on the peer's channel; false if the
    /// peer has none (the caller cancels the request).
    pub(super) fn send_run(&mut self, a: Assignment, cx: &mut Cx) -> bool {
        let Some(ch) = self.by_peer.get(&a.peer).copied() else {
            return false;
        };
        let Some(r) = self.remotes.get_mut(&ch) else {
            return false;
        };
        r.requests.insert(a.id, Sent::Run);
        let request = Message::RequestRun {
            id: a.id,
            fork: self.local.fork,
            start: a.start,
            end: a.end,
            length: self.local.length,
        };
        cx.send(a.peer, ch, request);
        true
    }

    /// Run request `id` to `peer` timed out (the fetch queue backed the peer off and queued
    /// its blocks again): it is cancelled on its channel.
    pub(super) fn run_timed_out(&mut self, id: u64, peer: PeerId, cx: &mut Cx) {
        let Some(ch) = self.by_peer.get(&peer).copied() else {
            return;
        };
        if let Some(r) = self.remotes.get_mut(&ch)
            && r.requests.remove(&id).is_some()
        {
            cx.send(peer, ch, Message::Cancel { id });
        }
    }

    // Answers.

    /// `Data` on `channel`: routed to the upgrade or run request `id` it answers.
    fn on_data(&mut self, channel: ChannelId, id: u64, proof: Proof, cx: &mut Cx) {
        let Some(r) = self.remotes.get_mut(&channel) else {
            return;
        };
        match r.requests.get(&id).copied() {
            Some(Sent::Upgrade {
                start,
                length,
                block,
            }) => {
                r.requests.remove(&id);
                self.on_upgrade_data(channel, (start, length, block), proof, cx);
            }
            Some(Sent::Run) => self.on_run_data(channel, id, proof, cx),
            // Late answer to a request that timed out or was cancelled.
            None => {}
        }
    }

    /// `NoData` on `channel`: routed to the upgrade or run request `id` it answers.
    fn on_no_data(&mut self, channel: ChannelId, id: u64, start: u64, end: u64, cx: &mut Cx) {
        let Some(r) = self.remotes.get_mut(&channel) else {
            return;
        };
        let peer = r.peer;
        match r.requests.get(&id).copied() {
            Some(Sent::Upgrade { .. }) => {
                r.requests.remove(&id);
                self.upgrade_failed(channel, cx);
                // It said it had that length and cannot prove it: backed off like a peer that
                // does not answer, or a peer repeating the claim in its next `Sync` would be
                // asked again at once, round after round.
                cx.fetch.penalize(peer, cx.now);
                self.maybe_upgrade(cx);
            }
            Some(Sent::Run) => {
                // What the peer lacks now it may hold later: its next `Sync` records it again.
                r.sourced = r.sourced.min(start);
                cx.fetch.on_no_data(id, start, end, cx.now);
                if !cx.fetch.is_open(id) {
                    r.requests.remove(&id);
                }
            }
            None => {}
        }
    }

    /// `Data` answering run request `id` on `channel`: a block to verify and store, unless
    /// the request did not ask for it.
    fn on_run_data(&mut self, channel: ChannelId, id: u64, proof: Proof, cx: &mut Cx) {
        let Some(r) = self.remotes.get_mut(&channel) else {
            return;
        };
        let peer = r.peer;
        // A block of a run broken by an earlier one is not verified: it buys its peer no time.
        let broken = self.apply.broken_runs.contains(&id);
        let arrival = match proof.block.as_ref() {
            Some(b) if broken => {
                cx.fetch
                    .on_received_unverified(id, b.index, b.value.len() as u64, cx.now)
            }
            Some(b) => cx
                .fetch
                .on_received(id, b.index, b.value.len() as u64, cx.now),
            None => Arrival::Unexpected,
        };
        if !cx.fetch.is_open(id) {
            r.requests.remove(&id);
        }
        match arrival {
            Arrival::Taken if broken => {
                // An earlier block of this run was not stored: this one cannot verify.
                if let Some(b) = &proof.block {
                    cx.fetch.on_store_failed(&self.key, b.index);
                }
                return;
            }
            Arrival::Taken => {}
            // Storage is behind and the blocks are larger than expected: asked again later,
            // nobody blamed.
            Arrival::OverCap => {
                // The blocks of the run that came before it in this read are applied first:
                // the break drops every pending proof of the run, and without them a read
                // over the cap would store nothing at all.
                self.maybe_apply(cx);
                self.apply.break_run(id);
                return;
            }
            // Not a block of this run: an answer nobody asked for.
            Arrival::Unexpected => {
                cx.fetch.penalize(peer, cx.now);
                return;
            }
        }
        self.apply.pending.push((peer, id, proof));
        // Applied at the end of the turn: the other blocks of the read join this apply
        // instead of waiting for the next (a run of 10 small blocks took 2.3 applies). While
        // an apply runs, its end takes what is pending.
        if self.apply.run_may_start() {
            cx.note(Note::BlocksArrived(self.key));
        }
    }

    // Upgrades.

    /// Asks the peer furthest ahead for a signed upgrade, if none is in flight. A writer's
    /// state comes from its own appends, never from the wire.
    pub(super) fn maybe_upgrade(&mut self, cx: &mut Cx) {
        if self.upgrade.get().is_some() || self.apply.upgrade_proof.is_some() || self.local.writable
        {
            return;
        }
        let local = self.local;
        let candidates = self
            .remotes
            .iter()
            .filter(|(_, r)| cx.may_ask(&r.peer))
            .filter_map(|(ch, r)| r.sync.map(|s| (*ch, r.peer, s)));
        let Some((channel, peer, remote)) = upgrade::furthest_ahead(&local, candidates) else {
            // A peer ahead that is backed off (or serving a penalty) is asked once it ends.
            let waiting = self
                .remotes
                .values()
                .any(|r| r.sync.is_some_and(|s| upgrade::is_ahead(&s, &local)));
            if waiting {
                cx.note(Note::UpgradeAfterBackoff(self.key));
            }
            return;
        };
        let (request, start) = upgrade::request(&local, self.mode, &remote);
        let deadline = cx.now + cx.cfg.upgrade_timeout;
        let id = self
            .upgrade
            .start(self.key, peer, channel, deadline, cx.timers);
        if let Some(r) = self.remotes.get_mut(&channel) {
            r.requests.insert(
                id,
                Sent::Upgrade {
                    start,
                    length: remote.length - start,
                    block: request.block.map(|b| b.index),
                },
            );
        }
        cx.send(peer, channel, Message::Request { id, request });
    }

    /// `Data` answering the upgrade request on `channel`, which asked for an upgrade from
    /// `start` by `length` blocks, with block `block` if one was asked for.
    fn on_upgrade_data(
        &mut self,
        channel: ChannelId,
        (start, length, block): (u64, u64, Option<u64>),
        proof: Proof,
        cx: &mut Cx,
    ) {
        let Some(peer) = self.remotes.get(&channel).map(|r| r.peer) else {
            return;
        };
        // An answer must answer the question: an upgrade from where we asked to the length
        // the peer claimed, and the block we asked for. Anything else (no upgrade at all, or
        // an older state that proves less than it claimed) fails the request.
        let answers = proof
            .upgrade
            .as_ref()
            .is_some_and(|u| u.start == start && u.length >= length)
            && proof.block.as_ref().map(|b| b.index) == block
            && proof.hash.is_none()
            && proof.seek.is_none();
        if !answers {
            self.upgrade_failed(channel, cx);
            cx.blame(
                self.key,
                peer,
                "an answer that does not answer the upgrade asked for".into(),
            );
            self.maybe_upgrade(cx);
            return;
        }
        self.apply.upgrade_proof = Some((peer, proof));
        self.maybe_apply(cx);
    }

    /// The upgrade asked on `channel` failed: its peer cannot prove the length it claimed, so
    /// it is not believed until it syncs again (it is asked to), and the upgrade may be asked
    /// of another peer.
    fn upgrade_failed(&mut self, channel: ChannelId, cx: &mut Cx) {
        self.upgrade.take_on(self.key, channel, cx.timers);
        let length = self.local.length;
        let Some(r) = self.remotes.get_mut(&channel) else {
            return;
        };
        if let Some(remote) = r.sync.as_mut() {
            remote.length = remote.length.min(length);
        }
        // An honest peer that was only slow says its length again and is asked again (after
        // its back-off); a liar says its lie again and runs out of back-offs.
        if cx.has_room(&r.peer) {
            cx.send(r.peer, channel, Message::Sync(self.sync_info(true)));
        }
    }

    /// The `Upgrade` timer fired: the upgrade in flight is asked of another peer, and its peer
    /// is not believed until it syncs again, and backed off. An upgrade whose answer (or push)
    /// arrived and waits for storage is not late on the peer's side: it waits again.
    pub(super) fn upgrade_timed_out(&mut self, cx: &mut Cx) {
        let Some(u) = self.upgrade.get() else {
            return;
        };
        if self.upgrade_being_applied(&u) {
            // Answered (or pushed), and our storage is slow to apply it: the peer is not at
            // fault. It waits again, with a deadline.
            let again = Upgrading {
                deadline: cx.now + cx.cfg.upgrade_timeout,
                ..u
            };
            self.upgrade.set(self.key, again, cx.timers);
            return;
        }
        if let Some(r) = self.remotes.get_mut(&u.channel)
            && r.requests.remove(&u.id).is_some()
        {
            // The peer may still be working on it: it need not.
            cx.send(u.peer, u.channel, Message::Cancel { id: u.id });
        }
        // Not believed until it syncs again, like a peer that says it cannot prove.
        self.upgrade_failed(u.channel, cx);
        if cx.peers.contains(&u.peer) {
            cx.fetch.penalize(u.peer, cx.now);
        }
        self.maybe_upgrade(cx);
    }

    /// Whether the answer (or push) of upgrade `u` waits for storage or is being applied: it
    /// is no longer asked, and a proof from its peer is queued or applying.
    fn upgrade_being_applied(&self, u: &Upgrading) -> bool {
        let asked = self
            .remotes
            .get(&u.channel)
            .is_some_and(|r| r.requests.contains_key(&u.id));
        let queued = self
            .apply
            .upgrade_proof
            .as_ref()
            .is_some_and(|(peer, _)| *peer == u.peer);
        let applying = self.apply.upgrade_applying() == Some(u.peer);
        !asked && (queued || applying)
    }

    /// The request that a push superseded while the push was applied: withdrawn once the push
    /// stored, or asked for again (it is still outstanding) if the push failed, so that a
    /// forged push cannot cancel an honest upgrade.
    fn settle_superseded(&mut self, asked: Upgrading, push_stored: bool, cx: &mut Cx) {
        let Some(r) = self.remotes.get_mut(&asked.channel) else {
            return;
        };
        if !r.requests.contains_key(&asked.id) {
            return;
        }
        if push_stored {
            r.requests.remove(&asked.id);
            cx.send(asked.peer, asked.channel, Message::Cancel { id: asked.id });
        } else {
            self.upgrade.set(self.key, asked, cx.timers);
        }
    }

    // Pushes.

    /// After a writable core grew from `old` to `new` on the same fork: starts a push to every
    /// channel whose remote downloads everything and held the whole log at `old`, as its last
    /// `Sync` said, or one block short of it when our last push was that block (its `Sync`
    /// saying so may still be on its way: appends one at a time outrun it). Their `Sync` is
    /// held back until the push is sent (see [`pushed`](Self::pushed)).
    ///
    /// Without it, a new block reaches a caught-up reader in two round trips: our `Sync`, its
    /// `Request`, our `Data`. Only the writer pushes: readers that pushed what they just
    /// received would send each block back to where it came from. A push the remote cannot
    /// take (it had not applied the one before) is dropped there and the `Sync` after it
    /// starts the usual request, whose upgrade ends the promise ([`upgrade_asked`]): a
    /// confirmed push and at most one on its promise go in vain before the remote's `Sync`
    /// confirms again, never one per append.
    ///
    /// [`upgrade_asked`]: Self::upgrade_asked
    fn push_new_blocks(&mut self, old: LocalInfo, new: LocalInfo, cx: &mut Cx) {
        let grew =
            new.writable && new.fork == old.fork && new.length > old.length && old.length > 0;
        // We must hold the first new block to prove it.
        if !grew || new.contiguous <= old.length {
            return;
        }
        let targets: Vec<ChannelId> = self
            .remotes
            .iter()
            .filter(|(_, r)| !r.pushing && cx.has_room(&r.peer))
            .filter(|(_, r)| {
                r.sync.is_some_and(|s| {
                    let promised = r.pushed_to == Some((old.fork, old.length))
                        && s.length.checked_add(1) == Some(old.length);
                    s.downloading
                        && s.fork == old.fork
                        && (s.length == old.length || promised)
                        && s.contiguous == s.length
                })
            })
            .map(|(ch, _)| *ch)
            .collect();
        for channel in targets {
            if let Some(r) = self.remotes.get_mut(&channel) {
                r.pushing = true;
            }
            let request = ProofRequest {
                fork: new.fork,
                block: Some(IndexRequest {
                    index: old.length,
                    nodes: 0,
                }),
                upgrade: Some(UpgradeRequest {
                    start: old.length,
                    length: new.length - old.length,
                }),
                ..Default::default()
            };
            let reply: Reply<ProofRead> = cx.tasks.start(self.key);
            self.pushes.insert(reply.id(), channel);
            let task = Task::CreateProof { request, reply };
            cx.out.push_back(Output::Task(self.key, task));
        }
    }

    /// The remote on `channel` asked us for a signed length: it did not take our last push
    /// (or wants more than it carried), so no block goes on that push's promise. A reader that
    /// keeps dropping pushes is then pushed only once its `Sync` says it holds the whole log.
    pub(super) fn upgrade_asked(&mut self, channel: ChannelId) {
        if let Some(r) = self.remotes.get_mut(&channel) {
            r.pushed_to = None;
        }
    }

    /// The proof of push task `id` is ready (or could not be made): sends it, then our `Sync`.
    pub(super) fn pushed(&mut self, id: TaskId, result: ProofRead, cx: &mut Cx) {
        let Some(channel) = self.pushes.remove(&id) else {
            return;
        };
        let Some(r) = self.remotes.get_mut(&channel) else {
            return;
        };
        r.pushing = false;
        r.pushed_to = None;
        let peer = r.peer;
        match result {
            Ok(proof) => {
                r.pushed_to = match (&proof.block, &proof.upgrade) {
                    (Some(b), Some(u)) if u.length == 1 && b.index == u.start => {
                        u.start.checked_add(1).map(|to| (proof.fork, to))
                    }
                    _ => None,
                };
                if let Some(b) = &proof.block {
                    cx.uploaded(self.key, peer, b.index, b.value.len() as u64);
                }
                cx.peers.count(&peer, |s| s.pushes_sent += 1);
                cx.send(peer, channel, Message::Push { proof });
            }
            // Truncated meanwhile, say: the `Sync` tells the peer where we are.
            Err(e) => tracing::debug!("push not sent: {e}"),
        }
        cx.send(peer, channel, Message::Sync(self.sync_info(false)));
    }

    /// A peer pushed a block with its upgrade. It is applied as an upgrade from that peer if
    /// we are a full-mode reader holding the whole log, it starts at our length on our fork,
    /// and no other upgrade is under way; otherwise it is dropped (the peer's `Sync` follows
    /// it). A writer takes no pushes: only it can sign new blocks of its log.
    fn on_push(&mut self, channel: ChannelId, proof: Proof, cx: &mut Cx) {
        let Some(peer) = self.remotes.get(&channel).map(|r| r.peer) else {
            return;
        };
        let trusted = cx.may_ask(&peer);
        // An upgrade asked of a peer (not a push being applied) does not keep a fitting push
        // out: a silent or slow peer claiming more must not stall following live.
        let upgrading = self.upgrade.get();
        let asked = upgrading.filter(|u| {
            self.remotes
                .get(&u.channel)
                .is_some_and(|r| r.requests.contains_key(&u.id))
        });
        let busy = upgrading.is_some() && asked.is_none();
        let local = self.local;
        let fits = self.mode == Mode::Full
            && !local.writable
            && trusted
            && !busy
            && self.apply.upgrade_proof.is_none()
            && local.length > 0
            && local.contiguous == local.length
            && proof.fork == local.fork
            && proof
                .upgrade
                .as_ref()
                .is_some_and(|u| u.start == local.length)
            && proof
                .block
                .as_ref()
                .is_some_and(|b| b.index == local.length);
        if !fits {
            tracing::trace!("push from {peer:?} does not fit our state; dropped");
            return;
        }
        // The request stays outstanding until the push verified (see `settle_superseded`).
        if asked.is_some() {
            self.upgrade.supersede(self.key, cx.timers);
        }
        let deadline = cx.now + cx.cfg.upgrade_timeout;
        self.upgrade
            .start(self.key, peer, channel, deadline, cx.timers);
        self.apply.upgrade_proof = Some((peer, proof));
        cx.peers.count(&peer, |s| s.pushes_taken += 1);
        self.maybe_apply(cx);
    }

    // Applying.

    /// Starts applying what arrived, upgrades first and alone, then a batch of block proofs
    /// while fewer than two run (the engine calls it at the end of a turn in which blocks
    /// arrived, and when an apply ends).
    pub(super) fn maybe_apply(&mut self, cx: &mut Cx) {
        if self.apply.upgrade_applying().is_some() {
            return;
        }
        let local = self.local;
        // An answer that arrived while a push was applied, and that the push made stale:
        // dropped, not blamed (it answered what was asked).
        if self.apply.upgrade_proof.as_ref().is_some_and(|(_, p)| {
            p.fork == local.fork && p.upgrade.as_ref().is_some_and(|u| u.start != local.length)
        }) {
            self.apply.upgrade_proof = None;
        }
        // An upgrade goes alone: it waits for the runs applying, and no run starts before it.
        if self.apply.upgrade_proof.is_some() && self.apply.is_applying() {
            return;
        }
        if let Some((peer, proof)) = self.apply.upgrade_proof.take() {
            let block = proof
                .block
                .as_ref()
                .map(|b| (b.index, b.value.len() as u64));
            let reply: Reply<Applied<()>> = cx.tasks.start(self.key);
            let id = reply.id();
            self.apply
                .applying
                .push(Applying::Upgrade { id, peer, block });
            let task = Task::ApplyProof { proof, reply };
            cx.out.push_back(Output::Task(self.key, task));
            return;
        }
        if local.length == 0 || !self.apply.run_may_start() {
            return;
        }
        let index = |proof: &Proof| proof.block.as_ref().map_or(u64::MAX, |b| b.index);
        // The next apply's proofs arrive into a vector already as large as this one's (up to
        // one run), while more blocks are expected; a core this apply completes keeps none
        // (at 10,000 cores, about 2 KiB each).
        let expects_more = local
            .contiguous
            .saturating_add(self.apply.pending.len() as u64)
            < local.length;
        let capacity = if expects_more {
            self.apply.pending.len().min(MAX_RUN as usize)
        } else {
            0
        };
        let mut pending = std::mem::replace(&mut self.apply.pending, Vec::with_capacity(capacity));
        if !self.apply.broken_runs.is_empty() {
            let (key, broken_runs) = (self.key, &self.apply.broken_runs);
            pending.retain(|(_, id, proof)| {
                let broken = broken_runs.contains(id);
                if broken {
                    cx.fetch.on_store_failed(&key, index(proof));
                }
                !broken
            });
        }
        if pending.is_empty() {
            return;
        }
        let meta = pending
            .iter()
            .map(|(peer, id, proof)| (index(proof), *peer, *id))
            .collect();
        let proofs = pending.into_iter().map(|(_, _, p)| p).collect();
        let reply: Reply<Applied<RunApplied>> = cx.tasks.start(self.key);
        let id = reply.id();
        self.apply.applying.push(Applying::Run {
            id,
            proofs: meta,
            excused: BTreeSet::new(),
        });
        let task = Task::ApplyRun { proofs, reply };
        cx.out.push_back(Output::Task(self.key, task));
    }

    /// Upgrade proof task `id` was applied. The request a push took the place of is settled,
    /// the block that came with it counted, and the next upgrade asked.
    pub(super) fn upgrade_applied(&mut self, id: TaskId, done: Applied<()>, cx: &mut Cx) {
        let Some((_, Applying::Upgrade { peer, block, .. })) = self.apply.take(id) else {
            return;
        };
        self.upgrade.take(self.key, cx.timers);
        let stored = matches!(done.outcome, ApplyOutcome::Done(()));
        if let Some(asked) = self.upgrade.take_superseded() {
            self.settle_superseded(asked, stored, cx);
        }
        match done.outcome {
            ApplyOutcome::Done(()) => {
                if let Some((index, bytes)) = block {
                    cx.fetch.on_committed(&self.key, index);
                    cx.downloaded(self.key, peer, index, bytes);
                }
            }
            ApplyOutcome::Invalid(reason) => cx.blame(self.key, peer, reason),
            ApplyOutcome::Failed(e) => tracing::warn!("storing an upgrade failed: {e}"),
        }
        self.local_changed(done.local, cx);
        self.maybe_apply(cx);
        self.maybe_upgrade(cx);
    }

    /// Run proof task `id` was applied up to its first failure. That proof's peer is blamed;
    /// the proofs after it (of any peer) are queued again without blame, and their runs
    /// marked broken, since later proofs of those runs rely on the nodes they carried.
    pub(super) fn run_applied(&mut self, id: TaskId, done: Applied<RunApplied>, cx: &mut Cx) {
        let Some((
            at,
            Applying::Run {
                proofs, excused, ..
            },
        )) = self.apply.take(id)
        else {
            return;
        };
        // Sorted vectors, not maps: a batch holds up to thousands of proofs, and a map's node
        // per proof was a tenth of this function's cost. Of two proofs of one block, the later
        // one counts (the stable sort keeps them in arrival order).
        let mut by_index = proofs.clone();
        by_index.sort_by_key(|(index, _, _)| *index);
        let find = |index: u64| {
            let after = by_index.partition_point(|(i, _, _)| *i <= index);
            let (i, peer, id) = *by_index.get(after.checked_sub(1)?)?;
            (i == index).then_some((peer, id))
        };
        let mut stored = Vec::new();
        // The runs this apply lost a proof of: the run applies still running rely on them.
        let mut lost = BTreeSet::new();
        match done.outcome {
            ApplyOutcome::Done(applied) => {
                stored.reserve(applied.stored.len() + 1);
                for (index, bytes) in &applied.stored {
                    stored.push(*index);
                    cx.fetch.on_committed(&self.key, *index);
                    self.wanted.remove(index);
                    if let Some((peer, _)) = find(*index) {
                        cx.downloaded(self.key, peer, *index, *bytes);
                    }
                }
                if let Some((index, err)) = applied.rejected
                    && let Some((peer, id)) = find(index)
                {
                    stored.push(index);
                    // Back to the queue; the peer is penalized once, by the blame.
                    cx.fetch.on_store_failed(&self.key, index);
                    self.apply.break_run(id);
                    lost.insert(id);
                    if !excused.contains(&id) {
                        cx.blame(self.key, peer, err.to_string());
                    }
                }
            }
            ApplyOutcome::Invalid(e) | ApplyOutcome::Failed(e) => {
                tracing::warn!("applying a run failed: {e}");
            }
        }
        stored.sort_unstable();
        for (index, _, id) in &proofs {
            if stored.binary_search(index).is_err() {
                cx.fetch.on_store_failed(&self.key, *index);
                self.apply.break_run(*id);
                lost.insert(*id);
            }
        }
        self.apply.excuse_after(at, &lost);
        self.local_changed(done.local, cx);
        self.maybe_apply(cx);
    }

    // Updates.

    /// The application asks for the newest state of the peers: every open channel is asked
    /// with a `Sync`. With no channel while the core looks for the peers it knows (`searching`,
    /// after `open_ticket` or `join`, or when its peers went), it waits for the first one's
    /// state, up to `first_peer_timeout`. An update asked while one is under way joins it and
    /// keeps its timer: asking again and again does not make a silent peer hold them all up.
    pub(super) fn update(&mut self, searching: bool, cx: &mut Cx) {
        let info = self.sync_info(true);
        let channels = self.open_channels();
        let pending = self.update.get_or_insert_default();
        let first_peer = channels.is_empty() && searching;
        if !pending.timed {
            pending.timed = true;
            let wait = if first_peer {
                cx.cfg.first_peer_timeout
            } else {
                cx.cfg.upgrade_timeout
            };
            cx.timers.set(Timer::Update(self.key), cx.now + wait);
        }
        pending.first_peer |= first_peer;
        for (_, ch) in &channels {
            pending.waiting.insert(*ch);
        }
        for (peer, ch) in channels {
            cx.send(peer, ch, Message::Sync(info));
        }
        cx.note(Note::Updating(self.key));
    }

    /// Channel `id` answered (or went away): the update waits for it no more.
    fn update_answered(&mut self, id: ChannelId) {
        if let Some(pending) = &mut self.update {
            pending.waiting.remove(&id);
        }
    }

    /// The `Update` timer fired: the update waits for silent (or absent) peers no more, nor
    /// for an upgrade a peer has not answered yet.
    pub(super) fn update_timed_out(&mut self) {
        if let Some(pending) = &mut self.update {
            pending.waiting.clear();
            pending.timed = false;
            pending.first_peer = false;
            pending.expired = true;
        }
    }

    /// If the update under way is answered (every peer asked sent its state or went, and the
    /// upgrade to the longest, if any, ended; or its time is up and no verified upgrade is
    /// being applied), ends it and returns the signed length now.
    pub(super) fn finish_update(&mut self, cx: &mut Cx) -> Option<u64> {
        let pending = self.update.as_ref()?;
        // Only an upgrade being applied can change the signed length: blocks being stored
        // (a run) do not hold the answer back.
        let applying =
            self.apply.upgrade_proof.is_some() || self.apply.upgrade_applying().is_some();
        let answered =
            pending.waiting.is_empty() && !pending.first_peer && self.upgrade.get().is_none();
        let done = (answered || pending.expired) && !applying;
        if !done {
            return None;
        }
        self.update = None;
        cx.timers.clear(Timer::Update(self.key));
        Some(self.local.length)
    }

    // Leaving.

    /// The core is no longer replicated: its timers are cleared (tasks still running for it
    /// end unheard, as no part knows them).
    pub(super) fn clear_timers(&self, cx: &mut Cx) {
        cx.timers.clear(Timer::Upgrade(self.key));
        cx.timers.clear(Timer::Update(self.key));
    }

    /// Whether blocks wait with nothing applying them, where something could: at the end of
    /// a turn every block that arrived is being applied or waits for the apply that runs (or
    /// for the core's first signed length).
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn has_stalled_blocks(&self) -> bool {
        self.local.length > 0
            && !self.apply.pending.is_empty()
            && (self.apply.run_may_start() || !self.apply.is_applying())
    }

    // Idle channels.

    /// Whether channel `id` carries nothing this core's sync would send or wait for: both
    /// sides hold the same whole log (or ours is sparse with nothing wanted), nothing is asked
    /// either way, nothing is pushed.
    pub(super) fn is_idle(&self, id: ChannelId) -> bool {
        let Some(r) = self.remotes.get(&id) else {
            return false;
        };
        let Some(remote) = r.sync else {
            return false;
        };
        let local = self.local;
        let ours_complete = local.contiguous >= local.length
            || (self.mode == Mode::Sparse && self.wanted.is_empty());
        let theirs_complete = remote.contiguous >= remote.length || !remote.downloading;
        r.requests.is_empty()
            && !r.pushing
            && remote.fork == local.fork
            && remote.length == local.length
            && ours_complete
            && theirs_complete
            && self.upgrade.get().is_none_or(|u| u.channel != id)
            && !self
                .update
                .as_ref()
                .is_some_and(|u| u.waiting.contains(&id))
    }

    /// Checks this core's timers against its state: an `Upgrade` timer exactly while an
    /// upgrade is in flight, at its deadline, and an `Update` timer exactly while an update
    /// waits for one.
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn check_timers(&self, timers: &super::timer::TimerTable) -> Result<(), String> {
        let upgrade = self.upgrade.get().map(|u| u.deadline);
        if timers.get(Timer::Upgrade(self.key)) != upgrade {
            return Err(format!(
                "upgrade timer {:?}, upgrade in flight {upgrade:?}",
                timers.get(Timer::Upgrade(self.key))
            ));
        }
        let timed = self.update.as_ref().is_some_and(|u| u.timed);
        if timers.get(Timer::Update(self.key)).is_some() != timed {
            return Err(format!("update timer set: {}", !timed));
        }
        Ok(())
    }

    /// The blocks the application waits for, in order.
    #[cfg(test)]
    pub(super) fn wanted_blocks(&self) -> Vec<u64> {
        self.wanted.keys().copied().collect()
    }

    /// Whether a storage task applies data to the core.
    #[cfg(test)]
    pub(super) fn is_applying(&self) -> bool {
        self.apply.is_applying()
    }

    /// Whether an upgrade is in flight.
    #[cfg(test)]
    pub(super) fn upgrade_in_flight(&self) -> bool {
        self.upgrade.get().is_some()
    }

    /// Our requests waiting on `channel`: id, and whether it asks for an upgrade.
    #[cfg(test)]
    pub(super) fn requests_on(&self, channel: ChannelId) -> Vec<(u64, bool)> {
        self.remotes.get(&channel).map_or_else(Vec::new, |r| {
            r.requests
                .iter()
                .map(|(id, s)| (*id, matches!(s, Sent::Upgrade { .. })))
                .collect()
        })
    }
}

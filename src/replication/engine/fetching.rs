//! Fetching blocks: what each core should fetch (every block in full mode, the wanted ones in
//! sparse mode) goes into the fetch queue; the run requests it hands out are sent on the
//! peer's channel of the core, and their answers (`Data`, `NoData`) go back to it. Each turn
//! ends with [`Engine::schedule`], which sends every request the queue has room for.

use std::time::Instant;

use super::{ChannelId, Engine, Event, Mode, Sent};
use crate::{
    crypto::CoreKey,
    replication::{
        fetch::{Arrival, PeerNotice},
        wire::Message,
    },
    tree::Proof,
};

/// Blocks one `Want` (or `Unwant`) counts, from its start: a want of more is cut there.
const MAX_WANTED_RANGE: u64 = 1 << 20;

impl Engine {
    /// `Data` answering run request `id` on `channel`: a block to verify and store, unless
    /// the request did not ask for it.
    pub(super) fn on_run_data(&mut self, channel: ChannelId, id: u64, proof: Proof, now: Instant) {
        let Some((peer, core)) = self.channels.get(&channel).map(|c| (c.peer, c.core)) else {
            return;
        };
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
            .is_some_and(|r| r.apply.broken_runs.contains(&id));
        match arrival {
            Arrival::Taken if broken => {
                // An earlier block of this run was not stored: this one cannot verify.
                if let Some(b) = &proof.block {
                    self.fetch.on_store_failed(&core, b.index);
                }
                return;
            }
            Arrival::Taken => {}
            // Storage is behind and the blocks are larger than expected: asked again later,
            // nobody blamed.
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
            r.apply.pending.push((peer, id, proof));
        }
        self.maybe_apply(core);
    }

    /// `NoData` answering run request `id` on `channel`: the peer lacks `start..end`.
    pub(super) fn on_run_no_data(&mut self, channel: ChannelId, id: u64, start: u64, end: u64) {
        let Some(c) = self.channels.get_mut(&channel) else {
            return;
        };
        // What the peer lacks now it may hold later: its next `Sync` records it again.
        c.sourced = c.sourced.min(start);
        self.fetch.on_no_data(id, start, end);
        if !self.fetch.is_open(id) {
            c.requests.remove(&id);
        }
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
                .map(|(i, _)| *i)
                .filter(|i| !self.fetch.contains(&core, *i))
                .map(|i| (i, i + 1))
                .collect(),
        };
        for (s, e) in ranges {
            self.fetch.add(core, s, e);
            self.add_sources(core, s, e);
        }
    }

    /// The application wants blocks `start..end` of `core`.
    pub(super) fn on_want(&mut self, core: CoreKey, start: u64, end: u64, now: Instant) {
        let Some(r) = self.cores.get_mut(&core) else {
            return;
        };
        let from = start.max(if r.mode == Mode::Full { r.queued_to } else { 0 });
        // Full mode queues every block anyway; a want only matters beyond the known length.
        for i in from..end.min(from.saturating_add(MAX_WANTED_RANGE)) {
            let n = r.wanted.entry(i).or_default();
            *n = n.saturating_add(1);
        }
        for (peer, ch) in self.open_channels(&core) {
            self.send(peer, ch, Message::Want { start, end });
        }
        self.reopen_idle(core, now);
        if let Some(r) = self.cores.get(&core)
            && r.mode == Mode::Sparse
        {
            self.enqueue_missing(core);
        }
    }

    /// The application no longer wants blocks `start..end`: each loses one want, and those
    /// nobody wants leave the fetch queue (sparse mode); run requests left with nothing
    /// wanted are cancelled, and the peers told.
    pub(super) fn on_unwant(&mut self, core: CoreKey, start: u64, end: u64) {
        let Some(r) = self.cores.get_mut(&core) else {
            return;
        };
        // The same blocks its `Want` counted.
        let from = start.max(if r.mode == Mode::Full { r.queued_to } else { 0 });
        let to = end.min(from.saturating_add(MAX_WANTED_RANGE));
        let mut gone = Vec::new();
        for (i, n) in r.wanted.range_mut(from..to.max(from)) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                gone.push(*i);
            }
        }
        for i in &gone {
            r.wanted.remove(i);
        }
        if r.mode == Mode::Sparse && !gone.is_empty() {
            for id in self.fetch.remove_blocks(&core, &gone) {
                let channel = self
                    .channels
                    .of_core(&core)
                    .find(|(_, c)| c.requests.contains_key(&id))
                    .map(|(ch, c)| (ch, c.peer));
                if let Some((ch, peer)) = channel {
                    if let Some(c) = self.channels.get_mut(&ch) {
                        c.requests.remove(&id);
                    }
                    self.send(peer, ch, Message::Cancel { id });
                }
            }
        }
        for (peer, ch) in self.open_channels(&core) {
            self.send(peer, ch, Message::Unwant { start, end });
        }
    }

    /// Ends every turn: opens the channels that waited for a handshake to end, asks again for
    /// the upgrades whose peer went away, sends every request
    /// the fetch queue has room for, and reports the peers it backed off or dropped.
    pub(super) fn schedule(&mut self, now: Instant) {
        self.make_room();
        self.open_queued(now);
        while let Some(core) = self.upgrades.next_retry() {
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
        self.finish_updates();
        if !self.room_wanted.is_empty() && self.room_deadline.is_none() {
            // Channels may turn idle with no message to say so: look again soon.
            self.room_deadline = Some(now + super::idle::ROOM_RETRY);
        }
        for notice in self.fetch.take_notices() {
            match notice {
                PeerNotice::BackedOff(p, _) => self.emit(Event::Backoff(p)),
                PeerNotice::Dropped(p) => {
                    if let Some(peer) = self.peers.get_mut(&p) {
                        peer.dropped = true;
                    }
                    self.emit(Event::PeerDropped(p))
                }
            }
        }
    }

    /// Times out the run requests whose deadline passed: each is cancelled on its channel
    /// (the fetch queue backs its peer off and queues its blocks again).
    pub(super) fn expire_runs(&mut self, now: Instant) {
        for (id, peer) in self.fetch.poll_timeouts(now) {
            let channels: Vec<ChannelId> = self
                .peers
                .get(&peer)
                .map(|p| p.channels.values().copied().collect())
                .unwrap_or_default();
            for ch in channels {
                if let Some(c) = self.channels.get_mut(&ch)
                    && c.requests.remove(&id).is_some()
                {
                    self.outputs
                        .push_back(super::Output::Send(peer, ch, Message::Cancel { id }));
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
        let wanted: Vec<u64> = engine.cores[&core].wanted.keys().copied().collect();
        assert_eq!(wanted, [6]);
    }

    /// A sparse reader's blocks nobody wants any more leave the queue and their request is
    /// cancelled with its peer (and the peer told); blocks another read still wants stay.
    #[test]
    fn unwanted_blocks_leave_the_queue_and_their_requests_are_cancelled() {
        use super::super::{
            Output,
            testing::{CORE, engine_with_peer, local, outputs, sync},
        };
        use crate::replication::wire::Message;

        let now = Instant::now();
        let (mut engine, channel) =
            engine_with_peer(local(100, false), Mode::Sparse, sync(100, false), now);
        engine.handle(Input::Want(CORE, 10, 20), now);
        engine.handle(Input::Want(CORE, 15, 16), now);
        let run = outputs(&mut engine)
            .into_iter()
            .find_map(|o| match o {
                Output::Send(_, ch, Message::RequestRun { id, start, end, .. })
                    if ch == channel =>
                {
                    Some((id, start, end))
                }
                _ => None,
            })
            .expect("the wanted blocks are asked for");
        assert_eq!((run.1, run.2), (10, 20));

        engine.handle(Input::Unwant(CORE, 10, 20), now);
        let out = outputs(&mut engine);
        assert!(
            !out.iter()
                .any(|o| matches!(o, Output::Send(_, _, Message::Cancel { .. }))),
            "block 15 is still wanted: the request stays"
        );
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Send(_, _, Message::Unwant { start: 10, end: 20 })
        )));
        assert_eq!(engine.queued_blocks(), 1, "only block 15 stays queued");

        engine.handle(Input::Unwant(CORE, 15, 16), now);
        let out = outputs(&mut engine);
        assert!(
            out.iter().any(
                |o| matches!(o, Output::Send(_, ch, Message::Cancel { id }) if *ch == channel && *id == run.0)
            ),
            "{out:?}"
        );
        assert_eq!(engine.queued_blocks(), 0);
        assert!(engine.cores[&CORE].wanted.is_empty());
        engine.check_timers().unwrap();
        // A late answer of the cancelled request is not taken.
        engine.handle(
            Input::Message(
                super::super::testing::PEER,
                channel,
                Message::NoData {
                    id: run.0,
                    start: 10,
                    end: 20,
                },
            ),
            now,
        );
        engine.check_timers().unwrap();
    }
}

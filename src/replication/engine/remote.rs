//! What each channel's remote holds: its `Sync` (fork, length, contiguous blocks), the
//! `Range`s it holds beyond them, and the `Want`s it asks us about. What it holds is recorded
//! in the fetch queue as sources of the blocks we miss, each block once per channel.

use std::time::Instant;

use super::{ChannelId, Engine, Event, PeerId};
use crate::{
    crypto::CoreKey,
    replication::{
        ranges,
        wire::{Message, SyncInfo},
    },
};

/// Ranges one channel's peer may tell us it holds beyond its contiguous blocks.
const MAX_REMOTE_RANGES: usize = 1024;

impl Engine {
    pub(super) fn on_sync(&mut self, id: ChannelId, info: SyncInfo, now: Instant) {
        let Some(c) = self.channels.get_mut(&id) else {
            return;
        };
        let (peer, core) = (c.peer, c.core);
        let first = c.remote.is_none();
        let old = c.remote.replace(info);
        if old.is_some_and(|o| o.fork != info.fork) {
            c.remote_ranges.clear();
            c.sourced = 0;
        }
        self.update_answered(&core, id);
        if first {
            self.emit(Event::ChannelOpen { core, peer });
        }
        // Answered only while the peer reads what we send: a peer that asks and never reads
        // must not grow its backlog one `Sync` at a time.
        if info.ask
            && self.has_room(&peer)
            && let Some(mine) = self.sync_info(&core, false)
        {
            self.send(peer, id, Message::Sync(mine));
        }
        let Some(local) = self.cores.get(&core).map(|r| r.local) else {
            return;
        };
        if info.fork == local.fork
            && let Some(c) = self.channels.get_mut(&id)
        {
            // Only blocks not recorded before: a peer whose `contiguous` goes down and up
            // again does not make us walk the fetch queue each time.
            let (from, to) = (c.sourced, info.contiguous.min(local.length));
            if to > from {
                c.sourced = to;
                self.add_source(core, from, to, peer);
            }
        }
        self.maybe_upgrade(core, now);
    }

    pub(super) fn on_range(&mut self, id: ChannelId, start: u64, end: u64) {
        let Some(c) = self.channels.get_mut(&id) else {
            return;
        };
        // Only what no earlier `Sync` or `Range` of this channel covered: each block is
        // recorded once per channel however often a peer repeats itself.
        let start = start.max(c.sourced);
        if start >= end || c.remote_ranges.len() >= MAX_REMOTE_RANGES {
            return;
        }
        let new = ranges::insert(&mut c.remote_ranges, start, end);
        let (peer, core, fork) = (c.peer, c.core, c.remote.map(|r| r.fork));
        if let Some(r) = self.cores.get(&core)
            && fork == Some(r.local.fork)
        {
            let length = r.local.length;
            for (s, e) in new {
                self.add_source(core, s, e.min(length), peer);
            }
        }
    }

    /// A peer wants blocks: tell it which of them we hold beyond what `Sync` said, while it
    /// reads what we send.
    pub(super) fn on_remote_want(&mut self, id: ChannelId, start: u64, end: u64) {
        let Some(c) = self.channels.get(&id) else {
            return;
        };
        let (peer, core) = (c.peer, c.core);
        if !self.has_room(&peer) {
            return;
        }
        let Some(r) = self.cores.get(&core) else {
            return;
        };
        let end = end.min(r.local.contiguous);
        if start < end {
            self.send(peer, id, Message::Range { start, end });
        }
    }

    /// Which peers have `index` of `core`, for the fetch queue.
    pub(super) fn add_sources(&mut self, core: CoreKey, start: u64, end: u64) {
        let Some(local) = self.cores.get(&core).map(|r| r.local) else {
            return;
        };
        let mut found = Vec::new();
        for (_, c) in self.channels.of_core(&core) {
            let Some(remote) = c.remote else { continue };
            if remote.fork != local.fork {
                continue;
            }
            found.push((c.peer, start, end.min(remote.contiguous)));
            for (s, e) in &c.remote_ranges {
                found.push((c.peer, start.max(*s), end.min(*e)));
            }
        }
        for (peer, s, e) in found {
            self.add_source(core, s, e, peer);
        }
    }

    /// Records that `peer` has blocks `start..end` of `core`, unless it was dropped.
    fn add_source(&mut self, core: CoreKey, start: u64, end: u64, peer: PeerId) {
        if self.peers.get(&peer).is_some_and(|p| !p.dropped) {
            self.fetch.add_source(core, start, end, peer);
        }
    }
}

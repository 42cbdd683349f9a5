//! Peers and channels: the handshake in which both sides prove the key, parked channels,
//! simultaneous opens, sync, and closing.

use std::time::Instant;

use super::{Channel, ChannelId, Engine, Event, Output, Parked, Peer, PeerId};
use crate::{
    crypto::{
        CoreKey, DiscoveryKey,
        capability::{Role, capability, check_capability},
    },
    replication::{
        ranges,
        wire::{Message, SyncInfo},
    },
};

/// Ranges one channel's peer may tell us it holds beyond its contiguous blocks.
const MAX_REMOTE_RANGES: usize = 1024;

impl Engine {
    pub(super) fn on_connected(&mut self, peer: PeerId, now: Instant) {
        if self.peers.contains_key(&peer) {
            return;
        }
        self.peers.insert(
            peer,
            Peer {
                stats: super::PeerStats {
                    peer,
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        self.emit(Event::PeerAdd(peer));
        // Only the lower id opens channels for everything it has; the other side adopts the
        // ones it replicates (see `parked`) and opens channels only for cores it adds later.
        // This avoids opening every channel twice.
        if self.me < peer {
            let mut cores: Vec<CoreKey> = self.cores.keys().copied().collect();
            cores.sort();
            for core in cores {
                self.open_channel(peer, core, now);
            }
        }
    }

    pub(super) fn on_disconnected(&mut self, peer: PeerId) {
        let Some(p) = self.peers.remove(&peer) else {
            return;
        };
        for ch in p.channels.values() {
            if let Some(c) = self.channels.remove(ch)
                && let Some(t) = c.handshake_deadline
            {
                self.handshakes.remove(&(t, *ch));
            }
        }
        for ch in p.parked {
            self.forget_parked(ch);
        }
        self.fetch.remove_peer(&peer);
        for (key, r) in self.cores.iter_mut() {
            if r.upgrading.as_ref().is_some_and(|u| u.peer == peer) {
                r.upgrading = None;
                self.retry_upgrade.insert(*key);
            }
        }
        self.emit(Event::PeerRemove(peer));
    }

    /// Opens a channel for `core` to `peer`, unless one exists. It carries only our `Open`
    /// until the peer's `Accept` proves it knows the key.
    pub(super) fn open_channel(&mut self, peer: PeerId, core: CoreKey, now: Instant) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        if p.channels.contains_key(&core) {
            return;
        }
        let Some(r) = self.cores.get(&core) else {
            return;
        };
        let id = self.next_channel;
        self.next_channel += 2;
        let open = Message::Open {
            discovery_key: r.discovery_key,
            capability: capability(&core, Role::Opener, &self.me, &peer),
        };
        let deadline = now + self.cfg.handshake_timeout;
        self.add_channel(id, peer, core, true, Some(deadline));
        self.handshakes.insert((deadline, id));
        self.outputs.push_back(Output::OpenChannel(peer, id, open));
    }

    fn add_channel(
        &mut self,
        id: ChannelId,
        peer: PeerId,
        core: CoreKey,
        opened_by_me: bool,
        handshake_deadline: Option<Instant>,
    ) {
        self.channels.insert(
            id,
            Channel {
                peer,
                core,
                opened_by_me,
                authenticated: handshake_deadline.is_none(),
                handshake_deadline,
                remote: None,
                remote_ranges: Vec::new(),
                sourced: 0,
                requests: Default::default(),
                pushing: false,
            },
        );
        if let Some(p) = self.peers.get_mut(&peer) {
            p.channels.insert(core, id);
        }
    }

    /// Whether both sides of channel `id` proved the key: only then may its stream carry
    /// frames larger than a handshake's.
    pub fn is_authenticated(&self, id: ChannelId) -> bool {
        self.channels.get(&id).is_some_and(|c| c.authenticated)
    }

    /// Forgets a channel; its requests fail without blame.
    fn drop_channel(&mut self, id: ChannelId) {
        let Some(c) = self.channels.remove(&id) else {
            return;
        };
        if let Some(t) = c.handshake_deadline {
            self.handshakes.remove(&(t, id));
        }
        if let Some(p) = self.peers.get_mut(&c.peer)
            && p.channels.get(&c.core) == Some(&id)
        {
            p.channels.remove(&c.core);
            p.serve_queue.retain(|(ch, _)| *ch != id);
        }
        self.fetch.remove_source(&c.core, &c.peer);
        if let Some(r) = self.cores.get_mut(&c.core)
            && r.upgrading.as_ref().is_some_and(|u| u.channel == id)
        {
            r.upgrading = None;
            self.retry_upgrade.insert(c.core);
        }
    }

    /// Refuses or ends a channel with a reason.
    pub(super) fn close_channel(&mut self, peer: PeerId, id: ChannelId, reason: &str) {
        self.send(
            peer,
            id,
            Message::Close {
                reason: reason.to_string(),
            },
        );
        self.outputs.push_back(Output::CloseChannel(peer, id));
        self.drop_channel(id);
    }

    pub(super) fn on_channel_closed(&mut self, _peer: PeerId, id: ChannelId) {
        self.forget_parked(id);
        self.drop_channel(id);
    }

    pub(super) fn on_message(&mut self, peer: PeerId, id: ChannelId, msg: Message, now: Instant) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        if self.parked.contains_key(&id) {
            // A parked channel carries nothing but its `Open` until we adopt it.
            self.forget_parked(id);
            self.count_dropped(peer);
            self.refuse(peer, id, "a channel carries nothing before the handshake");
            return;
        }
        let Some(c) = self.channels.get(&id) else {
            match msg {
                Message::Open {
                    discovery_key,
                    capability,
                } if !id.is_multiple_of(2) => {
                    self.on_open(peer, id, discovery_key, capability, now)
                }
                // Late messages on a channel we dropped.
                _ if id.is_multiple_of(2) => {}
                _ => self.close_channel(peer, id, "the first message must be Open"),
            }
            return;
        };
        if !c.authenticated {
            // A channel we opened: the peer must prove the key before anything else.
            match msg {
                Message::Accept { capability } => self.on_accept(peer, id, capability),
                Message::Close { .. } => {
                    self.outputs.push_back(Output::CloseChannel(peer, id));
                    self.drop_channel(id);
                }
                _ => {
                    self.count_dropped(peer);
                    self.refuse(peer, id, "a channel carries nothing before the handshake");
                    self.drop_channel(id);
                }
            }
            return;
        }
        match msg {
            Message::Open { .. } | Message::Accept { .. } => {
                self.count_dropped(peer);
                self.close_channel(peer, id, "channel opened twice")
            }
            Message::Close { reason } => {
                tracing::debug!("channel closed by peer: {reason}");
                self.outputs.push_back(Output::CloseChannel(peer, id));
                self.drop_channel(id);
            }
            Message::Sync(info) => self.on_sync(id, info, now),
            Message::Range { start, end } => self.on_range(id, start, end),
            Message::Want { start, end } => self.on_remote_want(id, start, end),
            Message::Request { .. } | Message::RequestRun { .. } => self.on_request(peer, id, msg),
            Message::Data { id: req, proof } => self.on_data(id, req, proof, now),
            Message::NoData {
                id: req,
                start,
                end,
            } => self.on_no_data(id, req, start, end, now),
            Message::Push { proof } => self.on_push(id, proof, now),
            Message::Unwant { .. } | Message::Cancel { .. } | Message::Extension { .. } => {}
        }
    }

    /// A peer opened a channel: it is accepted (with our `Accept`, then our `Sync`) if the
    /// opener's capability checks out, parked if we do not know the core, refused otherwise.
    pub(super) fn on_open(
        &mut self,
        peer: PeerId,
        id: ChannelId,
        dk: DiscoveryKey,
        cap: [u8; 32],
        now: Instant,
    ) {
        let Some(core) = self.by_discovery_key.get(&dk).copied() else {
            // Perhaps we are about to replicate it: keep the channel waiting (refusing it
            // would race with our own open of the same core).
            self.park(peer, id, dk, cap, now);
            return;
        };
        if !check_capability(&core, Role::Opener, &peer, &self.me, &cap) {
            self.count_dropped(peer);
            self.refuse(peer, id, "invalid capability");
            return;
        }
        if let Some(existing) = self.peers[&peer].channels.get(&core).copied() {
            // Both opened a channel: keep the one opened by the lower endpoint id.
            let ours = self.channels.get(&existing).is_some_and(|c| c.opened_by_me);
            if ours && peer < self.me {
                self.outputs.push_back(Output::CloseChannel(peer, existing));
                self.drop_channel(existing);
            } else {
                self.outputs.push_back(Output::Send(
                    peer,
                    id,
                    Message::Close {
                        reason: "duplicate channel".into(),
                    },
                ));
                self.outputs.push_back(Output::CloseChannel(peer, id));
                return;
            }
        }
        self.add_channel(id, peer, core, false, None);
        let accept = Message::Accept {
            capability: capability(&core, Role::Acceptor, &peer, &self.me),
        };
        self.send(peer, id, accept);
        if let Some(info) = self.sync_info(&core, false) {
            self.send(peer, id, Message::Sync(info));
        }
    }

    /// The peer accepted a channel we opened: if its capability checks out, the channel is
    /// authenticated and our state follows.
    fn on_accept(&mut self, peer: PeerId, id: ChannelId, cap: [u8; 32]) {
        let Some(c) = self.channels.get_mut(&id) else {
            return;
        };
        let core = c.core;
        if !check_capability(&core, Role::Acceptor, &self.me, &peer, &cap) {
            self.count_dropped(peer);
            self.emit(Event::ChannelRefused {
                peer,
                reason: "invalid capability in Accept".into(),
            });
            self.close_channel(peer, id, "invalid capability");
            return;
        }
        c.authenticated = true;
        if let Some(t) = c.handshake_deadline.take() {
            self.handshakes.remove(&(t, id));
        }
        if let Some(info) = self.sync_info(&core, false) {
            self.send(peer, id, Message::Sync(info));
        }
    }

    /// Keeps a channel for a core we do not know waiting, within the per-peer and total caps.
    fn park(&mut self, peer: PeerId, id: ChannelId, dk: DiscoveryKey, cap: [u8; 32], now: Instant) {
        let per_peer = self.peers.get(&peer).map_or(0, |p| p.parked.len());
        let same_core = self.parked_by_dk.get(&dk).is_some_and(|chs| {
            chs.iter()
                .any(|ch| self.parked.get(ch).is_some_and(|p| p.peer == peer))
        });
        if per_peer >= self.cfg.max_parked_per_peer
            || self.parked.len() >= self.cfg.max_parked
            || same_core
        {
            self.count_refused(peer);
            self.refuse(peer, id, "unknown core");
            return;
        }
        let deadline = now + self.cfg.handshake_timeout;
        self.parked.insert(
            id,
            Parked {
                peer,
                discovery_key: dk,
                capability: cap,
                deadline,
            },
        );
        self.parked_by_dk.entry(dk).or_default().insert(id);
        self.handshakes.insert((deadline, id));
        if let Some(p) = self.peers.get_mut(&peer) {
            p.parked.insert(id);
        }
    }

    /// Takes channel `id` out of the parked ones (but for its discovery key's set, which the
    /// caller handles).
    pub(super) fn unpark(&mut self, id: ChannelId) -> Option<Parked> {
        let p = self.parked.remove(&id)?;
        self.handshakes.remove(&(p.deadline, id));
        if let Some(peer) = self.peers.get_mut(&p.peer) {
            peer.parked.remove(&id);
        }
        Some(p)
    }

    /// Forgets a parked channel, if `id` is one.
    fn forget_parked(&mut self, id: ChannelId) {
        if let Some(p) = self.unpark(id)
            && let Some(chs) = self.parked_by_dk.get_mut(&p.discovery_key)
        {
            chs.remove(&id);
            if chs.is_empty() {
                self.parked_by_dk.remove(&p.discovery_key);
            }
        }
    }

    /// Closes the channels whose handshake did not finish in time: ours without the peer's
    /// `Accept`, and parked ones for a core we did not add.
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.handshakes.first() {
            if deadline > now {
                return;
            }
            self.handshakes.remove(&(deadline, id));
            if let Some(p) = self.parked.get(&id) {
                let peer = p.peer;
                self.forget_parked(id);
                self.refuse(peer, id, "unknown core");
            } else if let Some(peer) = self.channels.get(&id).map(|c| c.peer) {
                self.count_dropped(peer);
                self.close_channel(peer, id, "no proof of the key in time");
            }
        }
    }

    fn refuse(&mut self, peer: PeerId, id: ChannelId, reason: &str) {
        self.emit(Event::ChannelRefused {
            peer,
            reason: reason.to_string(),
        });
        self.outputs.push_back(Output::Send(
            peer,
            id,
            Message::Close {
                reason: reason.to_string(),
            },
        ));
        self.outputs.push_back(Output::CloseChannel(peer, id));
    }

    /// Counts input from `peer` that broke the protocol and was dropped.
    pub(super) fn count_dropped(&mut self, peer: PeerId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.dropped += 1;
        }
    }

    /// Counts a request or channel of `peer` refused because it asked for too much.
    pub(super) fn count_refused(&mut self, peer: PeerId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.refused += 1;
        }
    }

    fn on_sync(&mut self, id: ChannelId, info: SyncInfo, now: Instant) {
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

    fn on_range(&mut self, id: ChannelId, start: u64, end: u64) {
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
    fn on_remote_want(&mut self, id: ChannelId, start: u64, end: u64) {
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
        for c in self.channels.values() {
            let Some(remote) = c.remote else { continue };
            if c.core != core || remote.fork != local.fork {
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

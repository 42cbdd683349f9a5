//! Peers and channels: opening (with capabilities), simultaneous opens, sync, and closing.

use std::time::Instant;

use super::{Channel, ChannelId, Engine, Event, Output, Peer, PeerId};
use crate::{
    crypto::{
        CoreKey, DiscoveryKey,
        capability::{capability, check_capability},
    },
    replication::wire::{Message, SyncInfo},
};

impl Engine {
    pub(super) fn on_connected(&mut self, peer: PeerId) {
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
            let cores: Vec<CoreKey> = self.cores.keys().copied().collect();
            for core in cores {
                self.open_channel(peer, core);
            }
        }
    }

    pub(super) fn on_disconnected(&mut self, peer: PeerId) {
        let Some(p) = self.peers.remove(&peer) else {
            return;
        };
        for ch in p.channels.values() {
            self.channels.remove(ch);
        }
        self.parked.retain(|(p, _), _| *p != peer);
        self.fetch.remove_peer(&peer);
        for r in self.cores.values_mut() {
            if r.upgrading.as_ref().is_some_and(|u| u.peer == peer) {
                r.upgrading = None;
            }
        }
        self.emit(Event::PeerRemove(peer));
    }

    /// Opens a channel for `core` to `peer`, unless one exists.
    pub(super) fn open_channel(&mut self, peer: PeerId, core: CoreKey) {
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
            capability: capability(&core, &self.me, &peer),
        };
        self.add_channel(id, peer, core, true);
        self.outputs.push_back(Output::OpenChannel(peer, id, open));
        if let Some(info) = self.sync_info(&core, false) {
            self.send(peer, id, Message::Sync(info));
        }
    }

    fn add_channel(&mut self, id: ChannelId, peer: PeerId, core: CoreKey, opened_by_me: bool) {
        self.channels.insert(
            id,
            Channel {
                peer,
                core,
                opened_by_me,
                remote: None,
                remote_ranges: Vec::new(),
                requests: Default::default(),
                pushing: false,
            },
        );
        if let Some(p) = self.peers.get_mut(&peer) {
            p.channels.insert(core, id);
        }
    }

    /// Forgets a channel; its requests fail without blame.
    fn drop_channel(&mut self, id: ChannelId) {
        let Some(c) = self.channels.remove(&id) else {
            return;
        };
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

    pub(super) fn on_channel_closed(&mut self, peer: PeerId, id: ChannelId) {
        self.parked
            .retain(|(p, _), (ch, _)| !(*p == peer && *ch == id));
        self.drop_channel(id);
    }

    pub(super) fn on_message(&mut self, peer: PeerId, id: ChannelId, msg: Message, now: Instant) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        if !self.channels.contains_key(&id) {
            match msg {
                Message::Open {
                    discovery_key,
                    capability,
                } => self.on_open(peer, id, discovery_key, capability),
                // Late messages on a channel we dropped, or on a parked one.
                _ if id.is_multiple_of(2) => {}
                _ if self.parked.values().any(|(ch, _)| *ch == id) => {}
                _ => self.close_channel(peer, id, "the first message must be Open"),
            }
            return;
        }
        match msg {
            Message::Open { .. } => self.close_channel(peer, id, "channel opened twice"),
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
            } => self.on_no_data(id, req, start, end),
            Message::Push { proof } => self.on_push(id, proof, now),
            Message::Unwant { .. } | Message::Cancel { .. } | Message::Extension { .. } => {}
        }
    }

    pub(super) fn on_open(&mut self, peer: PeerId, id: ChannelId, dk: DiscoveryKey, cap: [u8; 32]) {
        let Some(core) = self.by_discovery_key.get(&dk).copied() else {
            // Perhaps we are about to replicate it: keep the channel waiting (refusing it
            // would race with our own open of the same core).
            if self.parked.len() < super::MAX_PARKED && !self.parked.contains_key(&(peer, dk)) {
                self.parked.insert((peer, dk), (id, cap));
            } else {
                self.refuse(peer, id, "unknown core");
            }
            return;
        };
        if !check_capability(&core, &peer, &self.me, &cap) {
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
        self.add_channel(id, peer, core, false);
        // Ask for the opener's state: its first Sync is lost if the channel waited parked.
        if let Some(info) = self.sync_info(&core, true) {
            self.send(peer, id, Message::Sync(info));
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

    fn on_sync(&mut self, id: ChannelId, info: SyncInfo, now: Instant) {
        let Some(c) = self.channels.get_mut(&id) else {
            return;
        };
        let (peer, core) = (c.peer, c.core);
        let first = c.remote.is_none();
        let old = c.remote.replace(info);
        if old.is_some_and(|o| o.fork != info.fork) {
            c.remote_ranges.clear();
        }
        if first {
            self.emit(Event::ChannelOpen { core, peer });
        }
        if info.ask
            && let Some(mine) = self.sync_info(&core, false)
        {
            self.send(peer, id, Message::Sync(mine));
        }
        let Some(local) = self.cores.get(&core).map(|r| r.local) else {
            return;
        };
        if info.fork == local.fork {
            let from = match old {
                Some(o) if o.fork == info.fork => o.contiguous,
                _ => 0,
            };
            let to = info.contiguous.min(local.length);
            self.fetch.add_source(core, from, to, peer);
        }
        self.maybe_upgrade(core, now);
    }

    fn on_range(&mut self, id: ChannelId, start: u64, end: u64) {
        let Some(c) = self.channels.get_mut(&id) else {
            return;
        };
        if start >= end || c.remote_ranges.len() >= 1024 {
            return;
        }
        c.remote_ranges.push((start, end));
        let (peer, core, fork) = (c.peer, c.core, c.remote.map(|r| r.fork));
        if let Some(r) = self.cores.get(&core)
            && fork == Some(r.local.fork)
        {
            let end = end.min(r.local.length);
            self.fetch.add_source(core, start, end, peer);
        }
    }

    /// A peer wants blocks: tell it which of them we hold beyond what `Sync` said.
    fn on_remote_want(&mut self, id: ChannelId, start: u64, end: u64) {
        let Some(c) = self.channels.get(&id) else {
            return;
        };
        let (peer, core) = (c.peer, c.core);
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
            self.fetch.add_source(core, s, e, peer);
        }
    }
}

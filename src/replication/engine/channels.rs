//! Channels: one stream, one core, with one peer. [`ChannelTable`] holds every channel by id
//! and by core; the engine's methods here open, close and forget channels, and route each
//! message of an open channel to the part of the engine it is for.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use super::{ChannelId, Engine, Event, Output, PeerId};
use crate::{
    crypto::{
        CoreKey,
        capability::{Role, capability},
    },
    replication::wire::{Message, SyncInfo},
};

/// What a request we sent was for: an answer must answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    /// A signed upgrade from `start` by `length` blocks (to the length the peer claimed), with
    /// block `block` if one was asked for.
    Upgrade {
        start: u64,
        length: u64,
        block: Option<u64>,
    },
    /// A run of blocks handed out by the fetch queue.
    Run,
}

/// One channel: a stream for one core with one peer.
#[derive(Debug)]
pub(super) struct Channel {
    /// The peer at the other end.
    pub(super) peer: PeerId,
    /// The core it replicates.
    pub(super) core: CoreKey,
    /// We opened it (its id is even).
    pub(super) opened_by_me: bool,
    /// Both sides proved the key. A channel we opened is not until the peer's valid `Accept`
    /// arrives before `handshake_deadline`; until then it carries nothing but our `Open`.
    pub(super) authenticated: bool,
    /// When a channel we opened is closed if the peer has not proven the key.
    pub(super) handshake_deadline: Option<Instant>,
    /// The remote's last `Sync`, once the channel is open.
    pub(super) remote: Option<SyncInfo>,
    /// Blocks past `remote.contiguous` the remote said it has: sorted, disjoint.
    pub(super) remote_ranges: Vec<(u64, u64)>,
    /// Blocks `0..sourced` of the remote's contiguous ones were recorded in the fetch queue.
    pub(super) sourced: u64,
    /// Our requests on this channel that wait for an answer, by id.
    pub(super) requests: BTreeMap<u64, Sent>,
    /// A push to this channel is being prepared; our `Sync` waits for it.
    pub(super) pushing: bool,
}

/// Every channel, by id and by core: the channels of one core are found without a scan, in
/// id order.
#[derive(Debug, Default)]
pub(super) struct ChannelTable {
    by_id: BTreeMap<ChannelId, Channel>,
    by_core: BTreeMap<CoreKey, BTreeSet<ChannelId>>,
}

impl ChannelTable {
    /// Channel `id`.
    pub(super) fn get(&self, id: &ChannelId) -> Option<&Channel> {
        self.by_id.get(id)
    }

    /// Channel `id`, to change it (its peer and core stay).
    pub(super) fn get_mut(&mut self, id: &ChannelId) -> Option<&mut Channel> {
        self.by_id.get_mut(id)
    }

    /// Adds channel `id`.
    pub(super) fn insert(&mut self, id: ChannelId, channel: Channel) {
        self.by_core.entry(channel.core).or_default().insert(id);
        if let Some(old) = self.by_id.insert(id, channel) {
            self.unindex(id, &old.core);
        }
    }

    /// Removes channel `id`.
    pub(super) fn remove(&mut self, id: &ChannelId) -> Option<Channel> {
        let c = self.by_id.remove(id)?;
        self.unindex(*id, &c.core);
        Some(c)
    }

    fn unindex(&mut self, id: ChannelId, core: &CoreKey) {
        if self.by_id.get(&id).is_some_and(|c| c.core == *core) {
            return;
        }
        if let Some(ids) = self.by_core.get_mut(core) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_core.remove(core);
            }
        }
    }

    /// Every channel, in id order.
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn all(&self) -> impl Iterator<Item = (ChannelId, &Channel)> {
        self.by_id.iter().map(|(id, c)| (*id, c))
    }

    /// The channels of `core`, in id order.
    pub(super) fn of_core<'a>(
        &'a self,
        core: &CoreKey,
    ) -> impl Iterator<Item = (ChannelId, &'a Channel)> + 'a {
        self.by_core
            .get(core)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id).map(|c| (*id, c)))
    }

    /// Applies `f` to every channel of `core`, in id order.
    pub(super) fn for_each_of_core(&mut self, core: &CoreKey, mut f: impl FnMut(&mut Channel)) {
        for id in self.by_core.get(core).into_iter().flatten() {
            if let Some(c) = self.by_id.get_mut(id) {
                f(c);
            }
        }
    }
}

impl Engine {
    /// Opens a channel for `core` to `peer`, unless one exists. It carries only our `Open`
    /// until the peer's `Accept` proves it knows the key.
    /// At most [`EngineConfig::max_opening_per_peer`](super::EngineConfig) of ours wait for
    /// their `Accept` per peer (a peer parks only so many channels for cores it has not
    /// looked up yet); the rest wait in the peer's queue and open as handshakes end.
    pub(super) fn open_channel(&mut self, peer: PeerId, core: CoreKey, now: Instant) {
        let Some(r) = self.cores.get(&core) else {
            return;
        };
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.channels.contains_key(&core) {
            return;
        }
        if p.channels.len() >= self.cfg.max_channels_per_peer {
            p.to_open.insert(core);
            self.room_wanted.insert(peer);
            return;
        }
        if p.opening >= self.cfg.max_opening_per_peer {
            p.to_open.insert(core);
            return;
        }
        p.opening += 1;
        let id = self.next_channel;
        self.next_channel += 2;
        let open = Message::Open {
            discovery_key: r.discovery_key,
            capability: capability(&core, Role::Opener, &self.me, &peer),
        };
        let deadline = now + self.cfg.handshake_timeout;
        self.add_channel(id, peer, core, true, Some(deadline));
        self.handshakes.insert(deadline, id);
        self.outputs.push_back(Output::OpenChannel(peer, id, open));
    }

    pub(super) fn add_channel(
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

    /// The core of channel `id`.
    pub fn channel_core(&self, id: ChannelId) -> Option<CoreKey> {
        self.channels.get(&id).map(|c| c.core)
    }

    /// The largest frame to read on channel `id`: a handshake's until both sides proved the
    /// key, an extension message's on a store channel, else [`MAX_FRAME`](crate::replication::wire::MAX_FRAME).
    pub fn max_frame(&self, id: ChannelId) -> usize {
        use crate::replication::wire::{MAX_FRAME, MAX_HANDSHAKE_FRAME};
        match self.channels.get(&id) {
            Some(c) if c.authenticated && c.core == *super::STORE_CHANNEL_KEY => {
                super::extensions::MAX_STORE_CHANNEL_FRAME
            }
            Some(c) if c.authenticated => MAX_FRAME,
            _ => MAX_HANDSHAKE_FRAME,
        }
    }

    /// Whether both sides of channel `id` proved the key: only then may its stream carry
    /// frames larger than a handshake's.
    pub fn is_authenticated(&self, id: ChannelId) -> bool {
        self.channels.get(&id).is_some_and(|c| c.authenticated)
    }

    /// The channels of `core` whose remote has synced, with their peers.
    pub(super) fn open_channels(&self, core: &CoreKey) -> Vec<(PeerId, ChannelId)> {
        self.channels
            .of_core(core)
            .filter(|(_, c)| c.remote.is_some())
            .map(|(id, c)| (c.peer, id))
            .collect()
    }

    /// Forgets a channel; its requests fail without blame.
    pub(super) fn drop_channel(&mut self, id: ChannelId) {
        let Some(c) = self.channels.remove(&id) else {
            return;
        };
        if let Some(t) = c.handshake_deadline {
            self.handshakes.remove(t, id);
        }
        if c.opened_by_me && !c.authenticated {
            // A store channel's queue waits on: if the peer refused ours because both opened
            // one, theirs comes and takes it. It goes with the peer.
            self.handshake_ended(c.peer);
        }
        self.update_answered(&c.core, id);
        if c.remote.is_some() {
            self.emit(Event::ChannelClosed {
                core: c.core,
                peer: c.peer,
            });
        }
        if let Some(p) = self.peers.get_mut(&c.peer)
            && p.channels.get(&c.core) == Some(&id)
        {
            p.channels.remove(&c.core);
            self.server.forget_channel(&c.peer, id);
        }
        self.fetch.remove_source(&c.core, &c.peer);
        if self.upgrades.take_on(&c.core, id).is_some() {
            self.upgrades.retry(c.core);
        }
    }

    /// A handshake of a channel we opened to `peer` ended (accepted, refused, timed out): the
    /// next cores waiting in its queue open at the end of the turn.
    pub(super) fn handshake_ended(&mut self, peer: PeerId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.opening = p.opening.saturating_sub(1);
            if !p.to_open.is_empty() {
                self.open_next.insert(peer);
            }
        }
    }

    /// Opens the queued channels of the peers whose handshakes ended this turn, as far as
    /// their room allows.
    pub(super) fn open_queued(&mut self, now: Instant) {
        while let Some(peer) = self.open_next.pop_first() {
            while let Some(p) = self.peers.get_mut(&peer)
                && p.opening < self.cfg.max_opening_per_peer
                && p.channels.len() < self.cfg.max_channels_per_peer
                && let Some(core) = p.to_open.pop_first()
            {
                self.open_channel(peer, core, now);
            }
            if let Some(p) = self.peers.get(&peer)
                && !p.to_open.is_empty()
                && p.channels.len() >= self.cfg.max_channels_per_peer
            {
                self.room_wanted.insert(peer);
            }
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
        self.unpark(id);
        self.drop_channel(id);
    }

    pub(super) fn on_message(&mut self, peer: PeerId, id: ChannelId, msg: Message, now: Instant) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        if self.parked.contains(id) {
            // A parked channel carries nothing but its `Open` until we adopt it.
            self.unpark(id);
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
        let core = c.core;
        if core == *super::STORE_CHANNEL_KEY {
            self.on_store_message(peer, id, msg, now);
            return;
        }
        match msg {
            Message::Open { .. } | Message::Accept { .. } => {
                self.count_dropped(peer);
                self.close_channel(peer, id, "channel opened twice")
            }
            Message::Close { reason } => {
                tracing::debug!("channel closed by peer: {reason}");
                // Closed as idle while we had news for it (they crossed): open it again now,
                // or nobody would until the core's next change.
                let idle_here = self.is_idle(id);
                self.outputs.push_back(Output::CloseChannel(peer, id));
                self.drop_channel(id);
                if reason == super::IDLE_REASON {
                    if idle_here {
                        if let Some(p) = self.peers.get_mut(&peer) {
                            p.idle_closed.insert(core);
                        }
                    } else {
                        self.open_channel(peer, core, now);
                    }
                }
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
            Message::Extension { name, payload } => {
                self.on_extension(peer, Some(core), name, payload, now)
            }
            Message::Cancel { id: req } => self.on_cancel(peer, id, req),
            // What a peer no longer wants changes nothing we send: we tell of what we hold
            // only when asked.
            Message::Unwant { .. } => {}
        }
    }

    /// `Data` on `channel`: routed to the upgrade or run request `id` it answers.
    fn on_data(&mut self, channel: ChannelId, id: u64, proof: crate::tree::Proof, now: Instant) {
        let Some(c) = self.channels.get_mut(&channel) else {
            return;
        };
        match c.requests.get(&id).copied() {
            Some(Sent::Upgrade {
                start,
                length,
                block,
            }) => {
                c.requests.remove(&id);
                self.on_upgrade_data(channel, (start, length, block), proof, now);
            }
            Some(Sent::Run) => self.on_run_data(channel, id, proof, now),
            // Late answer to a request that timed out or was cancelled.
            None => {}
        }
    }

    /// `NoData` on `channel`: routed to the upgrade or run request `id` it answers.
    fn on_no_data(&mut self, channel: ChannelId, id: u64, start: u64, end: u64, now: Instant) {
        let Some(c) = self.channels.get_mut(&channel) else {
            return;
        };
        let core = c.core;
        match c.requests.get(&id).copied() {
            Some(Sent::Upgrade { .. }) => {
                let peer = c.peer;
                c.requests.remove(&id);
                self.upgrade_failed(core, channel);
                // It said it had that length and cannot prove it: backed off like a peer that
                // does not answer, or a peer repeating the claim in its next `Sync` would be
                // asked again at once, round after round.
                self.fetch.penalize(peer, now);
                self.maybe_upgrade(core, now);
            }
            Some(Sent::Run) => self.on_run_no_data(channel, id, start, end),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(core: CoreKey) -> Channel {
        Channel {
            peer: [9; 32],
            core,
            opened_by_me: true,
            authenticated: true,
            handshake_deadline: None,
            remote: None,
            remote_ranges: Vec::new(),
            sourced: 0,
            requests: BTreeMap::new(),
            pushing: false,
        }
    }

    #[test]
    fn channels_of_a_core_are_found_in_id_order_and_forgotten_with_them() {
        let (a, b) = ([1; 32], [2; 32]);
        let mut table = ChannelTable::default();
        for (id, core) in [(4, a), (1, b), (2, a), (0, a)] {
            table.insert(id, channel(core));
        }
        let ids = |t: &ChannelTable, core| t.of_core(&core).map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(ids(&table, a), [0, 2, 4]);
        assert_eq!(ids(&table, b), [1]);
        table.remove(&2);
        table.remove(&1);
        assert_eq!(ids(&table, a), [0, 4]);
        assert!(!table.by_core.contains_key(&b), "no empty set left");
        // An id used again for another core moves to that core.
        table.insert(4, channel(b));
        assert_eq!(ids(&table, a), [0]);
        assert_eq!(ids(&table, b), [4]);
    }
}

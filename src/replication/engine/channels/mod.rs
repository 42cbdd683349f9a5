//! The channel part: every channel (one stream, one core, one peer) up to the moment both
//! sides proved the core's key, and what bounds them.
//!
//! It owns the cores that may have channels (by key and by discovery key), the channel table,
//! each peer's channels, the handshakes and their timers, the channels peers parked for cores
//! we do not replicate, the queue of cores waiting for room to open a channel, and the
//! closing of idle channels when a peer's channels are at their cap. It speaks the handshake
//! (`Open`, `Accept`, `Close`) itself; every other message of an authenticated channel goes
//! back to the engine as [`Inbound::Data`], and a channel that becomes authenticated or goes
//! away is told with [`Note::ChannelUp`] and [`Note::ChannelDown`].
//!
//! The handshake: the opener sends `Open` with its capability, the acceptor checks it and
//! answers `Accept` with its own; a channel carries nothing else until then. Channels for cores
//! we do not replicate are parked until we add the core or their handshake timer fires;
//! simultaneous opens keep the channel of the lower endpoint id. We open a channel only for a
//! core the peer is known to have or want (the engine says which), and only the lower id of a
//! connection opens them at once if an open delay is set (the other side adopts them).

mod closed;
mod parked;
mod peer;
mod table;

use std::collections::{BTreeMap, BTreeSet};

use closed::{Closed, ClosedChannels};
use parked::{Parked, ParkedChannels, Room};
use peer::PeerChannels;
use table::{Channel, ChannelTable};

use super::{
    ChannelId, Event, IDLE_REASON, LEAVE_REASON, NO_ROOM_REASON, Output, PeerId, STORE_CHANNEL_KEY,
    cx::{Cx, Note},
    extensions::{MAX_STORE_CHANNEL_FRAME, store_channel_discovery_key},
    timer::Timer,
};
use crate::{
    crypto::{
        CoreKey, DiscoveryKey,
        capability::{
            NoiseBinding, Role, capability, check_capability, noise_capability, same_capability,
        },
        discovery_key,
    },
    replication::wire::{MAX_FRAME, MAX_HANDSHAKE_FRAME, Message},
};

/// Channels of one peer looked at per turn for one to close while cores wait for room.
const IDLE_SCAN: usize = 64;

/// While cores wait for room, the time after which idle channels are looked for again when no
/// message came meanwhile.
pub(super) const ROOM_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// The wait before a channel refused for lack of room is opened again; it doubles with each
/// refusal in a row.
const REOPEN_FIRST_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Refusals for lack of room in a row after which a channel waits for its core to have
/// something new (about a minute of tries).
const MAX_REOPENS: u32 = 7;

/// Channels a peer may open per second that replace one of its own still open (its `Close`
/// of the old one may come after the new one's `Open`). Each one moves the core's fetch
/// sources, so past this a new channel is refused while the old one stays.
const REPLACEMENTS_PER_SECOND: u64 = 8;

/// Why a channel that would replace one of the peer's own is refused.
const TOO_MANY_REPLACEMENTS: &str = "too many channels replaced";

/// A core that may have channels.
#[derive(Debug, Clone, Copy)]
struct Registered {
    discovery_key: DiscoveryKey,
    /// Served only because a peer asked for it: channels open to the peers that ask, not to
    /// every peer.
    served_only: bool,
}

/// What became of a message on a channel.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Returned and matched at once; boxing costs more.
pub(super) enum Inbound {
    /// It belonged to the handshake (or broke it), and was dealt with here.
    Handled,
    /// A message of authenticated channel for `core` (the store channel's key for the store
    /// channel): for the engine to route.
    Data { core: CoreKey, msg: Message },
}

/// Where the store channel with a peer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StoreChannel {
    /// Open: messages go on it.
    Open(ChannelId),
    /// Waiting for the peer's `Accept` (opened now, or before).
    Opening,
    /// The peer is not connected.
    NoPeer,
}

/// The channel part; see the module docs.
#[derive(Debug)]
pub(super) struct Channels {
    /// This endpoint's id.
    me: PeerId,
    /// The cores that may have channels, and the core of each discovery key.
    cores: BTreeMap<CoreKey, Registered>,
    by_discovery_key: BTreeMap<DiscoveryKey, CoreKey>,
    /// Every channel, by id and by core.
    table: ChannelTable,
    /// Each connected peer's channels.
    peers: BTreeMap<PeerId, PeerChannels>,
    /// Channels peers opened for cores we do not replicate (yet).
    parked: ParkedChannels,
    /// The id of the next channel we open (even).
    next_id: ChannelId,
    /// Peers whose queued channels may open at the end of this turn.
    open_next: BTreeSet<PeerId>,
    /// Peers at their channel cap with cores waiting for room.
    room_wanted: BTreeSet<PeerId>,
    /// Channels of connected peers that stay closed until their core has something new.
    closed: ClosedChannels,
    /// Peers on Hypercore's own wire: their capabilities are bound to the Noise session, not
    /// to both endpoint ids.
    sessions: BTreeMap<PeerId, NoiseBinding>,
}

impl Channels {
    /// No core, no peer yet.
    pub(super) fn new(me: PeerId) -> Self {
        Self {
            me,
            cores: BTreeMap::new(),
            by_discovery_key: BTreeMap::new(),
            table: ChannelTable::default(),
            peers: BTreeMap::new(),
            parked: ParkedChannels::default(),
            next_id: 0,
            open_next: BTreeSet::new(),
            room_wanted: BTreeSet::new(),
            closed: ClosedChannels::default(),
            sessions: BTreeMap::new(),
        }
    }

    /// `peer` speaks Hypercore's own wire: its channels' capabilities are bound to `binding`
    /// (until it disconnects).
    /// Ignored while `peer` is connected (a session is set before its connection is
    /// reported).
    pub(super) fn set_session(&mut self, peer: PeerId, binding: NoiseBinding) {
        if !self.peers.contains_key(&peer) {
            self.sessions.insert(peer, binding);
        }
    }

    /// The capability we show `peer` for `core`, as the side `role` of the channel.
    fn our_capability(&self, core: &CoreKey, role: Role, peer: &PeerId) -> [u8; 32] {
        match (self.sessions.get(peer), role) {
            (Some(b), _) => noise_capability(core, b.we_initiated, &b.hash),
            (None, Role::Opener) => capability(core, role, &self.me, peer),
            (None, Role::Acceptor) => capability(core, role, peer, &self.me),
        }
    }

    /// Whether `cap` proves that `peer`, the side `role` of a channel for `core`, knows its
    /// key.
    fn their_capability_holds(
        &self,
        core: &CoreKey,
        role: Role,
        peer: &PeerId,
        cap: &[u8; 32],
    ) -> bool {
        match (self.sessions.get(peer), role) {
            (Some(b), _) => same_capability(&noise_capability(core, !b.we_initiated, &b.hash), cap),
            (None, Role::Opener) => check_capability(core, role, peer, &self.me, cap),
            (None, Role::Acceptor) => check_capability(core, role, &self.me, peer, cap),
        }
    }

    // Cores.

    /// `key` may have channels from now on (`served_only`: only with the peers that ask for
    /// it). Returns `Some(was_served_only)` if it was registered already; it is then
    /// registered as `served_only` only if it was and still is.
    pub(super) fn register(&mut self, key: CoreKey, served_only: bool) -> Option<bool> {
        if let Some(r) = self.cores.get_mut(&key) {
            let was = r.served_only;
            r.served_only &= served_only;
            return Some(was);
        }
        let dk = discovery_key(&key);
        self.by_discovery_key.insert(dk, key);
        self.cores.insert(
            key,
            Registered {
                discovery_key: dk,
                served_only,
            },
        );
        None
    }

    /// `key` has channels no more: each is closed with a `Close` telling the peer, and the
    /// cores waiting to open one forget it.
    pub(super) fn unregister(&mut self, key: &CoreKey, cx: &mut Cx) {
        let Some(r) = self.cores.remove(key) else {
            return;
        };
        self.by_discovery_key.remove(&r.discovery_key);
        for (id, c) in self.table.of_core(key) {
            self.close(c.peer, id, LEAVE_REASON, cx);
        }
        for (peer, p) in self.peers.iter_mut() {
            p.to_open.remove(key);
            if p.reopen.remove(key).is_some() {
                cx.timers.clear(Timer::Reopen(*peer, *key));
            }
        }
        self.closed.take_core(key);
    }

    /// Whether a channel parked for `key` proves its opener knows the key.
    pub(super) fn parked_proves(&self, key: &CoreKey) -> bool {
        self.parked
            .of_core(&discovery_key(key))
            .into_iter()
            .any(|ch| {
                self.parked.get(ch).is_some_and(|p| {
                    self.their_capability_holds(key, Role::Opener, &p.peer, &p.capability)
                })
            })
    }

    /// Takes in the channels parked for `key`, now registered: each is accepted if its
    /// opener's capability checks out, refused otherwise.
    pub(super) fn adopt_parked(&mut self, key: &CoreKey, cx: &mut Cx) {
        let dk = discovery_key(key);
        for ch in self.parked.of_core(&dk) {
            if let Some(p) = self.unpark(ch, cx) {
                self.on_open(p.peer, ch, dk, p.capability, cx);
            }
        }
    }

    // Peers.

    /// `peer` connected: `None` if it was already, else whether to open channels for our
    /// cores now (else its `OpenRest` timer is set: only the lower id of a connection opens
    /// at once when an open delay is set, and the other side adopts the channels it
    /// replicates).
    pub(super) fn connect(&mut self, peer: PeerId, cx: &mut Cx) -> Option<bool> {
        if self.peers.contains_key(&peer) {
            return None;
        }
        self.peers.insert(peer, PeerChannels::default());
        if self.me < peer || cx.cfg.open_delay.is_zero() {
            return Some(true);
        }
        cx.timers
            .set(Timer::OpenRest(peer), cx.now + cx.cfg.open_delay);
        Some(false)
    }

    /// Opens a channel to `peer` for each of `cores` that is registered and has none with it
    /// (not for cores only served to the peers that asked). The engine passes the cores known
    /// to be had or wanted by the peer: a channel's `Open` tells the peer the core's
    /// discovery key, so no other peer learns what we replicate.
    pub(super) fn open_known(&mut self, peer: PeerId, cores: Vec<CoreKey>, cx: &mut Cx) {
        for core in cores {
            if self.cores.get(&core).is_some_and(|r| !r.served_only) {
                self.open(peer, core, cx);
            }
        }
    }

    /// `peer`'s connection is gone: every channel, handshake and parked channel of it is
    /// forgotten (authenticated channels with [`Note::ChannelDown`]). False if it was not
    /// connected.
    pub(super) fn disconnect(&mut self, peer: &PeerId, cx: &mut Cx) -> bool {
        self.sessions.remove(peer);
        let Some(p) = self.peers.remove(peer) else {
            return false;
        };
        self.open_next.remove(peer);
        self.room_wanted.remove(peer);
        cx.timers.clear(Timer::OpenRest(*peer));
        for core in p.reopen.keys() {
            cx.timers.clear(Timer::Reopen(*peer, *core));
        }
        for (core, why) in self.closed.take_peer(peer) {
            if why == Closed::Idle {
                cx.note(Note::IdlePeerGone(core));
            }
        }
        for ch in p.by_core.values() {
            let Some(c) = self.table.remove(ch) else {
                continue;
            };
            cx.timers.clear(Timer::Handshake(*ch));
            if c.authenticated {
                cx.note(Note::ChannelDown {
                    peer: *peer,
                    core: c.core,
                    channel: *ch,
                    peer_gone: true,
                    given_up: true,
                });
            }
        }
        for ch in self.parked.of_peer(peer) {
            self.unpark(ch, cx);
        }
        true
    }

    // Opening.

    /// Opens a channel for `core` to `peer`, unless one exists. It carries only our `Open`
    /// until the peer's `Accept` proves it knows the key. At most
    /// [`EngineConfig::max_opening_per_peer`](super::EngineConfig) of ours wait for their
    /// `Accept` per peer (a peer parks only so many channels for cores it has not looked up
    /// yet), and at most `max_channels_per_peer` are open; the rest wait in the peer's queue
    /// and open as handshakes end and idle channels close.
    pub(super) fn open(&mut self, peer: PeerId, core: CoreKey, cx: &mut Cx) {
        let Some(r) = self.cores.get(&core) else {
            return;
        };
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.by_core.contains_key(&core) {
            return;
        }
        if p.by_core.len() >= cx.cfg.max_channels_per_peer {
            p.to_open.insert(core);
            self.room_wanted.insert(peer);
            return;
        }
        if p.opening >= cx.cfg.max_opening_per_peer {
            p.to_open.insert(core);
            return;
        }
        let dk = r.discovery_key;
        self.start_open(peer, core, dk, cx);
    }

    /// `peer` refused our channel of `core` for lack of room: it is opened again after
    /// [`REOPEN_FIRST_WAIT`], doubling with each refusal in a row; after
    /// [`MAX_REOPENS`] of them, only once the core has something new or a redial asks (the
    /// peer does not count as the core's then, as one whose channel closed idle does).
    fn reopen_later(&mut self, peer: PeerId, core: CoreKey, cx: &mut Cx) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let refusals = p.reopen.entry(core).or_insert(0);
        *refusals += 1;
        if *refusals > MAX_REOPENS {
            p.reopen.remove(&core);
            self.closed.insert(peer, core, Closed::GivenUp);
            return;
        }
        let wait = REOPEN_FIRST_WAIT.saturating_mul(1 << (*refusals - 1));
        cx.timers.set(Timer::Reopen(peer, core), cx.now + wait);
    }

    /// The `Reopen` timer of `core`'s channel with `peer` fired: it is opened again (its
    /// refusals are kept until the peer accepts it).
    pub(super) fn reopen(&mut self, peer: PeerId, core: CoreKey, cx: &mut Cx) {
        if self
            .peers
            .get(&peer)
            .is_some_and(|p| p.reopen.contains_key(&core))
        {
            self.open(peer, core, cx);
        }
    }

    /// Opens a channel of ours for `core` (known by `dk`) to a connected `peer`.
    fn start_open(&mut self, peer: PeerId, core: CoreKey, dk: DiscoveryKey, cx: &mut Cx) {
        let id = self.next_id;
        self.next_id += 2;
        let open = Message::Open {
            discovery_key: dk,
            capability: self.our_capability(&core, Role::Opener, &peer),
        };
        self.add(id, peer, core, true, false);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.opening += 1;
        }
        cx.timers
            .set(Timer::Handshake(id), cx.now + cx.cfg.handshake_timeout);
        cx.out.push_back(Output::OpenChannel(peer, id, open));
    }

    /// The store channel with `peer`, opened now if there is none.
    pub(super) fn store_channel(&mut self, peer: PeerId, cx: &mut Cx) -> StoreChannel {
        let Some(p) = self.peers.get(&peer) else {
            return StoreChannel::NoPeer;
        };
        match p.by_core.get(&*STORE_CHANNEL_KEY) {
            Some(ch) if self.is_authenticated(*ch) => StoreChannel::Open(*ch),
            Some(_) => StoreChannel::Opening,
            None => {
                let dk = store_channel_discovery_key();
                self.start_open(peer, *STORE_CHANNEL_KEY, dk, cx);
                StoreChannel::Opening
            }
        }
    }

    fn add(
        &mut self,
        id: ChannelId,
        peer: PeerId,
        core: CoreKey,
        opened_by_me: bool,
        authenticated: bool,
    ) {
        self.table.insert(
            id,
            Channel {
                peer,
                core,
                opened_by_me,
                authenticated,
            },
        );
        if let Some(p) = self.peers.get_mut(&peer) {
            p.by_core.insert(core, id);
        }
        // The core has a channel with it again: what closed before is past.
        self.closed.remove(&peer, &core);
    }

    /// A handshake of a channel we opened to `peer` ended (accepted, refused, timed out): the
    /// next cores waiting in its queue open at the end of the turn.
    fn handshake_ended(&mut self, peer: PeerId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.opening = p.opening.saturating_sub(1);
            if !p.to_open.is_empty() {
                self.open_next.insert(peer);
            }
        }
    }

    /// Opens the queued channels of the peers whose handshakes ended this turn, as far as
    /// their room allows.
    pub(super) fn open_queued(&mut self, cx: &mut Cx) {
        while let Some(peer) = self.open_next.pop_first() {
            while let Some(p) = self.peers.get_mut(&peer)
                && p.opening < cx.cfg.max_opening_per_peer
                && p.by_core.len() < cx.cfg.max_channels_per_peer
                && let Some(core) = p.to_open.pop_first()
            {
                self.open(peer, core, cx);
            }
            if let Some(p) = self.peers.get(&peer)
                && !p.to_open.is_empty()
                && p.by_core.len() >= cx.cfg.max_channels_per_peer
            {
                self.room_wanted.insert(peer);
            }
        }
    }

    // Messages.

    /// A message on channel `id` of `peer`: the handshake is dealt with here, the rest of an
    /// authenticated channel's messages go back to the engine.
    pub(super) fn on_message(
        &mut self,
        peer: PeerId,
        id: ChannelId,
        msg: Message,
        cx: &mut Cx,
    ) -> Inbound {
        if !self.peers.contains_key(&peer) {
            return Inbound::Handled;
        }
        if self.parked.contains(id) {
            // A parked channel carries nothing but its `Open` until we adopt it.
            self.unpark(id, cx);
            cx.peers.count_dropped(&peer);
            self.refuse(
                peer,
                id,
                "a channel carries nothing before the handshake",
                cx,
            );
            return Inbound::Handled;
        }
        let Some(c) = self.table.get(&id).copied() else {
            match msg {
                Message::Open {
                    discovery_key,
                    capability,
                } if !id.is_multiple_of(2) => self.on_open(peer, id, discovery_key, capability, cx),
                // Late messages on a channel we dropped.
                _ if id.is_multiple_of(2) => {}
                _ => self.close(peer, id, "the first message must be Open", cx),
            }
            return Inbound::Handled;
        };
        if !c.authenticated {
            // A channel we opened: the peer must prove the key before anything else.
            match msg {
                Message::Accept { capability } => self.on_accept(peer, id, capability, cx),
                Message::Close { reason } => {
                    cx.out.push_back(Output::CloseChannel(peer, id));
                    self.drop(id, cx);
                    if c.opened_by_me && reason == NO_ROOM_REASON {
                        self.reopen_later(peer, c.core, cx);
                    }
                }
                _ => {
                    cx.peers.count_dropped(&peer);
                    self.refuse(
                        peer,
                        id,
                        "a channel carries nothing before the handshake",
                        cx,
                    );
                    self.drop(id, cx);
                }
            }
            return Inbound::Handled;
        }
        Inbound::Data { core: c.core, msg }
    }

    /// A peer opened a channel: accepted (with our `Accept`, then [`Note::ChannelUp`]) if the
    /// opener's capability checks out, parked if we do not know the core, refused otherwise.
    fn on_open(
        &mut self,
        peer: PeerId,
        id: ChannelId,
        dk: DiscoveryKey,
        cap: [u8; 32],
        cx: &mut Cx,
    ) {
        let core = if dk == store_channel_discovery_key() {
            *STORE_CHANNEL_KEY
        } else if let Some(core) = self.by_discovery_key.get(&dk) {
            *core
        } else {
            // Perhaps we are about to replicate it: keep the channel waiting (refusing it
            // would race with our own open of the same core).
            self.park(peer, id, dk, cap, cx);
            return;
        };
        if !self.their_capability_holds(&core, Role::Opener, &peer, &cap) {
            cx.peers.count_dropped(&peer);
            self.refuse(peer, id, "invalid capability", cx);
            return;
        }
        let existing = self.peers.get(&peer).and_then(|p| p.by_core.get(&core));
        if let Some(existing) = existing.copied() {
            // Both opened a channel: keep the one opened by the lower endpoint id (what waited
            // for ours goes on theirs). A peer that opens a channel while one of its own is open
            // for the core has given that one up (its `Close` is on the old stream, which may
            // arrive after the new one's `Open`): the new one replaces it, or neither side would
            // have a channel once that `Close` arrives.
            let ours = self.table.get(&existing).is_some_and(|c| c.opened_by_me);
            if !ours || peer < self.me {
                // Only a channel that replaces one the peer opened itself counts against its
                // allowance; both opening one at once is no replacement.
                let allowed = ours
                    || self
                        .peers
                        .get_mut(&peer)
                        .is_some_and(|p| p.replacements.take(REPLACEMENTS_PER_SECOND, cx.now));
                if !allowed {
                    self.refuse(peer, id, TOO_MANY_REPLACEMENTS, cx);
                    return;
                }
                cx.out.push_back(Output::CloseChannel(peer, existing));
                self.drop(existing, cx);
            } else if core == *STORE_CHANNEL_KEY {
                self.refuse(peer, id, "duplicate channel", cx);
                return;
            } else {
                send_close(peer, id, "duplicate channel", cx);
                return;
            }
        }
        self.add(id, peer, core, false, true);
        let accept = Message::Accept {
            capability: self.our_capability(&core, Role::Acceptor, &peer),
        };
        cx.send(peer, id, accept);
        cx.note(Note::ChannelUp {
            peer,
            core,
            channel: id,
        });
    }

    /// The peer accepted a channel we opened: if its capability checks out, the channel is
    /// authenticated ([`Note::ChannelUp`]).
    fn on_accept(&mut self, peer: PeerId, id: ChannelId, cap: [u8; 32], cx: &mut Cx) {
        let Some(core) = self.table.get(&id).map(|c| c.core) else {
            return;
        };
        if !self.their_capability_holds(&core, Role::Acceptor, &peer, &cap) {
            cx.peers.count_dropped(&peer);
            cx.emit(Event::ChannelRefused {
                peer,
                reason: "invalid capability in Accept".into(),
            });
            self.close(peer, id, "invalid capability", cx);
            return;
        }
        if let Some(c) = self.table.get_mut(&id) {
            c.authenticated = true;
        }
        cx.timers.clear(Timer::Handshake(id));
        self.handshake_ended(peer);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.reopen.remove(&core);
        }
        cx.note(Note::ChannelUp {
            peer,
            core,
            channel: id,
        });
    }

    /// Keeps a channel for a core we do not know waiting, within the per-peer cap and a fair
    /// share of the total: refused for lack of room with [`NO_ROOM_REASON`] (the opener
    /// tries again later), as is the channel of another peer it takes the room of.
    fn park(&mut self, peer: PeerId, id: ChannelId, dk: DiscoveryKey, cap: [u8; 32], cx: &mut Cx) {
        let room = self
            .parked
            .room(&peer, &dk, cx.cfg.max_parked_per_peer, cx.cfg.max_parked);
        match room {
            Room::Yes => {}
            Room::Evict(victim) => {
                if let Some(p) = self.unpark(victim, cx) {
                    cx.peers.count_refused(&p.peer);
                    self.refuse(p.peer, victim, NO_ROOM_REASON, cx);
                }
            }
            Room::No => {
                cx.peers.count_refused(&peer);
                self.refuse(peer, id, NO_ROOM_REASON, cx);
                return;
            }
        }
        let first_for_core = self.parked.of_core(&dk).is_empty();
        self.parked.insert(
            id,
            Parked {
                peer,
                discovery_key: dk,
                capability: cap,
            },
        );
        cx.timers
            .set(Timer::Handshake(id), cx.now + cx.cfg.handshake_timeout);
        if first_for_core {
            cx.out.push_back(Output::FindCore(dk));
        }
    }

    /// Takes channel `id` out of the parked ones, with its timer, if it is one.
    fn unpark(&mut self, id: ChannelId, cx: &mut Cx) -> Option<Parked> {
        let p = self.parked.remove(id)?;
        cx.timers.clear(Timer::Handshake(id));
        Some(p)
    }

    /// The handshake timer of channel `id` fired: ours without the peer's `Accept` closes,
    /// and a parked one for a core we did not add is refused.
    pub(super) fn handshake_timed_out(&mut self, id: ChannelId, cx: &mut Cx) {
        if let Some(p) = self.parked.remove(id) {
            self.refuse(p.peer, id, "unknown core", cx);
        } else if let Some(peer) = self.table.get(&id).map(|c| c.peer) {
            cx.peers.count_dropped(&peer);
            self.close(peer, id, "no proof of the key in time", cx);
        }
    }

    // Closing.

    /// Refuses a channel: tells the peer why and closes the stream.
    fn refuse(&mut self, peer: PeerId, id: ChannelId, reason: &str, cx: &mut Cx) {
        cx.emit(Event::ChannelRefused {
            peer,
            reason: reason.to_string(),
        });
        send_close(peer, id, reason, cx);
    }

    /// Ends a channel with a reason: tells the peer, closes the stream, forgets it.
    pub(super) fn close(&mut self, peer: PeerId, id: ChannelId, reason: &str, cx: &mut Cx) {
        send_close(peer, id, reason, cx);
        self.forget(id, false, cx);
    }

    /// Forgets channel `id`, which the peer gave up (its stream ended, it closed or replaced
    /// it): an authenticated one with [`Note::ChannelDown`]; a parked one is unparked.
    pub(super) fn drop(&mut self, id: ChannelId, cx: &mut Cx) {
        self.forget(id, true, cx);
    }

    /// Forgets channel `id`: given up by the peer, or closed by us.
    fn forget(&mut self, id: ChannelId, given_up: bool, cx: &mut Cx) {
        self.unpark(id, cx);
        let Some(c) = self.table.remove(&id) else {
            return;
        };
        cx.timers.clear(Timer::Handshake(id));
        if c.opened_by_me && !c.authenticated {
            // A store channel's queue waits on: if the peer refused ours because both opened
            // one, theirs comes and takes it. It goes with the peer.
            self.handshake_ended(c.peer);
        }
        if let Some(p) = self.peers.get_mut(&c.peer)
            && p.by_core.get(&c.core) == Some(&id)
        {
            p.by_core.remove(&c.core);
        }
        if c.authenticated {
            cx.note(Note::ChannelDown {
                peer: c.peer,
                core: c.core,
                channel: id,
                peer_gone: false,
                given_up,
            });
        }
    }

    // Idle channels.

    /// Closes idle channels of the peers whose cores wait for room, one per turn each, from
    /// where the last scan stopped: `is_idle(peer, core, channel)` says whether an
    /// authenticated channel carries nothing and would carry nothing if kept.
    pub(super) fn make_room(
        &mut self,
        is_idle: impl Fn(PeerId, CoreKey, ChannelId) -> bool,
        cx: &mut Cx,
    ) {
        let waiting: Vec<PeerId> = self.room_wanted.iter().copied().collect();
        for peer in waiting {
            let Some(p) = self.peers.get(&peer) else {
                self.room_wanted.remove(&peer);
                continue;
            };
            if p.to_open.is_empty() {
                self.room_wanted.remove(&peer);
                continue;
            }
            if p.by_core.len() < cx.cfg.max_channels_per_peer {
                self.open_next.insert(peer);
                continue;
            }
            let from = p.idle_cursor;
            let candidates: Vec<(CoreKey, ChannelId)> = p
                .by_core
                .range(from..)
                .chain(p.by_core.range(..from))
                .take(IDLE_SCAN)
                .map(|(k, ch)| (*k, *ch))
                .collect();
            let mut closed = None;
            let mut last = from;
            for (core, ch) in candidates {
                last = core;
                if self.is_authenticated(ch) && is_idle(peer, core, ch) {
                    closed = Some((core, ch));
                    break;
                }
            }
            if let Some(p) = self.peers.get_mut(&peer) {
                p.idle_cursor = next_key(last);
            }
            if let Some((core, ch)) = closed {
                self.close(peer, ch, IDLE_REASON, cx);
                self.mark_idle_closed(peer, core);
                self.open_next.insert(peer);
            }
        }
    }

    /// Sets the `Room` timer while cores wait for room (channels may turn idle with no message
    /// to say so: they are looked for again soon), and clears it once none does.
    pub(super) fn arm_room_timer(&self, cx: &mut Cx) {
        if self.room_wanted.is_empty() {
            cx.timers.clear(Timer::Room);
        } else if cx.timers.get(Timer::Room).is_none() {
            cx.timers.set(Timer::Room, cx.now + ROOM_RETRY);
        }
    }

    /// `core`'s channel with `peer` closed idle: it opens again when the core has something
    /// new.
    pub(super) fn mark_idle_closed(&mut self, peer: PeerId, core: CoreKey) {
        if self.peers.contains_key(&peer) {
            self.closed.insert(peer, core, Closed::Idle);
        }
    }

    /// `core` has something new (a local change, a wanted block, an update asked): its
    /// channels that closed idle, or that a peer refused too often, open again.
    /// Returns whether one did.
    pub(super) fn reopen_idle(&mut self, core: CoreKey, cx: &mut Cx) -> bool {
        let peers = self.closed.take_core(&core);
        for peer in &peers {
            self.open(*peer, core, cx);
        }
        !peers.is_empty()
    }

    // Queries.

    /// Checks the channel part's bounds: parked channels within `max_parked` and each peer's
    /// within `max_parked_per_peer`; each peer's channels within `max_channels_per_peer` plus
    /// the ones it parked, and ours waiting for an `Accept` within `max_opening_per_peer`;
    /// channels kept closed only of connected peers and replicated cores.
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn check_bounds(&self, cfg: &super::EngineConfig) -> Result<(), String> {
        if self.parked.len() > cfg.max_parked {
            return Err(format!("{} channels parked", self.parked.len()));
        }
        for (peer, p) in &self.peers {
            let parked = self.parked.of_peer(peer).len();
            if parked > cfg.max_parked_per_peer {
                return Err(format!("{parked} channels parked for {peer:?}"));
            }
            if p.by_core.len() > cfg.max_channels_per_peer {
                return Err(format!("{} channels with {peer:?}", p.by_core.len()));
            }
            if p.opening > cfg.max_opening_per_peer {
                return Err(format!("{} of ours opening to {peer:?}", p.opening));
            }
        }
        self.closed.check(
            |p| self.peers.contains_key(p),
            |c| self.cores.contains_key(c),
        )
    }

    /// Whether `core` is only served to the peers that asked for it.
    pub(super) fn is_served_only(&self, core: &CoreKey) -> bool {
        self.cores.get(core).is_some_and(|r| r.served_only)
    }

    /// Whether `peer` is connected.
    pub(super) fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// `peer`'s channel for `core`, whatever its handshake.
    pub(super) fn channel_of(&self, peer: &PeerId, core: &CoreKey) -> Option<ChannelId> {
        self.peers.get(peer)?.by_core.get(core).copied()
    }

    /// The channels of every peer.
    pub(super) fn open_count(&self) -> usize {
        self.peers.values().map(|p| p.by_core.len()).sum()
    }

    /// The channels of `peer`.
    pub(super) fn count_of(&self, peer: &PeerId) -> usize {
        self.peers.get(peer).map_or(0, |p| p.by_core.len())
    }

    /// The core of channel `id`.
    pub(super) fn core_of(&self, id: ChannelId) -> Option<CoreKey> {
        self.table.get(&id).map(|c| c.core)
    }

    /// Whether both sides of channel `id` proved the key.
    pub(super) fn is_authenticated(&self, id: ChannelId) -> bool {
        self.table.get(&id).is_some_and(|c| c.authenticated)
    }

    /// The largest frame to read on channel `id`: a handshake's until both sides proved the
    /// key, an extension message's on a store channel, else [`MAX_FRAME`].
    pub(super) fn max_frame(&self, id: ChannelId) -> usize {
        match self.table.get(&id) {
            Some(c) if c.authenticated && c.core == *STORE_CHANNEL_KEY => MAX_STORE_CHANNEL_FRAME,
            Some(c) if c.authenticated => MAX_FRAME,
            _ => MAX_HANDSHAKE_FRAME,
        }
    }

    /// Whether a channel is parked for the core of `dk`.
    pub(super) fn is_parked(&self, dk: &DiscoveryKey) -> bool {
        self.parked.has_core(dk)
    }

    /// Channels peers opened for cores we do not replicate, waiting to be adopted.
    pub(super) fn parked_len(&self) -> usize {
        self.parked.len()
    }

    /// Whether `core`'s channel with some connected peer closed idle: that peer held the same
    /// log, and the channel opens again when the core has something new.
    pub(super) fn idle_closed_with_any(&self, core: &CoreKey) -> bool {
        self.closed.idle_with_any(core)
    }

    /// Whether `core`'s channel with `peer` closed idle.
    #[cfg(test)]
    pub(super) fn idle_closed(&self, peer: &PeerId, core: &CoreKey) -> bool {
        self.closed.get(peer, core) == Some(Closed::Idle)
    }

    /// Opens a channel for `core` to a connected `peer` that has none, unless one it refused
    /// for lack of room waits for its `Reopen` timer, or its channel closed idle (it opens
    /// again when the core has something new).
    pub(super) fn open_again(&mut self, peer: PeerId, core: CoreKey, cx: &mut Cx) {
        if self
            .peers
            .get(&peer)
            .is_some_and(|p| !p.reopen.contains_key(&core))
            && self.closed.get(&peer, &core) != Some(Closed::Idle)
        {
            self.open(peer, core, cx);
        }
    }

    /// Whether `core` waits for room to open a channel to `peer`.
    #[cfg(test)]
    pub(super) fn waits_to_open(&self, peer: &PeerId, core: &CoreKey) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.to_open.contains(core))
    }

    /// Checks the channel part's timers: a `Handshake` timer for exactly the channels of ours
    /// waiting for an `Accept` and the parked ones, an `OpenRest` timer only for connected
    /// peers.
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn check_timers(&self, timers: &super::timer::TimerTable) -> Result<(), String> {
        let mut expected: BTreeSet<ChannelId> = self
            .table
            .all()
            .filter(|(_, c)| !c.authenticated)
            .map(|(id, _)| id)
            .collect();
        expected.extend(self.parked.ids());
        let mut set = BTreeSet::new();
        for (timer, _) in timers.entries() {
            match timer {
                Timer::Handshake(id) => {
                    set.insert(id);
                }
                Timer::OpenRest(peer) if !self.peers.contains_key(&peer) => {
                    return Err(format!("open timer of a peer gone {peer:?}"));
                }
                Timer::Reopen(peer, core)
                    if !self
                        .peers
                        .get(&peer)
                        .is_some_and(|p| p.reopen.contains_key(&core)) =>
                {
                    return Err(format!(
                        "reopen timer of {core:?} with {peer:?} out of step"
                    ));
                }
                _ => {}
            }
        }
        if set != expected {
            return Err(format!("handshake timers {set:?}, handshakes {expected:?}"));
        }
        Ok(())
    }
}

/// Tells the peer why channel `id` ends, and closes its stream.
fn send_close(peer: PeerId, id: ChannelId, reason: &str, cx: &mut Cx) {
    let close = Message::Close {
        reason: reason.to_string(),
    };
    cx.send(peer, id, close);
    cx.out.push_back(Output::CloseChannel(peer, id));
}

/// The key after `key` in byte order (wrapping to zero after the last).
fn next_key(mut key: CoreKey) -> CoreKey {
    for b in key.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            break;
        }
    }
    key
}

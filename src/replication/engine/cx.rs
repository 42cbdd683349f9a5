//! What a part of the engine may use of the rest during one call ([`Cx`]): the clock, the
//! outputs for the driver, the engine's notes to itself, the timer table, storage task ids,
//! the peers' counters and the fetch queue. A part changes its own state and asks for the
//! rest through these: an [`Output`] for the driver, or a [`Note`] that the engine routes to
//! the part it concerns once the call returns.

use std::{collections::VecDeque, time::Instant};

use super::{
    ChannelId, EngineConfig, Event, Output, PeerId, peers::Peers, tasks::Tasks, timer::TimerTable,
};
use crate::{
    crypto::CoreKey,
    replication::{fetch::FetchQueue, wire::Message},
};

/// Something one part asks of another, routed by the engine after the call that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Note {
    /// Both sides of `channel` proved the key: the core's sync part (or the store channel's
    /// extensions) takes it.
    ChannelUp {
        peer: PeerId,
        core: CoreKey,
        channel: ChannelId,
    },
    /// An authenticated channel is gone; `peer_gone` when its whole connection went (the
    /// fetch queue forgets the peer at once then), `given_up` when the peer's doing (its
    /// stream ended, it closed or replaced the channel, its connection went) rather than ours.
    ChannelDown {
        peer: PeerId,
        core: CoreKey,
        channel: ChannelId,
        peer_gone: bool,
        given_up: bool,
    },
    /// The core's state changed: announce it on gossip.
    Announce(CoreKey),
    /// The core has something new: its channels that closed idle open again.
    Reopen(CoreKey),
    /// A peer with which the core's channel had closed idle is gone: the core may have no
    /// peer left.
    IdlePeerGone(CoreKey),
    /// The core's upgrade peer went away: ask another at the end of the turn.
    RetryUpgrade(CoreKey),
    /// The core has a peer ahead that is backed off: ask it when a back-off ends.
    UpgradeAfterBackoff(CoreKey),
    /// A peer's back-off ended early (a block of it verified): the upgrades waiting for one
    /// ask again.
    BackoffEnded,
    /// The core's `update` waits for its peers: see at the end of each turn whether it is done.
    Updating(CoreKey),
    /// Blocks of the core arrived: applied at the end of the turn, with every block that
    /// arrives in the same turn (the frames of one read), rather than the first alone.
    BlocksArrived(CoreKey),
}

/// The services a part may use during one call.
pub(super) struct Cx<'a> {
    /// The time of the call.
    pub now: Instant,
    /// The engine's tuning.
    pub cfg: &'a EngineConfig,
    /// Outputs for the driver, in order.
    pub out: &'a mut VecDeque<Output>,
    /// Notes for the engine to route.
    pub notes: &'a mut VecDeque<Note>,
    /// Every timer of the engine but the fetch queue's.
    pub timers: &'a mut TimerTable,
    /// Storage task ids and who owns each.
    pub tasks: &'a mut Tasks,
    /// The connected peers' counters and backlogs.
    pub peers: &'a mut Peers,
    /// The missing blocks and the peers' back-offs.
    pub fetch: &'a mut FetchQueue,
}

impl Cx<'_> {
    /// Queues a message on a channel.
    pub(super) fn send(&mut self, peer: PeerId, channel: ChannelId, msg: Message) {
        self.out.push_back(Output::Send(peer, channel, msg));
    }

    /// Reports an event.
    pub(super) fn emit(&mut self, ev: Event) {
        self.out.push_back(Output::Event(ev));
    }

    /// Routes `note` once the call returns.
    pub(super) fn note(&mut self, note: Note) {
        self.notes.push_back(note);
    }

    /// Whether answers may be queued towards `peer`: it is connected and its backlog is under
    /// the limit.
    pub(super) fn has_room(&self, peer: &PeerId) -> bool {
        self.peers.has_room(peer)
    }

    /// Whether `peer` may be asked for data now: neither backed off nor serving a penalty.
    pub(super) fn may_ask(&self, peer: &PeerId) -> bool {
        !self.fetch.is_backed_off(peer, self.now)
    }

    /// Records bad data from `peer` and backs it off (a penalty for it lasts longer than for
    /// slowness). A peer that left is not penalized: the fetch queue keeps state only for
    /// connected ones.
    pub(super) fn blame(&mut self, core: CoreKey, peer: PeerId, reason: String) {
        if self.peers.count(&peer, |s| s.invalid += 1) {
            self.fetch.penalize_invalid(peer, self.now);
        } else {
            // It left before its data was found bad: its record keeps the failure.
            self.fetch.penalize_gone(peer, self.now);
        }
        self.emit(Event::Invalid { core, peer, reason });
    }

    /// A verified block from `peer` was stored: counted, and the peer's failures forgiven.
    /// A back-off that ends so has no timer left to fire: the upgrades that waited for a
    /// back-off's end are asked at the end of this turn.
    pub(super) fn downloaded(&mut self, core: CoreKey, peer: PeerId, index: u64, bytes: u64) {
        if self.fetch.on_verified(&peer) {
            self.note(Note::BackoffEnded);
        }
        self.peers.count(&peer, |s| {
            s.blocks_down += 1;
            s.bytes_down += bytes;
        });
        self.emit(Event::Download {
            core,
            index,
            bytes,
            peer,
        });
    }

    /// A block was sent to `peer`: counted and reported.
    pub(super) fn uploaded(&mut self, core: CoreKey, peer: PeerId, index: u64, bytes: u64) {
        self.peers.count(&peer, |s| {
            s.blocks_up += 1;
            s.bytes_up += bytes;
        });
        self.emit(Event::Upload {
            core,
            index,
            bytes,
            peer,
        });
    }
}

//! The connected peers: each one's counters and the bytes queued towards it.

use std::{collections::BTreeMap, time::Instant};

use super::{PeerId, PeerStats, allowance::Allowance};

/// What the engine keeps of one connected peer.
#[derive(Debug, Default)]
struct Peer {
    /// Its counters (but `channels`, `backlog_bytes` and `buffered_bytes`, filled in when
    /// asked).
    stats: PeerStats,
    /// Bytes queued towards it that QUIC has not taken yet, as the driver last reported.
    backlog_bytes: u64,
    /// Whether the driver last reported it over its backlog limit.
    backlog_over: bool,
    /// Its allowance of control messages (`Cancel`, `Unwant`).
    control: Allowance,
    /// Control messages dropped past the allowance since the last channel closed for them.
    control_dropped: u64,
    /// Ranges its channels say it holds, over all of them.
    ranges: usize,
}

/// Ranges of blocks one peer's channels may say it holds, over all its channels (each
/// channel keeps at most 1,024): past it, more are ignored. About 128 KiB a peer.
pub const MAX_RANGES_PER_PEER: usize = 8192;

/// What becomes of a control message (`Cancel`, `Unwant`) from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Control {
    /// Within its allowance: handled.
    Take,
    /// Past it: dropped.
    Drop,
    /// Past it, a second's worth dropped: dropped, and its channel closed.
    Close,
}

/// The connected peers.
#[derive(Debug, Default)]
pub(super) struct Peers {
    peers: BTreeMap<PeerId, Peer>,
    /// The counters of the peers that left, summed: with the connected ones' they make
    /// node-wide totals that never go down.
    departed: PeerStats,
}

impl Peers {
    /// No peer yet.
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// `peer` connected; false if it was already.
    pub(super) fn add(&mut self, peer: PeerId) -> bool {
        if self.peers.contains_key(&peer) {
            return false;
        }
        let stats = PeerStats {
            peer,
            ..Default::default()
        };
        self.peers.insert(
            peer,
            Peer {
                stats,
                backlog_bytes: 0,
                backlog_over: false,
                control: Allowance::default(),
                control_dropped: 0,
                ranges: 0,
            },
        );
        true
    }

    /// Whether `peer`'s channels may record more ranges it holds.
    pub(super) fn has_range_room(&self, peer: &PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.ranges < MAX_RANGES_PER_PEER)
    }

    /// One of `peer`'s channels went from `before` ranges recorded to `after`.
    pub(super) fn ranges_changed(&mut self, peer: &PeerId, before: usize, after: usize) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.ranges = p.ranges.saturating_sub(before).saturating_add(after);
        }
    }

    /// Checks that no peer's channels recorded more ranges than [`MAX_RANGES_PER_PEER`] (and
    /// one more range each, the last one taken).
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn check_bounds(&self) -> Result<(), String> {
        match self
            .peers
            .iter()
            .find(|(_, p)| p.ranges > MAX_RANGES_PER_PEER + 1)
        {
            Some((peer, p)) => Err(format!("{} ranges recorded for {peer:?}", p.ranges)),
            None => Ok(()),
        }
    }

    /// `peer` disconnected; false if it was not connected.
    pub(super) fn remove(&mut self, peer: &PeerId) -> bool {
        match self.peers.remove(peer) {
            Some(p) => {
                add_counters(&mut self.departed, &p.stats);
                true
            }
            None => false,
        }
    }

    /// Whether `peer` is connected.
    pub(super) fn contains(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// The connected peers, in id order.
    pub(super) fn ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.keys().copied()
    }

    /// Changes `peer`'s counters with `f`; false if it is not connected.
    pub(super) fn count(&mut self, peer: &PeerId, f: impl FnOnce(&mut PeerStats)) -> bool {
        match self.peers.get_mut(peer) {
            Some(p) => {
                f(&mut p.stats);
                true
            }
            None => false,
        }
    }

    /// Counts input from `peer` that broke the protocol and was dropped.
    pub(super) fn count_dropped(&mut self, peer: &PeerId) {
        self.count(peer, |s| s.dropped += 1);
    }

    /// Counts a request or channel of `peer` refused because it asked for too much; returns
    /// the peer's count so far.
    pub(super) fn count_refused(&mut self, peer: &PeerId) -> u64 {
        let mut refused = 0;
        self.count(peer, |s| {
            s.refused += 1;
            refused = s.refused;
        });
        refused
    }

    /// A control message from `peer` at `now`, `per_second` of which it may send.
    pub(super) fn control(&mut self, peer: &PeerId, per_second: u64, now: Instant) -> Control {
        let Some(p) = self.peers.get_mut(peer) else {
            return Control::Drop;
        };
        if p.control.take(per_second, now) {
            return Control::Take;
        }
        p.stats.dropped += 1;
        p.control_dropped += 1;
        if p.control_dropped >= per_second.max(1) {
            p.control_dropped = 0;
            Control::Close
        } else {
            Control::Drop
        }
    }

    /// The driver's count of bytes queued towards `peer`, and whether it is over its limit.
    pub(super) fn set_backlog(&mut self, peer: &PeerId, bytes: u64, over: bool) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.backlog_bytes = bytes;
            p.backlog_over = over;
        }
    }

    /// Whether answers may be queued towards `peer`: it is connected and its backlog is under
    /// its limit.
    pub(super) fn has_room(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| !p.backlog_over)
    }

    /// The counters of every peer since the start, those that left included (`peer` is
    /// zeros; `channels`, `backlog_bytes` and `buffered_bytes` are not counted).
    pub(super) fn totals(&self) -> PeerStats {
        let mut totals = self.departed.clone();
        for p in self.peers.values() {
            add_counters(&mut totals, &p.stats);
        }
        totals
    }

    /// The counters of every connected peer, in id order, with its backlog and the channels
    /// `channels` says it has.
    pub(super) fn stats(&self, channels: impl Fn(&PeerId) -> usize) -> Vec<PeerStats> {
        self.peers
            .iter()
            .map(|(id, p)| PeerStats {
                peer: *id,
                channels: channels(id),
                backlog_bytes: p.backlog_bytes,
                ..p.stats.clone()
            })
            .collect()
    }
}

/// Adds the counters of `from` to `to`.
fn add_counters(to: &mut PeerStats, from: &PeerStats) {
    let pairs = [
        (&mut to.blocks_down, from.blocks_down),
        (&mut to.bytes_down, from.bytes_down),
        (&mut to.blocks_up, from.blocks_up),
        (&mut to.bytes_up, from.bytes_up),
        (&mut to.pushes_sent, from.pushes_sent),
        (&mut to.pushes_taken, from.pushes_taken),
        (&mut to.invalid, from.invalid),
        (&mut to.refused, from.refused),
        (&mut to.dropped, from.dropped),
        (&mut to.extensions_received, from.extensions_received),
        (&mut to.extensions_dropped, from.extensions_dropped),
    ];
    for (total, n) in pairs {
        *total = total.saturating_add(n);
    }
}

//! Parked channels: channels peers opened for cores we do not replicate (yet). Each carries
//! nothing but its `Open`, and is adopted if we add the core before its handshake timer fires.
//! A per-peer and a total cap bound them.

use std::collections::{BTreeMap, BTreeSet};

use super::super::{ChannelId, PeerId};
use crate::crypto::DiscoveryKey;

/// A channel a peer opened for a core we do not replicate (yet).
#[derive(Debug)]
pub(super) struct Parked {
    /// The peer that opened it.
    pub(super) peer: PeerId,
    /// The core it is for.
    pub(super) discovery_key: DiscoveryKey,
    /// The capability of its `Open`, checked once we know the core.
    pub(super) capability: [u8; 32],
}

/// Whether a peer may park one more channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Room {
    /// It may.
    Yes,
    /// It may once this channel of another peer (which holds more) is refused.
    Evict(ChannelId),
    /// It may not.
    No,
}

/// The parked channels, by id, by core and by peer.
#[derive(Debug, Default)]
pub(super) struct ParkedChannels {
    by_id: BTreeMap<ChannelId, Parked>,
    by_core: BTreeMap<DiscoveryKey, BTreeSet<ChannelId>>,
    by_peer: BTreeMap<PeerId, BTreeSet<ChannelId>>,
}

impl ParkedChannels {
    /// Number of parked channels.
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every parked channel, in id order.
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn ids(&self) -> impl Iterator<Item = ChannelId> + '_ {
        self.by_id.keys().copied()
    }

    /// Parked channel `id`.
    pub(super) fn get(&self, id: ChannelId) -> Option<&Parked> {
        self.by_id.get(&id)
    }

    /// Whether channel `id` is parked.
    pub(super) fn contains(&self, id: ChannelId) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Whether `peer` may park one more channel for `core`: not a second one for the same
    /// core, and under the per-peer cap. Under the total cap too, or else the slots are shared
    /// fairly: the peer holding the most gives up its oldest if it holds more than `peer`
    /// would with one more (so keyless peers filling every slot cannot shut out one that
    /// parks a few).
    pub(super) fn room(
        &self,
        peer: &PeerId,
        core: &DiscoveryKey,
        per_peer: usize,
        total: usize,
    ) -> Room {
        let of_peer = self.by_peer.get(peer).map_or(0, BTreeSet::len);
        let same_core = self.by_core.get(core).is_some_and(|chs| {
            chs.iter()
                .any(|ch| self.by_id.get(ch).is_some_and(|p| p.peer == *peer))
        });
        if same_core || of_peer >= per_peer {
            return Room::No;
        }
        if self.by_id.len() < total {
            return Room::Yes;
        }
        // The largest holder (the lowest id of those that hold as many), and its oldest.
        let largest = self
            .by_peer
            .iter()
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)));
        match largest {
            Some((_, chs)) if chs.len() > of_peer + 1 => {
                chs.first().map_or(Room::No, |oldest| Room::Evict(*oldest))
            }
            _ => Room::No,
        }
    }

    /// Parks channel `id`.
    pub(super) fn insert(&mut self, id: ChannelId, parked: Parked) {
        self.by_core
            .entry(parked.discovery_key)
            .or_default()
            .insert(id);
        self.by_peer.entry(parked.peer).or_default().insert(id);
        self.by_id.insert(id, parked);
    }

    /// Takes channel `id` out, if it is parked.
    pub(super) fn remove(&mut self, id: ChannelId) -> Option<Parked> {
        let p = self.by_id.remove(&id)?;
        remove_from(&mut self.by_core, &p.discovery_key, id);
        remove_from(&mut self.by_peer, &p.peer, id);
        Some(p)
    }

    /// Whether a channel is parked for `core`.
    pub(super) fn has_core(&self, core: &DiscoveryKey) -> bool {
        self.by_core.contains_key(core)
    }

    /// The channels parked for `core`, in id order (they stay parked).
    pub(super) fn of_core(&self, core: &DiscoveryKey) -> Vec<ChannelId> {
        self.by_core
            .get(core)
            .map(|chs| chs.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The channels `peer` parked, in id order (they stay parked).
    pub(super) fn of_peer(&self, peer: &PeerId) -> Vec<ChannelId> {
        self.by_peer
            .get(peer)
            .map(|chs| chs.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// Removes `id` from the set of `key`, and the set once it is empty.
fn remove_from<K: Ord>(map: &mut BTreeMap<K, BTreeSet<ChannelId>>, key: &K, id: ChannelId) {
    if let Some(set) = map.get_mut(key) {
        set.remove(&id);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked(peer: PeerId, dk: DiscoveryKey) -> Parked {
        Parked {
            peer,
            discovery_key: dk,
            capability: [0; 32],
        }
    }

    #[test]
    fn caps_hold_per_peer_in_total_and_per_core() {
        let (p, q) = ([1; 32], [2; 32]);
        let (x, y, z) = ([10; 32], [11; 32], [12; 32]);
        let mut chans = ParkedChannels::default();
        assert_eq!(chans.room(&p, &x, 2, 3), Room::Yes);
        chans.insert(1, parked(p, x));
        assert_eq!(chans.room(&p, &x, 2, 3), Room::No, "one per core and peer");
        assert_eq!(chans.room(&q, &x, 2, 3), Room::Yes);
        chans.insert(3, parked(p, y));
        assert_eq!(chans.room(&p, &z, 2, 3), Room::No, "two per peer");
        chans.insert(5, parked(q, x));
        assert_eq!(
            chans.room(&q, &z, 2, 3),
            Room::No,
            "three in all, and p holds no more than q would"
        );
        assert_eq!(chans.of_core(&x), [1, 5]);
        assert_eq!(chans.of_peer(&p), [1, 3]);
        assert!(chans.remove(1).is_some());
        assert!(chans.remove(1).is_none());
        assert_eq!(chans.of_core(&x), [5]);
        assert_eq!(chans.of_peer(&p), [3]);
        chans.remove(3);
        chans.remove(5);
        assert_eq!(chans.len(), 0);
        assert!(chans.by_core.is_empty() && chans.by_peer.is_empty());
    }

    /// Every slot is held by two peers; a third that holds none takes the oldest of the one
    /// holding the most, and once the holdings are even nobody takes from anybody.
    #[test]
    fn a_full_table_is_shared_fairly() {
        let (p, q, r) = ([1; 32], [2; 32], [3; 32]);
        let mut chans = ParkedChannels::default();
        for (id, peer) in [(1, p), (3, p), (5, p), (7, q), (9, q), (11, q)] {
            chans.insert(id, parked(peer, [id as u8; 32]));
        }
        // p and q hold 3 each: p, the lower id, gives up its oldest.
        assert_eq!(chans.room(&r, &[40; 32], 8, 6), Room::Evict(1));
        chans.remove(1);
        chans.insert(13, parked(r, [40; 32]));
        assert_eq!(chans.room(&r, &[41; 32], 8, 6), Room::Evict(7));
        chans.remove(7);
        chans.insert(15, parked(r, [41; 32]));
        // 2, 2, 2: a third for r would make it hold more than the one it takes from.
        assert_eq!(chans.room(&r, &[42; 32], 8, 6), Room::No);
        assert_eq!(chans.room(&p, &[43; 32], 8, 6), Room::No);
    }
}

//! Peers' ids as subscribers hand them to applications: events carry a peer's 32 bytes, and
//! turning them into an [`EndpointId`] checks that they are a point of the curve.

use iroh::EndpointId;

/// Endpoint ids of the peers a subscriber (of a core's events, of an extension's messages)
/// was told of last, decoded once: decoding an id's bytes checks that they are a point of the
/// curve, a square root that costs more than the rest of a block's event (about 12 µs here,
/// once per block and subscriber before).
#[derive(Debug, Default)]
pub(super) struct PeerIds {
    /// Most recent first, at most [`PeerIds::MAX`].
    recent: Vec<([u8; 32], EndpointId)>,
}

impl PeerIds {
    /// Ids kept: a core's blocks, or an extension's messages, come from a few peers at a time.
    const MAX: usize = 8;

    /// The id of `peer`, `None` if its bytes are no id.
    pub(super) fn get(&mut self, peer: [u8; 32]) -> Option<EndpointId> {
        if let Some(i) = self.recent.iter().position(|(bytes, _)| *bytes == peer) {
            let found = self.recent.remove(i);
            self.recent.insert(0, found);
            return Some(found.1);
        }
        let id = EndpointId::from_bytes(&peer).ok()?;
        self.recent.truncate(Self::MAX - 1);
        self.recent.insert(0, (peer, id));
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Peers' ids come out right whatever the order, for more peers than are kept decoded,
    /// and bytes that are no id give none (nor are kept as one).
    #[test]
    fn peer_ids_are_decoded_once_and_right() {
        let peers: Vec<[u8; 32]> = (0..PeerIds::MAX as u8 + 3)
            .map(|i| {
                *iroh::SecretKey::from_bytes(&[i + 1; 32])
                    .public()
                    .as_bytes()
            })
            .collect();
        let mut ids = PeerIds::default();
        // Round and round, then back and forth: every lookup, cached or not, is the peer's id.
        let order = (0..3)
            .flat_map(|_| 0..peers.len())
            .chain((0..peers.len()).rev())
            .chain([0, 0, 1, 0]);
        for i in order {
            let id = ids.get(peers[i]).unwrap();
            assert_eq!(*id.as_bytes(), peers[i]);
            assert!(ids.recent.len() <= PeerIds::MAX);
            assert_eq!(ids.recent[0].0, peers[i]);
            // Every kept id is its bytes', each bytes kept once.
            assert!(ids.recent.iter().all(|(bytes, id)| id.as_bytes() == bytes));
            let mut kept: Vec<[u8; 32]> = ids.recent.iter().map(|(bytes, _)| *bytes).collect();
            kept.sort();
            kept.dedup();
            assert_eq!(kept.len(), ids.recent.len());
        }
        assert_eq!(ids.recent.len(), PeerIds::MAX);
        // A peer kept is found, not decoded and added again.
        let before = ids.recent.clone();
        assert!(ids.get(peers[1]).is_some());
        assert_eq!(ids.recent.len(), PeerIds::MAX);
        assert!(before.iter().any(|(bytes, _)| *bytes == peers[1]));
        // A y-coordinate with no point on the curve (2 is not a valid compressed point).
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        assert!(EndpointId::from_bytes(&not_a_point).is_err());
        assert!(ids.get(not_a_point).is_none());
        assert!(ids.recent.iter().all(|(bytes, _)| *bytes != not_a_point));
    }
}

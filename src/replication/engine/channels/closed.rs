//! The channels that stay closed until their core has something new: those closed idle (both
//! sides held the same log), and those a peer refused for lack of room too often. Indexed by
//! peer and by core, so that a peer's departure, a core's news and the question "does this
//! core still have a peer" each cost what they touch, not a scan of every peer.

use std::{collections::BTreeMap, ops::RangeInclusive};

use super::super::PeerId;
use crate::crypto::CoreKey;

/// Why a core's channel with a peer stays closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closed {
    /// Closed idle: the peer held the same log, and counts as the core's while connected.
    Idle,
    /// The peer refused it for lack of room too many times in a row: it does not count as the
    /// core's peer.
    GivenUp,
}

/// The (peer, core) pairs whose channel stays closed, with why, in two flat maps (no map per
/// peer or per core: at 10,000 cores those cost a node each).
#[derive(Debug, Default)]
pub(super) struct ClosedChannels {
    by_peer: BTreeMap<([u8; 32], [u8; 32]), Closed>,
    by_core: BTreeMap<([u8; 32], [u8; 32]), Closed>,
}

/// The keys of a map of pairs whose first half is `first`.
fn with_first(first: [u8; 32]) -> RangeInclusive<([u8; 32], [u8; 32])> {
    (first, [0; 32])..=(first, [u8::MAX; 32])
}

impl ClosedChannels {
    /// `core`'s channel with `peer` stays closed, for `why`.
    pub(super) fn insert(&mut self, peer: PeerId, core: CoreKey, why: Closed) {
        self.by_peer.insert((peer, core), why);
        self.by_core.insert((core, peer), why);
    }

    /// `core`'s channel with `peer` no longer stays closed (it opened again).
    pub(super) fn remove(&mut self, peer: &PeerId, core: &CoreKey) {
        if self.by_peer.remove(&(*peer, *core)).is_some() {
            self.by_core.remove(&(*core, *peer));
        }
    }

    /// Every peer `core`'s channel stays closed with, forgotten: they open again.
    pub(super) fn take_core(&mut self, core: &CoreKey) -> Vec<PeerId> {
        let peers: Vec<PeerId> = self
            .by_core
            .range(with_first(*core))
            .map(|((_, peer), _)| *peer)
            .collect();
        for peer in &peers {
            self.by_core.remove(&(*core, *peer));
            self.by_peer.remove(&(*peer, *core));
        }
        peers
    }

    /// Every core whose channel with `peer` stays closed, forgotten (the peer went), with why.
    pub(super) fn take_peer(&mut self, peer: &PeerId) -> Vec<(CoreKey, Closed)> {
        let cores: Vec<(CoreKey, Closed)> = self
            .by_peer
            .range(with_first(*peer))
            .map(|((_, core), why)| (*core, *why))
            .collect();
        for (core, _) in &cores {
            self.by_peer.remove(&(*peer, *core));
            self.by_core.remove(&(*core, *peer));
        }
        cores
    }

    /// Why `core`'s channel with `peer` stays closed, if it does.
    pub(super) fn get(&self, peer: &PeerId, core: &CoreKey) -> Option<Closed> {
        self.by_peer.get(&(*peer, *core)).copied()
    }

    /// Whether `core`'s channel closed idle with some peer (who counts as its peer).
    pub(super) fn idle_with_any(&self, core: &CoreKey) -> bool {
        self.by_core
            .range(with_first(*core))
            .any(|(_, why)| *why == Closed::Idle)
    }

    /// Checks that both maps hold the same pairs, and only pairs of a `connected` peer and a
    /// `registered` core (bounded by what the node replicates and whom it is connected to).
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn check(
        &self,
        connected: impl Fn(&PeerId) -> bool,
        registered: impl Fn(&CoreKey) -> bool,
    ) -> Result<(), String> {
        if let Some(((peer, _), _)) = self.by_peer.iter().find(|((p, _), _)| !connected(p)) {
            return Err(format!("a closed channel of {peer:?}, not connected"));
        }
        if let Some(((core, _), _)) = self.by_core.iter().find(|((c, _), _)| !registered(c)) {
            return Err(format!("a closed channel of core {core:?}, not replicated"));
        }
        let flipped: BTreeMap<_, _> = self
            .by_core
            .iter()
            .map(|((core, peer), why)| ((*peer, *core), *why))
            .collect();
        if flipped != self.by_peer {
            return Err("closed channels indexed differently by peer and by core".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both indexes follow inserts, removals, a core's news and a peer's departure; only an
    /// idle close makes the peer the core's.
    #[test]
    fn both_indexes_agree() {
        let (a, b) = ([1; 32], [2; 32]);
        let (x, y) = ([7; 32], [8; 32]);
        let mut c = ClosedChannels::default();
        c.insert(a, x, Closed::Idle);
        c.insert(b, x, Closed::GivenUp);
        c.insert(a, y, Closed::GivenUp);
        c.check(|_| true, |_| true).unwrap();
        assert!(
            c.check(|p| *p == a, |_| true).is_err(),
            "b is not connected"
        );
        assert!(c.idle_with_any(&x));
        assert!(!c.idle_with_any(&y), "a refusal makes no peer");
        assert_eq!(c.get(&b, &x), Some(Closed::GivenUp));
        c.remove(&a, &x);
        assert!(!c.idle_with_any(&x));
        c.check(|_| true, |_| true).unwrap();
        assert_eq!(c.take_core(&x), vec![b]);
        assert_eq!(c.get(&b, &x), None);
        c.check(|_| true, |_| true).unwrap();
        let gone = c.take_peer(&a);
        assert_eq!(
            gone.into_iter().collect::<Vec<_>>(),
            vec![(y, Closed::GivenUp)]
        );
        c.check(|_| true, |_| true).unwrap();
        assert!(c.by_peer.is_empty() && c.by_core.is_empty());
        c.by_peer.insert((a, x), Closed::Idle);
        assert!(c.check(|_| true, |_| true).is_err(), "one side only");
    }
}

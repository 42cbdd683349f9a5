//! The upgrade of one core: the signed-length request in flight (or the push applied in its
//! place), the request a push took the place of, and the choice of whom to ask.

use std::{cmp::Reverse, time::Instant};

use super::super::{
    ChannelId, Mode, PeerId,
    timer::{Timer, TimerTable},
};
use crate::{
    crypto::CoreKey,
    replication::{LocalInfo, wire::SyncInfo},
    tree::{IndexRequest, ProofRequest, UpgradeRequest},
};

/// Ids of upgrade requests have the top bit set; run requests use the fetch queue's ids.
const UPGRADE_ID_BIT: u64 = 1 << 63;

/// An upgrade request in flight (or a push being applied in its place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Upgrading {
    /// The peer asked.
    pub(super) peer: PeerId,
    /// The channel it was asked on.
    pub(super) channel: ChannelId,
    /// The request's id.
    pub(super) id: u64,
    /// When it is asked of another peer (the core's `Upgrade` timer).
    pub(super) deadline: Instant,
}

/// The upgrade of one core.
#[derive(Debug, Default)]
pub(super) struct UpgradeSlot {
    /// The upgrade in flight.
    in_flight: Option<Upgrading>,
    /// The upgrade request a push took the place of while the push is applied.
    superseded: Option<Upgrading>,
    next_id: u64,
}

impl UpgradeSlot {
    /// The upgrade in flight.
    pub(super) fn get(&self) -> Option<Upgrading> {
        self.in_flight
    }

    /// A new upgrade of `core` asked of `peer` on `channel`, timing out at `deadline`: its id.
    pub(super) fn start(
        &mut self,
        core: CoreKey,
        peer: PeerId,
        channel: ChannelId,
        deadline: Instant,
        timers: &mut TimerTable,
    ) -> u64 {
        let id = UPGRADE_ID_BIT | self.next_id;
        self.next_id += 1;
        let upgrade = Upgrading {
            peer,
            channel,
            id,
            deadline,
        };
        self.set(core, upgrade, timers);
        id
    }

    /// Makes `upgrade` the one in flight of `core`, with its timer.
    pub(super) fn set(&mut self, core: CoreKey, upgrade: Upgrading, timers: &mut TimerTable) {
        self.in_flight = Some(upgrade);
        timers.set(Timer::Upgrade(core), upgrade.deadline);
    }

    /// Ends the upgrade in flight of `core`.
    pub(super) fn take(&mut self, core: CoreKey, timers: &mut TimerTable) -> Option<Upgrading> {
        let u = self.in_flight.take()?;
        timers.clear(Timer::Upgrade(core));
        Some(u)
    }

    /// Ends the upgrade of `core` if it was asked on `channel`.
    pub(super) fn take_on(
        &mut self,
        core: CoreKey,
        channel: ChannelId,
        timers: &mut TimerTable,
    ) -> Option<Upgrading> {
        if self.in_flight?.channel != channel {
            return None;
        }
        self.take(core, timers)
    }

    /// Puts the upgrade in flight aside while a push takes its place.
    pub(super) fn supersede(&mut self, core: CoreKey, timers: &mut TimerTable) {
        if let Some(u) = self.take(core, timers) {
            self.superseded = Some(u);
        }
    }

    /// The upgrade request a push took the place of, if any.
    pub(super) fn take_superseded(&mut self) -> Option<Upgrading> {
        self.superseded.take()
    }
}

/// Whether a peer that says `remote` is ahead of `local`: a higher fork, or a longer log on
/// ours.
pub(super) fn is_ahead(remote: &SyncInfo, local: &LocalInfo) -> bool {
    remote.length > 0
        && (remote.fork > local.fork || (remote.fork == local.fork && remote.length > local.length))
}

/// The peer to ask for an upgrade among `candidates` (channel, peer, what it said): the one
/// furthest ahead, on the lowest channel id among equals.
pub(super) fn furthest_ahead(
    local: &LocalInfo,
    candidates: impl Iterator<Item = (ChannelId, PeerId, SyncInfo)>,
) -> Option<(ChannelId, PeerId, SyncInfo)> {
    candidates
        .filter(|(_, _, s)| is_ahead(s, local))
        .max_by_key(|(id, _, s)| (s.fork, s.length, Reverse(*id)))
}

/// The request for an upgrade from `local` to what `remote` said: from our length on our
/// fork (from 0 on another), with the manifest for an empty log, and the first new block
/// when following live in full mode (saving a round trip).
pub(super) fn request(local: &LocalInfo, mode: Mode, remote: &SyncInfo) -> (ProofRequest, u64) {
    let start = if remote.fork == local.fork {
        local.length
    } else {
        0
    };
    let first_block = mode == Mode::Full
        && local.length > 0
        && start == local.length
        && local.contiguous == local.length
        && remote.contiguous > local.length;
    let request = ProofRequest {
        fork: local.fork,
        block: first_block.then_some(IndexRequest {
            index: local.length,
            nodes: 0,
        }),
        upgrade: Some(UpgradeRequest {
            start,
            length: remote.length - start,
        }),
        manifest: local.length == 0,
        ..Default::default()
    };
    (request, start)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The timer table holds the deadline of the upgrade in flight, and nothing else; a push
    /// that takes the place of a request takes its timer, which comes back with it.
    #[test]
    fn the_timer_follows_the_upgrade_in_flight() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut timers = TimerTable::default();
        let core = [2; 32];
        let mut u = UpgradeSlot::default();
        u.start(core, [9; 32], 0, at(100), &mut timers);
        assert_eq!(timers.get(Timer::Upgrade(core)), Some(at(100)));
        u.supersede(core, &mut timers);
        assert_eq!(timers.first(), None);
        u.start(core, [9; 32], 0, at(110), &mut timers);
        assert_eq!(timers.first(), Some(at(110)));
        let asked = u.take_superseded().expect("put aside");
        u.set(core, asked, &mut timers);
        assert_eq!(timers.first(), Some(at(100)));
        assert!(
            u.take_on(core, 2, &mut timers).is_none(),
            "asked on another channel"
        );
        assert!(u.take_on(core, 0, &mut timers).is_some());
        assert_eq!(timers.first(), None);
        assert!(u.get().is_none());
    }
}

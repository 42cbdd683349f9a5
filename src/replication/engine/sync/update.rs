//! An `update` of one core under way: the channels whose answer it waits for, and whether its
//! `Update` timer is still set.

use std::collections::BTreeSet;

use super::super::ChannelId;

/// An update of one core under way.
#[derive(Debug, Default)]
pub(super) struct PendingUpdate {
    /// The channels whose answer it waits for.
    pub(super) waiting: BTreeSet<ChannelId>,
    /// Whether its timer is set: it stops waiting for silent peers once it fires, and an
    /// update asked meanwhile joins this one without setting it again.
    pub(super) timed: bool,
    /// Asked while the core had no channel but looked for its peers: it waits for the first
    /// one's state (as hypercore's `findingPeers`).
    pub(super) first_peer: bool,
    /// Its timer fired: it resolves with the best verified length once nothing verified is
    /// being applied, whatever upgrade is still asked (a peer that claims a length and does
    /// not prove it in time is not waited for).
    pub(super) expired: bool,
}

//! The queued blocks of each core: one entry per missing block, with the peers that have it
//! and where it is on its way (waiting, asked for, received and being stored).

use std::collections::{BTreeMap, BTreeSet};

use crate::replication::PeerId;

/// The queued blocks of one core, keyed by block index.
#[derive(Debug, Default)]
pub(super) struct CoreQueue {
    /// Every queued block.
    pub(super) entries: BTreeMap<u64, Entry>,
    /// Entries waiting for a peer.
    pub(super) ready: BTreeSet<u64>,
}

impl CoreQueue {
    /// Entry `index` was asked for in request `id`.
    pub(super) fn set_in_flight(&mut self, index: u64, id: u64) {
        self.ready.remove(&index);
        if let Some(e) = self.entries.get_mut(&index) {
            e.state = EntryState::InFlight(id);
        }
    }

    /// An entry back to ready, if it is in the given state.
    pub(super) fn make_ready(&mut self, index: u64, from: EntryState) {
        if let Some(e) = self.entries.get_mut(&index)
            && e.state == from
        {
            e.state = EntryState::Ready;
            self.ready.insert(index);
        }
    }
}

/// A queued block.
#[derive(Debug)]
pub(super) struct Entry {
    /// Peers that have the block.
    pub(super) sources: Vec<PeerId>,
    /// Where it is on its way.
    pub(super) state: EntryState,
}

/// Where a queued block is on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntryState {
    /// Waiting for a peer.
    Ready,
    /// Asked for in request `id`.
    InFlight(u64),
    /// Received (`bytes`, as estimated then), being verified and committed.
    Received(u64),
}

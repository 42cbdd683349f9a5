//! The queued blocks of each core: one entry per missing block, saying where it is on its way
//! (waiting, asked for, received and being stored), and the blocks waiting for a peer as
//! ranges. Which peers have a block is not kept per block: it is what each peer said it holds
//! (its ranges in the queue's peer state), so a source costs nothing per block.

use std::collections::BTreeMap;

use super::block_ranges::BlockRanges;

/// The queued blocks of one core, keyed by block index.
#[derive(Debug, Default)]
pub(super) struct CoreQueue {
    /// Every queued block.
    pub(super) entries: BTreeMap<u64, EntryState>,
    /// Entries waiting for a peer.
    pub(super) ready: BlockRanges,
}

impl CoreQueue {
    /// Entries `start..end` were asked for in request `id`.
    pub(super) fn set_in_flight(&mut self, start: u64, end: u64, id: u64) {
        self.ready.remove(start, end);
        for (_, state) in self.entries.range_mut(start..end) {
            *state = EntryState::InFlight(id);
        }
    }

    /// An entry back to ready, if it is in the given state.
    pub(super) fn make_ready(&mut self, index: u64, from: EntryState) {
        if let Some(state) = self.entries.get_mut(&index)
            && *state == from
        {
            *state = EntryState::Ready;
            self.ready.insert(index, index + 1);
        }
    }
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

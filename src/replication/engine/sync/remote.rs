//! What one authenticated channel of a core knows of its peer: its last `Sync`, the ranges it
//! said it holds beyond it, how much of that the fetch queue knows, our requests waiting for
//! its answers, and whether a push to it is being read.

use std::collections::BTreeMap;

use super::super::PeerId;
use crate::replication::wire::SyncInfo;

/// What a request we sent was for: an answer must answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    /// A signed upgrade from `start` by `length` blocks (to the length the peer claimed), with
    /// block `block` if one was asked for.
    Upgrade {
        start: u64,
        length: u64,
        block: Option<u64>,
    },
    /// A run of blocks handed out by the fetch queue.
    Run,
}

/// One authenticated channel of a core, as the core's sync part sees it.
#[derive(Debug)]
pub(super) struct Remote {
    /// The peer at the other end.
    pub(super) peer: PeerId,
    /// Its last `Sync`: `None` until the first, and the channel counts as open only after it.
    pub(super) sync: Option<SyncInfo>,
    /// Blocks past `sync.contiguous` it said it has: sorted, disjoint.
    pub(super) ranges: Vec<(u64, u64)>,
    /// Blocks `0..sourced` of its contiguous ones were recorded in the fetch queue.
    pub(super) sourced: u64,
    /// Our requests on the channel that wait for an answer, by id.
    pub(super) requests: BTreeMap<u64, Sent>,
    /// A push to it is being read; our `Sync` waits for it.
    pub(super) pushing: bool,
    /// The (fork, length) our last push brings it to if it takes it, when that push carried
    /// the whole growth (one block): until its `Sync` says so, the next block may be pushed
    /// on that promise, one push ahead of what it confirmed.
    pub(super) pushed_to: Option<(u64, u64)>,
}

impl Remote {
    /// A channel with `peer` that has not synced yet.
    pub(super) fn new(peer: PeerId) -> Self {
        Self {
            peer,
            sync: None,
            ranges: Vec::new(),
            sourced: 0,
            requests: BTreeMap::new(),
            pushing: false,
            pushed_to: None,
        }
    }
}

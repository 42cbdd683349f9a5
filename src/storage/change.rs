//! What a committed batch changed in one core ([`Change`]), and who hears of it
//! ([`CommitListener`]): the layer above storage, which turns changes into its own events.
//! Storage knows no more of its listeners than this trait.

/// A change to one core, in the order the batch made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// The log grew to `length` (by local appends or a verified upgrade).
    Append {
        /// New length.
        length: u64,
        /// New byte length.
        byte_length: u64,
        /// Fork id.
        fork: u64,
    },
    /// The log was truncated to `length` and is now on fork `fork`.
    Truncate {
        /// New length.
        length: u64,
        /// New fork id.
        fork: u64,
    },
    /// Blocks `start..end` were cleared (their tree nodes are kept).
    Clear {
        /// First cleared block.
        start: u64,
        /// End of the cleared range (exclusive).
        end: u64,
    },
    /// A verified block from a proof was stored.
    Download {
        /// Block index.
        index: u64,
        /// Block size.
        bytes: u64,
    },
}

impl Change {
    /// Whether it changed the log's length, fork or stored blocks' span (a download does not).
    pub(crate) fn moves_the_log(&self) -> bool {
        !matches!(self, Change::Download { .. })
    }
}

/// Hears of each committed batch's changes to one core, after the commit, in commit order.
pub(crate) trait CommitListener: Send + Sync + std::fmt::Debug {
    /// The changes a committed batch made to the core, in order.
    fn committed(&self, changes: Vec<Change>);
}

//! The channels of one connected peer: its channel of each core, the handshakes of ours it has
//! not answered yet, the cores waiting for room to open one, and those it refused for lack of
//! room (the channels that stay closed until their core has news are `ClosedChannels`).

use std::collections::{BTreeMap, BTreeSet};

use super::super::{ChannelId, allowance::Allowance};
use crate::crypto::CoreKey;

/// What the channel part keeps of one connected peer.
#[derive(Debug, Default)]
pub(super) struct PeerChannels {
    /// Its channel of each core (the store channel's under its key).
    pub(super) by_core: BTreeMap<CoreKey, ChannelId>,
    /// Channels we opened to it that wait for its `Accept`.
    pub(super) opening: usize,
    /// Cores waiting for room among `opening` (or under the channel cap) to open a channel
    /// to it.
    pub(super) to_open: BTreeSet<CoreKey>,
    /// Where the next scan for an idle channel starts.
    pub(super) idle_cursor: CoreKey,
    /// Cores whose channel it refused for lack of room, with the refusals in a row: each is
    /// opened again when its `Reopen` timer fires.
    pub(super) reopen: BTreeMap<CoreKey, u32>,
    /// Its allowance of channels that replace one of its own still open.
    pub(super) replacements: Allowance,
}

//! A snapshot of a core's state.

use crate::crypto::{CoreKey, CoreKind, DiscoveryKey};

/// What [`Hypercore::info`](super::Hypercore::info) reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Core key.
    pub key: CoreKey,
    /// Discovery key.
    pub discovery_key: DiscoveryKey,
    /// Signed length.
    pub length: u64,
    /// Number of leading blocks stored locally.
    pub contiguous_length: u64,
    /// Total bytes of the signed length.
    pub byte_length: u64,
    /// Fork id.
    pub fork: u64,
    /// Whether this node can append.
    pub writable: bool,
    /// Kind of core, once known.
    pub kind: Option<CoreKind>,
}

/// What [`Hypercore::stored`](super::Hypercore::stored) reports: what this node holds of a
/// log, which in sparse replication may be less than its length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// Blocks stored here.
    pub blocks: u64,
    /// Their bytes.
    pub bytes: u64,
}

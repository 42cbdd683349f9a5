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

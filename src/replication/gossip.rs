//! Gossip ops: short announcements of a core's signed length on its gossip topic.
//!
//! An op is only a hint: the receiver opens a channel to the announcer and asks for an upgrade
//! proof, which it verifies. Every op is checked against the gossip size limit before it is
//! broadcast, because an oversized message is dropped silently and stalls the link.

use serde::{Deserialize, Serialize};

use super::PeerId;
use crate::crypto::{CoreKey, hash::hash_parts};

/// iroh-gossip's default message limit.
pub const GOSSIP_MAX_MESSAGE: usize = 4096;

/// Room left for iroh-gossip's own framing of a message.
const GOSSIP_OVERHEAD: usize = 64;

/// The gossip topic of a core: a hash of its key, so that the key never appears and only
/// holders of the key can join the topic and learn who reads the core (the discovery key,
/// which every channel's `Open` shows, is not enough).
pub fn topic(key: &CoreKey) -> [u8; 32] {
    hash_parts(&[b"iroh-hypercore/gossip/2", key])
}

/// A gossip message about one core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipOp {
    /// `origin` holds a signed log of `length` blocks on `fork`, with the first `contiguous`
    /// blocks stored.
    Announce {
        /// Endpoint id of the announcer.
        origin: PeerId,
        /// Fork id.
        fork: u64,
        /// Signed length.
        length: u64,
        /// Blocks held from the start.
        contiguous: u64,
    },
}

/// Why a gossip op was not encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GossipError {
    /// The encoded op would exceed the gossip message limit.
    #[error("gossip op of {0} bytes exceeds the limit of {1}")]
    TooLarge(usize, usize),
    /// The message is not an op.
    #[error("malformed gossip op: {0}")]
    Malformed(String),
}

impl GossipOp {
    /// Encodes the op, refusing anything that would not fit in `max_message` bytes on the wire.
    pub fn encode(&self, max_message: usize) -> Result<Vec<u8>, GossipError> {
        let bytes = postcard::to_stdvec(self).map_err(|e| GossipError::Malformed(e.to_string()))?;
        let limit = max_message.saturating_sub(GOSSIP_OVERHEAD);
        if bytes.len() > limit {
            return Err(GossipError::TooLarge(bytes.len(), limit));
        }
        Ok(bytes)
    }

    /// Decodes an op; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, GossipError> {
        match postcard::take_from_bytes::<Self>(bytes) {
            Ok((op, [])) => Ok(op),
            Ok(_) => Err(GossipError::Malformed("trailing bytes".into())),
            Err(e) => Err(GossipError::Malformed(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_and_respect_the_limit() {
        let op = GossipOp::Announce {
            origin: [5; 32],
            fork: u64::MAX,
            length: u64::MAX,
            contiguous: u64::MAX,
        };
        let bytes = op.encode(GOSSIP_MAX_MESSAGE).unwrap();
        assert!(bytes.len() < 80);
        assert_eq!(GossipOp::decode(&bytes).unwrap(), op);
        assert!(matches!(op.encode(80), Err(GossipError::TooLarge(..))));
        assert!(GossipOp::decode(&[9, 9, 9]).is_err());
        let key = [1; 32];
        assert_ne!(topic(&key), key);
        // Only the key gives the topic: not the discovery key every `Open` shows.
        assert_ne!(topic(&key), topic(&crate::crypto::discovery_key(&key)));
        assert_ne!(topic(&key), crate::crypto::discovery_key(&key));
    }
}

//! Channel capabilities: proof that the opener of a channel knows the core key, bound to both
//! endpoints of the connection so it cannot be replayed elsewhere.

use super::{
    CoreKey,
    hash::{Hash, keyed_hash_parts},
    namespace::NS,
};

/// The capability the endpoint `opener` shows to `acceptor` to open a channel for core `key`:
/// keyed BLAKE2b-256 (keyed by the core key) of the replicate namespace and both endpoint ids.
///
/// Someone who knows only the discovery key cannot compute it, and a capability seen on one
/// connection is useless on any other pair of endpoints.
pub fn capability(key: &CoreKey, opener: &[u8; 32], acceptor: &[u8; 32]) -> Hash {
    keyed_hash_parts(key, &[&NS.replicate_initiator, opener, acceptor])
}

/// Checks a capability in constant time.
pub fn check_capability(
    key: &CoreKey,
    opener: &[u8; 32],
    acceptor: &[u8; 32],
    capability_seen: &Hash,
) -> bool {
    let expected = capability(key, opener, acceptor);
    expected
        .iter()
        .zip(capability_seen)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_to_key_and_both_endpoints() {
        let (k, a, b) = ([1; 32], [2; 32], [3; 32]);
        let cap = capability(&k, &a, &b);
        assert!(check_capability(&k, &a, &b, &cap));
        assert!(!check_capability(&k, &b, &a, &cap));
        assert!(!check_capability(&k, &a, &[4; 32], &cap));
        assert!(!check_capability(&[9; 32], &a, &b, &cap));
    }
}

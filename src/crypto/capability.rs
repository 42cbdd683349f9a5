//! Channel capabilities: proof that a side of a channel knows the core key, bound to both
//! endpoints of the connection and to the side's role, so it cannot be replayed elsewhere nor
//! reflected back.
//!
//! Both sides prove the key before a channel carries anything: the opener in its `Open`, the
//! acceptor in its `Accept`. Each capability is a keyed BLAKE2b-256 (keyed by the core key) of
//! the role's namespace (hypercore's replicate initiator or responder namespace) and both
//! endpoint ids, opener first. Someone who knows only the discovery key cannot compute either;
//! the opener's capability is not the acceptor's, so a peer cannot answer an `Open` with the
//! capability it was just shown.

use super::{
    CoreKey,
    hash::{Hash, keyed_hash_parts},
    namespace::NS,
};

/// Which side of a channel a capability is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that opened the channel (sends `Open`).
    Opener,
    /// The side that accepted it (answers with `Accept`).
    Acceptor,
}

/// The capability the side `role` shows on a channel for core `key` between the endpoints
/// `opener` and `acceptor`.
pub fn capability(key: &CoreKey, role: Role, opener: &[u8; 32], acceptor: &[u8; 32]) -> Hash {
    let ns = match role {
        Role::Opener => &NS.replicate_initiator,
        Role::Acceptor => &NS.replicate_responder,
    };
    keyed_hash_parts(key, &[ns, opener, acceptor])
}

/// Checks a capability in constant time.
pub fn check_capability(
    key: &CoreKey,
    role: Role,
    opener: &[u8; 32],
    acceptor: &[u8; 32],
    capability_seen: &Hash,
) -> bool {
    let expected = capability(key, role, opener, acceptor);
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
    fn bound_to_key_both_endpoints_and_role() {
        let (k, a, b) = ([1; 32], [2; 32], [3; 32]);
        for role in [Role::Opener, Role::Acceptor] {
            let cap = capability(&k, role, &a, &b);
            assert!(check_capability(&k, role, &a, &b, &cap));
            assert!(!check_capability(&k, role, &b, &a, &cap));
            assert!(!check_capability(&k, role, &a, &[4; 32], &cap));
            assert!(!check_capability(&[9; 32], role, &a, &b, &cap));
        }
        // The opener's capability cannot be reflected back as the acceptor's.
        let opener = capability(&k, Role::Opener, &a, &b);
        assert!(!check_capability(&k, Role::Acceptor, &a, &b, &opener));
    }
}

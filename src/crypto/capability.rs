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
    same_capability(&capability(key, role, opener, acceptor), capability_seen)
}

/// What a peer's capabilities are bound to, when it is not both endpoint ids.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NoiseBinding {
    /// The Noise handshake hash of the connection.
    pub hash: [u8; 64],
    /// Whether this side was the Noise initiator.
    pub we_initiated: bool,
}

impl std::fmt::Debug for NoiseBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseBinding")
            .field("we_initiated", &self.we_initiated)
            .finish_non_exhaustive()
    }
}

/// Hypercore's capability on its own wire (`caps.replicate`): keyed BLAKE2b-256, keyed by the
/// Noise handshake hash, of the sender's namespace (by its Noise role, not by who opened the
/// channel) and the core key.
pub fn noise_capability(key: &CoreKey, sender_initiated: bool, handshake_hash: &[u8; 64]) -> Hash {
    use blake2::{
        Blake2bMac,
        digest::{KeyInit, Mac, consts::U32},
    };
    let ns = if sender_initiated {
        &NS.replicate_initiator
    } else {
        &NS.replicate_responder
    };
    let mut mac = <Blake2bMac<U32> as KeyInit>::new_from_slice(handshake_hash)
        .expect("64-byte keys are valid");
    Mac::update(&mut mac, ns);
    Mac::update(&mut mac, key);
    mac.finalize().into_bytes().into()
}

/// Compares two capabilities in constant time.
pub fn same_capability(a: &Hash, b: &Hash) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

    /// hypercore-crypto's `caps.replicate` for a core key and a handshake hash of 07×64.
    #[test]
    fn noise_capabilities_match_hypercore() {
        let hex = |s: &str| -> [u8; 32] {
            data_encoding::HEXLOWER
                .decode(s.as_bytes())
                .unwrap()
                .try_into()
                .unwrap()
        };
        let key = hex("d8c3a0597903b28d751c6e0b7107775e388ec5a3cf669bdd1e7ec41b8b8f6e72");
        assert_eq!(
            noise_capability(&key, true, &[7; 64]),
            hex("ba6ad7a776193a3909cca3297ad7b9c03fabf7763e402cdc34557ae277b7a8e8")
        );
        assert_eq!(
            noise_capability(&key, false, &[7; 64]),
            hex("3b63e50bf3e8953a6071a5a6d592f0c602a68d6a2fd8b74169b1417b2325f527")
        );
    }
}

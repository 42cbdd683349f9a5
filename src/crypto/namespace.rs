//! Namespaces: `ns = H(name)`, `NS[i] = H(ns ‖ byte(i))`, as hypercore-crypto's `namespace()`.

use std::sync::LazyLock;

use super::hash::{Hash, hash_parts};

/// The `count` namespaces derived from `name`.
pub fn namespaces(name: &str, count: u8) -> Vec<Hash> {
    let ns = hash_parts(&[name.as_bytes()]);
    (0..count).map(|i| hash_parts(&[&ns, &[i]])).collect()
}

/// The hypercore namespaces, in the order hypercore's `caps` defines them.
#[derive(Debug, Clone)]
pub struct HypercoreNamespaces {
    /// Prefix of every tree signable.
    pub tree: Hash,
    /// Capability namespace of the side that opened a connection.
    pub replicate_initiator: Hash,
    /// Capability namespace of the side that accepted a connection.
    pub replicate_responder: Hash,
    /// Prefix of the manifest hash.
    pub manifest: Hash,
    /// Signer namespace of a default manifest.
    pub default_namespace: Hash,
    /// Namespace of default block encryption (unused here, kept for completeness).
    pub default_encryption: Hash,
}

/// The hypercore namespaces, computed once.
pub static NS: LazyLock<HypercoreNamespaces> = LazyLock::new(|| {
    let n = namespaces("hypercore", 6);
    HypercoreNamespaces {
        tree: n[0],
        replicate_initiator: n[1],
        replicate_responder: n[2],
        manifest: n[3],
        default_namespace: n[4],
        default_encryption: n[5],
    }
});

/// Corestore's namespace: `H(H("corestore") ‖ 0x00)`.
pub static CORESTORE_NS: LazyLock<Hash> = LazyLock::new(|| namespaces("corestore", 1)[0]);

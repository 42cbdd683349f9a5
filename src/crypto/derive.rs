//! Corestore 7 derivation of named cores from a store's primary key.

use super::{
    hash::{Hash, hash_parts, keyed_hash_parts},
    namespace::CORESTORE_NS,
    signer::KeyPair,
};

/// The root namespace of a store: 32 zero bytes.
pub const DEFAULT_NAMESPACE: Hash = [0; 32];

/// A child namespace: `H(parent ‖ utf8(name))`, as Corestore's `store.namespace(name)`.
pub fn child_namespace(parent: &Hash, name: &str) -> Hash {
    hash_parts(&[parent, name.as_bytes()])
}

/// The key pair seed of core `name` in `namespace`:
/// keyed BLAKE2b-256 with the primary key of `CS_NS ‖ namespace ‖ utf8(name)`.
pub fn derive_seed(primary_key: &[u8; 32], namespace: &Hash, name: &str) -> [u8; 32] {
    keyed_hash_parts(primary_key, &[&*CORESTORE_NS, namespace, name.as_bytes()])
}

/// The key pair of core `name` in `namespace`.
pub fn derive_key_pair(primary_key: &[u8; 32], namespace: &Hash, name: &str) -> KeyPair {
    KeyPair::from_seed(derive_seed(primary_key, namespace, name))
}

//! BLAKE2b-256 hashes of the Merkle tree, as hypercore-crypto computes them.

use blake2::{
    Blake2b, Blake2bMac, Digest,
    digest::{KeyInit, Mac, consts::U32},
};

/// A 32-byte BLAKE2b-256 digest.
pub type Hash = [u8; 32];

const LEAF_TYPE: u8 = 0x00;
const PARENT_TYPE: u8 = 0x01;
const ROOT_TYPE: u8 = 0x02;

type Blake2b256 = Blake2b<U32>;

/// BLAKE2b-256 of the concatenation of `parts`.
pub fn hash_parts(parts: &[&[u8]]) -> Hash {
    let mut h = Blake2b256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Keyed BLAKE2b-256 (libsodium `crypto_generichash` with a key) of the concatenation of `parts`.
pub fn keyed_hash_parts(key: &[u8; 32], parts: &[&[u8]]) -> Hash {
    let mut h = <Blake2bMac<U32> as KeyInit>::new_from_slice(key).expect("32-byte keys are valid");
    for p in parts {
        Mac::update(&mut h, p);
    }
    h.finalize().into_bytes().into()
}

/// Hash of a leaf (a block): `H(0x00 ‖ u64le(len) ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    hash_parts(&[&[LEAF_TYPE], &(data.len() as u64).to_le_bytes(), data])
}

/// Hash of a parent node: `H(0x01 ‖ u64le(size_l + size_r) ‖ hash_l ‖ hash_r)`.
///
/// `left` must be the child with the lower index.
pub fn parent_hash(left: (&Hash, u64), right: (&Hash, u64)) -> Hash {
    let size = left.1 + right.1;
    hash_parts(&[&[PARENT_TYPE], &size.to_le_bytes(), left.0, right.0])
}

/// Hash of a tree given its roots as `(hash, index, size)`:
/// `H(0x02 ‖ for each root: hash ‖ u64le(index) ‖ u64le(size))`.
pub fn tree_hash<'a>(roots: impl IntoIterator<Item = (&'a Hash, u64, u64)>) -> Hash {
    let mut h = Blake2b256::new();
    h.update([ROOT_TYPE]);
    for (hash, index, size) in roots {
        h.update(hash);
        h.update(index.to_le_bytes());
        h.update(size.to_le_bytes());
    }
    h.finalize().into()
}

/// Discovery key of a core: keyed BLAKE2b-256 of `b"hypercore"` with the core key as key.
pub fn discovery_key(key: &[u8; 32]) -> [u8; 32] {
    keyed_hash_parts(key, &[b"hypercore"])
}

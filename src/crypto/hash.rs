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

/// Leaf hashes of many blocks, in order: `leaf_hash` of each, computed several at a time
/// (BLAKE2b on four inputs at once where the CPU has AVX2).
pub fn leaf_hashes<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<Hash> {
    let mut values = values.into_iter();
    let mut out = Vec::with_capacity(values.size_hint().0);
    let mut many = ManyLeaves::new();
    loop {
        let group: Vec<&[u8]> = values.by_ref().take(ManyLeaves::IN_FLIGHT).collect();
        if group.is_empty() {
            return out;
        }
        many.hash(&group, &mut out);
    }
}

/// The state of `leaf_hashes` between groups of leaves.
struct ManyLeaves {
    params: blake2b_simd::Params,
    /// Small leaves copied after their prefix, so that every BLAKE2b block of them, the first
    /// and the last included, goes through the four-way path.
    scratch: Vec<u8>,
}

impl ManyLeaves {
    /// Leaves hashed at once: enough to keep every lane busy as leaves of unequal length end.
    const IN_FLIGHT: usize = 32;
    /// Leaves up to this size are copied behind their prefix (the copy costs far less than
    /// hashing their first and last BLAKE2b blocks one at a time); larger ones are hashed in
    /// place, their prefix in a block of its own.
    const COPY_MAX: usize = 16 * 1024;

    fn new() -> Self {
        let mut params = blake2b_simd::Params::new();
        params.hash_length(32);
        Self {
            params,
            scratch: Vec::new(),
        }
    }

    /// Appends the leaf hash of each of `group` (at most `IN_FLIGHT`) to `out`.
    fn hash(&mut self, group: &[&[u8]], out: &mut Vec<Hash>) {
        let prefix = |v: &[u8]| {
            let mut p = [LEAF_TYPE; 9];
            p[1..].copy_from_slice(&(v.len() as u64).to_le_bytes());
            p
        };
        let first = out.len();
        out.resize(first + group.len(), [0; 32]);
        let is_small = |v: &&[u8]| v.len() <= Self::COPY_MAX;

        self.scratch.clear();
        let mut ends = Vec::with_capacity(group.len());
        for (i, v) in group.iter().enumerate().filter(|(_, v)| is_small(v)) {
            self.scratch.extend_from_slice(&prefix(v));
            self.scratch.extend_from_slice(v);
            ends.push((i, self.scratch.len()));
        }
        let mut start = 0;
        let mut small: Vec<(usize, blake2b_simd::many::HashManyJob)> = ends
            .iter()
            .map(|&(i, end)| {
                let input = &self.scratch[start..end];
                start = end;
                (i, blake2b_simd::many::HashManyJob::new(&self.params, input))
            })
            .collect();
        blake2b_simd::many::hash_many(small.iter_mut().map(|(_, job)| job));
        for (i, job) in &small {
            out[first + i].copy_from_slice(job.to_hash().as_bytes());
        }

        let mut large: Vec<(usize, blake2b_simd::State, &[u8])> = group
            .iter()
            .enumerate()
            .filter(|(_, v)| !is_small(v))
            .map(|(i, v)| {
                let mut state = self.params.to_state();
                state.update(&prefix(v));
                (i, state, *v)
            })
            .collect();
        blake2b_simd::many::update_many(large.iter_mut().map(|(_, state, v)| (state, *v)));
        for (i, state, _) in &mut large {
            out[first + *i].copy_from_slice(state.finalize().as_bytes());
        }
    }
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Lengths where the 9-byte prefix and the value fill BLAKE2b blocks of 128 bytes exactly
    /// (119, 247), one either side, and both sides of the size copied behind the prefix.
    const EDGES: [usize; 16] = [
        0, 1, 118, 119, 120, 127, 128, 247, 248, 16_383, 16_384, 16_385, 16_503, 16_504, 16_505,
        20_000,
    ];

    fn value(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + seed) as u8).collect()
    }

    fn check(values: &[Vec<u8>]) {
        let many = leaf_hashes(values.iter().map(|v| v.as_slice()));
        let one: Vec<Hash> = values.iter().map(|v| leaf_hash(v)).collect();
        assert_eq!(many, one);
    }

    #[test]
    fn leaf_hashes_at_block_edges() {
        check(&[]);
        for len in EDGES {
            // Alone, and in groups that fill the leaves hashed at once, pass it by one, and
            // span three of them.
            for n in [1, 31, 32, 33, 65] {
                check(&(0..n).map(|i| value(len, i)).collect::<Vec<_>>());
            }
        }
        // Small and large leaves of every edge interleaved in one group and across groups.
        let mixed: Vec<Vec<u8>> = (0..70)
            .map(|i| value(EDGES[(i * 7) % EDGES.len()], i))
            .collect();
        check(&mixed);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Hashing many leaves at once gives each leaf's own hash, in order, whatever the mix
        /// of lengths (empty, under one BLAKE2b block, across block edges, several KiB).
        #[test]
        fn leaf_hashes_are_each_leaf_hash(
            values in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..300),
                    proptest::collection::vec(any::<u8>(), 1000..5000),
                    // Past the size copied behind its prefix.
                    proptest::collection::vec(any::<u8>(), 16_380..16_400),
                    proptest::collection::vec(any::<u8>(), 20_000..24_000),
                ],
                0..40,
            )
        ) {
            let many = leaf_hashes(values.iter().map(|v| v.as_slice()));
            let one: Vec<Hash> = values.iter().map(|v| leaf_hash(v)).collect();
            prop_assert_eq!(many, one);
        }
    }
}

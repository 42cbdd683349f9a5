//! A Merkle tree node and the trait proof code reads nodes through.

use crate::crypto::hash::{Hash, leaf_hash, parent_hash};

/// A node of the Merkle tree: its flat-tree index, the bytes below it and its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    /// Flat-tree index (block `i` is `2i`).
    pub index: u64,
    /// Total bytes of the blocks below this node.
    pub size: u64,
    /// BLAKE2b-256 hash.
    pub hash: Hash,
}

impl Node {
    /// The leaf of block `block` holding `data`.
    pub fn leaf(block: u64, data: &[u8]) -> Self {
        Self::hashed_leaf(block, data.len(), leaf_hash(data))
    }

    /// The leaf of block `block` holding `size` bytes whose leaf hash (`leaf_hash`, or one of
    /// `leaf_hashes`) is `hash`.
    pub fn hashed_leaf(block: u64, size: usize, hash: Hash) -> Self {
        Self {
            index: 2 * block,
            size: size as u64,
            hash,
        }
    }

    /// The parent at `index` of two sibling nodes, given in any order; `None` when their
    /// sizes add up past `u64::MAX` (no real tree has such nodes: a peer made them up).
    pub fn parent(index: u64, a: &Node, b: &Node) -> Option<Self> {
        let (l, r) = if a.index <= b.index { (a, b) } else { (b, a) };
        Some(Self {
            index,
            size: l.size.checked_add(r.size)?,
            hash: parent_hash((&l.hash, l.size), (&r.hash, r.size)),
        })
    }
}

/// Where proof creation and verification read stored nodes from.
pub trait NodeSource {
    /// Error of the underlying store.
    type Error;
    /// The node at `index`, or `None` when it is not stored.
    fn node(&self, index: u64) -> Result<Option<Node>, Self::Error>;
}

//! The state of a tree at one length: its roots, size, fork and signature.

use super::{
    flat::{self, Cursor},
    node::Node,
    proof::ProofError,
};
use crate::crypto::hash::{Hash, leaf_hash, tree_hash};

/// A tree at one signed (or about to be signed) length.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TreeState {
    /// Fork id: incremented by every truncate.
    pub fork: u64,
    /// Number of blocks.
    pub length: u64,
    /// Total bytes of all blocks.
    pub byte_length: u64,
    /// Roots of the full subtrees, left to right.
    pub roots: Vec<Node>,
    /// Signature over this state, as stored by hypercore (envelope or raw).
    pub signature: Option<Vec<u8>>,
}

impl TreeState {
    /// The tree hash over the roots.
    pub fn hash(&self) -> Hash {
        tree_hash(self.roots.iter().map(|n| (&n.hash, n.index, n.size)))
    }

    /// Appends one block, pushing the new leaf and every new parent to `new_nodes`. Fails,
    /// leaving the state partly grown, only if the byte length would pass `u64::MAX`.
    pub fn append(&mut self, data: &[u8], new_nodes: &mut Vec<Node>) -> Result<(), ProofError> {
        self.append_hashed(data.len(), leaf_hash(data), new_nodes)
    }

    /// As `append`, for a block of `size` bytes whose leaf hash is already known.
    pub fn append_hashed(
        &mut self,
        size: usize,
        hash: Hash,
        new_nodes: &mut Vec<Node>,
    ) -> Result<(), ProofError> {
        let leaf = Node::hashed_leaf(self.length, size, hash);
        let mut cursor = Cursor::new(leaf.index);
        self.append_root(leaf, &mut cursor, new_nodes)
    }

    /// Appends a node as a new root at `cursor`, merging full siblings into parents. Sizes and
    /// lengths may come from a peer: a sum past `u64::MAX` is an error, not a panic.
    pub(crate) fn append_root(
        &mut self,
        node: Node,
        cursor: &mut Cursor,
        new_nodes: &mut Vec<Node>,
    ) -> Result<(), ProofError> {
        let overflow = || ProofError::invalid("tree sizes overflow");
        self.length = self
            .length
            .checked_add(cursor.factor / 2)
            .ok_or_else(overflow)?;
        self.byte_length = self
            .byte_length
            .checked_add(node.size)
            .ok_or_else(overflow)?;
        self.roots.push(node);
        new_nodes.push(node);
        while self.roots.len() > 1 {
            let a = self.roots[self.roots.len() - 1];
            let b = self.roots[self.roots.len() - 2];
            if cursor.sibling() != b.index {
                cursor.sibling();
                break;
            }
            let parent = Node::parent(cursor.parent(), &a, &b).ok_or_else(overflow)?;
            new_nodes.push(parent);
            self.roots.truncate(self.roots.len() - 2);
            self.roots.push(parent);
        }
        Ok(())
    }

    /// The flat-tree indices of the roots of a tree of `length` blocks.
    pub fn root_indices(length: u64) -> Vec<u64> {
        flat::full_roots(2 * length)
    }
}

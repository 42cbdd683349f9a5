//! Verifying proofs against a reader's tree, without changing it: the result says what to store.

use std::collections::HashMap;

use super::{
    MAX_LENGTH,
    flat::{self, Cursor},
    node::{Node, NodeSource},
    proof::*,
    proven_sizes::proven_sizes,
    state::TreeState,
};
use crate::crypto::{
    Verifier,
    hash::{Hash, leaf_hash},
};

/// Most nodes one part of a proof may carry; real proofs carry at most about 2 × 64.
const MAX_PROOF_NODES: usize = 256;

/// A proof that checked out: what the reader may now store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// Every node proven, its size included (to be stored), each once: nodes whose sizes the
    /// proof fixes only in sum are left out (see `proven_sizes`).
    pub nodes: Vec<Node>,
    /// Index of the proven block, if any (its value is the proof's, not copied).
    pub block: Option<u64>,
    /// The new signed tree state, if the proof upgraded the reader.
    pub upgrade: Option<TreeState>,
    /// Whether the upgrade replaces the reader's tree from scratch (a higher fork, signed):
    /// the reader keeps only what matches the new roots.
    pub reorg: bool,
}

/// Verifies `proof` against the reader's tree `state` (nodes in `src`) and signer `verifier`.
///
/// Nothing is trusted: the block and hash paths must hash to a node the reader already has or to
/// a root of the upgraded tree, and the upgraded tree must carry a valid signature.
pub fn verify_proof<S>(
    src: &S,
    state: &TreeState,
    verifier: &Verifier,
    proof: &Proof,
) -> Result<VerifiedProof, ProofError>
where
    S: NodeSource,
    S::Error: std::fmt::Display,
{
    verify_proof_hashed(src, state, verifier, proof, None)
}

/// As `verify_proof`, given the leaf hash of the proof's block when it is already known
/// (hashed with others of its run by `leaf_hashes`). `leaf` must be the hash of that block's
/// value: it stands in for hashing the value again.
pub(crate) fn verify_proof_hashed<S>(
    src: &S,
    state: &TreeState,
    verifier: &Verifier,
    proof: &Proof,
    leaf: Option<Hash>,
) -> Result<VerifiedProof, ProofError>
where
    S: NodeSource,
    S::Error: std::fmt::Display,
{
    check_bounds(proof)?;
    // A signed state only moves forward: on the reader's fork an upgrade must extend its tree
    // from its length (so it grows), and only a higher fork may replace the tree, from scratch.
    let reorg = match &proof.upgrade {
        // Every root from scratch: the reader keeps only what the new tree shares.
        Some(u) if u.start == 0 && proof.fork > state.fork => true,
        _ if proof.fork != state.fork => {
            return Err(ProofError::ForkMismatch {
                proof: proof.fork,
                tree: state.fork,
            });
        }
        Some(u) if u.start != state.length => {
            return Err(ProofError::invalid(format!(
                "upgrade starts at {}, tree has length {}",
                u.start, state.length
            )));
        }
        _ => false,
    };

    // Each path node and the parent it makes, the leaf, and the upgrade's nodes.
    let given = proof.block.as_ref().map_or(0, |b| b.nodes.len())
        + proof.hash.as_ref().map_or(0, |h| h.nodes.len())
        + proof.seek.as_ref().map_or(0, |s| s.nodes.len());
    let upgrade_nodes = proof
        .upgrade
        .as_ref()
        .map_or(0, |u| u.nodes.len() + u.additional_nodes.len());
    let mut nodes = Vec::with_capacity(2 * given + 2 + upgrade_nodes);
    let mut unverified = verify_paths(proof, leaf, &mut nodes)?;
    let mut upgrade = None;
    if let Some(u) = &proof.upgrade {
        let mut batch = if reorg {
            TreeState {
                fork: proof.fork,
                ..Default::default()
            }
        } else {
            state.clone()
        };
        batch.signature = None;
        if verify_upgrade(u, unverified, &mut batch, &mut nodes)? {
            unverified = None;
        }
        batch.fork = proof.fork;
        if !reorg && batch.length <= state.length {
            return Err(ProofError::invalid("upgrade does not grow the tree"));
        }
        verifier.verify(&u.signature, &batch.hash(), batch.length, batch.fork)?;
        batch.signature = Some(u.signature.clone());
        upgrade = Some(batch);
    }

    // Roots the signature covers, and those the reader trusts: their sizes are proven.
    let mut anchors: Vec<u64> =
        Vec::with_capacity(upgrade.as_ref().map_or(0, |u| u.roots.len()) + state.roots.len() + 1);
    anchors.extend(upgrade.iter().flat_map(|u| &u.roots).map(|r| r.index));
    if !reorg {
        anchors.extend(state.roots.iter().map(|r| r.index));
    }
    if let Some(root) = unverified {
        anchors.push(root.index);
        let trusted = match (&upgrade, reorg) {
            (Some(new), true) => new.roots.iter().find(|r| r.index == root.index).copied(),
            _ => match state.roots.iter().find(|r| r.index == root.index) {
                Some(r) => Some(*r),
                None => src
                    .node(root.index)
                    .map_err(|e| ProofError::Storage(e.to_string()))?,
            },
        };
        match trusted {
            Some(t) if t == root => {}
            Some(_) => {
                return Err(ProofError::invalid(format!(
                    "checksum mismatch at node {}",
                    root.index
                )));
            }
            None => {
                return Err(ProofError::invalid(format!(
                    "node {} cannot be verified",
                    root.index
                )));
            }
        }
    }

    Ok(VerifiedProof {
        nodes: proven_sizes(proof, nodes, &anchors)?,
        block: proof.block.as_ref().map(|b| b.index),
        upgrade,
        reorg,
    })
}

/// Rejects numbers and sizes that no honest proof has, so that tree math cannot overflow.
fn check_bounds(proof: &Proof) -> Result<(), ProofError> {
    for list in proof.node_lists() {
        if list.len() > MAX_PROOF_NODES {
            return Err(ProofError::invalid("too many nodes"));
        }
        if list.iter().any(|n| n.index >= flat::MAX_INDEX) {
            return Err(ProofError::invalid("node index out of range"));
        }
    }
    if let Some(b) = &proof.block
        && b.index >= MAX_LENGTH
    {
        return Err(ProofError::invalid("block index out of range"));
    }
    if let Some(h) = &proof.hash
        && h.index >= flat::MAX_INDEX
    {
        return Err(ProofError::invalid("hash index out of range"));
    }
    if proof.block.is_some() && proof.hash.is_some() {
        return Err(ProofError::invalid("both block and hash"));
    }
    let proves_something = proof.block.is_some()
        || proof.hash.is_some()
        || proof.upgrade.is_some()
        || proof.seek.as_ref().is_some_and(|s| !s.nodes.is_empty());
    if !proves_something {
        return Err(ProofError::invalid("the proof proves nothing"));
    }
    if let Some(u) = &proof.upgrade {
        match u.start.checked_add(u.length) {
            Some(end) if end <= MAX_LENGTH && u.length > 0 => {}
            _ => return Err(ProofError::invalid("upgrade out of range")),
        }
    }
    Ok(())
}

fn size_overflow() -> ProofError {
    ProofError::invalid("node sizes overflow")
}

/// Takes proof nodes in the order the path needs them; `extra` is a node computed from another
/// part of the proof that may stand in for one of them.
struct NodeQueue<'a> {
    nodes: std::slice::Iter<'a, Node>,
    extra: Option<Node>,
}

impl<'a> NodeQueue<'a> {
    fn new(nodes: &'a [Node], extra: Option<Node>) -> Self {
        Self {
            nodes: nodes.iter(),
            extra,
        }
    }

    fn is_empty(&self) -> bool {
        self.nodes.len() == 0 && self.extra.is_none()
    }

    fn shift(&mut self, index: u64) -> Result<Node, ProofError> {
        if let Some(e) = self.extra
            && e.index == index
        {
            self.extra = None;
            return Ok(e);
        }
        match self.nodes.next() {
            Some(n) if n.index == index => Ok(*n),
            Some(n) => Err(ProofError::invalid(format!(
                "expected node {index}, got node {}",
                n.index
            ))),
            None => Err(ProofError::invalid(format!(
                "expected node {index}, got none"
            ))),
        }
    }
}

/// Hashes the seek, block and hash paths up to their top node, which still needs verifying.
fn verify_paths(
    proof: &Proof,
    leaf: Option<Hash>,
    out: &mut Vec<Node>,
) -> Result<Option<Node>, ProofError> {
    let mut root = None;
    if let Some(seek) = &proof.seek
        && let Some(first) = seek.nodes.first()
    {
        let mut c = Cursor::new(first.index);
        let mut top = *first;
        out.push(top);
        for node in &seek.nodes[1..] {
            let expected = c.sibling();
            if node.index != expected {
                return Err(ProofError::invalid("seek path out of order"));
            }
            top = Node::parent(c.parent(), &top, node).ok_or_else(size_overflow)?;
            out.push(*node);
            out.push(top);
        }
        root = Some(top);
    }
    let (start, mut q) = match (&proof.block, &proof.hash) {
        (Some(b), _) => {
            let leaf = match leaf {
                Some(hash) => {
                    debug_assert_eq!(hash, leaf_hash(&b.value), "a leaf hash of another value");
                    Node::hashed_leaf(b.index, b.value.len(), hash)
                }
                None => Node::leaf(b.index, &b.value),
            };
            (leaf, NodeQueue::new(&b.nodes, root))
        }
        (None, Some(h)) => {
            let mut q = NodeQueue::new(&h.nodes, root);
            (q.shift(h.index)?, q)
        }
        (None, None) => return Ok(root),
    };
    let mut c = Cursor::new(start.index);
    let mut top = start;
    out.push(top);
    while !q.is_empty() {
        let node = q.shift(c.sibling())?;
        top = Node::parent(c.parent(), &top, &node).ok_or_else(size_overflow)?;
        out.push(node);
        out.push(top);
    }
    Ok(Some(top))
}

/// Grows `batch` with the upgrade nodes; true when `block_root` was used as one of them (so the
/// block path is verified by the signature).
fn verify_upgrade(
    u: &UpgradeProof,
    block_root: Option<Node>,
    batch: &mut TreeState,
    out: &mut Vec<Node>,
) -> Result<bool, ProofError> {
    let mut q = NodeQueue::new(&u.nodes, block_root);
    let mut grow = !batch.roots.is_empty();
    let mut i = 0;
    let to = 2 * (u.start + u.length);
    let mut c = Cursor::new(0);
    while c.full_root(to) {
        if i < batch.roots.len() && batch.roots[i].index == c.index {
            i += 1;
            c.next_tree();
            continue;
        }
        if grow {
            grow = false;
            let root = c.index;
            let root_factor = c.factor;
            if i < batch.roots.len() {
                let last = batch.roots[batch.roots.len() - 1].index;
                c.seek(last);
                while c.index != root {
                    if c.factor >= root_factor {
                        return Err(ProofError::invalid("upgrade does not connect to the tree"));
                    }
                    let node = q.shift(c.sibling())?;
                    batch.append_root(node, &mut c, out)?;
                }
                c.next_tree();
                continue;
            }
        }
        let node = q.shift(c.index)?;
        batch.append_root(node, &mut c, out)?;
        c.next_tree();
    }
    let used_block_root = block_root.is_some() && q.extra.is_none();
    if q.nodes.len() > 0 {
        return Err(ProofError::invalid("unexpected upgrade nodes"));
    }

    let extra = &u.additional_nodes;
    if !extra.is_empty() {
        let last = batch
            .roots
            .last()
            .ok_or_else(|| ProofError::invalid("additional nodes without a tree"))?;
        c.seek(last.index);
        let mut i = 0;
        while i < extra.len() && extra[i].index == c.sibling() {
            batch.append_root(extra[i], &mut c, out)?;
            i += 1;
        }
        while i < extra.len() {
            let node = extra[i];
            i += 1;
            while node.index != c.index {
                if c.factor == 2 || node.index > c.right_span() || node.index < c.left_span() {
                    return Err(ProofError::invalid(format!(
                        "unexpected node {}",
                        node.index
                    )));
                }
                c.left_child();
            }
            batch.append_root(node, &mut c, out)?;
            c.sibling();
        }
    }
    Ok(used_block_root)
}

impl NodeSource for HashMap<u64, Node> {
    type Error = std::convert::Infallible;
    fn node(&self, index: u64) -> Result<Option<Node>, Self::Error> {
        Ok(self.get(&index).copied())
    }
}

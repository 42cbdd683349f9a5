//! Which nodes of a verified proof have a size the proof fixes.
//!
//! A parent's hash commits to its children's hashes and to the *sum* of their sizes, not to
//! each size. So a node hashed here (a leaf from its block, a parent from its children) has a
//! proven size, as does a root a signature covers (the tree hash commits to each root's size)
//! or one the reader trusted already; and a node taken from a proof has a proven size only
//! when its sibling's and its parent's are proven (its size is then their difference). Two
//! sibling nodes both taken from a proof, neither hashed here, are proven only in sum: a peer
//! could move bytes from one to the other and every hash and signature would still check.
//! Such nodes are not stored; the block that fixes them brings them again.

use super::{flat, node::Node, proof::Proof, proof::ProofError};

/// The nodes of `nodes` (everything a verified proof touched, hashed here or taken from the
/// proof) whose sizes are proven, each once, by index; `anchors` are the indices of the roots
/// the signature covers and of the nodes the reader trusted. Fails if the proof gave two
/// different nodes for one index.
pub(super) fn proven_sizes(
    proof: &Proof,
    mut nodes: Vec<Node>,
    anchors: &[u64],
) -> Result<Vec<Node>, ProofError> {
    if proof.hash.is_none() && proof.seek.is_none() && proof.upgrade.is_none() {
        // A block path alone: the leaf is hashed from the block and each node taken from the
        // proof is the sibling of one hashed here, under a parent hashed here.
        return Ok(nodes);
    }
    nodes.sort_by_key(|n| n.index);
    for pair in nodes.windows(2) {
        if pair[0].index == pair[1].index && pair[0] != pair[1] {
            return Err(ProofError::invalid(format!(
                "two different nodes at index {}",
                pair[0].index
            )));
        }
    }
    nodes.dedup();
    let given = given_indices(proof);
    let hashed_here = |i: u64| {
        nodes.binary_search_by_key(&i, |n| n.index).is_ok() && given.binary_search(&i).is_err()
    };
    let fixed = |i: u64| anchors.contains(&i) || hashed_here(i);
    let proven: Vec<bool> = nodes
        .iter()
        .map(|n| {
            let i = n.index;
            fixed(i) || (fixed(flat::sibling(i)) && fixed(flat::parent(i)))
        })
        .collect();
    let mut proven = proven.into_iter();
    nodes.retain(|_| proven.next().unwrap_or(false));
    Ok(nodes)
}

/// The indices of the nodes a proof carries (as opposed to those hashed from them), sorted.
fn given_indices(proof: &Proof) -> Vec<u64> {
    let mut given: Vec<u64> = proof
        .node_lists()
        .flatten()
        .map(|n| n.index)
        .chain(proof.hash.as_ref().map(|h| h.index))
        .collect();
    given.sort_unstable();
    given
}

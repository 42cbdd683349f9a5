//! Creating proofs: which nodes a requester needs, given what it says it has.
//!
//! The node selection follows hypercore's `merkle-tree` so that proofs have the same shape
//! (same node indices) as JS Hypercore 11's.

use super::{
    MAX_LENGTH,
    flat::{self, Cursor},
    node::{Node, NodeSource},
    proof::*,
    state::TreeState,
};

/// A block or hash request in flat-tree terms.
#[derive(Debug, Clone, Copy)]
struct Indexed {
    /// Flat-tree index of the leaf or node.
    index: u64,
    /// Levels the requester lacks.
    nodes: u64,
    /// Whether the value is sent (block) rather than the node itself (hash).
    value: bool,
    /// Last block below the node.
    last_block: u64,
}

/// The node indices of each part of a proof, before they are read.
#[derive(Debug, Default)]
struct Plan {
    indexed: Option<Vec<u64>>,
    seek: Option<Vec<u64>>,
    upgrade: Option<Vec<u64>>,
    additional: Option<Vec<u64>>,
}

/// Creates the proof answering `req` from a tree in `state` whose nodes are in `src`.
///
/// The block value and the manifest are left empty: the caller fills them in.
pub fn create_proof<S>(src: &S, state: &TreeState, req: &ProofRequest) -> Result<Proof, ProofError>
where
    S: NodeSource,
    S::Error: std::fmt::Display,
{
    let head = 2 * state.length;
    let (from, to) = match req.upgrade {
        Some(u) => {
            let end = u.start.checked_add(u.length).filter(|e| *e <= MAX_LENGTH);
            match end {
                Some(end) if u.length > 0 && 2 * end <= head => (2 * u.start, 2 * end),
                _ => return Err(ProofError::InvalidRequest("upgrade out of range")),
            }
        }
        None => (0, head),
    };
    let indexed = match (req.block, req.hash) {
        (Some(_), Some(_)) => return Err(ProofError::InvalidRequest("both block and hash")),
        (Some(b), None) => {
            if b.index >= to / 2 {
                return Err(ProofError::InvalidRequest("block out of range"));
            }
            Some(Indexed {
                index: 2 * b.index,
                nodes: b.nodes,
                value: true,
                last_block: b.index,
            })
        }
        (None, Some(h)) => {
            if h.index >= flat::MAX_INDEX || flat::right_span(h.index) >= to {
                return Err(ProofError::InvalidRequest("hash out of range"));
            }
            Some(Indexed {
                index: h.index,
                nodes: h.nodes,
                value: false,
                last_block: flat::right_span(h.index) / 2,
            })
        }
        (None, None) => None,
    };
    if let (Some(_), Some(i), Some(u)) = (req.seek, indexed, req.upgrade)
        && i.last_block >= u.start
    {
        return Err(ProofError::InvalidRequest(
            "seek and block beyond the upgrade start",
        ));
    }
    if let Some(s) = req.seek
        && s.bytes >= state.byte_length
    {
        return Err(ProofError::InvalidRequest("seek out of range"));
    }

    let get = |i: u64| -> Result<Node, ProofError> {
        if let Some(r) = state.roots.iter().find(|r| r.index == i) {
            return Ok(*r);
        }
        src.node(i)
            .map_err(|e| ProofError::Storage(e.to_string()))?
            .ok_or(ProofError::MissingNode(i))
    };

    let mut plan = Plan::default();
    let mut sub_tree = head;
    let seek = req.seek.map(|s| s.bytes);
    match (indexed, req.upgrade) {
        (Some(i), u) if u.is_none_or(|u| i.last_block < u.start) => {
            sub_tree = nodes_to_root(i.index, i.nodes, to)?;
            let seek_root = match seek {
                Some(bytes) => seek_untrusted(&get, state, sub_tree, bytes)?,
                None => head,
            };
            indexed_and_seek(Some(i), seek, seek_root, sub_tree, &mut plan)?;
        }
        (i, Some(_)) if i.is_some() || seek.is_some() => {
            sub_tree = match (seek, i) {
                (Some(bytes), _) => seek_from_head(&get, to, bytes)?,
                (None, Some(i)) => i.index,
                (None, None) => head,
            };
        }
        _ => {}
    }
    if req.upgrade.is_some() {
        upgrade_plan(indexed, seek, from, to, sub_tree, &mut plan)?;
        if head > to {
            plan.additional = Some(roots_between(to, head));
        }
    }

    let fetch = |ids: &Option<Vec<u64>>| -> Result<Vec<Node>, ProofError> {
        ids.iter().flatten().map(|i| get(*i)).collect()
    };
    let mut proof = Proof {
        fork: state.fork,
        ..Default::default()
    };
    match (req.block, req.hash) {
        (Some(b), _) => {
            proof.block = Some(BlockProof {
                index: b.index,
                value: Default::default(),
                nodes: fetch(&plan.indexed)?,
            })
        }
        (_, Some(h)) => {
            proof.hash = Some(HashProof {
                index: h.index,
                nodes: fetch(&plan.indexed)?,
            })
        }
        _ => {}
    }
    if let (Some(bytes), Some(_)) = (seek, &plan.seek) {
        proof.seek = Some(SeekProof {
            bytes,
            nodes: fetch(&plan.seek)?,
        });
    }
    if let Some(u) = req.upgrade {
        proof.upgrade = Some(UpgradeProof {
            start: u.start,
            length: u.length,
            nodes: fetch(&plan.upgrade)?,
            additional_nodes: fetch(&plan.additional)?,
            signature: state.signature.clone().unwrap_or_default(),
        });
    }
    Ok(proof)
}

/// The ancestor `nodes` levels above `index`, which must stay below `head`.
fn nodes_to_root(index: u64, nodes: u64, head: u64) -> Result<u64, ProofError> {
    let mut c = Cursor::new(index);
    for _ in 0..nodes {
        c.parent();
        if c.contains(head) {
            return Err(ProofError::InvalidRequest("nodes out of bounds"));
        }
    }
    Ok(c.index)
}

/// Path from `seek_root` up to `root`.
fn seek_path(seek_root: u64, root: u64, plan: &mut Plan) -> Result<(), ProofError> {
    let mut c = Cursor::new(seek_root);
    let mut ids = vec![c.index];
    climb(&mut c, root, |c| {
        ids.push(c.index);
        Ok(())
    })?;
    plan.seek = Some(ids);
    Ok(())
}

/// Walks from the cursor up to `root`, calling `visit` at each sibling on the way.
fn climb(
    c: &mut Cursor,
    root: u64,
    mut visit: impl FnMut(&Cursor) -> Result<(), ProofError>,
) -> Result<(), ProofError> {
    if !Cursor::new(root).contains(c.index) {
        return Err(ProofError::InvalidRequest("node is not below the root"));
    }
    while c.index != root {
        c.sibling();
        visit(c)?;
        c.parent();
    }
    Ok(())
}

/// Uncle path of the block or hash request up to `root`, switching to a seek path where the
/// seek target lies under an uncle.
fn indexed_and_seek(
    indexed: Option<Indexed>,
    seek: Option<u64>,
    seek_root: u64,
    root: u64,
    plan: &mut Plan,
) -> Result<(), ProofError> {
    let Some(i) = indexed else {
        return seek_path(seek_root, root, plan);
    };
    let mut c = Cursor::new(i.index);
    let mut ids = Vec::new();
    if !i.value {
        ids.push(c.index);
    }
    let mut seek_part = None;
    climb(&mut c, root, |c| {
        if seek.is_some() && c.contains(seek_root) && c.index != seek_root {
            let mut p = Plan::default();
            seek_path(seek_root, c.index, &mut p)?;
            seek_part = p.seek;
        } else {
            ids.push(c.index);
        }
        Ok(())
    })?;
    plan.indexed = Some(ids);
    if seek_part.is_some() {
        plan.seek = seek_part;
    }
    Ok(())
}

/// Nodes that grow a tree of `from / 2` blocks to `to / 2` blocks, including the block or seek
/// path when it lies in the new part.
fn upgrade_plan(
    indexed: Option<Indexed>,
    seek: Option<u64>,
    from: u64,
    to: u64,
    sub_tree: u64,
    plan: &mut Plan,
) -> Result<(), ProofError> {
    let wants_sub = |plan: &Plan, c: &Cursor| {
        plan.indexed.is_none()
            && plan.seek.is_none()
            && (indexed.is_some() || seek.is_some())
            && c.contains(sub_tree)
    };
    let mut ids: Option<Vec<u64>> = if from == 0 { Some(Vec::new()) } else { None };
    let mut c = Cursor::new(0);
    while c.full_root(to) {
        if c.index + c.factor / 2 < from {
            c.next_tree();
            continue;
        }
        if ids.is_none() && c.contains(from - 2) {
            let mut list = Vec::new();
            let root = c.index;
            let target = from - 2;
            c.seek(target);
            while c.index != root {
                c.sibling();
                if c.index > target {
                    if wants_sub(plan, &c) {
                        indexed_and_seek(indexed, seek, sub_tree, c.index, plan)?;
                    } else {
                        list.push(c.index);
                    }
                }
                c.parent();
            }
            ids = Some(list);
            c.next_tree();
            continue;
        }
        let list = ids.get_or_insert_with(Vec::new);
        if wants_sub(plan, &c) {
            indexed_and_seek(indexed, seek, sub_tree, c.index, plan)?;
        } else {
            list.push(c.index);
        }
        c.next_tree();
    }
    plan.upgrade = Some(ids.unwrap_or_default());
    Ok(())
}

/// Nodes that grow a tree from leaf `from` to leaf `to` when no block path is involved.
fn roots_between(from: u64, to: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut connected = from == 0;
    let mut c = Cursor::new(0);
    while c.full_root(to) {
        if c.index + c.factor / 2 < from {
            c.next_tree();
            continue;
        }
        if !connected && c.contains(from - 2) {
            connected = true;
            let root = c.index;
            let target = from - 2;
            c.seek(target);
            while c.index != root {
                c.sibling();
                if c.index > target {
                    out.push(c.index);
                }
                c.parent();
            }
            c.next_tree();
            continue;
        }
        connected = true;
        out.push(c.index);
        c.next_tree();
    }
    out
}

/// Byte offset of the first block below `index`, from the roots of `state`.
pub(crate) fn byte_offset(
    get: &impl Fn(u64) -> Result<Node, ProofError>,
    state: &TreeState,
    index: u64,
) -> Result<u64, ProofError> {
    let index = if index & 1 == 1 {
        flat::left_span(index)
    } else {
        index
    };
    let mut head = 0u64;
    let mut offset = 0u64;
    for root in &state.roots {
        head += 2 * ((root.index - head) + 1);
        if index >= head {
            offset += root.size;
            continue;
        }
        let mut c = Cursor::new(root.index);
        while c.index != index {
            if c.factor == 2 {
                return Err(ProofError::InvalidRequest(
                    "offset of a node outside the tree",
                ));
            }
            if index < c.index {
                c.left_child();
            } else {
                offset += get(c.left_child())?.size;
                c.sibling();
            }
        }
        return Ok(offset);
    }
    Err(ProofError::InvalidRequest(
        "offset of a node outside the tree",
    ))
}

/// The smallest subtree below `root` that contains byte `bytes` (relative to `root`), trusting
/// that it lies inside `root`.
fn seek_trusted(
    get: &impl Fn(u64) -> Result<Node, ProofError>,
    root: u64,
    mut bytes: u64,
) -> Result<u64, ProofError> {
    if bytes == 0 {
        return Ok(root);
    }
    let mut c = Cursor::new(root);
    while c.index & 1 == 1 {
        let l = c.left_child();
        match get(l) {
            Ok(node) => {
                if node.size == bytes {
                    return Ok(c.index);
                }
                if node.size > bytes {
                    continue;
                }
                bytes -= node.size;
                c.sibling();
            }
            Err(ProofError::MissingNode(_)) => {
                c.parent();
                return Ok(c.index);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(c.index)
}

/// [`seek_trusted`], after checking that `bytes` lies inside `root`.
fn seek_untrusted(
    get: &impl Fn(u64) -> Result<Node, ProofError>,
    state: &TreeState,
    root: u64,
    bytes: u64,
) -> Result<u64, ProofError> {
    let offset = byte_offset(get, state, root)?;
    if offset > bytes {
        return Err(ProofError::InvalidRequest("seek outside the subtree"));
    }
    if offset == bytes {
        return Ok(root);
    }
    let rel = bytes - offset;
    if get(root)?.size <= rel {
        return Err(ProofError::InvalidRequest("seek outside the subtree"));
    }
    seek_trusted(get, root, rel)
}

/// The subtree holding byte `bytes` of a tree whose head is leaf `head`.
fn seek_from_head(
    get: &impl Fn(u64) -> Result<Node, ProofError>,
    head: u64,
    mut bytes: u64,
) -> Result<u64, ProofError> {
    for root in flat::full_roots(head) {
        let node = get(root)?;
        if bytes == node.size {
            return Ok(root);
        }
        if bytes > node.size {
            bytes -= node.size;
            continue;
        }
        return seek_trusted(get, root, bytes);
    }
    Ok(head)
}

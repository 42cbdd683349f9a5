//! Executing one typed [`Op`] inside a [`Batch`]: what each write to a core stores, and how
//! it changes the staged header of the core. The store-wide ops are in `catalog`.

use std::sync::Arc;

use super::{
    StorageError,
    batch::Batch,
    catalog,
    change::Change,
    ops::{ApplyProof, Op, Outcome},
    schema,
    slot::{CoreSlot, Staged},
};
use crate::{
    crypto::{CoreKind, Manifest, Verifier},
    tree::{Node, Proof, TreeState, VerifiedProof, flat},
};

/// Applies `op`. An op that returns [`StorageError::Rejected`] wrote nothing; any other error
/// aborts the batch.
pub(super) fn apply(batch: &mut Batch<'_>, op: Op) -> Result<Outcome, StorageError> {
    match op {
        Op::SetPrimaryKey(key) => catalog::set_primary_key(batch, &key),
        Op::SetEndpointKey(key) => catalog::set_endpoint_key(batch, &key),
        Op::CreateCore { key, header, name } => {
            catalog::create_core(batch, key, &header, name.as_deref())
        }
        Op::SetName { key, name } => catalog::set_name(batch, key, &name),
        Op::SetStorePeers(peers) => catalog::set_store_peers(batch, &peers),
        Op::DeleteCore { key, slot } => catalog::delete_core(batch, key, slot.as_deref()),
        Op::Append {
            slot,
            base,
            base_roots,
            values,
            nodes,
            tree,
        } => append(batch, &slot, (base, &base_roots), values, nodes, tree),
        Op::Truncate { slot, base, tree } => truncate(batch, &slot, base, tree),
        Op::Clear { slot, start, end } => clear(batch, &slot, start, end),
        Op::SetPeers { slot, peers } => set_peers(batch, &slot, &peers),
        Op::ApplyProof(p) => {
            let ApplyProof {
                slot,
                base,
                verified,
                proof,
                verifier,
                keep,
            } = *p;
            apply_proof(batch, &slot, base, verified, &proof, &verifier, keep)
        }
        Op::ApplyRun {
            slot,
            fork,
            proofs,
            count,
            nodes,
        } => apply_run(batch, &slot, fork, &proofs[..count], &nodes),
        Op::Barrier => Ok(Outcome::Done),
        #[cfg(test)]
        Op::Probe(f) => f.0(batch).map(|()| Outcome::Done),
    }
}

/// The staged state of `slot`, unless the core was deleted.
fn live(slot: &CoreSlot) -> Result<std::sync::MutexGuard<'_, Staged>, StorageError> {
    let staged = slot.staged();
    if staged.deleted {
        return Err(StorageError::Rejected("core was deleted".into()));
    }
    Ok(staged)
}

/// Rejects a write prepared against another state than the one staged.
fn check_base(slot: &CoreSlot, base: (u64, u64)) -> Result<(), StorageError> {
    let staged = live(slot)?;
    let t = &staged.header.tree;
    if (t.length, t.fork) != base {
        return Err(StorageError::Rejected(format!(
            "core changed (now length {} fork {}) since this write was prepared",
            t.length, t.fork
        )));
    }
    Ok(())
}

/// Queues an event for the end of the batch; consecutive appends collapse into the last one.
fn push_event(events: &mut Vec<Change>, ev: Change) {
    if let (Some(Change::Append { .. }), Change::Append { .. }) = (events.last(), &ev) {
        events.pop();
    }
    events.push(ev);
}

/// The staged tree becomes `tree`, a longer one: with the `Append` event that says so.
fn grow_to(tree_slot: &mut TreeState, events: &mut Vec<Change>, tree: TreeState) {
    let ev = Change::Append {
        length: tree.length,
        byte_length: tree.byte_length,
        fork: tree.fork,
    };
    *tree_slot = tree;
    push_event(events, ev);
}

fn append(
    batch: &mut Batch<'_>,
    slot: &Arc<CoreSlot>,
    (base, base_roots): ((u64, u64), &[Node]),
    values: Vec<bytes::Bytes>,
    nodes: Vec<Node>,
    tree: TreeState,
) -> Result<Outcome, StorageError> {
    check_base(slot, base)?;
    // After a failed write the head an append is prepared on can hold other blocks than the
    // staged tree at the same length: its nodes and signature would then not match the blocks.
    if slot.staged().header.tree.roots != base_roots {
        return Err(StorageError::Rejected(
            "core changed (other blocks at the same length) since this write was prepared".into(),
        ));
    }
    batch.touch(slot);
    batch.append(slot.id, base.0, values, nodes)?;
    let mut staged = slot.staged();
    let staged = &mut *staged;
    let h = &mut staged.header;
    if h.contiguous_length == h.tree.length {
        h.contiguous_length = tree.length;
    }
    grow_to(&mut h.tree, &mut staged.events, tree);
    Ok(Outcome::Done)
}

fn truncate(
    batch: &mut Batch<'_>,
    slot: &Arc<CoreSlot>,
    base: (u64, u64),
    tree: TreeState,
) -> Result<Outcome, StorageError> {
    check_base(slot, base)?;
    batch.touch(slot);
    let length = tree.length;
    delete_from(batch, slot.id, length)?;
    let mut staged = slot.staged();
    let h = &mut staged.header;
    h.contiguous_length = h.contiguous_length.min(length);
    h.tree = tree;
    staged.events.push(Change::Truncate {
        length,
        fork: base.1 + 1,
    });
    Ok(Outcome::Done)
}

fn clear(
    batch: &mut Batch<'_>,
    slot: &Arc<CoreSlot>,
    start: u64,
    end: u64,
) -> Result<Outcome, StorageError> {
    drop(live(slot)?);
    batch.touch(slot);
    batch.blocks()?.remove(slot.id, start, end)?;
    let mut staged = slot.staged();
    let h = &mut staged.header;
    h.contiguous_length = h.contiguous_length.min(start);
    staged.events.push(Change::Clear { start, end });
    Ok(Outcome::Done)
}

/// Replaces the record of the peers core `slot` remembers.
fn set_peers(
    batch: &mut Batch<'_>,
    slot: &CoreSlot,
    peers: &[u8],
) -> Result<Outcome, StorageError> {
    drop(live(slot)?);
    schema::check_peers_record("peers", peers)?;
    batch
        .txn()
        .open_table(schema::PEERS)?
        .insert(slot.id, peers)?;
    Ok(Outcome::Done)
}

/// Deletes blocks from `length` on and every node that covers them.
fn delete_from(batch: &mut Batch<'_>, id: u64, length: u64) -> Result<(), StorageError> {
    batch.blocks()?.remove(id, length, u64::MAX)?;
    let head = 2 * length;
    let mut nodes = batch.nodes()?;
    nodes.remove_from(id, head)?;
    // Ancestors of leaf `head` left of it span removed leaves too.
    let mut i = head;
    while i < flat::MAX_INDEX {
        if i < head {
            nodes.remove(id, i)?;
        }
        i = flat::parent(i);
    }
    Ok(())
}

/// Stores a verified proof, if the core is still in the state it was verified against.
fn apply_proof(
    batch: &mut Batch<'_>,
    slot: &Arc<CoreSlot>,
    base: (u64, u64),
    verified: VerifiedProof,
    proof: &Proof,
    verifier: &Verifier,
    keep: Option<u64>,
) -> Result<Outcome, StorageError> {
    check_base(slot, base)?;
    batch.touch(slot);
    let id = slot.id;
    let cut = keep.filter(|k| *k < base.0);
    if let Some(keep) = cut {
        delete_from(batch, id, keep)?;
    }
    batch.nodes()?.put_new(id, &verified.nodes)?;
    let mut table = batch.blocks()?;
    let block = proof.block.as_ref().filter(|_| verified.block.is_some());
    // A block stored meanwhile (from another peer) is kept: rows must not overlap.
    let block = match block {
        Some(b) if table.view().has(id, b.index)? => None,
        other => other,
    };
    if let Some(b) = block {
        table.put(id, b.index, &[&b.value[..]])?;
    }
    let mut staged = slot.staged();
    let staged = &mut *staged;
    let h = &mut staged.header;
    if h.kind.is_none() {
        h.kind = Some(verifier.kind());
        if verifier.kind() == CoreKind::Default {
            h.manifest = verifier.manifest().map(Manifest::encode);
        }
    }
    if let Some(keep) = cut {
        h.contiguous_length = h.contiguous_length.min(keep);
        push_event(
            &mut staged.events,
            Change::Truncate {
                length: keep,
                fork: verified.upgrade.as_ref().map_or(base.1, |u| u.fork),
            },
        );
    }
    if let Some(up) = verified.upgrade {
        grow_to(&mut h.tree, &mut staged.events, up);
    }
    if let Some(b) = block {
        push_event(
            &mut staged.events,
            Change::Download {
                index: b.index,
                bytes: b.value.len() as u64,
            },
        );
        if b.index == h.contiguous_length {
            h.contiguous_length = table.view().first_missing(id, b.index + 1, h.tree.length)?;
        }
    }
    Ok(Outcome::Done)
}

/// Stores a verified run, if the core is still on the fork it was verified against.
fn apply_run(
    batch: &mut Batch<'_>,
    slot: &Arc<CoreSlot>,
    fork: u64,
    proofs: &[Proof],
    nodes: &[Node],
) -> Result<Outcome, StorageError> {
    if live(slot)?.header.tree.fork != fork {
        return Err(StorageError::Rejected("core moved to another fork".into()));
    }
    batch.touch(slot);
    let id = slot.id;
    batch.nodes()?.put_new(id, nodes)?;
    let mut table = batch.blocks()?;
    // Blocks stored meanwhile (from another peer) are kept: rows must not overlap.
    let mut new: Vec<(u64, &[u8])> = proofs
        .iter()
        .filter_map(|p| p.block.as_ref())
        .map(|b| (b.index, &b.value[..]))
        .collect();
    new.sort_unstable_by_key(|(i, _)| *i);
    new.dedup_by_key(|(i, _)| *i);
    if let (Some(first), Some(last)) = (new.first(), new.last()) {
        let stored = table.view().present(id, first.0, last.0 + 1)?;
        new.retain(|(i, _)| !stored.iter().any(|r| r.contains(i)));
    }
    table.put_sorted(id, &new)?;
    let mut guard = slot.staged();
    let staged = &mut *guard;
    let h = &mut staged.header;
    for (index, value) in &new {
        push_event(
            &mut staged.events,
            Change::Download {
                index: *index,
                bytes: value.len() as u64,
            },
        );
    }
    h.contiguous_length = table
        .view()
        .first_missing(id, h.contiguous_length, h.tree.length)?;
    Ok(Outcome::Done)
}

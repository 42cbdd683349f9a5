//! Runs of consecutive blocks: created in one read for a peer, verified and stored in one write.
//!
//! Replication moves blocks in runs so that throughput is not one round trip, one read and one
//! commit per block. Each proof of a run carries only the nodes the requester cannot have yet
//! (see [`tree::run_proof_levels`]), so the proofs must be applied in the order they were made.

use std::{collections::HashMap, sync::Arc};

use super::{
    events::CoreEvent,
    hypercore::Hypercore,
    state::{CoreInner, TxnNodes},
    writes::{MAX_BLOCK_SIZE, push_event, put_nodes, stage_header},
};
use crate::{
    error::{Error, Result},
    storage::{StorageError, blocks::BlocksRead},
    tree::{self, IndexRequest, Node, NodeSource, Proof, ProofError, ProofRequest},
};

/// Longest run one request may ask for.
pub const MAX_RUN: u64 = 1024;

/// One answer in a run: a block's proof, or the index of a block this core does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // `Missing` is the rare case; boxing every proof costs more.
pub enum RunItem {
    /// Proof of a block, with its value.
    Proof(Proof),
    /// This core does not hold the block.
    Missing(u64),
}

/// What [`Hypercore::apply_block_proofs`] stored.
#[derive(Debug, Default)]
pub struct RunApplied {
    /// Blocks stored, with their sizes, in order.
    pub stored: Vec<(u64, u64)>,
    /// The first proof that did not verify (its block index and why); nothing from it or after
    /// it was stored.
    pub rejected: Option<(u64, Error)>,
}

/// How often a run is re-verified when the core changed fork while it was being verified.
const APPLY_ATTEMPTS: usize = 8;

impl Hypercore {
    /// Proofs of blocks `start..end` for a requester on `fork` whose tree has `length` blocks,
    /// to be applied in order. Blocks this core lacks are reported as [`RunItem::Missing`], and
    /// the block after a gap is proven up to its root again.
    pub fn create_run_proofs(
        &self,
        fork: u64,
        start: u64,
        end: u64,
        length: u64,
    ) -> impl Future<Output = Result<Vec<RunItem>>> + Send + 'static + use<> {
        self.create_run_proofs_within(fork, start, end, length, u64::MAX)
    }

    /// Like [`create_run_proofs`](Self::create_run_proofs), but reads no more block bytes than
    /// about `max_bytes`: the run ends after the block that reaches it (at least one block is
    /// proven), so the answer covers a prefix `start..stop` of the run, with `stop` the index
    /// after its last item. What a peer's request makes us hold is bounded that way.
    pub fn create_run_proofs_within(
        &self,
        fork: u64,
        start: u64,
        end: u64,
        length: u64,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Vec<RunItem>>> + Send + 'static + use<> {
        let inner = self.inner.clone();
        async move {
            let tree = inner.state().committed.tree.clone();
            if fork != tree.fork {
                return Err(ProofError::ForkMismatch {
                    proof: fork,
                    tree: tree.fork,
                }
                .into());
            }
            if start >= end || end > length || length > tree.length || end - start > MAX_RUN {
                return Err(Error::InvalidArgument("run out of range"));
            }
            let id = inner.id;
            inner
                .storage
                .read(move |txn| {
                    let src = TxnNodes::open(txn, id)?;
                    let mut values: Vec<Option<Vec<u8>>> = vec![None; (end - start) as usize];
                    let stop = BlocksRead::open(txn)?.view().for_each_within(
                        id,
                        start,
                        end,
                        max_bytes,
                        |i, v| values[(i - start) as usize] = Some(v),
                    )?;
                    values.truncate((stop - start) as usize);
                    let mut out = Vec::with_capacity(values.len());
                    let mut run_start = start;
                    for (index, value) in (start..end).zip(values) {
                        let value = match value {
                            Some(v) => v,
                            None => {
                                out.push(RunItem::Missing(index));
                                run_start = index + 1;
                                continue;
                            }
                        };
                        let req = ProofRequest {
                            fork,
                            block: Some(IndexRequest {
                                index,
                                nodes: tree::run_proof_levels(run_start, index, length),
                            }),
                            ..Default::default()
                        };
                        match tree::create_proof(&src, &tree, &req) {
                            Ok(mut proof) => {
                                if let Some(b) = &mut proof.block {
                                    b.value = value;
                                }
                                out.push(RunItem::Proof(proof));
                            }
                            Err(ProofError::MissingNode(_)) => {
                                out.push(RunItem::Missing(index));
                                run_start = index + 1;
                            }
                            Err(e) => return Ok(Err(Error::from(e))),
                        }
                    }
                    Ok(Ok(out))
                })
                .await?
        }
    }

    /// Verifies block proofs (without upgrades) in order and stores every one up to the first
    /// that fails, in one write. Each proof may rely on nodes delivered by the ones before it.
    pub fn apply_block_proofs(
        &self,
        proofs: Vec<Proof>,
    ) -> impl Future<Output = Result<RunApplied>> + Send + 'static + use<> {
        let inner = self.inner.clone();
        async move { apply_run(inner, Arc::new(proofs)).await }
    }
}

/// Nodes verified earlier in the same run, in front of the stored ones.
struct Overlay<'a> {
    added: &'a HashMap<u64, Node>,
    stored: &'a TxnNodes,
}

impl NodeSource for Overlay<'_> {
    type Error = StorageError;
    fn node(&self, index: u64) -> Result<Option<Node>, StorageError> {
        match self.added.get(&index) {
            Some(n) => Ok(Some(*n)),
            None => self.stored.node(index),
        }
    }
}

/// A verified prefix of a run, ready to be written.
struct VerifiedRun {
    /// How many leading proofs verified.
    verified: usize,
    nodes: HashMap<u64, Node>,
    rejected: Option<(u64, Error)>,
}

async fn apply_run(inner: Arc<CoreInner>, proofs: Arc<Vec<Proof>>) -> Result<RunApplied> {
    let mut last_err = None;
    for _ in 0..APPLY_ATTEMPTS {
        let (tree, verifier) = {
            let st = inner.state();
            (st.committed.tree.clone(), st.verifier.clone())
        };
        let Some(verifier) = verifier else {
            return Err(Error::InvalidArgument(
                "the core has no signed length yet: apply an upgrade first",
            ));
        };
        let id = inner.id;
        let (p, t) = (proofs.clone(), tree.clone());
        let run = inner
            .storage
            .read(move |txn| {
                let stored = TxnNodes::open(txn, id)?;
                let mut run = VerifiedRun {
                    verified: 0,
                    nodes: HashMap::new(),
                    rejected: None,
                };
                for proof in p.iter() {
                    let index = proof.block.as_ref().map_or(u64::MAX, |b| b.index);
                    let checked = check_block_proof(proof, t.length).and_then(|()| {
                        let src = Overlay {
                            added: &run.nodes,
                            stored: &stored,
                        };
                        Ok(tree::verify_proof(&src, &t, &verifier, proof)?)
                    });
                    match checked {
                        Ok(v) => {
                            run.nodes.extend(v.nodes.iter().map(|n| (n.index, *n)));
                            run.verified += 1;
                        }
                        Err(e) => {
                            run.rejected = Some((index, e));
                            break;
                        }
                    }
                }
                Ok(run)
            })
            .await?;
        let n = run.verified;
        inner.hand_over_verified(
            proofs[..n]
                .iter()
                .filter_map(|p| p.block.as_ref())
                .map(|b| (b.index, b.value.as_slice())),
        );
        let stored: Vec<(u64, u64)> = proofs[..n]
            .iter()
            .filter_map(|p| p.block.as_ref())
            .map(|b| (b.index, b.value.len() as u64))
            .collect();
        if n == 0 {
            return Ok(RunApplied {
                stored,
                rejected: run.rejected,
            });
        }
        let op_inner = inner.clone();
        let fork = tree.fork;
        let (verified, nodes) = (proofs.clone(), run.nodes);
        let result = inner
            .storage
            .write(move |ctx| write_run(ctx, &op_inner, fork, &verified[..n], &nodes))
            .await;
        match result {
            Ok(()) => {
                return Ok(RunApplied {
                    stored,
                    rejected: run.rejected,
                });
            }
            Err(e @ StorageError::Rejected(_)) => last_err = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last_err.map(Error::from).unwrap_or(Error::Closed))
}

/// A run may carry only block proofs within the reader's signed length.
fn check_block_proof(proof: &Proof, length: u64) -> Result<()> {
    match &proof.block {
        _ if proof.upgrade.is_some() || proof.hash.is_some() || proof.seek.is_some() => {
            Err(ProofError::invalid("a run may only carry block proofs").into())
        }
        None => Err(ProofError::invalid("a run proof without a block").into()),
        Some(b) if b.index >= length => Err(Error::OutOfRange {
            index: b.index,
            length,
        }),
        Some(b) if b.value.len() > MAX_BLOCK_SIZE => {
            Err(ProofError::invalid("block larger than MAX_BLOCK_SIZE").into())
        }
        Some(_) => Ok(()),
    }
}

/// Stores a verified run, if the core is still on the fork it was verified against.
fn write_run(
    ctx: &mut crate::storage::WriteCtx<'_, '_>,
    inner: &Arc<CoreInner>,
    fork: u64,
    proofs: &[Proof],
    nodes: &HashMap<u64, Node>,
) -> Result<(), StorageError> {
    {
        let staged = inner.staged();
        if staged.deleted {
            return Err(StorageError::Rejected("core was deleted".into()));
        }
        if staged.header.tree.fork != fork {
            return Err(StorageError::Rejected("core moved to another fork".into()));
        }
    }
    let id = inner.id;
    let nodes: Vec<Node> = nodes.values().copied().collect();
    put_nodes(ctx, id, &nodes)?;
    let mut table = ctx.blocks()?;
    // Blocks stored meanwhile (from another peer) are kept: rows must not overlap.
    let mut new: Vec<(u64, &[u8])> = proofs
        .iter()
        .filter_map(|p| p.block.as_ref())
        .map(|b| (b.index, b.value.as_slice()))
        .collect();
    new.sort_unstable_by_key(|(i, _)| *i);
    new.dedup_by_key(|(i, _)| *i);
    if let (Some(first), Some(last)) = (new.first(), new.last()) {
        let stored = table.view().present(id, first.0, last.0 + 1)?;
        new.retain(|(i, _)| !stored.iter().any(|r| r.contains(i)));
    }
    table.put_sorted(id, &new)?;
    let mut guard = inner.staged();
    let staged = &mut *guard;
    let h = &mut staged.header;
    for (index, value) in &new {
        push_event(
            &mut staged.events,
            CoreEvent::Download {
                index: *index,
                bytes: value.len() as u64,
            },
        );
    }
    h.contiguous_length = table
        .view()
        .first_missing(id, h.contiguous_length, h.tree.length)?;
    drop(guard);
    stage_header(ctx, inner);
    Ok(())
}

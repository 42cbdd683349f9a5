//! Runs of consecutive blocks: created in one read for a peer, verified and stored in one write.
//!
//! Replication moves blocks in runs so that throughput is not one round trip, one read and one
//! commit per block. Each proof of a run carries only the nodes the requester cannot have yet
//! (see [`tree::run_proof_levels`]), so the proofs must be applied in the order they were made.

use std::{collections::BTreeMap, sync::Arc};

use super::{hypercore::Hypercore, state::CoreInner, writes::MAX_BLOCK_SIZE};
use crate::{
    crypto::hash::leaf_hashes,
    error::{Error, Result},
    storage::{CoreNodes, Op, StorageError},
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
                .read(move |r| {
                    let src = r.nodes(id)?;
                    let mut values: Vec<Option<Vec<u8>>> = vec![None; (end - start) as usize];
                    let stop =
                        r.blocks()?
                            .view()
                            .for_each_within(id, start, end, max_bytes, |i, v| {
                                values[(i - start) as usize] = Some(v)
                            })?;
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
    added: &'a BTreeMap<u64, Node>,
    stored: &'a CoreNodes,
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
    nodes: BTreeMap<u64, Node>,
    rejected: Option<(u64, Error)>,
}

async fn apply_run(inner: Arc<CoreInner>, proofs: Arc<Vec<Proof>>) -> Result<RunApplied> {
    let mut last_err = None;
    for _ in 0..APPLY_ATTEMPTS {
        let tree = inner.state().committed.tree.clone();
        let verifier = inner.verifier().clone();
        let Some(verifier) = verifier else {
            return Err(Error::InvalidArgument(
                "the core has no signed length yet: apply an upgrade first",
            ));
        };
        let id = inner.id;
        let (p, t) = (proofs.clone(), tree.clone());
        let run = inner
            .storage
            .read(move |r| {
                let stored = r.nodes(id)?;
                let mut run = VerifiedRun {
                    verified: 0,
                    nodes: BTreeMap::new(),
                    rejected: None,
                };
                // The leaves of the proofs that may be verified at all (the run stops at the
                // first that may not), hashed together, several at a time: leaf `i` is the
                // hash of proof `i`'s block.
                let checkable = p
                    .iter()
                    .take_while(|proof| check_block_proof(proof, t.length).is_ok())
                    .count();
                let leaves = leaf_hashes(
                    p[..checkable]
                        .iter()
                        .map(|proof| proof.block.as_ref().map_or(&[][..], |b| b.value.as_slice())),
                );
                for (i, proof) in p.iter().enumerate() {
                    let index = proof.block.as_ref().map_or(u64::MAX, |b| b.index);
                    let checked = check_block_proof(proof, t.length).and_then(|()| {
                        let src = Overlay {
                            added: &run.nodes,
                            stored: &stored,
                        };
                        let leaf = leaves.get(i).copied();
                        Ok(tree::verify_proof_hashed(&src, &t, &verifier, proof, leaf)?)
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
        let result = inner
            .storage
            .write(Op::ApplyRun {
                slot: inner.slot.clone(),
                fork: tree.fork,
                proofs: proofs.clone(),
                count: n,
                nodes: run.nodes.into_values().collect(),
            })
            .await;
        match result {
            Ok(_) => {
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

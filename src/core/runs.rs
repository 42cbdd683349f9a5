//! Runs of consecutive blocks: created in one read for a peer, verified and stored in one write.
//!
//! Replication moves blocks in runs so that throughput is not one round trip, one read and one
//! commit per block. Each proof of a run carries only the nodes the requester cannot have yet
//! (see [`tree::run_proof_levels`]), so the proofs must be applied in the order they were made.

use std::{collections::HashMap, panic::AssertUnwindSafe, sync::Arc};

use n0_future::FutureExt;

use rustc_hash::FxBuildHasher;

use super::{
    apply_turns::{Turn, Unwritten},
    hypercore::Hypercore,
    state::CoreInner,
    writes::MAX_BLOCK_SIZE,
};
use crate::{
    crypto::hash::{Hash, leaf_hashes},
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
                                    b.value = value.into();
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
        async move { apply_run(inner, Arc::new(proofs), hashing_tasks(), None).await }
    }

    /// Like [`apply_block_proofs`](Self::apply_block_proofs), for applies that follow each
    /// other: this one is verified once the one started before it on this core verified,
    /// relying on the nodes of the applies that verified and are still written, and it ends
    /// after the one before it, even if it panics (see [`apply_turns`](super::apply_turns)).
    /// Its turn is taken when it is called: every apply started this way must be polled to its
    /// end, or dropped, for the next one to run.
    pub(crate) fn apply_block_proofs_in_turn(
        &self,
        proofs: Vec<Proof>,
    ) -> impl Future<Output = Result<RunApplied>> + Send + 'static + use<> {
        let inner = self.inner.clone();
        let mut turn = inner.apply_turns.take_turn();
        async move {
            let apply = apply_run(inner, Arc::new(proofs), hashing_tasks(), Some(&mut turn));
            // Even a panic ends after the apply before it: the engine hears of them in order.
            let applied = AssertUnwindSafe(apply).catch_unwind().await;
            turn.end().await;
            applied.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        }
    }
}

/// The nodes a run's proofs verified so far, by index. Hashed with Fx (a multiply per
/// index): a run adds about two nodes a block, and an ordered map's inserts were a tenth of
/// verifying a 1 KiB block; the nodes are sorted once, when the batch is verified.
type RunNodes = HashMap<u64, Node, FxBuildHasher>;

/// Nodes verified earlier in the same batch, then those the core's applies before it verified
/// and may not have written yet (on `fork`), in front of the stored ones. A proof looks up
/// only the node its path ends at, which it computes itself: so the nodes a batch writes
/// stand on their own, whether or not an earlier apply's write succeeds.
struct Overlay<'a> {
    added: &'a RunNodes,
    earlier: &'a Unwritten,
    fork: u64,
    stored: &'a CoreNodes,
}

impl NodeSource for Overlay<'_> {
    type Error = StorageError;
    fn node(&self, index: u64) -> Result<Option<Node>, StorageError> {
        if let Some(n) = self.added.get(&index) {
            return Ok(Some(*n));
        }
        if let Some(n) = self.earlier.get(self.fork, index) {
            return Ok(Some(n));
        }
        self.stored.node(index)
    }
}

/// A verified prefix of a run, ready to be written.
struct VerifiedRun {
    /// How many leading proofs verified.
    verified: usize,
    /// The nodes they verified, in index order (sorted here rather than on the storage thread,
    /// which every core's writes share).
    nodes: Vec<Node>,
    rejected: Option<(u64, Error)>,
}

/// Test hook: an apply of this core whose first proof is of this block panics (as a bug that
/// a peer's input reached would), to check when a panicking apply ends.
#[cfg(test)]
static PANIC_HOOK: std::sync::Mutex<Option<(crate::crypto::CoreKey, u64)>> =
    std::sync::Mutex::new(None);

/// Verifies `proofs` in order and stores the verified prefix in one write; a batch's leaves
/// are hashed by up to `tasks` blocking tasks at once when it is long enough. With a `turn`,
/// it verifies after the apply before it, on top of its nodes, and tells the next one what it
/// verified once its write is queued.
async fn apply_run(
    inner: Arc<CoreInner>,
    proofs: Arc<Vec<Proof>>,
    tasks: usize,
    mut turn: Option<&mut Turn>,
) -> Result<RunApplied> {
    #[cfg(test)]
    if let Ok(hook) = PANIC_HOOK.lock()
        && let Some((key, index)) = *hook
        && key == inner.key
        && proofs
            .first()
            .and_then(|p| p.block.as_ref())
            .map(|b| b.index)
            == Some(index)
    {
        panic!("the test hook panics in this apply");
    }
    let mut last_err = None;
    // A long batch's leaves are hashed first, by several blocking tasks at once (they depend
    // on the blocks alone); a short one's inside the read below, as part of verifying it.
    let n = {
        let state = inner.state();
        checkable(
            &proofs,
            state.committed.tree.fork,
            state.committed.tree.length,
        )
    };
    let hashed = Arc::new(split_leaf_hashes(&proofs, n, tasks).await);
    let earlier = Arc::new(match turn.as_deref_mut() {
        Some(t) => t.earlier_nodes().await,
        None => Unwritten::default(),
    });
    for _ in 0..APPLY_ATTEMPTS {
        let tree = inner.state().committed.tree.clone();
        let verifier = inner.verifier().clone();
        let Some(verifier) = verifier else {
            return Err(Error::InvalidArgument(
                "the core has no signed length yet: apply an upgrade first",
            ));
        };
        let id = inner.id;
        let (p, t, hashed, earlier) = (
            proofs.clone(),
            tree.clone(),
            hashed.clone(),
            earlier.clone(),
        );
        let run = inner
            .storage
            .read(move |r| {
                let stored = r.nodes(id)?;
                // About two nodes a proof; what a long batch needs beyond it, it grows.
                let mut added = RunNodes::with_capacity_and_hasher(
                    p.len().min(MAX_RUN as usize * 16) * 2,
                    FxBuildHasher,
                );
                let (mut verified, mut rejected) = (0, None);
                // The leaves of the proofs that may be verified at all (the run stops at the
                // first that may not), hashed together, several at a time: leaf `i` is the
                // hash of proof `i`'s block. Those hashed already are taken as they are (a
                // leaf depends on its block alone); a proof past them is hashed as it is
                // verified.
                let own;
                let leaves: &[Hash] = if hashed.is_empty() {
                    own = leaf_hashes(p[..checkable(&p, t.fork, t.length)].iter().map(block_value));
                    &own
                } else {
                    &hashed
                };
                for (i, proof) in p.iter().enumerate() {
                    let index = proof.block.as_ref().map_or(u64::MAX, |b| b.index);
                    let checked = check_block_proof(proof, t.length).and_then(|()| {
                        let src = Overlay {
                            added: &added,
                            earlier: &earlier,
                            fork: t.fork,
                            stored: &stored,
                        };
                        let leaf = leaves.get(i).copied();
                        Ok(tree::verify_proof_hashed(&src, &t, &verifier, proof, leaf)?)
                    });
                    match checked {
                        Ok(v) => {
                            added.extend(v.nodes.iter().map(|n| (n.index, *n)));
                            verified += 1;
                        }
                        Err(e) => {
                            rejected = Some((index, e));
                            break;
                        }
                    }
                }
                let mut nodes: Vec<Node> = added.into_values().collect();
                nodes.sort_unstable_by_key(|n| n.index);
                Ok(VerifiedRun {
                    verified,
                    nodes,
                    rejected,
                })
            })
            .await?;
        let n = run.verified;
        inner.hand_over_verified(
            proofs[..n]
                .iter()
                .filter_map(|p| p.block.as_ref())
                .map(|b| (b.index, &b.value[..])),
        );
        let stored: Vec<(u64, u64)> = proofs[..n]
            .iter()
            .filter_map(|p| p.block.as_ref())
            .map(|b| (b.index, b.value.len() as u64))
            .collect();
        let nodes = Arc::new(run.nodes);
        if n == 0 {
            if let Some(t) = turn.as_deref() {
                t.verified(tree.fork, nodes);
            }
            return Ok(RunApplied {
                stored,
                rejected: run.rejected,
            });
        }
        let write = inner.storage.write(Op::ApplyRun {
            slot: inner.slot.clone(),
            fork: tree.fork,
            proofs: proofs.clone(),
            count: n,
            nodes: nodes.clone(),
        });
        // Queued: the next apply may verify, relying on these nodes, while they are written.
        if let Some(t) = turn.as_deref() {
            t.verified(tree.fork, nodes);
        }
        let result = write.await;
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

/// How many leading proofs of a run may be verified against a tree on `fork` of `length`
/// blocks (the run stops at the first that may not).
fn checkable(proofs: &[Proof], fork: u64, length: u64) -> usize {
    proofs
        .iter()
        .take_while(|proof| proof.fork == fork && check_block_proof(proof, length).is_ok())
        .count()
}

/// The bytes of a proof's block (none for a proof without one).
fn block_value(proof: &Proof) -> &[u8] {
    proof.block.as_ref().map_or(&[][..], |b| &b.value[..])
}

/// Bytes of blocks worth a blocking task of their own (about a millisecond of hashing): a
/// batch of less than twice this is hashed inside its verifying read.
const LEAF_BYTES_PER_TASK: u64 = 1 << 20;

/// Leaves a task hashes at least: BLAKE2b runs four of them at once.
const LEAVES_PER_TASK: usize = 4;

/// Where the leaves of `proofs` are cut among at most `tasks` hashing tasks: the bounds of
/// stretches of about the same bytes, each of at least [`LEAVES_PER_TASK`] leaves but the
/// last (`[0, c1, …, proofs.len()]`); empty when the batch is not worth two.
fn stretches(proofs: &[Proof], tasks: usize) -> Vec<usize> {
    let n = proofs.len();
    let bytes: u64 = proofs.iter().map(|p| block_value(p).len() as u64).sum();
    let tasks = tasks
        .min(n / LEAVES_PER_TASK)
        .min(usize::try_from(bytes / LEAF_BYTES_PER_TASK).unwrap_or(usize::MAX));
    if tasks < 2 {
        return Vec::new();
    }
    // Cut where each stretch reaches its share of the bytes (and holds enough leaves).
    let share = bytes.div_ceil(tasks as u64);
    let mut cuts = vec![0];
    let mut filled = 0;
    for (i, p) in proofs.iter().enumerate() {
        filled += block_value(p).len() as u64;
        let start = cuts.last().copied().unwrap_or(0);
        if filled >= share && i + 1 - start >= LEAVES_PER_TASK && cuts.len() < tasks {
            cuts.push(i + 1);
            filled = 0;
        }
    }
    cuts.push(n);
    cuts.dedup();
    if cuts.len() < 3 {
        // One stretch: no split (its leaves ended the batch's share at once).
        return Vec::new();
    }
    cuts
}

/// The leaf hashes of `proofs[..n]`, hashed by up to `tasks` blocking tasks at once, one
/// stretch each (see [`stretches`]), when the batch is long enough to split (10,000 blocks of
/// 1 KiB took about 6 ms on the one task that then verifies them); empty when it is not, or
/// when a task failed (the read hashes them then).
async fn split_leaf_hashes(proofs: &Arc<Vec<Proof>>, n: usize, tasks: usize) -> Vec<Hash> {
    let n = n.min(proofs.len());
    let cuts = stretches(&proofs[..n], tasks);
    let handles: Vec<_> = cuts
        .windows(2)
        .map(|w| {
            let (p, start, end) = (proofs.clone(), w[0], w[1]);
            tokio::task::spawn_blocking(move || leaf_hashes(p[start..end].iter().map(block_value)))
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for handle in handles {
        match handle.await {
            Ok(part) => out.extend(part),
            Err(e) => {
                tracing::warn!("hashing a batch's leaves failed: {e}");
                return Vec::new();
            }
        }
    }
    // One leaf a proof, or none: a leaf must never stand for another proof's block.
    if out.len() != n {
        return Vec::new();
    }
    out
}

/// Blocking tasks a batch's leaves are split among at most: the cores this process may use
/// (asked once: the answer reads the cgroup's files), up to 8.
fn hashing_tasks() -> usize {
    static TASKS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *TASKS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8)
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Corestore, tree::BlockProof};

    fn proof_of(value: Vec<u8>) -> Proof {
        Proof {
            block: Some(BlockProof {
                index: 0,
                value: value.into(),
                nodes: Vec::new(),
            }),
            ..Default::default()
        }
    }

    fn sized(sizes: &[(usize, usize)]) -> Vec<Proof> {
        sizes
            .iter()
            .flat_map(|&(count, size)| (0..count).map(move |i| proof_of(vec![i as u8; size])))
            .collect()
    }

    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;

    /// Where a batch is cut: stretches of about the same bytes, at least four leaves each
    /// (but the last), no more than the tasks allowed; no cut at all for a batch of less than
    /// 2 MiB, fewer than eight leaves, one task, or one stretch.
    #[test]
    fn a_batch_is_cut_into_stretches_of_about_the_same_bytes() {
        // (count and size of the blocks, tasks, cuts)
        type Case = (&'static [(usize, usize)], usize, &'static [usize]);
        let cases: [Case; 10] = [
            (&[(2_048, KIB)], 8, &[0, 1_024, 2_048]),
            (&[(3_000, KIB)], 3, &[0, 1_500, 3_000]),
            (&[(5_120, KIB)], 8, &[0, 1_024, 2_048, 3_072, 4_096, 5_120]),
            (&[(12, MIB)], 3, &[0, 4, 8, 12]),
            // A large first leaf: the first stretch still holds four.
            (&[(1, 3 * MIB), (7, KIB)], 2, &[0, 4, 8]),
            // A large last leaf fills the only share: one stretch, no cut.
            (&[(8, KIB), (1, 3 * MIB)], 2, &[]),
            (&[(3_000, KIB)], 1, &[]),
            (&[(2_000, KIB)], 8, &[]),
            (&[(7, MIB)], 8, &[]),
            (&[], 8, &[]),
        ];
        for (sizes, tasks, cuts) in cases {
            assert_eq!(
                stretches(&sized(sizes), tasks),
                cuts,
                "{sizes:?}, {tasks} tasks"
            );
        }
    }

    /// Split among tasks or not, leaf `i` is the hash of proof `i`'s block, for the first `n`
    /// proofs only, whatever the blocks' sizes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn split_leaves_are_each_proofs_own() {
        let proofs: Arc<Vec<Proof>> = Arc::new(
            (0..3_000u32)
                .map(|i| {
                    let repeat = if i % 997 == 5 {
                        3 << 18
                    } else {
                        1 + (i % 1_800) as usize
                    };
                    proof_of(i.to_le_bytes().repeat(repeat))
                })
                .collect(),
        );
        let all = leaf_hashes(proofs.iter().map(block_value));
        for (n, tasks) in [(3_000, 3), (2_999, 2), (1_500, 8), (2_048, 4), (10, 2)] {
            assert!(stretches(&proofs[..n], tasks).len() > 2, "{n} proofs split");
            let split = split_leaf_hashes(&proofs, n, tasks).await;
            assert_eq!(split, all[..n], "{n} proofs, {tasks} tasks");
        }
        assert!(split_leaf_hashes(&proofs, 3_000, 1).await.is_empty());
        // Never more than the batch holds.
        assert_eq!(split_leaf_hashes(&proofs, 9_999, 2).await, all);
    }

    /// A fresh reader of `w` that verified its first `length` blocks' signed length.
    async fn verified_reader(w: &Hypercore, length: u64) -> Hypercore {
        let r = Corestore::memory()
            .await
            .unwrap()
            .get_remote(w.key())
            .await
            .unwrap();
        let upgrade = ProofRequest {
            upgrade: Some(crate::tree::UpgradeRequest { start: 0, length }),
            manifest: true,
            ..Default::default()
        };
        r.verify_and_apply_proof(w.create_proof(upgrade).await.unwrap())
            .await
            .unwrap();
        r
    }

    /// A run of `LEN` small blocks proven by a fresh writer, cut in two batches, and a fresh
    /// reader of it that knows its length.
    async fn halves_and_reader() -> (Vec<Proof>, Vec<Proof>, impl AsyncFn() -> Hypercore) {
        const LEN: u64 = 64;
        let store = Corestore::memory().await.unwrap();
        let w = store.get_named("turns").await.unwrap();
        w.append_batch((0..LEN).map(|i| vec![i as u8; 100]))
            .await
            .unwrap();
        let mut ps: Vec<Proof> = w
            .create_run_proofs(0, 0, LEN, LEN)
            .await
            .unwrap()
            .into_iter()
            .map(|item| match item {
                RunItem::Proof(p) => p,
                RunItem::Missing(i) => panic!("the writer lacks block {i}"),
            })
            .collect();
        let second = ps.split_off(LEN as usize / 2);
        let reader = async move || verified_reader(&w, LEN).await;
        (ps, second, reader)
    }

    /// The second half of a run relies on nodes its first half delivered. Applied in turn
    /// and polled together, both store every block; applied alone, the second is rejected at
    /// its first block. (That an apply waits for the one before it to verify, and ends after
    /// it, is checked in `apply_turns`; that it verifies on nodes never written, below.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_apply_in_turn_is_verified_on_the_nodes_of_the_one_before() {
        let (first, second, reader) = halves_and_reader().await;
        let half = first.len() as u64;
        let alone = reader()
            .await
            .apply_block_proofs(second.clone())
            .await
            .unwrap();
        assert_eq!(
            alone.rejected.map(|r| r.0),
            Some(half),
            "relies on the first half"
        );

        let r = reader().await;
        let a = r.apply_block_proofs_in_turn(first);
        let mut b = std::pin::pin!(r.apply_block_proofs_in_turn(second));
        assert!(
            n0_future::future::poll_once(&mut b).await.is_none(),
            "not done before the apply before it ran"
        );
        let (a, b) = tokio::join!(a, b);
        for applied in [a.unwrap(), b.unwrap()] {
            assert!(applied.rejected.is_none(), "{:?}", applied.rejected);
            assert_eq!(applied.stored.len() as u64, half);
        }
        assert_eq!(r.info().contiguous_length, 2 * half);
    }

    /// An apply in turn that panics still ends after the apply before it: the engine hears of
    /// them in the order they started.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_apply_in_turn_ends_after_the_one_before_it() {
        let (first, second, reader) = halves_and_reader().await;
        let half = first.len() as u64;
        let r = reader().await;
        *PANIC_HOOK.lock().unwrap() = Some((r.key(), half));
        let a = r.apply_block_proofs_in_turn(first);
        let b = AssertUnwindSafe(r.apply_block_proofs_in_turn(second)).catch_unwind();
        let mut b = std::pin::pin!(b);
        assert!(
            n0_future::future::poll_once(&mut b).await.is_none(),
            "its panic waits for the apply before it to end"
        );
        let a = a.await.unwrap();
        assert!(a.rejected.is_none(), "{:?}", a.rejected);
        assert!(b.await.is_err(), "then it panics");
    }

    /// An apply whose predecessor is dropped before it ran does not wait for it: it verifies
    /// on the stored nodes alone, and stores nothing it could not verify.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_apply_in_turn_does_not_wait_for_one_dropped() {
        let (first, second, reader) = halves_and_reader().await;
        let half = first.len() as u64;
        let r = reader().await;
        drop(r.apply_block_proofs_in_turn(first));
        let b = r.apply_block_proofs_in_turn(second);
        let applied = tokio::time::timeout(std::time::Duration::from_secs(10), b)
            .await
            .expect("does not wait for a dropped apply")
            .unwrap();
        assert_eq!(applied.rejected.map(|r| r.0), Some(half));
        assert!(applied.stored.is_empty());
        assert_eq!(r.info().contiguous_length, 0);
    }

    /// Every node `r` stores below flat index `to`, by index.
    async fn stored_nodes(r: &Hypercore, to: u64) -> Vec<Node> {
        let id = r.inner.id;
        r.inner
            .storage
            .read(move |rd| {
                let nodes = rd.nodes(id)?;
                let mut out = Vec::new();
                for i in 0..to {
                    out.extend(nodes.node(i)?);
                }
                Ok(out)
            })
            .await
            .unwrap()
    }

    /// An apply in turn relies on nodes an apply before it verified and never wrote (on the
    /// fork they are of): what it writes stands on its own (the root of its half, which it
    /// checked against theirs, is among its nodes), and the core is complete and every block
    /// provable once the first half is stored too. On another fork it ignores them and is
    /// rejected at its first block.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_apply_in_turn_stands_on_its_own_after_one_never_written() {
        let (first, second, reader) = halves_and_reader().await;
        let half = first.len() as u64;
        let verified = reader().await;
        verified.apply_block_proofs(first.clone()).await.unwrap();
        let nodes = Arc::new(stored_nodes(&verified, 8 * half).await);

        for (fork, stores) in [(0, true), (1, false)] {
            let r = reader().await;
            let before = r.inner.apply_turns.take_turn();
            before.verified(fork, nodes.clone());
            let mut apply = std::pin::pin!(r.apply_block_proofs_in_turn(second.clone()));
            assert!(
                n0_future::future::poll_once(&mut apply).await.is_none(),
                "ends after the apply before it"
            );
            // Its write never comes: its nodes are let go.
            drop(before);
            let applied = apply.await.unwrap();
            if !stores {
                assert_eq!(applied.rejected.map(|r| r.0), Some(half), "fork {fork}");
                continue;
            }
            assert!(applied.rejected.is_none(), "{:?}", applied.rejected);
            assert_eq!(applied.stored.len() as u64, half);
            // The root of blocks `half..2 * half` (flat index 2s + w - 1), which the first
            // half's proofs carry.
            let root = 2 * half + half - 1;
            let stored = stored_nodes(&r, 8 * half).await;
            assert!(
                stored.iter().any(|n| n.index == root),
                "its anchor is written"
            );
            r.apply_block_proofs(first.clone()).await.unwrap();
            assert_eq!(r.info().contiguous_length, 2 * half);
            for item in r.create_run_proofs(0, 0, 2 * half, 2 * half).await.unwrap() {
                assert!(matches!(item, RunItem::Proof(_)), "provable: {item:?}");
            }
        }
    }

    /// A batch of 3 MiB applied with its leaves hashed by three tasks (cut at 512 and 1,024
    /// proofs, the second cut where its second run starts): every block is stored; two blocks swapped across either cut, a forged block in
    /// the last stretch or a proof without a block stop it at the first of them, storing only
    /// what came before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_split_batch_checks_each_proof_against_its_own_leaf() {
        const LEN: u64 = 1_536;
        let store = Corestore::memory().await.unwrap();
        let w = store.get_named("split").await.unwrap();
        w.append_batch((0..LEN).map(|i| vec![i as u8; 2 * KIB]))
            .await
            .unwrap();
        let batch = || async {
            let mut ps = Vec::new();
            for (start, end) in [(0, 1_024), (1_024, LEN)] {
                for item in w.create_run_proofs(0, start, end, LEN).await.unwrap() {
                    let RunItem::Proof(p) = item else {
                        panic!("the writer lacks a block")
                    };
                    ps.push(p);
                }
            }
            ps
        };
        let reader = || verified_reader(&w, LEN);
        assert_eq!(stretches(&batch().await, 3), [0, 512, 1_024, 1_536]);
        let apply = |r: Hypercore, ps: Vec<Proof>| async move {
            let applied = apply_run(r.inner.clone(), Arc::new(ps), 3, None)
                .await
                .unwrap();
            (applied, r.info().contiguous_length)
        };

        let (applied, contiguous) = apply(reader().await, batch().await).await;
        assert!(applied.rejected.is_none(), "{:?}", applied.rejected);
        assert_eq!((applied.stored.len() as u64, contiguous), (LEN, LEN));

        let swapped = |at: usize| async move {
            let mut ps = batch().await;
            let a = ps[at - 1].block.as_ref().unwrap().value.clone();
            let b = std::mem::replace(&mut ps[at].block.as_mut().unwrap().value, a);
            ps[at - 1].block.as_mut().unwrap().value = b;
            ps
        };
        for at in [512, 1_024] {
            let (applied, contiguous) = apply(reader().await, swapped(at).await).await;
            assert_eq!(
                applied.rejected.unwrap().0,
                at as u64 - 1,
                "swapped at {at}"
            );
            assert_eq!(applied.stored.len(), at - 1);
            assert_eq!(contiguous, at as u64 - 1);
        }

        let mut forged = batch().await;
        let b = forged[1_400].block.as_mut().unwrap();
        let mut v = b.value.to_vec();
        v[0] ^= 1;
        b.value = v.into();
        let (applied, contiguous) = apply(reader().await, forged).await;
        assert_eq!(applied.rejected.unwrap().0, 1_400);
        assert_eq!((applied.stored.len(), contiguous), (1_400, 1_400));

        // Hashed up to it, in two stretches.
        let mut blockless = batch().await;
        blockless[1_200].block = None;
        assert_eq!(stretches(&blockless[..1_200], 3), [0, 600, 1_200]);
        let (applied, contiguous) = apply(reader().await, blockless).await;
        assert_eq!(applied.rejected.unwrap().0, u64::MAX);
        assert_eq!((applied.stored.len(), contiguous), (1_200, 1_200));
    }
}

//! Proofs: creating them for peers, and verifying and applying theirs.

use std::sync::Arc;

use super::{hypercore::Hypercore, state::CoreInner, writes::MAX_BLOCK_SIZE};
use crate::{
    crypto::{Manifest, Verifier},
    error::{Error, Result},
    storage::{ApplyProof, CoreNodes, Op, StorageError},
    tree::{self, Node, NodeSource, Proof, ProofError, ProofRequest, TreeState, flat},
};

/// What applying a verified proof changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// New length, if the proof upgraded the core.
    pub upgraded: Option<u64>,
    /// The block stored, if the proof carried one.
    pub block: Option<u64>,
    /// Length the core was cut back to, if the proof moved it to another fork.
    pub truncated: Option<u64>,
}

/// How often a proof is re-verified when the core changed while it was being verified.
const APPLY_ATTEMPTS: usize = 8;

impl Hypercore {
    /// Creates the proof answering `req` from the committed tree, with the block value and (if
    /// asked for) the manifest filled in.
    pub fn create_proof(
        &self,
        req: ProofRequest,
    ) -> impl Future<Output = Result<Proof>> + Send + 'static + use<> {
        let inner = self.inner.clone();
        async move {
            let (tree, manifest) = {
                let st = inner.state();
                (st.committed.tree.clone(), st.committed.manifest.clone())
            };
            // A block this node just appended: proven from memory, no hop to the blocking pool.
            if let Some(proof) = inner.recent().prove(&tree, &req) {
                return Ok(proof);
            }
            // A signed state alone whose proof needs no node but the roots (the first
            // upgrade of a new reader, from 0): proven from the committed tree in memory.
            if let Some(proof) = prove_from_roots(&tree, manifest.as_ref(), &req) {
                return Ok(proof);
            }
            create_stored_proof(&inner, tree, manifest, req).await
        }
    }

    /// Verifies a proof from a peer against this core's key and tree and, only if everything
    /// checks out, stores what it proves. A bad proof is an error and changes nothing. A
    /// proof that moves the core to another fork releases the blobs of the blocks it cuts.
    pub fn verify_and_apply_proof(
        &self,
        proof: Proof,
    ) -> impl Future<Output = Result<Applied>> + Send + 'static + use<> {
        let core = self.clone();
        async move {
            let applied = apply(core.inner.clone(), Arc::new(proof)).await?;
            if let Some(keep) = applied.truncated {
                // Moved to another fork: the blobs of the blocks cut are released.
                core.release_blobs(keep, u64::MAX).await?;
            }
            Ok(applied)
        }
    }
}

/// The proof answering `req` from the committed roots of `tree` alone, if `req` asks for a
/// signed state and nothing else (no block, hash or seek) and its proof needs no other node:
/// the same proof as one made from storage.
fn prove_from_roots(
    tree: &TreeState,
    manifest: Option<&Vec<u8>>,
    req: &ProofRequest,
) -> Option<Proof> {
    if req.upgrade.is_none() || req.block.is_some() || req.hash.is_some() || req.seek.is_some() {
        return None;
    }
    let mut proof = tree::create_proof(&Roots(&tree.roots), tree, req).ok()?;
    if req.manifest {
        proof.manifest = manifest.cloned();
    }
    Some(proof)
}

/// The proof answering `req`, made from the stored nodes and blocks of the core (a read on the
/// blocking pool).
async fn create_stored_proof(
    inner: &CoreInner,
    tree: TreeState,
    manifest: Option<Vec<u8>>,
    req: ProofRequest,
) -> Result<Proof> {
    let id = inner.id;
    inner
        .storage
        .read(move |r| {
            let src = r.nodes(id)?;
            let mut proof = match tree::create_proof(&src, &tree, &req) {
                Ok(p) => p,
                Err(ProofError::MissingNode(i)) => {
                    return Ok(Err(Error::NodeNotAvailable(i)));
                }
                Err(e) => return Ok(Err(e.into())),
            };
            if let Some(b) = &mut proof.block {
                match r.blocks()?.view().get(id, b.index)? {
                    Some(v) => b.value = v.into(),
                    None => return Ok(Err(Error::BlockNotAvailable(b.index))),
                }
            }
            if req.manifest {
                proof.manifest = manifest;
            }
            Ok(Ok(proof))
        })
        .await?
}

async fn apply(inner: Arc<CoreInner>, proof: Arc<Proof>) -> Result<Applied> {
    if inner.writable() && proof.upgrade.is_some() {
        // Only this core signs its states: one from the wire is at best a replay of its own.
        return Err(
            ProofError::invalid("a writable core takes no signed state from a peer").into(),
        );
    }
    if proof
        .block
        .as_ref()
        .is_some_and(|b| b.value.len() > MAX_BLOCK_SIZE)
    {
        return Err(ProofError::invalid("block larger than MAX_BLOCK_SIZE").into());
    }
    let mut last_err = None;
    for _ in 0..APPLY_ATTEMPTS {
        let tree = inner.state().committed.tree.clone();
        let verifier = inner.verifier().clone();
        let verifier = match verifier {
            Some(v) => v,
            None => verifier_from_proof(&inner, &proof)?,
        };
        // A proof that extends the log from its length (a push, or the answer to a live
        // upgrade) needs no stored node but the roots: verified in place, without a storage
        // read and its hop to the blocking pool, if its block is small enough to hash on the
        // async runtime. Anything else is verified against storage.
        let extends = tree.length > 0 && proof.fork == tree.fork;
        let small = proof
            .block
            .as_ref()
            .is_none_or(|b| b.value.len() <= IN_PLACE_MAX_BLOCK);
        let in_place = (extends && small)
            .then(|| tree::verify_proof(&Roots(&tree.roots), &tree, &verifier, &proof).ok())
            .flatten()
            .filter(|v| !v.reorg);
        let (verified, keep) = match in_place {
            Some(verified) => (verified, None),
            None => {
                let id = inner.id;
                let (p, v, t) = (proof.clone(), verifier.clone(), tree.clone());
                inner
                    .storage
                    .read(move |r| {
                        let src = r.nodes(id)?;
                        let verified = match tree::verify_proof(&src, &t, &v, &p) {
                            Ok(x) => x,
                            Err(e) => return Ok(Err(e)),
                        };
                        let keep = match (&verified.upgrade, verified.reorg) {
                            (Some(new), true) => Some(common_length(&src, &t, new)?),
                            _ => None,
                        };
                        Ok(Ok((verified, keep)))
                    })
                    .await??
            }
        };
        if let (Some(index), Some(b)) = (verified.block, &proof.block) {
            inner.hand_over_verified([(index, &b.value[..])]);
        }
        let applied = Applied {
            upgraded: verified.upgrade.as_ref().map(|u| u.length),
            block: verified.block,
            truncated: keep.filter(|k| *k < tree.length),
        };
        let result = inner
            .storage
            .write(Op::ApplyProof(Box::new(ApplyProof {
                slot: inner.slot.clone(),
                base: (tree.length, tree.fork),
                verified,
                proof: proof.clone(),
                verifier: verifier.clone(),
                keep,
            })))
            .await;
        match result {
            Ok(_) => {
                let mut known = inner.verifier();
                if known.is_none() {
                    *known = Some(verifier);
                }
                return Ok(applied);
            }
            Err(e @ StorageError::Rejected(_)) => last_err = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last_err.map(Error::from).unwrap_or(Error::Closed))
}

/// The verifier of a core whose kind is not known yet: from the proof's manifest (checked
/// against the key), else as a compat core whose key is the public key. The kind is stored only
/// once a proof verified with it, and a proof without a manifest verifies as compat only through
/// a signed upgrade, that is a signature by the key itself: a peer cannot make a reader take a
/// default core for a compat one.
fn verifier_from_proof(inner: &CoreInner, proof: &Proof) -> Result<Verifier> {
    Ok(match &proof.manifest {
        Some(m) => Verifier::from_manifest(
            inner.key,
            Manifest::decode(m).map_err(crate::crypto::signer::SignatureError::from)?,
        )?,
        None if proof.upgrade.is_some() => Verifier::compat(inner.key)?,
        None => {
            return Err(ProofError::invalid(
                "the core's kind is not known yet: the first proof needs the manifest or a signed upgrade",
            )
            .into());
        }
    })
}

/// How many leading blocks of the old tree the new tree shares: whole subtrees under roots of
/// the new tree whose node the old tree has with the same hash.
fn common_length(src: &CoreNodes, old: &TreeState, new: &TreeState) -> Result<u64, StorageError> {
    let mut keep = 0;
    for root in &new.roots {
        let local = match old.roots.iter().find(|r| r.index == root.index) {
            Some(r) => Some(*r),
            None => src.node(root.index)?,
        };
        if local != Some(*root) {
            break;
        }
        keep = flat::right_span(root.index) / 2 + 1;
    }
    Ok(keep.min(old.length))
}

/// Largest block verified in place, on the caller's thread (hashing it takes about 0.1 ms).
const IN_PLACE_MAX_BLOCK: usize = 64 * 1024;

/// The roots of a reader's committed tree as the only nodes it has.
struct Roots<'a>(&'a [Node]);

impl NodeSource for Roots<'_> {
    type Error = std::convert::Infallible;
    fn node(&self, index: u64) -> Result<Option<Node>, Self::Error> {
        Ok(self.0.iter().find(|n| n.index == index).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        CoreKind, CoreOptions,
        store::Corestore,
        tree::{IndexRequest, UpgradeRequest},
    };

    /// Every signed state `core` may be asked for (each start and end, with and without the
    /// manifest, and one past the length) is proven from the roots exactly as from storage
    /// where the roots suffice, and refused alike where the request is wrong. Returns how
    /// many came from the roots and how many from storage.
    async fn check_every_upgrade(core: &Hypercore) -> (usize, usize) {
        let (tree, manifest) = {
            let st = core.inner.state();
            (st.committed.tree.clone(), st.committed.manifest.clone())
        };
        let (mut from_roots, mut from_storage) = (0, 0);
        for start in 0..=tree.length {
            for end in start..=tree.length + 1 {
                for with_manifest in [false, true] {
                    let req = ProofRequest {
                        fork: tree.fork,
                        upgrade: Some(UpgradeRequest {
                            start,
                            length: end - start,
                        }),
                        manifest: with_manifest,
                        ..Default::default()
                    };
                    let stored = create_stored_proof(
                        &core.inner,
                        tree.clone(),
                        manifest.clone(),
                        req.clone(),
                    )
                    .await;
                    let memory = prove_from_roots(&tree, manifest.as_ref(), &req);
                    match (&stored, memory) {
                        (Ok(stored), Some(proof)) => {
                            assert_eq!(&proof, stored, "{start}..{end} of {}", tree.length);
                            from_roots += 1;
                        }
                        (Ok(_), None) => {
                            assert!(
                                start > 0 || end < tree.length,
                                "from 0 to the length the roots suffice"
                            );
                            from_storage += 1;
                        }
                        (Err(_), memory) => assert!(memory.is_none(), "{start}..{end}"),
                    }
                    let answered = core.create_proof(req).await;
                    assert_eq!(answered.ok(), stored.ok());
                }
            }
        }
        let with_block = ProofRequest {
            fork: tree.fork,
            block: Some(IndexRequest { index: 0, nodes: 0 }),
            upgrade: Some(UpgradeRequest {
                start: 0,
                length: tree.length,
            }),
            ..Default::default()
        };
        assert!(prove_from_roots(&tree, manifest.as_ref(), &with_block).is_none());
        (from_roots, from_storage)
    }

    /// Proofs of signed states from the roots are the stored proofs: for every length of a
    /// default and a compat core up to 24, and after a truncation moved one to fork 1.
    #[tokio::test]
    async fn a_signed_state_proven_from_the_roots_is_the_stored_proof() {
        let store = Corestore::memory().await.unwrap();
        let default = store.get_named("w").await.unwrap();
        let compat = store
            .create(CoreOptions {
                kind: CoreKind::Compat,
                ..Default::default()
            })
            .await
            .unwrap();
        let (mut from_roots, mut from_storage) = (0, 0);
        for length in 1..=24u64 {
            for core in [&default, &compat] {
                core.append(vec![length as u8; length as usize])
                    .await
                    .unwrap();
                let (r, s) = check_every_upgrade(core).await;
                from_roots += r;
                from_storage += s;
            }
        }
        assert!(from_roots > 0 && from_storage > 0);
        default.truncate(13).await.unwrap();
        default.append(b"after the fork".to_vec()).await.unwrap();
        assert_eq!(default.inner.state().committed.tree.fork, 1);
        check_every_upgrade(&default).await;
    }
}

//! The blocks and tree nodes of the latest local appends, kept in memory so that a proof of a
//! new block (a push to live followers) is made without a storage read.
//!
//! Appends extend one chain as they are queued (in call order): the roots before its first
//! append, then every node and value appended since. A proof is made from it only against the
//! committed tree, on the same fork, for a block inside the chain; anything it cannot answer
//! (a node it does not hold) falls back to storage. A write that fails rebuilds the head from
//! the committed tree, and the next append, which then does not continue the chain, starts a
//! new one; a truncate moves to a new fork, which the chain does not match.

use std::{collections::HashMap, convert::Infallible};

use bytes::Bytes;

use crate::tree::{self, Node, NodeSource, Proof, ProofRequest, TreeState};

/// Most blocks a chain holds before a new one starts.
const MAX_BLOCKS: usize = 64;
/// Most value bytes a chain holds before a new one starts; a larger append is not kept.
const MAX_BYTES: usize = 1 << 20;

/// The latest appends of a writable core; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct RecentAppends {
    chain: Option<Chain>,
}

#[derive(Debug)]
struct Chain {
    fork: u64,
    /// Tree length before the first append kept.
    start: u64,
    /// Blocks `start..start + values.len()`.
    values: Vec<Bytes>,
    bytes: usize,
    /// The roots at `start`, and every node appended since.
    nodes: HashMap<u64, Node>,
    /// The roots at `start` and after each append kept, with the length: the chain continues
    /// only from its last tree, and proves only against a tree it reached.
    tips: Vec<(u64, Vec<Node>)>,
}

impl RecentAppends {
    /// Records an append of `values` queued on `before` (the head it was prepared against),
    /// which wrote `nodes` and made `after`.
    pub fn record(
        &mut self,
        before: &TreeState,
        after: &TreeState,
        values: &[Bytes],
        nodes: &[Node],
    ) {
        let bytes: usize = values.iter().map(Bytes::len).sum();
        let continues = self.chain.as_ref().is_some_and(|c| {
            c.fork == before.fork
                && c.start + c.values.len() as u64 == before.length
                && c.tips
                    .last()
                    .is_some_and(|(_, roots)| *roots == before.roots)
                && c.values.len() + values.len() <= MAX_BLOCKS
                && c.bytes + bytes <= MAX_BYTES
        });
        if !continues {
            self.chain = (values.len() <= MAX_BLOCKS && bytes <= MAX_BYTES).then(|| Chain {
                fork: before.fork,
                start: before.length,
                values: Vec::new(),
                bytes: 0,
                nodes: before.roots.iter().map(|n| (n.index, *n)).collect(),
                tips: vec![(before.length, before.roots.clone())],
            });
        }
        if let Some(c) = &mut self.chain {
            c.values.extend(values.iter().cloned());
            c.bytes += bytes;
            c.nodes.extend(nodes.iter().map(|n| (n.index, *n)));
            c.tips.push((after.length, after.roots.clone()));
        }
    }

    /// A proof of a block (with or without an upgrade) against the committed `tree`, if this
    /// chain holds the block and every node the proof needs.
    pub fn prove(&self, tree: &TreeState, req: &ProofRequest) -> Option<Proof> {
        let c = self.chain.as_ref()?;
        let block = req.block?;
        if req.hash.is_some() || req.seek.is_some() || req.manifest || c.fork != tree.fork {
            return None;
        }
        // An append that was queued but failed, and one queued in its place, leave the chain
        // with blocks the committed tree does not hold: it proves only a tree it reached.
        if !c
            .tips
            .iter()
            .any(|(length, roots)| *length == tree.length && *roots == tree.roots)
        {
            return None;
        }
        let offset = block.index.checked_sub(c.start)?;
        let value = c.values.get(usize::try_from(offset).ok()?)?;
        if block.index >= tree.length {
            return None;
        }
        let mut proof = tree::create_proof(&ChainNodes(c), tree, req).ok()?;
        proof.block.as_mut()?.value = value.clone();
        Some(proof)
    }
}

struct ChainNodes<'a>(&'a Chain);

impl NodeSource for ChainNodes<'_> {
    type Error = Infallible;
    fn node(&self, index: u64) -> Result<Option<Node>, Infallible> {
        Ok(self.0.nodes.get(&index).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{IndexRequest, UpgradeRequest};

    /// A writer's tree, every node it ever wrote, and every value.
    #[derive(Default)]
    struct Log {
        tree: TreeState,
        all: HashMap<u64, Node>,
        values: Vec<Bytes>,
    }

    impl NodeSource for Log {
        type Error = Infallible;
        fn node(&self, index: u64) -> Result<Option<Node>, Infallible> {
            Ok(self.all.get(&index).copied())
        }
    }

    impl Log {
        fn append(&mut self, recent: &mut RecentAppends, values: Vec<Bytes>) {
            let before = self.tree.clone();
            let mut nodes = Vec::new();
            for v in &values {
                self.tree.append(v, &mut nodes).expect("test sizes");
            }
            recent.record(&before, &self.tree, &values, &nodes);
            self.all.extend(nodes.iter().map(|n| (n.index, *n)));
            self.values.extend(values);
        }

        /// What storage would answer.
        fn prove(&self, req: &ProofRequest) -> Proof {
            let mut p = tree::create_proof(self, &self.tree, req).expect("provable");
            let b = p.block.as_mut().expect("a block proof");
            b.value = self.values[b.index as usize].to_vec().into();
            p
        }
    }

    /// The request of a push: block `old` with the upgrade from `old` to `new`.
    fn push(fork: u64, old: u64, new: u64) -> ProofRequest {
        ProofRequest {
            fork,
            block: Some(IndexRequest {
                index: old,
                nodes: 0,
            }),
            upgrade: Some(UpgradeRequest {
                start: old,
                length: new - old,
            }),
            ..Default::default()
        }
    }

    fn blocks(from: u64, n: u64) -> Vec<Bytes> {
        (from..from + n)
            .map(|i| Bytes::from(vec![i as u8; 1 + (i as usize * 7) % 50]))
            .collect()
    }

    #[test]
    fn pushes_of_new_blocks_are_proven_from_memory_as_storage_would() {
        let mut recent = RecentAppends::default();
        let mut log = Log::default();
        // Single appends and batches, across more than one chain (MAX_BLOCKS).
        for step in 0..150u64 {
            let n = [1, 1, 3, 1, 2, 5][step as usize % 6];
            let old = log.tree.length;
            log.append(&mut recent, blocks(old, n));
            if old == 0 {
                continue;
            }
            let req = push(0, old, log.tree.length);
            let fast = recent.prove(&log.tree, &req);
            assert_eq!(fast, Some(log.prove(&req)), "length {old} + {n}");
            // Block proofs without an upgrade, of every block the chain still holds.
            let c = recent.chain.as_ref().expect("a chain");
            for index in c.start..log.tree.length {
                let req = ProofRequest {
                    block: Some(IndexRequest { index, nodes: 0 }),
                    ..Default::default()
                };
                let fast = recent.prove(&log.tree, &req).expect("held");
                assert_eq!(fast, log.prove(&req), "block {index}");
            }
        }
    }

    #[test]
    fn what_the_chain_cannot_answer_falls_back() {
        let mut recent = RecentAppends::default();
        let mut log = Log::default();
        log.append(&mut recent, blocks(0, 10));
        log.append(&mut recent, blocks(10, 1));
        let committed = log.tree.clone();
        // Queued but not committed: not provable against the committed tree.
        log.append(&mut recent, blocks(11, 1));
        assert!(recent.prove(&committed, &push(0, 11, 12)).is_none());
        assert!(recent.prove(&log.tree, &push(0, 11, 12)).is_some());
        // Another fork (after a truncate), hash and seek requests, the manifest.
        let mut other = log.tree.clone();
        other.fork = 1;
        assert!(recent.prove(&other, &push(1, 11, 12)).is_none());
        let mut with_manifest = push(0, 11, 12);
        with_manifest.manifest = true;
        assert!(recent.prove(&log.tree, &with_manifest).is_none());
        // An append that does not continue the chain (after a failed write) starts a new one.
        let mut rebuilt = committed.clone();
        let mut nodes = Vec::new();
        let other_value = Bytes::from_static(b"another block 11");
        rebuilt
            .append(&other_value, &mut nodes)
            .expect("test sizes");
        recent.record(
            &committed,
            &rebuilt,
            std::slice::from_ref(&other_value),
            &nodes,
        );
        let p = recent
            .prove(&rebuilt, &push(0, 11, 12))
            .expect("the new chain");
        assert_eq!(
            p.block.map(|b| b.value.to_vec()),
            Some(other_value.to_vec())
        );
        // A block from before the chain: storage proves it.
        let req = ProofRequest {
            block: Some(IndexRequest { index: 2, nodes: 0 }),
            ..Default::default()
        };
        assert!(recent.prove(&rebuilt, &req).is_none());
        // An append too large to keep clears the chain.
        let big = vec![Bytes::from(vec![0u8; MAX_BYTES + 1])];
        let mut nodes = Vec::new();
        let mut grown = rebuilt.clone();
        grown.append(&big[0], &mut nodes).expect("test sizes");
        recent.record(&rebuilt, &grown, &big, &nodes);
        assert!(recent.prove(&grown, &push(0, 12, 13)).is_none());
    }
}

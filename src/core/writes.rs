//! Local writes: append, truncate, clear. Each is prepared in memory, queued on the storage
//! actor in call order, and resolves after its commit.

use std::sync::Arc;

use bytes::Bytes;

use super::{
    hypercore::{AppendOutcome, Hypercore},
    state::CoreInner,
};
use crate::{
    crypto::hash::leaf_hashes,
    error::{Error, Result},
    storage::{Op, Outcome, StorageError},
    tree::{MAX_LENGTH, Node, NodeSource, TreeState},
};

/// Appends of at most this many bytes may commit on the appender's thread (relaxed
/// durability, idle storage thread): their write takes a few microseconds.
const SMALL_APPEND_BYTES: usize = 64 * 1024;

/// Largest block accepted, local or remote (8 MiB); bigger values belong in blobs.
pub const MAX_BLOCK_SIZE: usize = 8 * 1024 * 1024;

impl Hypercore {
    /// Appends one block. The append is queued when this is called (in call order) and the
    /// future resolves once it is committed with the store's durability; dropping the future
    /// does not cancel it.
    pub fn append<B: Into<Bytes>>(
        &self,
        data: B,
    ) -> impl Future<Output = Result<AppendOutcome>> + Send + 'static + use<B> {
        self.append_blocks(vec![data.into()])
    }

    /// Appends several blocks under one signature, atomically. Their leaf hashes are computed
    /// together, four at a time where the CPU has AVX2: a batch is the fast way to append
    /// many blocks.
    pub fn append_batch<I, B>(
        &self,
        blocks: I,
    ) -> impl Future<Output = Result<AppendOutcome>> + Send + 'static + use<I, B>
    where
        I: IntoIterator<Item = B>,
        B: Into<Bytes>,
    {
        self.append_blocks(blocks.into_iter().map(Into::into).collect())
    }

    fn append_blocks(
        &self,
        blocks: Vec<Bytes>,
    ) -> impl Future<Output = Result<AppendOutcome>> + Send + 'static + use<> {
        let inner = self.inner.clone();
        let queued = queue_append(&inner, blocks);
        async move {
            let (commit, outcome) = queued?;
            match commit.await {
                Ok(_) => Ok(outcome),
                Err(e) => {
                    inner.resync_head();
                    Err(e.into())
                }
            }
        }
    }

    /// Truncates the log to `new_length` on a new fork (`fork + 1`) and signs it; the blobs of
    /// the blocks cut are released (garbage collection takes those no other block names).
    pub fn truncate(
        &self,
        new_length: u64,
    ) -> impl Future<Output = Result<()>> + Send + 'static + use<> {
        let core = self.clone();
        async move {
            let _turn = core.blob_tags_turn().await;
            truncate(core.inner.clone(), new_length).await?;
            // After the truncate: a crash before this keeps blobs too long, never loses one.
            core.release_blobs(new_length, u64::MAX).await
        }
    }

    /// Frees the data of blocks `start..end` (and releases the blobs they name); the tree (and
    /// so proofs of the log) is kept.
    pub fn clear(
        &self,
        start: u64,
        end: u64,
    ) -> impl Future<Output = Result<()>> + Send + 'static + use<> {
        let core = self.clone();
        async move {
            let inner = &core.inner;
            let length = inner.state().committed.tree.length;
            let end = end.min(length);
            if start >= end {
                return Ok(());
            }
            let _turn = core.blob_tags_turn().await;
            inner
                .storage
                .write(Op::Clear {
                    slot: inner.slot.clone(),
                    start,
                    end,
                })
                .await?;
            core.release_blobs(start, end).await
        }
    }
}

/// Prepares an append under the state lock and queues it, so queue order is call order.
fn queue_append(
    inner: &Arc<CoreInner>,
    blocks: Vec<Bytes>,
) -> Result<(
    impl Future<Output = Result<Outcome, StorageError>> + Send + 'static + use<>,
    AppendOutcome,
)> {
    if !inner.writable() {
        return Err(Error::NotWritable);
    }
    let encryption = inner.encryption();
    let max = MAX_BLOCK_SIZE
        - if encryption.is_some() {
            super::ENCRYPTION_PADDING
        } else {
            0
        };
    if blocks.iter().any(|b| b.len() > max) {
        return Err(Error::InvalidArgument("block larger than MAX_BLOCK_SIZE"));
    }
    let mut st = inner.state();
    if st.closed {
        return Err(Error::Closed);
    }
    let base = (st.head.length, st.head.fork);
    // Encrypted under the lock: the index and fork are the ones this append gets.
    let blocks = match &encryption {
        None => blocks,
        Some(e) => blocks
            .iter()
            .enumerate()
            .map(|(i, b)| Bytes::from(e.encrypt(base.0 + i as u64, base.1, b)))
            .collect(),
    };
    if base.0 + blocks.len() as u64 > MAX_LENGTH {
        return Err(Error::InvalidArgument("log too long"));
    }
    let before = st.head.clone();
    let mut nodes = Vec::with_capacity(blocks.len() * 2 + 8);
    let leaves = leaf_hashes(blocks.iter().map(|b| b.as_ref()));
    for (b, leaf) in blocks.iter().zip(leaves) {
        if let Err(e) = st.head.append_hashed(b.len(), leaf, &mut nodes) {
            st.head = before;
            return Err(e.into());
        }
    }
    st.head.signature = None;
    inner.recent().record(&before, &st.head, &blocks, &nodes);
    let tree = st.head.clone();
    let outcome = AppendOutcome {
        length: tree.length,
        byte_length: tree.byte_length,
    };
    let small = blocks.iter().map(|b| b.len()).sum::<usize>() <= SMALL_APPEND_BYTES;
    let op = Op::Append {
        slot: inner.slot.clone(),
        base,
        base_roots: before.roots,
        values: blocks,
        nodes,
        tree,
    };
    let commit = inner.storage.write_sized(small, op);
    Ok((commit, outcome))
}

async fn truncate(inner: Arc<CoreInner>, new_length: u64) -> Result<()> {
    if !inner.writable() {
        return Err(Error::NotWritable);
    }
    loop {
        let base = {
            let st = inner.state();
            if st.closed {
                return Err(Error::Closed);
            }
            if new_length > st.committed.tree.length {
                return Err(Error::InvalidArgument("truncate beyond the length"));
            }
            if st.head == st.committed.tree {
                Ok(st.committed.tree.clone())
            } else {
                Err(st.head.clone())
            }
        };
        let base = match base {
            Ok(base) => base,
            Err(head) => {
                // Appends are queued: wait for them to commit, then look again.
                inner.storage.barrier().await?;
                // Every append queued before the barrier was answered: a head that did not move
                // meanwhile and is still not the committed tree holds appends that failed with
                // nobody awaiting them.
                let mut st = inner.state();
                if st.head == head && st.head != st.committed.tree {
                    st.head = st.committed.tree.clone();
                }
                continue;
            }
        };
        let id = inner.id;
        let indices = TreeState::root_indices(new_length);
        let roots = inner
            .storage
            .read(move |r| {
                let src = r.nodes(id)?;
                indices
                    .into_iter()
                    .map(|i| src.node(i).map(|n| n.ok_or(i)))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?
            .into_iter()
            .collect::<Result<Vec<Node>, u64>>()
            .map_err(Error::NodeNotAvailable)?;
        let new_tree = TreeState {
            fork: base.fork + 1,
            length: new_length,
            byte_length: roots.iter().map(|r| r.size).sum(),
            roots,
            signature: None,
        };
        let commit = {
            let mut st = inner.state();
            if st.head != base || st.committed.tree != base {
                continue;
            }
            st.head = new_tree.clone();
            inner.storage.write(Op::Truncate {
                slot: inner.slot.clone(),
                base: (base.length, base.fork),
                tree: new_tree,
            })
        };
        return match commit.await {
            Ok(_) => Ok(()),
            Err(e) => {
                inner.resync_head();
                Err(e.into())
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{
        Hypercore,
        storage::{Op, Probe, StorageError},
        store::Corestore,
        tree::{IndexRequest, ProofRequest, TreeState},
    };

    /// Queues a write that holds the storage thread inside its batch, and waits until it does:
    /// what is queued meanwhile goes into the next batch, together. The thread goes on when
    /// the returned sender is dropped; the future resolves after that batch.
    async fn hold(core: &Hypercore) -> (std::sync::mpsc::Sender<()>, impl Future + use<>) {
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let held = core.inner.storage.write(Op::Probe(Probe(Box::new(move |_| {
            let _ = entered_tx.send(());
            let _ = release_rx.recv();
            Ok(())
        }))));
        tokio::task::spawn_blocking(move || entered_rx.recv())
            .await
            .unwrap()
            .expect("the storage thread runs the held write");
        (release_tx, held)
    }

    /// Queues a write that fails its whole batch, as a corrupt row of any core would.
    fn fail_batch(core: &Hypercore) -> impl Future + use<> {
        core.inner.storage.write(Op::Probe(Probe(Box::new(|_| {
            Err(StorageError::Corrupt("a corrupt row".into()))
        }))))
    }

    /// The tree hash of the blocks `core` stores, recomputed from them.
    async fn hash_of_stored(core: &Hypercore) -> crate::crypto::Hash {
        let mut tree = TreeState::default();
        for i in 0..core.info().length {
            let block = core.get(i).await.unwrap().unwrap();
            tree.append(&block, &mut Vec::new()).unwrap();
        }
        tree.hash()
    }

    /// A failed batch must not let an append be signed on top of blocks it was not built on.
    ///
    /// Before the fix an append was checked only against the staged `(length, fork)`. After a
    /// failed batch, each failed append's caller resets the head to the committed tree when
    /// it sees its error; a late reset drops an append queued since (`d`) from the head, so
    /// the next append (`e`) is prepared at the same index as `d`, and the one after it (`h`)
    /// on `e`'s tree. `d` commits and `e` is rejected, but `h` has the length and fork of the
    /// staged tree, so it was applied: the signed tree covered `e`, a block never stored, and
    /// every proof of the log failed from then on.
    #[tokio::test]
    async fn an_append_is_applied_only_on_the_tree_it_was_built_on() {
        let store = Corestore::memory().await.unwrap();
        let core = store.get_named("w").await.unwrap();
        core.append(b"0".to_vec()).await.unwrap();

        // `x` and `y` share a batch that fails.
        let (release, held) = hold(&core).await;
        let failing = fail_batch(&core);
        let x = core.append(b"x".to_vec());
        let y = core.append(b"y".to_vec());
        drop(release);
        held.await;
        failing.await;
        // `x`'s caller sees its error and resets the head; `d` is queued on it; `y`'s caller
        // then sees its error and resets the head again, while `d` waits behind a busy
        // storage thread.
        assert!(x.await.is_err());
        let (release, held) = hold(&core).await;
        let d = core.append(b"d".to_vec());
        assert!(y.await.is_err());
        let e = core.append(b"e".to_vec());
        let h = core.append(b"h".to_vec());
        drop(release);
        held.await;
        let (d, e, h) = (d.await, e.await, h.await);
        assert!(d.is_ok(), "{d:?}");
        assert!(e.is_err(), "e was prepared at d's index: {e:?}");
        assert!(h.is_err(), "h was built on e, which was not stored: {h:?}");
        assert_eq!(
            core.tree_hash(),
            hash_of_stored(&core).await,
            "the signed tree is not the tree of the stored blocks"
        );
        // Proofs of the committed log prove its blocks, not the rejected ones.
        let req = ProofRequest {
            block: Some(IndexRequest { index: 1, nodes: 0 }),
            ..Default::default()
        };
        let proof = core.create_proof(req).await.unwrap();
        assert_eq!(
            proof.block.map(|b| b.value.to_vec()),
            Some(b"d".to_vec()),
            "a proof of a rejected append's block"
        );
        // The core goes on.
        core.append(b"next".to_vec()).await.unwrap();
        assert_eq!(core.tree_hash(), hash_of_stored(&core).await);
    }

    /// A truncate after a failed append nobody awaited goes through.
    ///
    /// Before the fix the head kept the dropped append (only its awaiting caller resets it), so
    /// a truncate, which waits for the head to be the committed tree, queued barriers in a
    /// busy loop forever.
    #[tokio::test]
    async fn a_truncate_after_a_dropped_failed_append_completes() {
        let store = Corestore::memory().await.unwrap();
        let core = store.get_named("t").await.unwrap();
        core.append_batch([b"0".to_vec(), b"1".to_vec()])
            .await
            .unwrap();
        let (release, held) = hold(&core).await;
        let failing = fail_batch(&core);
        drop(core.append(b"x".to_vec()));
        drop(release);
        held.await;
        failing.await;
        core.inner.storage.barrier().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), core.truncate(1))
            .await
            .expect("the truncate waits forever")
            .unwrap();
        assert_eq!(core.info().length, 1);
    }

    /// A writer signs and never verifies: its own core's verifier never decompresses the
    /// signer's key (a sixth of a verification, for every core a store opens).
    #[tokio::test]
    async fn a_writer_never_decompresses_its_verifying_key() {
        let store = Corestore::memory().await.unwrap();
        let key = {
            let core = store.get_named("w").await.unwrap();
            core.append_batch([b"a".to_vec(), b"b".to_vec()])
                .await
                .unwrap();
            core.key()
        };
        // Opened again from its stored header, appended to and read.
        let core = store.get(key).await.unwrap().unwrap();
        core.append(b"c".to_vec()).await.unwrap();
        assert_eq!(&core.get(2).await.unwrap().unwrap()[..], b"c");
        let verifier = core
            .inner
            .verifier()
            .clone()
            .expect("a default core's verifier");
        assert!(!verifier.keys_decompressed());
    }
}

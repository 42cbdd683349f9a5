//! Local reads: blocks, presence and byte seeks.

use super::hypercore::Hypercore;
use crate::{
    error::{Error, Result},
    tree::{NodeSource, flat::Cursor},
};

/// The most blocks one [`Hypercore::get_stored`] returns.
pub const MAX_STORED_RUN: u64 = 4096;

impl Hypercore {
    /// Block `index`: `.await` it for the local copy (`None` if the block is within the log but
    /// not stored; an index at or past the length is an error), or call
    /// [`wait`](super::Get::wait) to have replicating peers fetch it.
    pub fn get(&self, index: u64) -> super::Get {
        super::Get::new(self.inner.clone(), index)
    }

    /// The blocks of `range` stored here, from its start up to the first one missing, and
    /// no further than the block that brings them to `max_bytes` (at least one block) or
    /// [`MAX_STORED_RUN`] blocks: one read of the database for many blocks, where
    /// [`get`](Self::get) reads one. Empty when the range's first block is not stored.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> iroh_hypercore::Result<()> {
    /// let core = iroh_hypercore::Corestore::memory().await?.get_named("log").await?;
    /// core.append_batch(["a", "b", "c"].map(|s| s.as_bytes().to_vec())).await?;
    /// let blocks = core.get_stored(1..10, 1 << 20).await?;
    /// assert_eq!(blocks, vec![&b"b"[..], &b"c"[..]]);
    /// # Ok(()) }
    /// ```
    pub fn get_stored(
        &self,
        range: std::ops::Range<u64>,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Vec<bytes::Bytes>>> + Send + 'static + use<> {
        let inner = self.inner.clone();
        async move {
            let id = inner.id;
            let end = range.end.min(inner.state().committed.tree.length);
            let start = range.start;
            if start >= end {
                return Ok(Vec::new());
            }
            let run = inner
                .storage
                .read(move |r| {
                    let blocks = r.blocks()?;
                    let view = blocks.view();
                    // Where the run from `start` ends: the rows say, without reading values.
                    let scan_end = end.min(start.saturating_add(MAX_STORED_RUN));
                    let run_end = match view.present(id, start, scan_end)?.first() {
                        Some(run) if run.start == start => run.end,
                        _ => return Ok(Vec::new()),
                    };
                    let mut run = Vec::new();
                    view.for_each_within(id, start, run_end, max_bytes, |_, value| {
                        run.push(bytes::Bytes::from(value));
                    })?;
                    Ok(run)
                })
                .await?;
            let encryption = inner.encryption();
            run.into_iter()
                .enumerate()
                .map(|(i, b)| super::state::text_of(encryption.as_ref(), start + i as u64, b))
                .collect()
        }
    }

    /// The stored tree node at flat-tree `index`, if any.
    pub fn tree_node(
        &self,
        index: u64,
    ) -> impl Future<Output = Result<Option<crate::tree::Node>>> + Send + 'static + use<> {
        let inner = self.inner.clone();
        async move {
            let id = inner.id;
            Ok(inner
                .storage
                .read(move |r| r.nodes(id)?.node(index))
                .await?)
        }
    }

    /// How many nodes above block `index` this core lacks, up to the first it has or the
    /// top of the tree: the `nodes` value of a block request for it.
    pub fn missing_nodes(
        &self,
        index: u64,
    ) -> impl Future<Output = Result<u64>> + Send + 'static + use<> {
        let inner = self.inner.clone();
        async move {
            let tree = inner.state().committed.tree.clone();
            let head = 2 * tree.length;
            let id = inner.id;
            Ok(inner
                .storage
                .read(move |r| {
                    let src = r.nodes(id)?;
                    let mut c = Cursor::new(2 * index);
                    let mut count = 0;
                    while !c.contains(head) && c.index < crate::tree::flat::MAX_INDEX {
                        if tree.roots.iter().any(|r| r.index == c.index)
                            || src.node(c.index)?.is_some()
                        {
                            break;
                        }
                        count += 1;
                        c.parent();
                    }
                    Ok(count)
                })
                .await?)
        }
    }

    /// How many blocks of the log are stored here, and their bytes: at once when every block
    /// is (a writer, a full follower), else by one pass over the core's stored rows.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> iroh_hypercore::Result<()> {
    /// let core = iroh_hypercore::Corestore::memory().await?.get_named("log").await?;
    /// core.append_batch(vec![b"ab".to_vec(), b"cde".to_vec()]).await?;
    /// let stored = core.stored().await?;
    /// assert_eq!((stored.blocks, stored.bytes), (2, 5));
    /// assert!(core.has(0, 2).await?);
    /// # Ok(()) }
    /// ```
    pub fn stored(&self) -> impl Future<Output = Result<super::Stored>> + Send + 'static + use<> {
        let inner = self.inner.clone();
        async move {
            let (length, byte_length, contiguous) = {
                let st = inner.state();
                let tree = &st.committed.tree;
                (
                    tree.length,
                    tree.byte_length,
                    st.committed.contiguous_length,
                )
            };
            // Every block held (a writer, a full follower): no need to read a row.
            if contiguous >= length {
                return Ok(super::Stored {
                    blocks: length,
                    bytes: byte_length,
                });
            }
            let id = inner.id;
            let (blocks, bytes) = inner
                .storage
                .read(move |r| r.blocks()?.view().totals(id))
                .await?;
            Ok(super::Stored { blocks, bytes })
        }
    }

    /// Whether every block of `start..end` is stored locally (false if the range leaves the log).
    pub fn has(
        &self,
        start: u64,
        end: u64,
    ) -> impl Future<Output = Result<bool>> + Send + 'static + use<> {
        let inner = self.inner.clone();
        async move {
            let (length, contiguous) = {
                let st = inner.state();
                (st.committed.tree.length, st.committed.contiguous_length)
            };
            if start >= end {
                return Ok(true);
            }
            if end > length {
                return Ok(false);
            }
            if end <= contiguous {
                return Ok(true);
            }
            let id = inner.id;
            let count = inner
                .storage
                .read(move |r| r.blocks()?.view().count(id, start, end))
                .await?;
            Ok(count == end - start)
        }
    }

    /// The block holding byte `bytes` of the log and the offset inside it.
    pub fn seek(
        &self,
        bytes: u64,
    ) -> impl Future<Output = Result<(u64, u64)>> + Send + 'static + use<> {
        let inner = self.inner.clone();
        async move {
            let tree = inner.state().committed.tree.clone();
            if bytes >= tree.byte_length {
                return Err(Error::ByteOutOfRange {
                    bytes,
                    byte_length: tree.byte_length,
                });
            }
            let id = inner.id;
            inner
                .storage
                .read(move |r| {
                    let src = r.nodes(id)?;
                    let mut rest = bytes;
                    for root in &tree.roots {
                        if rest >= root.size {
                            rest -= root.size;
                            continue;
                        }
                        let mut c = Cursor::new(root.index);
                        while c.index & 1 == 1 {
                            let l = c.left_child();
                            let Some(node) = src.node(l)? else {
                                return Ok(Err(Error::NodeNotAvailable(l)));
                            };
                            if rest >= node.size {
                                rest -= node.size;
                                c.sibling();
                            }
                        }
                        return Ok(Ok((c.index / 2, rest)));
                    }
                    Ok(Err(Error::ByteOutOfRange {
                        bytes,
                        byte_length: tree.byte_length,
                    }))
                })
                .await?
        }
    }
}

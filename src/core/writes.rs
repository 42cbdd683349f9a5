//! Local writes: append, truncate, clear. Each is prepared in memory, queued on the storage
//! actor in call order, and resolves after its commit.

use std::sync::Arc;

use bytes::Bytes;

use super::{
    events::CoreEvent,
    hypercore::{AppendOutcome, Hypercore},
    state::{CoreInner, TxnNodes},
};
use crate::{
    crypto::CoreKind,
    error::{Error, Result},
    storage::{
        StorageError, WriteCtx,
        schema::{self, CoreHeader},
    },
    tree::{MAX_LENGTH, Node, NodeSource, TreeState, flat},
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

    /// Appends several blocks under one signature, atomically.
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
                Ok(()) => Ok(outcome),
                Err(e) => {
                    inner.resync_head();
                    Err(e.into())
                }
            }
        }
    }

    /// Truncates the log to `new_length` on a new fork (`fork + 1`) and signs it.
    pub fn truncate(
        &self,
        new_length: u64,
    ) -> impl Future<Output = Result<()>> + Send + 'static + use<> {
        let inner = self.inner.clone();
        async move { truncate(inner, new_length).await }
    }

    /// Frees the data of blocks `start..end`; the tree (and so proofs of the log) is kept.
    pub fn clear(
        &self,
        start: u64,
        end: u64,
    ) -> impl Future<Output = Result<()>> + Send + 'static + use<> {
        let inner = self.inner.clone();
        async move {
            let length = inner.state().committed.tree.length;
            let end = end.min(length);
            if start >= end {
                return Ok(());
            }
            let op_inner = inner.clone();
            inner
                .storage
                .write(move |ctx| {
                    let id = op_inner.id;
                    if op_inner.staged().deleted {
                        return Err(StorageError::Rejected("core was deleted".into()));
                    }
                    ctx.blocks()?.remove(id, start, end)?;
                    {
                        let mut staged = op_inner.staged();
                        let h = &mut staged.header;
                        h.contiguous_length = h.contiguous_length.min(start);
                        staged.events.push(CoreEvent::Clear { start, end });
                    }
                    stage_header(ctx, &op_inner);
                    Ok(())
                })
                .await?;
            Ok(())
        }
    }
}

/// Prepares an append under the state lock and queues it, so queue order is call order.
fn queue_append(
    inner: &Arc<CoreInner>,
    blocks: Vec<Bytes>,
) -> Result<(
    impl Future<Output = Result<(), StorageError>> + Send + 'static + use<>,
    AppendOutcome,
)> {
    if inner.signer.is_none() {
        return Err(Error::NotWritable);
    }
    if blocks.iter().any(|b| b.len() > MAX_BLOCK_SIZE) {
        return Err(Error::InvalidArgument("block larger than MAX_BLOCK_SIZE"));
    }
    let mut st = inner.state();
    if st.closed {
        return Err(Error::Closed);
    }
    let base = (st.head.length, st.head.fork);
    if base.0 + blocks.len() as u64 > MAX_LENGTH {
        return Err(Error::InvalidArgument("log too long"));
    }
    let before = st.head.clone();
    let mut nodes = Vec::with_capacity(blocks.len() * 2 + 8);
    for b in &blocks {
        if let Err(e) = st.head.append(b, &mut nodes) {
            st.head = before;
            return Err(e.into());
        }
    }
    inner.recent().record(&before, &blocks, &nodes);
    st.head.signature = None;
    let tree = st.head.clone();
    let outcome = AppendOutcome {
        length: tree.length,
        byte_length: tree.byte_length,
    };
    let op_inner = inner.clone();
    let small = blocks.iter().map(|b| b.len()).sum::<usize>() <= SMALL_APPEND_BYTES;
    let op = move |ctx: &mut WriteCtx<'_, '_>| {
        check_base(&op_inner, base)?;
        ctx.append(op_inner.id, base.0, blocks, nodes)?;
        {
            let mut staged = op_inner.staged();
            let h = &mut staged.header;
            if h.contiguous_length == h.tree.length {
                h.contiguous_length = tree.length;
            }
            let ev = CoreEvent::Append {
                length: tree.length,
                byte_length: tree.byte_length,
                fork: tree.fork,
            };
            h.tree = tree;
            push_event(&mut staged.events, ev);
        }
        stage_header(ctx, &op_inner);
        Ok(())
    };
    let commit = inner.storage.write_sized(small, op);
    Ok((commit, outcome))
}

/// Queues an event for the end of the batch; consecutive appends collapse into the last one.
pub(crate) fn push_event(events: &mut Vec<CoreEvent>, ev: CoreEvent) {
    if let (Some(CoreEvent::Append { .. }), CoreEvent::Append { .. }) = (events.last(), &ev) {
        events.pop();
    }
    events.push(ev);
}

/// Rejects a write prepared against another state than the one staged.
pub(crate) fn check_base(inner: &CoreInner, base: (u64, u64)) -> Result<(), StorageError> {
    let staged = inner.staged();
    if staged.deleted {
        return Err(StorageError::Rejected("core was deleted".into()));
    }
    let t = &staged.header.tree;
    if (t.length, t.fork) != base {
        return Err(StorageError::Rejected(format!(
            "core changed (now length {} fork {}) since this write was prepared",
            t.length, t.fork
        )));
    }
    Ok(())
}

/// Writes nodes of core `id`.
pub(crate) fn put_nodes(
    ctx: &mut WriteCtx<'_, '_>,
    id: u64,
    nodes: &[Node],
) -> Result<(), StorageError> {
    ctx.nodes()?.put(id, nodes)
}

/// Deletes blocks from `length` on and every node that covers them.
pub(crate) fn delete_from(
    ctx: &mut WriteCtx<'_, '_>,
    id: u64,
    length: u64,
) -> Result<(), StorageError> {
    ctx.blocks()?.remove(id, length, u64::MAX)?;
    let head = 2 * length;
    let mut nodes = ctx.nodes()?;
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

/// Registers the end-of-batch step for this core: sign the staged tree if it is unsigned, write
/// the header, and after the commit publish it and emit the staged events.
pub(crate) fn stage_header(ctx: &mut WriteCtx<'_, '_>, inner: &Arc<CoreInner>) {
    let fin = inner.clone();
    ctx.finalize(inner.id, move |txn| {
        let (header, events) = {
            let mut staged = fin.staged();
            if staged.deleted {
                return Ok(None);
            }
            let h = &mut staged.header;
            if h.tree.signature.is_none()
                && h.tree.length > 0
                && let Some(signer) = &fin.signer
            {
                let kind = h.kind.unwrap_or(CoreKind::Default);
                let sig =
                    signer.sign_tree(kind, &h.key, &h.tree.hash(), h.tree.length, h.tree.fork);
                h.tree.signature = Some(sig);
            }
            (staged.header.clone(), std::mem::take(&mut staged.events))
        };
        txn.open_table(schema::HEADERS)?
            .insert(fin.id, header.encode().as_slice())?;
        Ok(Some(move || publish(&fin, header, events)))
    });
    let abort = inner.clone();
    ctx.on_abort(move || abort.roll_back_staged());
}

/// Makes a committed header the core's state and emits its events.
fn publish(inner: &CoreInner, header: CoreHeader, events: Vec<CoreEvent>) {
    {
        let mut st = inner.state();
        let appended = st.head.length > header.tree.length && st.head.fork == header.tree.fork;
        if !appended {
            st.head = header.tree.clone();
        }
        st.committed = header;
    }
    for ev in events {
        inner.emit(ev);
    }
}

async fn truncate(inner: Arc<CoreInner>, new_length: u64) -> Result<()> {
    if inner.signer.is_none() {
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
            (st.head == st.committed.tree).then(|| st.committed.tree.clone())
        };
        let Some(base) = base else {
            // Appends are queued: wait for them to commit, then look again.
            inner.storage.write(|_| Ok(())).await?;
            continue;
        };
        let id = inner.id;
        let indices = TreeState::root_indices(new_length);
        let roots = inner
            .storage
            .read(move |txn| {
                let src = TxnNodes::open(txn, id)?;
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
            let op_inner = inner.clone();
            let base_key = (base.length, base.fork);
            inner.storage.write(move |ctx| {
                check_base(&op_inner, base_key)?;
                delete_from(ctx, op_inner.id, new_length)?;
                {
                    let mut staged = op_inner.staged();
                    let h = &mut staged.header;
                    h.contiguous_length = h.contiguous_length.min(new_length);
                    h.tree = new_tree;
                    staged.events.push(CoreEvent::Truncate {
                        length: new_length,
                        fork: base_key.1 + 1,
                    });
                }
                stage_header(ctx, &op_inner);
                Ok(())
            })
        };
        return match commit.await {
            Ok(()) => Ok(()),
            Err(e) => {
                inner.resync_head();
                Err(e.into())
            }
        };
    }
}

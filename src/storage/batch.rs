//! One batch: the transaction shared by the writes of a group commit, its tables (opened
//! once), the appends staged to be written together, and the cores it touched, whose headers
//! are signed and written once at its end.

use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;

use super::change::Change;
use super::{
    StorageError,
    blocks::{BlocksTable, BlocksWrite, PiecesTable},
    nodes::{NodesTable, NodesWrite},
    schema::{self, CoreHeader},
    slot::CoreSlot,
};
use crate::tree::Node;

/// Blocks `first..first + values.len()` of one core and their tree nodes, appended by one or
/// more writes of a batch and written as one run: appends of many tasks share chunk rows and
/// node groups instead of each writing its own.
struct AppendRun {
    first: u64,
    values: Vec<Bytes>,
    nodes: Vec<Node>,
}

/// A committed core's new header and changes, to publish once the batch committed.
pub(super) type Publication = (Arc<CoreSlot>, CoreHeader, Vec<Change>);

/// The state of one batch inside its write transaction.
///
/// The block and node tables are opened once per batch: opening a redb table for every write
/// of a batch cost about a tenth of the storage thread's time with 100 appending tasks.
pub(crate) struct Batch<'t> {
    txn: &'t redb::WriteTransaction,
    blocks: Option<(BlocksTable<'t>, PiecesTable<'t>)>,
    nodes: Option<NodesTable<'t>>,
    /// Per core id, the blocks and nodes appended by consecutive writes of this batch.
    runs: BTreeMap<u64, AppendRun>,
    /// Cores whose staged header changed, by id.
    touched: BTreeMap<u64, Arc<CoreSlot>>,
}

impl<'t> Batch<'t> {
    /// An empty batch writing in `txn`.
    pub fn new(txn: &'t redb::WriteTransaction) -> Self {
        Self {
            txn,
            blocks: None,
            nodes: None,
            runs: BTreeMap::new(),
            touched: BTreeMap::new(),
        }
    }

    /// The transaction, for the tables other than blocks and nodes.
    pub fn txn(&self) -> &'t redb::WriteTransaction {
        self.txn
    }

    fn open_blocks(&mut self) -> Result<BlocksWrite<'_, 't>, StorageError> {
        if self.blocks.is_none() {
            self.blocks = Some((
                self.txn.open_table(schema::BLOCKS)?,
                self.txn.open_table(schema::PIECES)?,
            ));
        }
        let (chunks, pieces) = self
            .blocks
            .as_mut()
            .ok_or_else(|| StorageError::Database("block tables not open".into()))?;
        Ok(BlocksWrite::new(chunks, pieces))
    }

    fn open_nodes(&mut self) -> Result<NodesWrite<'_, 't>, StorageError> {
        if self.nodes.is_none() {
            self.nodes = Some(self.txn.open_table(schema::NODES)?);
        }
        let table = self
            .nodes
            .as_mut()
            .ok_or_else(|| StorageError::Database("nodes table not open".into()))?;
        Ok(NodesWrite::new(table))
    }

    /// The block tables of this batch. Appends staged by [`Batch::append`] are written first,
    /// so a write sees every earlier write of the batch.
    pub fn blocks(&mut self) -> Result<BlocksWrite<'_, 't>, StorageError> {
        self.write_runs()?;
        self.open_blocks()
    }

    /// The nodes table of this batch (staged appends are written first, as for
    /// [`Batch::blocks`]).
    pub fn nodes(&mut self) -> Result<NodesWrite<'_, 't>, StorageError> {
        self.write_runs()?;
        self.open_nodes()
    }

    /// Appends blocks `first..first + values.len()` of core `id`, none stored yet, with their
    /// tree nodes. Appends to one core that follow each other in a batch are written together
    /// (one chunk row for many small blocks) before the next other access to the tables or at
    /// the end of the batch; an error then aborts the whole batch.
    pub fn append(
        &mut self,
        id: u64,
        first: u64,
        values: Vec<Bytes>,
        nodes: Vec<Node>,
    ) -> Result<(), StorageError> {
        if let Some(run) = self.runs.get_mut(&id) {
            if run.first + run.values.len() as u64 == first {
                run.values.extend(values);
                run.nodes.extend(nodes);
                return Ok(());
            }
            self.write_run(id)?;
        }
        self.runs.insert(
            id,
            AppendRun {
                first,
                values,
                nodes,
            },
        );
        Ok(())
    }

    /// Writes the staged run of core `id`, if any.
    fn write_run(&mut self, id: u64) -> Result<(), StorageError> {
        let Some(run) = self.runs.remove(&id) else {
            return Ok(());
        };
        let values: Vec<&[u8]> = run.values.iter().map(|v| v.as_ref()).collect();
        self.open_blocks()?.put(id, run.first, &values)?;
        self.open_nodes()?.put(id, &run.nodes)
    }

    /// Writes every staged run.
    fn write_runs(&mut self) -> Result<(), StorageError> {
        while let Some(&id) = self.runs.keys().next() {
            self.write_run(id)?;
        }
        Ok(())
    }

    /// Notes that the staged header of `slot` changed: it is signed and written at the end of
    /// the batch, and published after the commit.
    pub fn touch(&mut self, slot: &Arc<CoreSlot>) {
        self.touched.entry(slot.id).or_insert_with(|| slot.clone());
    }

    /// Ends the batch: writes the staged runs, then signs (once per core) and writes the header
    /// of every touched core. Returns what to publish after the commit.
    pub fn finish(&mut self) -> Result<Vec<Publication>, StorageError> {
        self.write_runs()?;
        self.blocks = None;
        self.nodes = None;
        let mut out = Vec::with_capacity(self.touched.len());
        if self.touched.is_empty() {
            return Ok(out);
        }
        let mut headers = self.txn.open_table(schema::HEADERS)?;
        for slot in self.touched.values() {
            if let Some((header, events)) = slot.seal() {
                headers.insert(slot.id, header.encode().as_slice())?;
                out.push((slot.clone(), header, events));
            }
        }
        Ok(out)
    }

    /// The cores this batch touched, to roll back if it fails.
    pub fn into_touched(self) -> impl Iterator<Item = Arc<CoreSlot>> {
        self.touched.into_values()
    }
}

//! Tree nodes in groups: the nodes of [`GROUP`] consecutive flat-tree indices of one core share
//! one row of [`schema::NODES`](super::schema::NODES).
//!
//! An append of one block adds its leaf and on average one parent, all near the end of the tree,
//! so a row per node cost two B-tree inserts per block. Measured on redb 4.4 with batches of
//! 1,000 × 1 KiB blocks, those inserts were about 40% of an append's time. A group row holds the
//! nodes an append or a replicated run adds together, and one lookup answers for its neighbours.
//!
//! Rows: key `(core id, index / GROUP)`, value `u32le presence bitmap ‖ for each present slot in
//! slot order: u64le size ‖ 32-byte hash`. A row with no node is removed.

use redb::{ReadableTable, Table};

use super::StorageError;
use crate::tree::Node;

/// Flat-tree indices per row.
pub const GROUP: u64 = 32;

/// Bytes of one stored node: size and hash.
const NODE_BYTES: usize = 40;
/// Bytes of a full row.
const ROW_BYTES: usize = 4 + GROUP as usize * NODE_BYTES;

/// The writable nodes table.
pub type NodesTable<'txn> = Table<'txn, (u64, u64), &'static [u8]>;

/// A decoded row: the nodes of indices `group * GROUP..(group + 1) * GROUP` that are stored.
#[derive(Clone)]
struct Group {
    present: u32,
    /// Size and hash of each slot; meaningful where `present` has the slot's bit.
    slots: [[u8; NODE_BYTES]; GROUP as usize],
}

impl Group {
    fn empty() -> Self {
        Self {
            present: 0,
            slots: [[0; NODE_BYTES]; GROUP as usize],
        }
    }

    /// Copies a stored row out, to change it.
    fn from_row(row: &RowView<'_>) -> Self {
        let mut group = Self::empty();
        group.present = row.present;
        for (slot, stored) in group.slots.iter_mut().enumerate() {
            if let Some(node) = row.slot(slot) {
                *stored = *node;
            }
        }
        group
    }

    fn set(&mut self, slot: usize, node: &Node) {
        self.present |= 1 << slot;
        self.slots[slot][..8].copy_from_slice(&node.size.to_le_bytes());
        self.slots[slot][8..].copy_from_slice(&node.hash);
    }

    /// Encodes the row into `out` and returns its bytes.
    fn encode<'b>(&self, out: &'b mut [u8; ROW_BYTES]) -> &'b [u8] {
        out[..4].copy_from_slice(&self.present.to_le_bytes());
        let mut at = 4;
        for (slot, node) in self.slots.iter().enumerate() {
            if self.present & (1 << slot) != 0 {
                out[at..at + NODE_BYTES].copy_from_slice(node);
                at += NODE_BYTES;
            }
        }
        &out[..at]
    }
}

/// A stored row, read in place.
struct RowView<'a> {
    present: u32,
    nodes: &'a [u8],
}

impl<'a> RowView<'a> {
    /// Checks a stored row: malformed bytes are a [`StorageError::Corrupt`], never a panic.
    fn parse(group: u64, bytes: &'a [u8]) -> Result<Self, StorageError> {
        let corrupt = |what: &str| StorageError::Corrupt(format!("node group {group}: {what}"));
        let (head, nodes) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("no bitmap"))?;
        let present = u32::from_le_bytes(*head);
        if present == 0 || nodes.len() != present.count_ones() as usize * NODE_BYTES {
            return Err(corrupt("length does not match the bitmap"));
        }
        Ok(Self { present, nodes })
    }

    /// Size and hash stored in slot `slot`, if present.
    fn slot(&self, slot: usize) -> Option<&'a [u8; NODE_BYTES]> {
        if self.present & (1 << slot) == 0 {
            return None;
        }
        let at = (self.present & ((1u32 << slot) - 1)).count_ones() as usize * NODE_BYTES;
        self.nodes.get(at..)?.first_chunk::<NODE_BYTES>()
    }

    /// The node of slot `slot`, whose flat-tree index is `index`.
    fn node(&self, slot: usize, index: u64) -> Option<Node> {
        let (size, hash) = self.slot(slot)?.split_first_chunk::<8>()?;
        Some(Node {
            index,
            size: u64::from_le_bytes(*size),
            hash: *hash.first_chunk::<32>()?,
        })
    }
}

fn split(index: u64) -> (u64, usize) {
    (index / GROUP, (index % GROUP) as usize)
}

/// The node at `index` of core `id`, if stored, from any view of the nodes table.
#[cfg(any(test, feature = "test-utils"))]
pub fn get<T>(table: &T, id: u64, index: u64) -> Result<Option<Node>, StorageError>
where
    T: ReadableTable<(u64, u64), &'static [u8]>,
{
    let (group, slot) = split(index);
    match table.get((id, group))? {
        Some(row) => Ok(RowView::parse(group, row.value())?.node(slot, index)),
        None => Ok(None),
    }
}

/// The last row read through one view of a core's nodes, so that nodes of one group asked in
/// turn cost one table lookup: the proofs of a run's consecutive blocks mostly ask for nodes
/// of the same group (a lookup was about 2,600 instructions per served block). Valid as long
/// as the view it caches is unchanged: a read transaction's.
#[derive(Debug, Default)]
pub struct LastRow {
    /// The core and group read last, and its row's bytes.
    row: std::cell::RefCell<Option<((u64, u64), CachedRow)>>,
}

/// A row's bytes as read, or none for a group with no row.
type CachedRow = Option<Vec<u8>>;

impl LastRow {
    /// The node at `index` of core `id`, if stored, read through `table` unless its group is
    /// the one read last.
    pub fn get<T>(&self, table: &T, id: u64, index: u64) -> Result<Option<Node>, StorageError>
    where
        T: ReadableTable<(u64, u64), &'static [u8]>,
    {
        let (group, slot) = split(index);
        let mut last = self.row.borrow_mut();
        let row = match &*last {
            Some((key, row)) if *key == (id, group) => row,
            _ => {
                let read = table.get((id, group))?.map(|row| row.value().to_vec());
                &last.insert(((id, group), read)).1
            }
        };
        match row {
            Some(bytes) => Ok(RowView::parse(group, bytes)?.node(slot, index)),
            None => Ok(None),
        }
    }
}

/// The nodes table of a write transaction.
pub struct NodesWrite<'a, 't> {
    table: &'a mut NodesTable<'t>,
}

impl<'a, 't> NodesWrite<'a, 't> {
    /// Writes through `table`.
    pub fn new(table: &'a mut NodesTable<'t>) -> Self {
        Self { table }
    }

    /// The node at `index` of core `id`, if stored.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn get(&self, id: u64, index: u64) -> Result<Option<Node>, StorageError> {
        get(&*self.table, id, index)
    }

    /// Stores nodes of core `id` (in any order), replacing nodes at the same indices; of two
    /// given for one index, the later one is kept.
    pub fn put(&mut self, id: u64, nodes: &[Node]) -> Result<(), StorageError> {
        self.put_where(id, nodes, true)
    }

    /// Stores the nodes of core `id` at indices that hold none yet: a node from a proof never
    /// replaces a stored one (what is stored was proven, or written by the writer).
    pub fn put_new(&mut self, id: u64, nodes: &[Node]) -> Result<(), StorageError> {
        self.put_where(id, nodes, false)
    }

    fn put_where(&mut self, id: u64, nodes: &[Node], replace: bool) -> Result<(), StorageError> {
        let mut sorted: Vec<&Node> = nodes.iter().collect();
        // Stable: of two nodes at one index, the later one is kept.
        sorted.sort_by_key(|n| n.index);
        let mut rest = &sorted[..];
        while let Some(first) = rest.first() {
            let group = first.index / GROUP;
            let n = rest
                .iter()
                .position(|x| x.index / GROUP != group)
                .unwrap_or(rest.len());
            let mut row = self.load(id, group)?.unwrap_or_else(Group::empty);
            let stored = row.present;
            for node in &rest[..n] {
                let slot = split(node.index).1;
                if replace || stored & (1 << slot) == 0 {
                    row.set(slot, node);
                }
            }
            self.store(id, group, &row)?;
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Removes the node at `index` of core `id`, if stored.
    pub fn remove(&mut self, id: u64, index: u64) -> Result<(), StorageError> {
        let (group, slot) = split(index);
        if let Some(mut row) = self.load(id, group)? {
            row.present &= !(1 << slot);
            self.store(id, group, &row)?;
        }
        Ok(())
    }

    /// Removes every node of core `id` at `from` or above.
    pub fn remove_from(&mut self, id: u64, from: u64) -> Result<(), StorageError> {
        let (group, slot) = split(from);
        if let Some(mut row) = self.load(id, group)? {
            row.present &= (1u32 << slot) - 1;
            self.store(id, group, &row)?;
        }
        // `group` is at most u64::MAX / GROUP: the next one exists.
        self.table
            .retain_in((id, group + 1)..=(id, u64::MAX), |_, _| false)?;
        Ok(())
    }

    /// Removes every node of core `id`.
    pub fn remove_core(&mut self, id: u64) -> Result<(), StorageError> {
        self.table
            .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
        Ok(())
    }

    fn load(&self, id: u64, group: u64) -> Result<Option<Group>, StorageError> {
        match self.table.get((id, group))? {
            Some(row) => Ok(Some(Group::from_row(&RowView::parse(group, row.value())?))),
            None => Ok(None),
        }
    }

    /// Writes a row back, or removes it once it holds no node.
    fn store(&mut self, id: u64, group: u64, row: &Group) -> Result<(), StorageError> {
        if row.present == 0 {
            self.table.remove((id, group))?;
        } else {
            let mut buf = [0u8; ROW_BYTES];
            self.table.insert((id, group), row.encode(&mut buf))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use redb::{Database, ReadableDatabase, backends::InMemoryBackend};

    use super::*;
    use crate::storage::schema::NODES;

    fn db() -> Database {
        Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap()
    }

    fn node(index: u64, seed: u8) -> Node {
        Node {
            index,
            size: index * 3 + seed as u64,
            hash: [seed; 32],
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(Vec<(u64, u8)>),
        Remove(u64),
        RemoveFrom(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop::collection::vec((0u64..200, any::<u8>()), 1..80).prop_map(Op::Put),
            1 => (0u64..200).prop_map(Op::Remove),
            1 => (0u64..200).prop_map(Op::RemoveFrom),
        ]
    }

    proptest! {
        /// Puts and removals on two cores agree with a map of nodes, and leave no empty row.
        #[test]
        fn groups_match_a_map(ops in prop::collection::vec((0u64..2, op()), 1..30)) {
            let db = db();
            let mut model: BTreeMap<(u64, u64), Node> = BTreeMap::new();
            for (id, op) in ops {
                let txn = db.begin_write().unwrap();
                {
                    let mut table = txn.open_table(NODES).unwrap();
                    let mut nodes = NodesWrite::new(&mut table);
                    match op {
                        Op::Put(list) => {
                            let list: Vec<Node> = list.iter().map(|(i, s)| node(*i, *s)).collect();
                            nodes.put(id, &list).unwrap();
                            for n in list {
                                model.insert((id, n.index), n);
                            }
                        }
                        Op::Remove(i) => {
                            nodes.remove(id, i).unwrap();
                            model.remove(&(id, i));
                        }
                        Op::RemoveFrom(i) => {
                            nodes.remove_from(id, i).unwrap();
                            model.retain(|(c, x), _| *c != id || *x < i);
                        }
                    }
                    for c in 0..2 {
                        for i in 0..200 {
                            prop_assert_eq!(nodes.get(c, i).unwrap(), model.get(&(c, i)).copied());
                        }
                    }
                }
                txn.commit().unwrap();
            }
            let txn = db.begin_read().unwrap();
            let table = txn.open_table(NODES).unwrap();
            for row in table.iter().unwrap() {
                let (key, value) = row.unwrap();
                prop_assert!(value.value().len() > 4, "empty row {:?}", key.value());
            }
            prop_assert_eq!(get(&table, 1, 7).unwrap(), model.get(&(1, 7)).copied());
            // Read through one cache of the last row, up and down both cores' trees and
            // between the cores: the same nodes.
            let last = LastRow::default();
            for i in (0..200).chain((0..200).rev()) {
                for c in [0, 1, 1, 0] {
                    prop_assert_eq!(last.get(&table, c, i).unwrap(), model.get(&(c, i)).copied());
                }
            }
        }
    }

    #[test]
    fn remove_core_leaves_other_cores() {
        let db = db();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(NODES).unwrap();
            let mut nodes = NodesWrite::new(&mut table);
            nodes.put(1, &[node(0, 1), node(100, 1)]).unwrap();
            nodes.put(2, &[node(0, 2)]).unwrap();
            nodes.remove_core(1).unwrap();
            assert_eq!(nodes.get(1, 0).unwrap(), None);
            assert_eq!(nodes.get(1, 100).unwrap(), None);
            assert_eq!(nodes.get(2, 0).unwrap(), Some(node(0, 2)));
        }
        txn.commit().unwrap();
    }

    #[test]
    fn corrupt_rows_are_errors() {
        let db = db();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(NODES).unwrap();
            let full = [0xffu8; 4];
            let rows: [(u64, &[u8]); 4] =
                [(0, &[]), (1, &[1, 0, 0]), (2, &[0, 0, 0, 0]), (3, &full)];
            for (key, bytes) in rows {
                table.insert((9, key), bytes).unwrap();
            }
            let last = LastRow::default();
            for key in 0..4 {
                // Twice: a corrupt row read from the cache is an error too.
                for _ in 0..2 {
                    let err = last.get(&table, 9, key * GROUP).unwrap_err();
                    assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
                }
            }
            let nodes = NodesWrite::new(&mut table);
            for key in 0..4 {
                let err = nodes.get(9, key * GROUP).unwrap_err();
                assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
            }
        }
        txn.commit().unwrap();
    }
}

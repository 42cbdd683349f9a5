//! Block values in chunks: consecutive blocks of one core share one row of
//! [`schema::BLOCKS`](super::schema::BLOCKS).
//!
//! redb keeps a value inside a B-tree leaf page, so a row per 1 KiB block fills a 4 KiB page
//! with three rows and splits a page every few inserts. A chunk of consecutive blocks is one
//! insert for up to [`CHUNK_BYTES`] of them: measured on redb 4.4, 1,000 × 1 KiB blocks take
//! 2.6× less time to write as chunks of 15 than as 1,000 rows, and a random read is as fast,
//! because a chunk is small enough to read whole for one block.
//!
//! Row: key `(core id, first block index)`, value
//! `u32le count ‖ u32le end offset of each block ‖ the blocks' bytes`. The chunks of a core
//! never overlap; a block larger than a chunk is a chunk of its own. Removing blocks rewrites
//! the chunks they share with kept blocks.

use redb::{ReadableTable, Table};

use super::StorageError;

/// Most encoded bytes in a chunk of several blocks, so that one chunk and its key fit in a
/// 16 KiB redb page (a power-of-two page; a value just over one costs twice the space).
pub const CHUNK_BYTES: usize = 16 * 1024 - 512;

/// The writable blocks table.
pub type BlocksTable<'txn> = Table<'txn, (u64, u64), &'static [u8]>;

/// A decoded chunk: blocks `first..first + count` of one core.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    /// Index of its first block.
    pub first: u64,
    ends: &'a [u8],
    data: &'a [u8],
}

impl<'a> Chunk<'a> {
    /// Decodes a stored chunk; malformed bytes are a [`StorageError::Corrupt`], never a panic.
    pub fn parse(first: u64, bytes: &'a [u8]) -> Result<Self, StorageError> {
        let corrupt = |what: &str| StorageError::Corrupt(format!("block chunk at {first}: {what}"));
        let count = bytes
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| corrupt("no header"))?;
        let header = count
            .checked_mul(4)
            .and_then(|n| n.checked_add(4))
            .filter(|n| *n <= bytes.len())
            .ok_or_else(|| corrupt("count larger than the chunk"))?;
        let chunk = Chunk {
            first,
            ends: &bytes[4..header],
            data: &bytes[header..],
        };
        let mut prev = 0;
        for i in 0..count {
            let end = chunk.end_offset(i);
            if end < prev || end > chunk.data.len() {
                return Err(corrupt("block offsets out of order"));
            }
            prev = end;
        }
        if prev != chunk.data.len() || count == 0 {
            return Err(corrupt("block offsets do not cover the data"));
        }
        Ok(chunk)
    }

    fn end_offset(&self, i: usize) -> usize {
        let b = &self.ends[i * 4..i * 4 + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
    }

    /// Number of blocks.
    pub fn len(&self) -> u64 {
        (self.ends.len() / 4) as u64
    }

    /// Whether the chunk holds no block (never true of a parsed chunk).
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Index after its last block.
    pub fn end(&self) -> u64 {
        self.first + self.len()
    }

    /// The value of block `index`, if this chunk holds it.
    pub fn get(&self, index: u64) -> Option<&'a [u8]> {
        if index < self.first || index >= self.end() {
            return None;
        }
        let i = (index - self.first) as usize;
        let start = if i == 0 { 0 } else { self.end_offset(i - 1) };
        Some(&self.data[start..self.end_offset(i)])
    }
}

/// Encodes consecutive block values as one chunk.
fn encode(values: &[&[u8]]) -> Vec<u8> {
    let data: usize = values.iter().map(|v| v.len()).sum();
    let mut out = Vec::with_capacity(4 + 4 * values.len() + data);
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    let mut end = 0u32;
    for v in values {
        end += v.len() as u32;
        out.extend_from_slice(&end.to_le_bytes());
    }
    for v in values {
        out.extend_from_slice(v);
    }
    out
}

/// Runs `f` on the chunk of core `id` holding block `index`, if one does.
fn with_chunk<T, R>(
    table: &T,
    id: u64,
    index: u64,
    f: impl FnOnce(Chunk<'_>) -> R,
) -> Result<Option<R>, StorageError>
where
    T: ReadableTable<(u64, u64), &'static [u8]>,
{
    let Some(row) = table.range((id, 0)..=(id, index))?.next_back() else {
        return Ok(None);
    };
    let (key, value) = row?;
    let chunk = Chunk::parse(key.value().1, value.value())?;
    Ok((index < chunk.end()).then(|| f(chunk)))
}

/// A copy of block `index` of core `id`, if stored.
pub fn get<T>(table: &T, id: u64, index: u64) -> Result<Option<Vec<u8>>, StorageError>
where
    T: ReadableTable<(u64, u64), &'static [u8]>,
{
    Ok(with_chunk(table, id, index, |c| c.get(index).map(<[u8]>::to_vec))?.flatten())
}

/// Whether block `index` of core `id` is stored.
pub fn has<T>(table: &T, id: u64, index: u64) -> Result<bool, StorageError>
where
    T: ReadableTable<(u64, u64), &'static [u8]>,
{
    Ok(with_chunk(table, id, index, |_| ())?.is_some())
}

/// Calls `f(index, value)` for every stored block of core `id` in `start..end`, in order.
pub fn for_each<T>(
    table: &T,
    id: u64,
    start: u64,
    end: u64,
    mut f: impl FnMut(u64, &[u8]),
) -> Result<(), StorageError>
where
    T: ReadableTable<(u64, u64), &'static [u8]>,
{
    if start >= end {
        return Ok(());
    }
    let mut visit = |chunk: Chunk<'_>| {
        for i in chunk.first.max(start)..chunk.end().min(end) {
            if let Some(v) = chunk.get(i) {
                f(i, v);
            }
        }
    };
    with_chunk(table, id, start, &mut visit)?;
    if start < u64::MAX {
        for row in table.range((id, start + 1)..(id, end))? {
            let (key, value) = row?;
            visit(Chunk::parse(key.value().1, value.value())?);
        }
    }
    Ok(())
}

/// Stored blocks of core `id` in `start..end`, as sorted ranges.
pub fn present<T>(
    table: &T,
    id: u64,
    start: u64,
    end: u64,
) -> Result<Vec<std::ops::Range<u64>>, StorageError>
where
    T: ReadableTable<(u64, u64), &'static [u8]>,
{
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    let mut add = |a: u64, b: u64| {
        let (a, b) = (a.max(start), b.min(end));
        if a >= b {
            return;
        }
        match out.last_mut() {
            Some(last) if last.end == a => last.end = b,
            _ => out.push(a..b),
        }
    };
    if start >= end {
        return Ok(out);
    }
    if let Some((a, b)) = with_chunk(table, id, start, |c| (c.first, c.end()))? {
        add(a, b);
    }
    if start < u64::MAX {
        for row in table.range((id, start + 1)..(id, end))? {
            let (key, value) = row?;
            let c = Chunk::parse(key.value().1, value.value())?;
            add(c.first, c.end());
        }
    }
    Ok(out)
}

/// Number of stored blocks of core `id` in `start..end`.
pub fn count<T>(table: &T, id: u64, start: u64, end: u64) -> Result<u64, StorageError>
where
    T: ReadableTable<(u64, u64), &'static [u8]>,
{
    Ok(present(table, id, start, end)?
        .iter()
        .map(|r| r.end - r.start)
        .sum())
}

/// The first block of core `id` at or after `from` (and before `limit`) that is not stored.
pub fn first_missing<T>(table: &T, id: u64, from: u64, limit: u64) -> Result<u64, StorageError>
where
    T: ReadableTable<(u64, u64), &'static [u8]>,
{
    let mut c = from;
    while c < limit {
        match with_chunk(table, id, c, |chunk| chunk.end())? {
            Some(end) => c = end,
            None => break,
        }
    }
    Ok(c.min(limit))
}

/// Writes consecutive blocks `first..first + values.len()` of core `id`, none of which may be
/// stored already, in as few chunks as fit.
pub fn put(
    table: &mut BlocksTable<'_>,
    id: u64,
    first: u64,
    values: &[&[u8]],
) -> Result<(), StorageError> {
    let mut start = 0;
    while start < values.len() {
        let mut end = start + 1;
        let mut size = 8 + values[start].len();
        while end < values.len() && size + 4 + values[end].len() <= CHUNK_BYTES {
            size += 4 + values[end].len();
            end += 1;
        }
        table.insert(
            (id, first + start as u64),
            encode(&values[start..end]).as_slice(),
        )?;
        start = end;
    }
    Ok(())
}

/// Writes blocks given as `(index, value)`, sorted by index and none stored already; each run
/// of consecutive indices goes in as few chunks as fit.
pub fn put_sorted(
    table: &mut BlocksTable<'_>,
    id: u64,
    blocks: &[(u64, &[u8])],
) -> Result<(), StorageError> {
    let mut start = 0;
    while start < blocks.len() {
        let mut end = start + 1;
        while end < blocks.len() && blocks[end].0 == blocks[end - 1].0 + 1 {
            end += 1;
        }
        let values: Vec<&[u8]> = blocks[start..end].iter().map(|(_, v)| *v).collect();
        put(table, id, blocks[start].0, &values)?;
        start = end;
    }
    Ok(())
}

/// Removes blocks `start..end` of core `id`; blocks outside the range that shared a chunk
/// with removed ones are written back.
pub fn remove(
    table: &mut BlocksTable<'_>,
    id: u64,
    start: u64,
    end: u64,
) -> Result<(), StorageError> {
    if start >= end {
        return Ok(());
    }
    let mut keys = Vec::new();
    if let Some(first) = with_chunk(&*table, id, start, |c| c.first)? {
        keys.push(first);
    }
    if start < u64::MAX {
        for row in table.range((id, start + 1)..(id, end))? {
            keys.push(row?.0.value().1);
        }
    }
    for first in keys {
        let Some(bytes) = table.remove((id, first))?.map(|v| v.value().to_vec()) else {
            continue;
        };
        let chunk = Chunk::parse(first, &bytes)?;
        let keep = |a: u64, b: u64| -> Vec<&[u8]> { (a..b).filter_map(|i| chunk.get(i)).collect() };
        let before = keep(chunk.first, start.min(chunk.end()));
        put(table, id, chunk.first, &before)?;
        let after_start = end.max(chunk.first);
        let after = keep(after_start, chunk.end());
        put(table, id, after_start, &after)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, backends::InMemoryBackend};

    use super::*;
    use crate::storage::schema::BLOCKS;

    fn db() -> redb::Database {
        redb::Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap()
    }

    fn value(i: u64, size: usize) -> Vec<u8> {
        vec![(i % 251) as u8; size]
    }

    /// Blocks `0..n` of core 1 with `size` bytes each, plus a neighbour core 2.
    fn filled(db: &redb::Database, n: u64, size: usize) {
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(BLOCKS).unwrap();
            let values: Vec<Vec<u8>> = (0..n).map(|i| value(i, size)).collect();
            let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            put(&mut t, 1, 0, &refs).unwrap();
            put(&mut t, 2, 0, &refs).unwrap();
        }
        txn.commit().unwrap();
    }

    #[test]
    fn chunks_hold_many_small_blocks_and_read_back() {
        let db = db();
        filled(&db, 100, 1024);
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(BLOCKS).unwrap();
        let rows = t.range((1, 0)..(2, 0)).unwrap().count();
        assert!(rows < 10, "100 × 1 KiB in {rows} chunks");
        for i in 0..100 {
            assert_eq!(get(&t, 1, i).unwrap(), Some(value(i, 1024)));
        }
        assert_eq!(get(&t, 1, 100).unwrap(), None);
        assert_eq!(count(&t, 1, 0, 200).unwrap(), 100);
        assert_eq!(first_missing(&t, 1, 0, 1000).unwrap(), 100);
        let mut seen = Vec::new();
        for_each(&t, 1, 17, 40, |i, v| seen.push((i, v.to_vec()))).unwrap();
        assert_eq!(
            seen,
            (17..40).map(|i| (i, value(i, 1024))).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_large_block_is_a_chunk_of_its_own() {
        let db = db();
        filled(&db, 3, CHUNK_BYTES * 2);
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(BLOCKS).unwrap();
        assert_eq!(t.range((1, 0)..(2, 0)).unwrap().count(), 3);
        assert_eq!(get(&t, 1, 2).unwrap(), Some(value(2, CHUNK_BYTES * 2)));
    }

    #[test]
    fn remove_keeps_the_neighbours_of_a_chunk() {
        let db = db();
        filled(&db, 100, 1000);
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(BLOCKS).unwrap();
            remove(&mut t, 1, 10, 20).unwrap();
            remove(&mut t, 1, 90, u64::MAX).unwrap();
        }
        txn.commit().unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(BLOCKS).unwrap();
        assert_eq!(present(&t, 1, 0, 200).unwrap(), vec![0..10, 20..90]);
        for i in (0..10).chain(20..90) {
            assert_eq!(get(&t, 1, i).unwrap(), Some(value(i, 1000)), "block {i}");
        }
        assert!(!has(&t, 1, 15).unwrap());
        assert_eq!(first_missing(&t, 1, 0, 100).unwrap(), 10);
        assert_eq!(first_missing(&t, 1, 20, 100).unwrap(), 90);
        assert_eq!(
            count(&t, 2, 0, 100).unwrap(),
            100,
            "the other core is untouched"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Writes the missing blocks of `start..start + len` with `size` bytes each.
        Put {
            start: u64,
            len: u64,
            size: usize,
        },
        Remove {
            start: u64,
            end: u64,
        },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (
                0u64..300,
                1u64..80,
                prop_oneof![Just(1usize), 0usize..3000, Just(CHUNK_BYTES)]
            )
                .prop_map(|(start, len, size)| Op::Put { start, len, size }),
            (0u64..300, 0u64..100).prop_map(|(start, n)| Op::Remove {
                start,
                end: start + n
            }),
        ]
    }

    proptest::proptest! {
        /// Any sequence of writes and removals reads back like a map of blocks.
        #[test]
        fn chunks_behave_like_a_map(ops in proptest::collection::vec(op(), 1..25)) {
            let db = db();
            let mut model = std::collections::BTreeMap::new();
            for op in ops {
                let txn = db.begin_write().unwrap();
                {
                    let mut t = txn.open_table(BLOCKS).unwrap();
                    match op {
                        Op::Put { start, len, size } => {
                            let new: Vec<(u64, Vec<u8>)> = (start..start + len)
                                .filter(|i| !model.contains_key(i))
                                .map(|i| (i, value(i, size)))
                                .collect();
                            let refs: Vec<(u64, &[u8])> =
                                new.iter().map(|(i, v)| (*i, v.as_slice())).collect();
                            put_sorted(&mut t, 1, &refs).unwrap();
                            model.extend(new);
                        }
                        Op::Remove { start, end } => {
                            remove(&mut t, 1, start, end).unwrap();
                            model.retain(|i, _| !(start..end).contains(i));
                        }
                    }
                }
                txn.commit().unwrap();
            }
            let txn = db.begin_read().unwrap();
            let t = txn.open_table(BLOCKS).unwrap();
            for i in 0..400 {
                let stored = get(&t, 1, i).unwrap();
                proptest::prop_assert_eq!(stored.as_ref(), model.get(&i));
            }
            let mut seen = Vec::new();
            for_each(&t, 1, 0, 400, |i, v| seen.push((i, v.to_vec()))).unwrap();
            let expected: Vec<(u64, Vec<u8>)> = model.clone().into_iter().collect();
            proptest::prop_assert_eq!(seen, expected);
            proptest::prop_assert_eq!(count(&t, 1, 0, 400).unwrap(), model.len() as u64);
            let missing = (0..).find(|i| !model.contains_key(i)).unwrap();
            proptest::prop_assert_eq!(first_missing(&t, 1, 0, 1000).unwrap(), missing);
        }
    }

    #[test]
    fn corrupt_chunks_are_errors() {
        for bytes in [
            &[][..],
            &[1, 0, 0][..],
            &[9, 0, 0, 0, 1, 0, 0, 0][..],
            &[2, 0, 0, 0, 5, 0, 0, 0, 3, 0, 0, 0, 1, 2, 3, 4, 5][..],
            &[1, 0, 0, 0, 9, 0, 0, 0, 1][..],
            &[0, 0, 0, 0][..],
        ] {
            assert!(
                matches!(Chunk::parse(0, bytes), Err(StorageError::Corrupt(_))),
                "{bytes:?}"
            );
        }
    }
}

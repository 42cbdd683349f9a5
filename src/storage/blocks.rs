//! Block values in chunks: consecutive blocks of one core share one row of
//! [`schema::BLOCKS`](super::schema::BLOCKS), and a large block is cut into pieces in
//! [`schema::PIECES`](super::schema::PIECES).
//!
//! redb keeps a value inside a B-tree leaf page whose size is a power of two. A row per 1 KiB
//! block fills a 4 KiB page with three rows and splits a page every few inserts; a 1 MiB or
//! 64 KiB block, with its key and the page header, takes a page twice its size. So every row
//! stays under [`CHUNK_BYTES`] (one 64 KiB page), and the tail of a large block goes in pieces
//! under [`TAIL_PIECE_BYTES`] (one 16 KiB page) so that it wastes little of its page. Measured
//! on redb 4.4: 1,000 × 1 KiB blocks write 2.6× faster as chunks of 15 than as 1,000 rows;
//! 1 MiB blocks written whole took twice the disk space and 1.9× the time of blocks 8 KiB
//! smaller; rows of 64 KiB rather than 16 KiB write 1 MiB blocks 1.3–1.7× and batches of
//! 1 KiB blocks about 1.2× faster, a random read from a file is about as fast (from the memory
//! backend 10–20% slower). Readers take rows of any size up to a block's length, so files
//! written with 16 KiB rows read the same.
//!
//! Rows of `BLOCKS`: key `(core id, first block index)`, value either a chunk,
//! `u32le count ‖ u32le end offset of each block ‖ the blocks' bytes`, or the marker of one
//! large block, `u32le 0 ‖ u64le length`, whose bytes are the rows `(core id, index, 0..)` of
//! `PIECES`. The rows of a core never overlap. Removing blocks rewrites the chunks they share
//! with kept blocks.

use redb::{ReadTransaction, ReadableTable, Table};

use super::{
    StorageError,
    schema::{BLOCKS, PIECES},
};

/// Most bytes in one row (a chunk, or a full piece of a large block), so that the row and its
/// key fit in a 64 KiB redb page.
pub const CHUNK_BYTES: usize = 64 * 1024 - 512;

/// Most bytes in a piece of the tail of a large block (what is left after full pieces), so
/// that the piece and its key fit in a 16 KiB redb page.
pub const TAIL_PIECE_BYTES: usize = 16 * 1024 - 512;

/// Most bytes reserved up front when reassembling a large block.
const PREALLOC_MAX: u64 = 16 * 1024 * 1024;

/// The writable chunks table.
pub type BlocksTable<'txn> = Table<'txn, (u64, u64), &'static [u8]>;
/// The writable pieces table.
pub type PiecesTable<'txn> = Table<'txn, (u64, u64, u32), &'static [u8]>;

/// A decoded chunk: blocks `first..first + count` of one core.
#[derive(Debug, Clone, Copy)]
struct Chunk<'a> {
    /// Index of its first block.
    first: u64,
    ends: &'a [u8],
    data: &'a [u8],
}

/// A decoded row of `BLOCKS`.
#[derive(Debug, Clone, Copy)]
enum Row<'a> {
    Chunk(Chunk<'a>),
    /// One block of `len` bytes, stored in pieces.
    Large {
        index: u64,
        len: u64,
    },
}

impl Row<'_> {
    /// Decodes a stored row; malformed bytes, and a row whose blocks would end past
    /// `u64::MAX` (no writer stores one: indices stay below `tree::MAX_LENGTH`), are a
    /// [`StorageError::Corrupt`], never a panic.
    fn parse(first: u64, bytes: &[u8]) -> Result<Row<'_>, StorageError> {
        if let [0, 0, 0, 0, len @ ..] = bytes
            && let Ok(len) = <[u8; 8]>::try_from(len)
        {
            if first == u64::MAX {
                return Err(StorageError::Corrupt(format!(
                    "large block row at index {first}"
                )));
            }
            return Ok(Row::Large {
                index: first,
                len: u64::from_le_bytes(len),
            });
        }
        Chunk::parse(first, bytes).map(Row::Chunk)
    }

    fn first(&self) -> u64 {
        match self {
            Row::Chunk(c) => c.first,
            Row::Large { index, .. } => *index,
        }
    }

    fn end(&self) -> u64 {
        match self {
            Row::Chunk(c) => c.end(),
            Row::Large { index, .. } => index + 1,
        }
    }
}

impl<'a> Chunk<'a> {
    /// Decodes a stored chunk; malformed bytes are a [`StorageError::Corrupt`], never a panic.
    fn parse(first: u64, bytes: &'a [u8]) -> Result<Self, StorageError> {
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
        if first.checked_add(chunk.len()).is_none() {
            return Err(corrupt("blocks past the largest index"));
        }
        Ok(chunk)
    }

    fn end_offset(&self, i: usize) -> usize {
        let b = &self.ends[i * 4..i * 4 + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
    }

    /// Number of blocks.
    fn len(&self) -> u64 {
        (self.ends.len() / 4) as u64
    }

    /// Index after its last block.
    fn end(&self) -> u64 {
        self.first + self.len()
    }

    /// The value of block `index`, if this chunk holds it.
    fn get(&self, index: u64) -> Option<&'a [u8]> {
        if index < self.first || index >= self.end() {
            return None;
        }
        let i = (index - self.first) as usize;
        let start = if i == 0 { 0 } else { self.end_offset(i - 1) };
        Some(&self.data[start..self.end_offset(i)])
    }
}

/// The row of `BLOCKS` that stands for one large block of `len` bytes kept in `PIECES`.
fn large_marker(len: u64) -> [u8; 12] {
    let mut marker = [0u8; 12];
    marker[4..].copy_from_slice(&len.to_le_bytes());
    marker
}

/// Encodes consecutive block values as one chunk into `out` (cleared first): their count,
/// the end offset of each, then the values.
fn encode(values: &[&[u8]], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(4 + 4 * values.len() + values.iter().map(|v| v.len()).sum::<usize>());
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    let mut end = 0usize;
    for v in values {
        end += v.len();
        out.extend_from_slice(&(end as u32).to_le_bytes());
    }
    for v in values {
        out.extend_from_slice(v);
    }
}

/// Block values of one database, for reading: the chunks and pieces tables.
pub struct Blocks<'r, C, P> {
    chunks: &'r C,
    pieces: &'r P,
}

impl<C, P> Blocks<'_, C, P>
where
    C: ReadableTable<(u64, u64), &'static [u8]>,
    P: ReadableTable<(u64, u64, u32), &'static [u8]>,
{
    /// Runs `f` on the row of core `id` holding block `index`, if one does.
    fn with_row<R>(
        &self,
        id: u64,
        index: u64,
        f: impl FnOnce(Row<'_>) -> R,
    ) -> Result<Option<R>, StorageError> {
        let Some(row) = self.chunks.range((id, 0)..=(id, index))?.next_back() else {
            return Ok(None);
        };
        let (key, value) = row?;
        let row = Row::parse(key.value().1, value.value())?;
        Ok((index < row.end()).then(|| f(row)))
    }

    /// The bytes of large block `index` of core `id`, `len` long, from its pieces.
    fn large(&self, id: u64, index: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        let corrupt = || StorageError::Corrupt(format!("pieces of block {index}"));
        // The length comes from disk: reserve no more than a sane block up front.
        let mut out = Vec::with_capacity(len.min(PREALLOC_MAX) as usize);
        for (n, piece) in self
            .pieces
            .range((id, index, 0)..=(id, index, u32::MAX))?
            .enumerate()
        {
            let (key, value) = piece?;
            if key.value().2 as usize != n || (out.len() + value.value().len()) as u64 > len {
                return Err(corrupt());
            }
            out.extend_from_slice(value.value());
        }
        if out.len() as u64 != len {
            return Err(corrupt());
        }
        Ok(out)
    }

    /// A copy of block `index` of core `id`, if stored.
    pub fn get(&self, id: u64, index: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let found = self.with_row(id, index, |row| match row {
            Row::Chunk(c) => Ok(c.get(index).map(<[u8]>::to_vec)),
            Row::Large { len, .. } => Err(len),
        })?;
        match found {
            None => Ok(None),
            Some(Ok(v)) => Ok(v),
            Some(Err(len)) => self.large(id, index, len).map(Some),
        }
    }

    /// Whether block `index` of core `id` is stored.
    pub fn has(&self, id: u64, index: u64) -> Result<bool, StorageError> {
        Ok(self.with_row(id, index, |_| ())?.is_some())
    }

    /// Calls `f(index, value)` with a copy of every stored block of core `id` in `start..end`,
    /// in order (a large block is copied once, as it is reassembled).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn for_each(
        &self,
        id: u64,
        start: u64,
        end: u64,
        f: impl FnMut(u64, Vec<u8>),
    ) -> Result<(), StorageError> {
        self.for_each_within(id, start, end, u64::MAX, f)
            .map(|_| ())
    }

    /// Like [`for_each`](Self::for_each), but stops after the block that brings the bytes
    /// handed to `f` to `max_bytes` or more (so at least one block is read). Returns where it
    /// stopped: `end`, or the index after that block.
    pub fn for_each_within(
        &self,
        id: u64,
        start: u64,
        end: u64,
        max_bytes: u64,
        mut f: impl FnMut(u64, Vec<u8>),
    ) -> Result<u64, StorageError> {
        let mut total = 0u64;
        // Visits one row; returns where to stop, once `max_bytes` are handed out.
        let mut visit = |row: Row<'_>| -> Result<Option<u64>, StorageError> {
            let mut give = |i: u64, v: Vec<u8>| {
                total = total.saturating_add(v.len() as u64);
                f(i, v);
                (total >= max_bytes).then_some(i + 1)
            };
            match row {
                Row::Chunk(c) => {
                    for i in c.first.max(start)..c.end().min(end) {
                        if let Some(v) = c.get(i)
                            && let Some(stop) = give(i, v.to_vec())
                        {
                            return Ok(Some(stop));
                        }
                    }
                    Ok(None)
                }
                Row::Large { index, len } => Ok(give(index, self.large(id, index, len)?)),
            }
        };
        if start >= end {
            return Ok(end);
        }
        if let Some(stop) = self.with_row(id, start, &mut visit)?.transpose()?.flatten() {
            return Ok(stop.min(end));
        }
        if start < u64::MAX {
            for row in self.chunks.range((id, start + 1)..(id, end))? {
                let (key, value) = row?;
                if let Some(stop) = visit(Row::parse(key.value().1, value.value())?)? {
                    return Ok(stop.min(end));
                }
            }
        }
        Ok(end)
    }

    /// Stored blocks of core `id` in `start..end`, as sorted ranges.
    pub fn present(
        &self,
        id: u64,
        start: u64,
        end: u64,
    ) -> Result<Vec<std::ops::Range<u64>>, StorageError> {
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
        if let Some((a, b)) = self.with_row(id, start, |r| (r.first(), r.end()))? {
            add(a, b);
        }
        if start < u64::MAX {
            for row in self.chunks.range((id, start + 1)..(id, end))? {
                let (key, value) = row?;
                let r = Row::parse(key.value().1, value.value())?;
                add(r.first(), r.end());
            }
        }
        Ok(out)
    }

    /// Number of stored blocks of core `id` in `start..end`.
    pub fn count(&self, id: u64, start: u64, end: u64) -> Result<u64, StorageError> {
        Ok(self
            .present(id, start, end)?
            .iter()
            .map(|r| r.end - r.start)
            .sum())
    }

    /// The number of stored blocks of core `id` and their bytes (one pass over its rows).
    pub fn totals(&self, id: u64) -> Result<(u64, u64), StorageError> {
        let (mut blocks, mut bytes) = (0u64, 0u64);
        for row in self.chunks.range((id, 0)..=(id, u64::MAX))? {
            let (key, value) = row?;
            let (n, len) = match Row::parse(key.value().1, value.value())? {
                Row::Chunk(c) => (c.len(), c.data.len() as u64),
                Row::Large { len, .. } => (1, len),
            };
            blocks = blocks.saturating_add(n);
            bytes = bytes.saturating_add(len);
        }
        Ok((blocks, bytes))
    }

    /// The first block of core `id` at or after `from` (and before `limit`) not stored.
    pub fn first_missing(&self, id: u64, from: u64, limit: u64) -> Result<u64, StorageError> {
        let mut c = from;
        while c < limit {
            match self.with_row(id, c, |row| row.end())? {
                Some(end) => c = end,
                None => break,
            }
        }
        Ok(c.min(limit))
    }
}

/// The block tables of a read transaction.
pub struct BlocksRead {
    chunks: redb::ReadOnlyTable<(u64, u64), &'static [u8]>,
    pieces: redb::ReadOnlyTable<(u64, u64, u32), &'static [u8]>,
}

/// The type of [`BlocksRead::view`].
pub type ReadView<'r> = Blocks<
    'r,
    redb::ReadOnlyTable<(u64, u64), &'static [u8]>,
    redb::ReadOnlyTable<(u64, u64, u32), &'static [u8]>,
>;

impl BlocksRead {
    /// Opens the block tables in `txn`.
    pub fn open(txn: &ReadTransaction) -> Result<Self, StorageError> {
        Ok(Self {
            chunks: txn.open_table(BLOCKS)?,
            pieces: txn.open_table(PIECES)?,
        })
    }

    /// Read access.
    pub fn view(&self) -> ReadView<'_> {
        Blocks {
            chunks: &self.chunks,
            pieces: &self.pieces,
        }
    }
}

/// The block tables of a write transaction.
pub struct BlocksWrite<'a, 't> {
    chunks: &'a mut BlocksTable<'t>,
    pieces: &'a mut PiecesTable<'t>,
    /// The chunk being encoded, reused for the next chunk of the same write (a row is built
    /// whole, then inserted: redb's `insert_reserve` would zero a buffer of the row's size
    /// and copy it first).
    row: Vec<u8>,
}

impl<'a, 't> BlocksWrite<'a, 't> {
    /// Writes through the two tables.
    pub fn new(chunks: &'a mut BlocksTable<'t>, pieces: &'a mut PiecesTable<'t>) -> Self {
        Self {
            chunks,
            pieces,
            row: Vec::new(),
        }
    }

    /// Read access to what this transaction sees.
    pub fn view(&self) -> Blocks<'_, BlocksTable<'t>, PiecesTable<'t>> {
        Blocks {
            chunks: &*self.chunks,
            pieces: &*self.pieces,
        }
    }

    /// Writes consecutive blocks `first..first + values.len()` of core `id`, none of which may
    /// be stored already, in as few rows as fit.
    pub fn put(&mut self, id: u64, first: u64, values: &[&[u8]]) -> Result<(), StorageError> {
        let mut start = 0;
        while start < values.len() {
            if 8 + values[start].len() > CHUNK_BYTES {
                self.put_large(id, first + start as u64, values[start])?;
                start += 1;
                continue;
            }
            let mut end = start + 1;
            let mut size = 8 + values[start].len();
            while end < values.len() && size + 4 + values[end].len() <= CHUNK_BYTES {
                size += 4 + values[end].len();
                end += 1;
            }
            encode(&values[start..end], &mut self.row);
            self.chunks
                .insert((id, first + start as u64), self.row.as_slice())?;
            start = end;
        }
        Ok(())
    }

    fn put_large(&mut self, id: u64, index: u64, value: &[u8]) -> Result<(), StorageError> {
        self.chunks
            .insert((id, index), large_marker(value.len() as u64).as_slice())?;
        let mut rest = value;
        let mut n = 0u32;
        while !rest.is_empty() {
            let size = if rest.len() >= CHUNK_BYTES {
                CHUNK_BYTES
            } else {
                rest.len().min(TAIL_PIECE_BYTES)
            };
            let (piece, tail) = rest.split_at(size);
            self.pieces.insert((id, index, n), piece)?;
            rest = tail;
            n += 1;
        }
        Ok(())
    }

    /// Writes blocks given as `(index, value)`, sorted by index and none stored already; each
    /// run of consecutive indices goes in as few rows as fit.
    pub fn put_sorted(&mut self, id: u64, blocks: &[(u64, &[u8])]) -> Result<(), StorageError> {
        let mut start = 0;
        while start < blocks.len() {
            let mut end = start + 1;
            while end < blocks.len() && blocks[end].0 == blocks[end - 1].0 + 1 {
                end += 1;
            }
            let values: Vec<&[u8]> = blocks[start..end].iter().map(|(_, v)| *v).collect();
            self.put(id, blocks[start].0, &values)?;
            start = end;
        }
        Ok(())
    }

    /// Removes blocks `start..end` of core `id`; blocks outside the range that shared a chunk
    /// with removed ones are written back.
    pub fn remove(&mut self, id: u64, start: u64, end: u64) -> Result<(), StorageError> {
        if start >= end {
            return Ok(());
        }
        let mut keys = Vec::new();
        if let Some(first) = self.view().with_row(id, start, |r| r.first())? {
            keys.push(first);
        }
        if start < u64::MAX {
            for row in self.chunks.range((id, start + 1)..(id, end))? {
                keys.push(row?.0.value().1);
            }
        }
        for first in keys {
            let Some(bytes) = self.chunks.remove((id, first))?.map(|v| v.value().to_vec()) else {
                continue;
            };
            let chunk = match Row::parse(first, &bytes)? {
                Row::Chunk(c) => c,
                Row::Large { index, .. } => {
                    self.pieces
                        .retain_in((id, index, 0)..=(id, index, u32::MAX), |_, _| false)?;
                    continue;
                }
            };
            let keep =
                |a: u64, b: u64| -> Vec<&[u8]> { (a..b).filter_map(|i| chunk.get(i)).collect() };
            let before = keep(chunk.first, start.min(chunk.end()));
            self.put(id, chunk.first, &before)?;
            let after_start = end.max(chunk.first);
            let after = keep(after_start, chunk.end());
            self.put(id, after_start, &after)?;
        }
        Ok(())
    }

    /// Removes every block of core `id`.
    pub fn remove_core(&mut self, id: u64) -> Result<(), StorageError> {
        self.chunks
            .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
        self.pieces
            .retain_in((id, 0, 0)..=(id, u64::MAX, u32::MAX), |_, _| false)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, backends::InMemoryBackend};

    use super::*;
    use crate::storage::schema;

    fn db() -> redb::Database {
        let db = redb::Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        schema::init(&db).unwrap();
        db
    }

    /// Runs `f` on the block tables of a write transaction and commits.
    fn write(db: &redb::Database, f: impl FnOnce(&mut BlocksWrite<'_, '_>)) {
        let txn = db.begin_write().unwrap();
        {
            let mut chunks = txn.open_table(BLOCKS).unwrap();
            let mut pieces = txn.open_table(PIECES).unwrap();
            f(&mut BlocksWrite::new(&mut chunks, &mut pieces));
        }
        txn.commit().unwrap();
    }

    fn value(i: u64, size: usize) -> Vec<u8> {
        vec![(i % 251) as u8; size]
    }

    /// Blocks `0..n` of core 1 with `size` bytes each, plus a neighbour core 2.
    fn filled(db: &redb::Database, n: u64, size: usize) {
        let values: Vec<Vec<u8>> = (0..n).map(|i| value(i, size)).collect();
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        write(db, |w| {
            w.put(1, 0, &refs).unwrap();
            w.put(2, 0, &refs).unwrap();
        });
    }

    #[test]
    fn chunks_hold_many_small_blocks_and_read_back() {
        let db = db();
        filled(&db, 100, 1024);
        let txn = db.begin_read().unwrap();
        let r = BlocksRead::open(&txn).unwrap();
        let t = r.view();
        let rows = txn
            .open_table(BLOCKS)
            .unwrap()
            .range((1, 0)..(2, 0))
            .unwrap()
            .count();
        assert!(rows < 10, "100 × 1 KiB in {rows} chunks");
        for i in 0..100 {
            assert_eq!(t.get(1, i).unwrap(), Some(value(i, 1024)));
        }
        assert_eq!(t.get(1, 100).unwrap(), None);
        assert_eq!(t.count(1, 0, 200).unwrap(), 100);
        assert_eq!(t.first_missing(1, 0, 1000).unwrap(), 100);
        let mut seen = Vec::new();
        t.for_each(1, 17, 40, |i, v| seen.push((i, v))).unwrap();
        assert_eq!(
            seen,
            (17..40).map(|i| (i, value(i, 1024))).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_large_block_is_cut_into_pieces() {
        let db = db();
        filled(&db, 3, CHUNK_BYTES * 2 + 1);
        let txn = db.begin_read().unwrap();
        assert_eq!(
            txn.open_table(BLOCKS)
                .unwrap()
                .range((1, 0)..(2, 0))
                .unwrap()
                .count(),
            3
        );
        let pieces = txn.open_table(PIECES).unwrap();
        assert_eq!(pieces.range((1, 2, 0)..(1, 3, 0)).unwrap().count(), 3);
        for (_, v) in pieces.iter().unwrap().map(Result::unwrap) {
            assert!(v.value().len() <= CHUNK_BYTES);
        }
        drop(pieces);
        // Full pieces hold CHUNK_BYTES; the rest goes in pieces of at most TAIL_PIECE_BYTES.
        let big = CHUNK_BYTES * 2 + TAIL_PIECE_BYTES + 10;
        write(&db, |w| w.put(1, 3, &[&value(3, big)]).unwrap());
        let txn = db.begin_read().unwrap();
        let pieces = txn.open_table(PIECES).unwrap();
        let sizes: Vec<usize> = pieces
            .range((1, 3, 0)..(1, 4, 0))
            .unwrap()
            .map(|p| p.unwrap().1.value().len())
            .collect();
        assert_eq!(sizes, [CHUNK_BYTES, CHUNK_BYTES, TAIL_PIECE_BYTES, 10]);
        let r = BlocksRead::open(&txn).unwrap();
        assert_eq!(r.view().get(1, 3).unwrap(), Some(value(3, big)));
        let t = r.view();
        assert_eq!(t.get(1, 2).unwrap(), Some(value(2, CHUNK_BYTES * 2 + 1)));
        assert_eq!(t.count(1, 0, 10).unwrap(), 4);
        drop(pieces);
        write(&db, |w| w.remove(1, 1, 2).unwrap());
        let txn = db.begin_read().unwrap();
        let pieces = txn.open_table(PIECES).unwrap();
        assert_eq!(
            pieces.range((1, 1, 0)..(1, 2, 0)).unwrap().count(),
            0,
            "pieces freed"
        );
        let r = BlocksRead::open(&txn).unwrap();
        assert_eq!(r.view().present(1, 0, 10).unwrap(), vec![0..1, 2..4]);
    }

    #[test]
    fn rows_written_with_the_older_16_kib_size_read_back() {
        let db = db();
        let old_piece = 16 * 1024 - 512;
        let big = value(0, old_piece * 3 + 7);
        let small: Vec<Vec<u8>> = (1..16).map(|i| value(i, 1000)).collect();
        let txn = db.begin_write().unwrap();
        {
            let mut chunks = txn.open_table(BLOCKS).unwrap();
            let mut pieces = txn.open_table(PIECES).unwrap();
            let marker = large_marker(big.len() as u64);
            chunks.insert((1, 0), marker.as_slice()).unwrap();
            for (n, p) in big.chunks(old_piece).enumerate() {
                pieces.insert((1, 0, n as u32), p).unwrap();
            }
            let values: Vec<&[u8]> = small.iter().map(Vec::as_slice).collect();
            let mut row = Vec::new();
            encode(&values, &mut row);
            chunks.insert((1, 1), row.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        let txn = db.begin_read().unwrap();
        let r = BlocksRead::open(&txn).unwrap();
        assert_eq!(r.view().get(1, 0).unwrap(), Some(big));
        for (i, v) in small.iter().enumerate() {
            assert_eq!(r.view().get(1, i as u64 + 1).unwrap().as_ref(), Some(v));
        }
    }

    #[test]
    fn remove_keeps_the_neighbours_of_a_chunk() {
        let db = db();
        filled(&db, 100, 1000);
        write(&db, |w| {
            w.remove(1, 10, 20).unwrap();
            w.remove(1, 90, u64::MAX).unwrap();
        });
        let txn = db.begin_read().unwrap();
        let r = BlocksRead::open(&txn).unwrap();
        let t = r.view();
        assert_eq!(t.present(1, 0, 200).unwrap(), vec![0..10, 20..90]);
        for i in (0..10).chain(20..90) {
            assert_eq!(t.get(1, i).unwrap(), Some(value(i, 1000)), "block {i}");
        }
        assert!(!t.has(1, 15).unwrap());
        assert_eq!(t.first_missing(1, 0, 100).unwrap(), 10);
        assert_eq!(t.first_missing(1, 20, 100).unwrap(), 90);
        assert_eq!(
            t.count(2, 0, 100).unwrap(),
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
                prop_oneof![Just(1usize), 0usize..3000, Just(CHUNK_BYTES), Just(40_000)]
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
                write(&db, |w| {
                    match op {
                        Op::Put { start, len, size } => {
                            let new: Vec<(u64, Vec<u8>)> = (start..start + len)
                                .filter(|i| !model.contains_key(i))
                                .map(|i| (i, value(i, size)))
                                .collect();
                            let refs: Vec<(u64, &[u8])> =
                                new.iter().map(|(i, v)| (*i, v.as_slice())).collect();
                            w.put_sorted(1, &refs).unwrap();
                            model.extend(new);
                        }
                        Op::Remove { start, end } => {
                            w.remove(1, start, end).unwrap();
                            model.retain(|i, _| !(start..end).contains(i));
                        }
                    }
                });
            }
            let txn = db.begin_read().unwrap();
            let r = BlocksRead::open(&txn).unwrap();
        let t = r.view();
            for i in 0..400 {
                let stored = t.get(1, i).unwrap();
                proptest::prop_assert_eq!(stored.as_ref(), model.get(&i));
            }
            let mut seen = Vec::new();
            t.for_each(1, 0, 400, |i, v| seen.push((i, v))).unwrap();
            let expected: Vec<(u64, Vec<u8>)> = model.clone().into_iter().collect();
            proptest::prop_assert_eq!(seen, expected);
            proptest::prop_assert_eq!(t.count(1, 0, 400).unwrap(), model.len() as u64);
            let missing = (0..).find(|i| !model.contains_key(i)).unwrap();
            proptest::prop_assert_eq!(t.first_missing(1, 0, 1000).unwrap(), missing);
        }
    }

    #[test]
    fn a_large_block_with_bad_pieces_is_corrupt_not_a_panic() {
        let db = db();
        write(&db, |w| {
            w.chunks
                .insert((1, 0), large_marker(u64::MAX).as_slice())
                .unwrap();
            w.chunks
                .insert((1, 1), large_marker(10).as_slice())
                .unwrap();
            w.pieces.insert((1, 1, 0), [1u8; 4].as_slice()).unwrap();
            w.pieces.insert((1, 1, 2), [1u8; 6].as_slice()).unwrap();
        });
        let txn = db.begin_read().unwrap();
        let r = BlocksRead::open(&txn).unwrap();
        for i in [0, 1] {
            assert!(
                matches!(r.view().get(1, i), Err(StorageError::Corrupt(_))),
                "block {i}"
            );
        }
        assert!(matches!(
            r.view().for_each(1, 0, 2, |_, _| {}),
            Err(StorageError::Corrupt(_))
        ));
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
        // Rows whose blocks would end past the largest index (found by the fuzzer: computing
        // their end overflowed).
        let two = [2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 7, 8];
        assert!(Chunk::parse(u64::MAX - 2, &two).is_ok());
        assert!(matches!(
            Chunk::parse(u64::MAX - 1, &two),
            Err(StorageError::Corrupt(_))
        ));
        assert!(matches!(
            Row::parse(u64::MAX, &large_marker(5)),
            Err(StorageError::Corrupt(_))
        ));
    }
}

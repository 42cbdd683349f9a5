//! The storage of a database in memory: redb's file as fixed-size chunks. It grows without
//! copying what it holds, and holds at most one chunk more than its length. (redb's own
//! in-memory backend is one `Vec` grown by doubling: up to twice the database's size, and a
//! copy of all of it at each doubling.)

use std::{
    io,
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use redb::StorageBackend;

use super::StorageOptions;

/// Bytes in one chunk.
const CHUNK: usize = 1 << 20;

/// redb's page cache of a database in memory, unless its options name a size. redb keeps
/// every page it writes in its cache (up to 1 GiB by default), which for a database held in
/// memory is a second copy of it: at 10,000 cores on each of two nodes, a sixth of the
/// process. A small cache still holds the pages read again and again (the tables' roots and
/// branches) and up to half of it the pages a write changes before its commit (redb writes
/// the rest into the chunks early). A page that is not cached is copied out of the chunks
/// when it is read: a block row's page is 64 or 128 KiB, so single `get`s of 1 KiB blocks
/// from 100 MiB run at 0.7–0.95 of the speed of a cache that holds everything in order and
/// 0.4–0.6 at random. Reads of a range (serving runs, `get_stored`) copy each page once.
const CACHE_BYTES: usize = 8 << 20;

/// `opts` for a database in memory: redb's page cache is [`CACHE_BYTES`] unless they name a
/// size.
pub(crate) fn options(mut opts: StorageOptions) -> StorageOptions {
    opts.cache_bytes = opts.cache_bytes.or(Some(CACHE_BYTES));
    opts
}

/// A redb storage backend that keeps the database in memory, in chunks of [`CHUNK`] bytes.
#[derive(Default)]
pub(crate) struct ChunkedMemory {
    file: RwLock<Chunks>,
}

impl std::fmt::Debug for ChunkedMemory {
    /// Its length only: never the database's bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkedMemory")
            .field("len", &self.read_file().len)
            .finish()
    }
}

#[derive(Default)]
struct Chunks {
    chunks: Vec<Box<[u8]>>,
    len: u64,
}

/// The pieces of `offset..offset + len` in a file of `file_len` bytes, as (chunk, start
/// within it, bytes), or an error if they reach past its end.
fn pieces(
    file_len: u64,
    offset: u64,
    len: usize,
) -> io::Result<impl Iterator<Item = (usize, usize, usize)>> {
    let end = u64::try_from(len)
        .ok()
        .and_then(|l| offset.checked_add(l))
        .filter(|end| *end <= file_len)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{len} bytes at {offset} reach past the end of the database ({file_len})"),
            )
        })?;
    let mut pos = offset;
    Ok(std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        // Both below the file's length, which the chunks in memory hold.
        let chunk = (pos / CHUNK as u64) as usize;
        let within = (pos % CHUNK as u64) as usize;
        let n = (CHUNK - within).min((end - pos) as usize);
        pos += n as u64;
        Some((chunk, within, n))
    }))
}

impl ChunkedMemory {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn read_file(&self) -> RwLockReadGuard<'_, Chunks> {
        self.file.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_file(&self) -> RwLockWriteGuard<'_, Chunks> {
        self.file.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl StorageBackend for ChunkedMemory {
    fn len(&self) -> io::Result<u64> {
        Ok(self.read_file().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let file = self.read_file();
        let mut done = 0;
        for (chunk, within, n) in pieces(file.len, offset, out.len())? {
            out[done..done + n].copy_from_slice(&file.chunks[chunk][within..within + n]);
            done += n;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut file = self.write_file();
        let chunks = usize::try_from(len.div_ceil(CHUNK as u64))
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "database too large"))?;
        if len < file.len {
            file.chunks.truncate(chunks);
            // What lies past the new end reads as zeros if the file grows again. Only what
            // was within the old length is zeroed: the rest of the chunk was never written,
            // and writing zeros there would make the system back those pages.
            let tail = (len % CHUNK as u64) as usize;
            let old_len = file.len;
            if tail > 0
                && let Some(last) = file.chunks.last_mut()
            {
                // The last chunk starts at `len - tail`; the old file ended past `len`.
                let old_end =
                    usize::try_from(old_len - (len - tail as u64)).map_or(CHUNK, |e| e.min(CHUNK));
                last[tail..old_end].fill(0);
            }
        } else {
            // Zeroed on allocation: for chunks this large the allocator maps fresh pages,
            // which the system backs only once written (unless it reuses freed memory).
            let more = chunks.saturating_sub(file.chunks.len());
            file.chunks.reserve(more);
            for _ in 0..more {
                file.chunks.push(vec![0; CHUNK].into_boxed_slice());
            }
        }
        file.len = len;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut file = self.write_file();
        let mut done = 0;
        for (chunk, within, n) in pieces(file.len, offset, data.len())? {
            file.chunks[chunk][within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What the backend does to a file, for the model to do too.
    #[derive(Debug, Clone)]
    enum Step {
        SetLen(u64),
        Write(u64, Vec<u8>),
        Read(u64, usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        let at = 0..(3 * CHUNK as u64 + 100);
        prop_oneof![
            at.clone().prop_map(Step::SetLen),
            (at.clone(), proptest::collection::vec(any::<u8>(), 0..3000))
                .prop_map(|(o, d)| Step::Write(o, d)),
            (at, 0..3000usize).prop_map(|(o, n)| Step::Read(o, n)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The chunks behave as one growable zero-filled `Vec`: the same bytes read back, the
        /// same refusals past the end, zeros where a shrunk file grew again.
        #[test]
        fn chunks_behave_as_one_vec(steps in proptest::collection::vec(step(), 1..40)) {
            let backend = ChunkedMemory::new();
            let mut model: Vec<u8> = Vec::new();
            for s in steps {
                match s {
                    Step::SetLen(len) => {
                        backend.set_len(len).unwrap();
                        model.resize(len as usize, 0);
                    }
                    Step::Write(offset, data) => {
                        let fits = offset as usize + data.len() <= model.len();
                        prop_assert_eq!(backend.write(offset, &data).is_ok(), fits);
                        if fits {
                            model[offset as usize..offset as usize + data.len()]
                                .copy_from_slice(&data);
                        }
                    }
                    Step::Read(offset, n) => {
                        let mut out = vec![0xAA; n];
                        let fits = offset as usize + n <= model.len();
                        prop_assert_eq!(backend.read(offset, &mut out).is_ok(), fits);
                        if fits {
                            prop_assert_eq!(&out[..], &model[offset as usize..offset as usize + n]);
                        }
                    }
                }
                prop_assert_eq!(backend.len().unwrap(), model.len() as u64);
            }
        }
    }

    /// A write across a chunk boundary, a shrink into the first chunk and a regrowth: the
    /// bytes cut off read as zeros; an offset near `u64::MAX` is refused, not wrapped.
    #[test]
    fn across_a_boundary_and_back() {
        let b = ChunkedMemory::new();
        b.set_len(2 * CHUNK as u64).unwrap();
        let data = vec![7u8; 100];
        let at = CHUNK as u64 - 50;
        b.write(at, &data).unwrap();
        let mut out = vec![0; 100];
        b.read(at, &mut out).unwrap();
        assert_eq!(out, data);
        b.set_len(at + 10).unwrap();
        b.set_len(2 * CHUNK as u64).unwrap();
        b.read(at, &mut out).unwrap();
        assert_eq!(&out[..10], &[7; 10]);
        assert!(out[10..].iter().all(|b| *b == 0), "{out:?}");
        assert!(b.read(u64::MAX - 10, &mut out).is_err());
        assert!(b.write(u64::MAX - 10, &data).is_err());
    }

    /// A shrink to a whole number of chunks and a regrowth; a read across three chunks;
    /// empty reads at the end and past it.
    #[test]
    fn whole_chunks_and_the_end() {
        let b = ChunkedMemory::new();
        b.set_len(3 * CHUNK as u64 + 10).unwrap();
        let data: Vec<u8> = (0..CHUNK + 200).map(|i| (i % 251) as u8).collect();
        let at = CHUNK as u64 - 100;
        b.write(at, &data).unwrap();
        let mut out = vec![0; data.len()];
        b.read(at, &mut out).unwrap();
        assert_eq!(out, data, "a read across three chunks");
        b.set_len(CHUNK as u64).unwrap();
        b.set_len(3 * CHUNK as u64).unwrap();
        let mut out = vec![0xAA; 300];
        b.read(at, &mut out).unwrap();
        assert_eq!(&out[..100], &data[..100], "kept below the cut");
        assert!(out[100..].iter().all(|b| *b == 0), "zeros past the cut");
        let len = b.len().unwrap();
        b.read(len, &mut []).unwrap();
        assert!(b.read(len + 1, &mut []).is_err());
        assert_eq!(format!("{b:?}"), format!("ChunkedMemory {{ len: {len} }}"));
    }

    /// A whole database on it: what is committed reads back.
    #[test]
    fn a_database_on_chunks() {
        use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};
        const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");
        let db = redb::Database::builder()
            .create_with_backend(ChunkedMemory::new())
            .unwrap();
        let value = vec![3u8; 5000];
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(T).unwrap();
            for i in 0..1000u64 {
                t.insert(i, value.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(T).unwrap();
        assert_eq!(t.len().unwrap(), 1000);
        assert_eq!(t.get(999).unwrap().unwrap().value(), value.as_slice());
    }

    /// The chunks, counting the bytes redb reads from them.
    #[derive(Debug)]
    struct CountingReads {
        inner: ChunkedMemory,
        read: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl StorageBackend for CountingReads {
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            self.read
                .fetch_add(out.len(), std::sync::atomic::Ordering::Relaxed);
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.inner.write(offset, data)
        }
    }

    /// A database in memory keeps a small page cache unless told otherwise: most of the
    /// 15 MiB written below is read back from the chunks, not from a second copy in redb's
    /// cache (which redb's default would keep), and a size the options name is kept.
    #[test]
    fn a_memory_database_does_not_keep_a_second_copy_of_what_it_writes() {
        use std::sync::{Arc, atomic::Ordering};

        use redb::{ReadableDatabase, TableDefinition};

        use crate::storage::{Db, Storage, StorageOptions};

        const SCRATCH: TableDefinition<u64, &[u8]> = TableDefinition::new("scratch");
        // 60 KiB values: one 64 KiB page each, 16 MiB of pages in all.
        let value = vec![7u8; 60 << 10];
        let read_back_from_chunks = |opts: StorageOptions| {
            let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let backend = CountingReads {
                inner: ChunkedMemory::new(),
                read: read.clone(),
            };
            let storage = Storage::memory_on(backend, opts).unwrap();
            let Ok(Db::Writable(db)) = storage.db() else {
                panic!("a database in memory is writable");
            };
            let tx = db.begin_write().unwrap();
            {
                let mut table = tx.open_table(SCRATCH).unwrap();
                for i in 0..256u64 {
                    table.insert(i, value.as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
            read.store(0, Ordering::Relaxed);
            let tx = db.begin_read().unwrap();
            let table = tx.open_table(SCRATCH).unwrap();
            for i in 0..256u64 {
                assert_eq!(table.get(i).unwrap().unwrap().value(), value.as_slice());
            }
            read.load(Ordering::Relaxed)
        };
        let small = read_back_from_chunks(StorageOptions::default());
        assert!(small >= 8 << 20, "only {small} bytes read from the chunks");
        let named = read_back_from_chunks(StorageOptions {
            cache_bytes: Some(256 << 20),
            ..Default::default()
        });
        assert!(named < 1 << 20, "{named} bytes read with a 256 MiB cache");
    }
}

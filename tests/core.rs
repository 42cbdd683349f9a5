//! Hypercore and Corestore behaviour on real redb files and the in-memory backend.

mod common;

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use iroh_hypercore::{
    CoreEvent, CoreKind, CoreOptions, Corestore, Durability, Error, Hypercore, StoreOptions,
    storage::{Storage, StorageError, StorageOptions, test_view as schema},
    tree::{IndexRequest, ProofRequest, UpgradeRequest},
};
use n0_future::{FuturesUnordered, StreamExt};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Results of the different operations held in flight at once.
#[derive(Debug)]
enum Done {
    Appended(u64),
    Got(u64, Option<Vec<u8>>),
    Proved(u64),
}

/// Many in-flight operations of one core, stored next to each other in a struct, as a
/// replication engine stores them.
struct InFlight {
    work: FuturesUnordered<Pin<Box<dyn Future<Output = iroh_hypercore::Result<Done>> + Send>>>,
}

impl InFlight {
    fn push(&mut self, f: impl Future<Output = iroh_hypercore::Result<Done>> + Send + 'static) {
        self.work.push(Box::pin(f));
    }
}

#[tokio::test]
async fn many_owned_futures_of_one_core_in_flight() {
    let store = Corestore::memory().await.unwrap();
    let core = store.get_named("inflight").await.unwrap();
    core.append_batch((0..10u8).map(|i| vec![i])).await.unwrap();

    let mut inflight = InFlight {
        work: FuturesUnordered::new(),
    };
    for i in 0..50u8 {
        let append = core.append(vec![100 + i]);
        inflight.push(async move { Ok(Done::Appended(append.await?.length)) });
        let get = core.get(u64::from(i % 10));
        inflight
            .push(async move { Ok(Done::Got(u64::from(i % 10), get.await?.map(|b| b.to_vec()))) });
        let proof = core.create_proof(ProofRequest {
            block: Some(IndexRequest {
                index: u64::from(i % 10),
                nodes: 0,
            }),
            upgrade: Some(UpgradeRequest {
                start: 0,
                length: 10,
            }),
            ..Default::default()
        });
        inflight
            .push(async move { Ok(Done::Proved(proof.await?.upgrade.map_or(0, |u| u.length))) });
    }
    // The struct is 'static + Send: drive it on another task.
    let results = tokio::time::timeout(
        TIMEOUT,
        tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(r) = inflight.work.next().await {
                out.push(r.unwrap());
            }
            out
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(results.len(), 150);
    let mut lengths: Vec<u64> = results
        .iter()
        .filter_map(|d| match d {
            Done::Appended(l) => Some(*l),
            _ => None,
        })
        .collect();
    lengths.sort();
    assert_eq!(lengths, (11..=60).collect::<Vec<_>>());
    for d in &results {
        match d {
            Done::Got(i, v) => assert_eq!(v.as_deref(), Some(&[*i as u8][..])),
            Done::Proved(len) => assert_eq!(*len, 10),
            Done::Appended(_) => {}
        }
    }
    // Appends land in call order.
    for i in 0..50u64 {
        assert_eq!(
            core.get(10 + i).await.unwrap().unwrap().as_ref(),
            &[100 + i as u8]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Corestore::persistent(dir.path()).await.unwrap();
    let core = store.get_named("concurrent").await.unwrap();
    let before = store.stats();
    let mut tasks = Vec::new();
    for t in 0..50u32 {
        let core = core.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..20u32 {
                let value = format!("{t}:{i}").into_bytes();
                let outcome = core.append(value.clone()).await.unwrap();
                out.push((outcome.length, value));
            }
            out
        }));
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.extend(tokio::time::timeout(TIMEOUT, t).await.unwrap().unwrap());
    }
    assert_eq!(acknowledged.len(), 1000);
    assert_eq!(core.info().length, 1000);
    // Each acknowledged length is unique and holds exactly the value appended.
    acknowledged.sort();
    for (i, (length, value)) in acknowledged.iter().enumerate() {
        assert_eq!(*length, i as u64 + 1);
        assert_eq!(
            core.get(length - 1).await.unwrap().unwrap().as_ref(),
            value.as_slice()
        );
    }
    let stats = store.stats();
    let commits = stats.commits - before.commits;
    assert!(
        commits < 1000,
        "group commit: {commits} commits for 1000 appends"
    );
    assert_eq!(
        stats.durable_commits - before.durable_commits,
        commits,
        "default durability fsyncs every commit"
    );
    // Every block verifies on a fresh reader.
    let reader = common::verified_reader(&core).await;
    for i in (0..1000).step_by(37) {
        common::fetch_block(&core, &reader, i).await;
    }
}

/// `get_stored` reads the run of stored blocks from the range's start: it ends at a gap, at
/// the log's length, and after the block that reaches `max_bytes`; large blocks (kept in
/// pieces) come whole.
#[tokio::test]
async fn get_stored_reads_the_run_from_the_start_of_a_range() {
    let dir = tempfile::tempdir().unwrap();
    let store = Corestore::persistent(dir.path()).await.unwrap();
    let core = store.get_named("log").await.unwrap();
    let big = vec![9u8; 300_000];
    core.append_batch((0..10u8).map(|i| vec![i; 100]))
        .await
        .unwrap();
    core.append(big.clone()).await.unwrap();
    core.append(b"last".to_vec()).await.unwrap();
    core.clear(4, 6).await.unwrap();

    let run = core.get_stored(0..100, u64::MAX).await.unwrap();
    assert_eq!(run.len(), 4, "up to the gap");
    assert!(
        run.iter()
            .enumerate()
            .all(|(i, b)| b[..] == [i as u8; 100][..])
    );
    assert_eq!(stored_count(&core, 4..100, u64::MAX).await, 0);
    let run = core.get_stored(6..100, u64::MAX).await.unwrap();
    assert_eq!(run.len(), 6, "to the length");
    assert_eq!(run[4], big, "a large block whole");
    assert_eq!(&run[5][..], b"last");
    assert_eq!(stored_count(&core, 6..8, u64::MAX).await, 2, "to the end");
    assert_eq!(stored_count(&core, 0..100, 250).await, 3, "to max_bytes");
    assert_eq!(stored_count(&core, 0..100, 0).await, 1, "one at least");
    assert_eq!(stored_count(&core, 12..u64::MAX, u64::MAX).await, 0);
    let (start, end) = (5, 3);
    assert_eq!(stored_count(&core, start..end, u64::MAX).await, 0);
}

/// How many blocks `get_stored` reads from `range` within `max_bytes`.
async fn stored_count(core: &Hypercore, range: std::ops::Range<u64>, max_bytes: u64) -> usize {
    core.get_stored(range, max_bytes).await.unwrap().len()
}

#[tokio::test]
async fn reopen_preserves_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (key, compat_key, hash, sig, info) = {
        let store = Corestore::persistent(dir.path()).await.unwrap();
        let core = store.get_named("log").await.unwrap();
        core.append_batch((0..100u32).map(|i| i.to_le_bytes().to_vec()))
            .await
            .unwrap();
        core.truncate(90).await.unwrap();
        core.append(b"after".to_vec()).await.unwrap();
        core.clear(10, 20).await.unwrap();
        let compat = store
            .create(CoreOptions {
                kind: CoreKind::Compat,
                ..Default::default()
            })
            .await
            .unwrap();
        compat.append(b"c".to_vec()).await.unwrap();
        let out = (
            core.key(),
            compat.key(),
            core.tree_hash(),
            core.signature(),
            core.info(),
        );
        store.close().await.unwrap();
        assert!(matches!(
            core.append(b"x".to_vec()).await,
            Err(Error::Closed)
        ));
        out
    };
    let store = Corestore::persistent(dir.path()).await.unwrap();
    let mut keys = store.list().await.unwrap();
    keys.sort();
    let mut expected = vec![key, compat_key];
    expected.sort();
    assert_eq!(keys, expected);
    let core = store.get_named("log").await.unwrap();
    assert_eq!(core.key(), key);
    assert_eq!(core.info(), info);
    assert_eq!(info.length, 91);
    assert_eq!(info.fork, 1);
    assert_eq!(info.contiguous_length, 10);
    assert_eq!(core.tree_hash(), hash);
    assert_eq!(core.signature(), sig);
    assert_eq!(
        core.get(5).await.unwrap().unwrap().as_ref(),
        &5u32.to_le_bytes()
    );
    assert_eq!(core.get(15).await.unwrap(), None);
    assert_eq!(core.get(90).await.unwrap().unwrap().as_ref(), b"after");
    assert!(!core.has(0, 91).await.unwrap());
    assert!(core.has(20, 91).await.unwrap());
    assert_eq!(core.seek(4 * 50 + 1).await.unwrap(), (50, 1));
    // Appending after reopen continues the same log.
    core.append(b"more".to_vec()).await.unwrap();
    assert_eq!(core.info().length, 92);
    let compat = store.get(compat_key).await.unwrap().unwrap();
    assert_eq!(compat.info().kind, Some(CoreKind::Compat));
    assert!(compat.writable());
}

/// Blocks of every size class (tiny, chunked, exactly a power of two, several pieces) read
/// back after clear, truncate and reopen, and a reader verifies them all.
#[tokio::test]
async fn blocks_of_every_size_survive_clear_truncate_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [0usize, 1, 1024, 16 * 1024, 65_536, 100_000, 1 << 20, 3];
    let block = |i: usize| vec![(i * 7 + 1) as u8; sizes[i % sizes.len()]];
    let key = {
        let store = Corestore::persistent(dir.path()).await.unwrap();
        let core = store.get_named("sizes").await.unwrap();
        core.append_batch((0..12).map(block)).await.unwrap();
        for i in 12..16 {
            core.append(block(i)).await.unwrap();
        }
        core.clear(5, 7).await.unwrap();
        core.truncate(14).await.unwrap();
        let key = core.key();
        store.close().await.unwrap();
        key
    };
    let store = Corestore::persistent(dir.path()).await.unwrap();
    let core = store.get(key).await.unwrap().unwrap();
    assert_eq!(core.info().length, 14);
    for i in 0..14u64 {
        let expected = (!(5..7).contains(&i)).then(|| block(i as usize));
        assert_eq!(
            core.get(i).await.unwrap().map(|b| b.to_vec()),
            expected,
            "block {i}"
        );
    }
    assert!(matches!(core.get(14).await, Err(Error::OutOfRange { .. })));
    assert!(core.has(7, 14).await.unwrap());
    assert!(!core.has(4, 8).await.unwrap());

    // A fresh reader verifies and stores every large block from proofs.
    let reader_store = Corestore::memory().await.unwrap();
    let reader = reader_store.get_remote(key).await.unwrap();
    for i in (0..14u64).filter(|i| !(5..7).contains(i)) {
        let proof = core
            .create_proof(ProofRequest {
                fork: if i == 0 { 0 } else { reader.info().fork },
                block: Some(IndexRequest {
                    index: i,
                    nodes: iroh_hypercore::tree::run_proof_levels(i, i, 14),
                }),
                upgrade: (i == 0).then_some(UpgradeRequest {
                    start: 0,
                    length: 14,
                }),
                manifest: i == 0,
                ..Default::default()
            })
            .await
            .unwrap();
        reader.verify_and_apply_proof(proof).await.unwrap();
        assert_eq!(
            reader.get(i).await.unwrap().map(|b| b.to_vec()),
            Some(block(i as usize))
        );
    }
}

#[tokio::test]
async fn events_report_appends_truncates_and_clears() {
    let store = Corestore::memory().await.unwrap();
    let core = store.get_named("events").await.unwrap();
    let mut events = core.subscribe();
    core.append(b"a".to_vec()).await.unwrap();
    core.append_batch(vec![b"b".to_vec(), b"c".to_vec()])
        .await
        .unwrap();
    core.truncate(1).await.unwrap();
    core.clear(0, 1).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.push(
            tokio::time::timeout(TIMEOUT, events.next())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(
        seen,
        vec![
            CoreEvent::Append {
                length: 1,
                byte_length: 1,
                fork: 0
            },
            CoreEvent::Append {
                length: 3,
                byte_length: 3,
                fork: 0
            },
            CoreEvent::Truncate { length: 1, fork: 1 },
            CoreEvent::Clear { start: 0, end: 1 },
        ]
    );
}

#[tokio::test]
async fn bad_arguments_are_clear_errors() {
    let store = Corestore::memory().await.unwrap();
    let core = store.get_named("x").await.unwrap();
    core.append(b"abc".to_vec()).await.unwrap();
    assert!(matches!(
        core.get(1).await,
        Err(Error::OutOfRange {
            index: 1,
            length: 1
        })
    ));
    assert!(matches!(
        core.get(u64::MAX).await,
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        core.seek(3).await,
        Err(Error::ByteOutOfRange { .. })
    ));
    assert!(matches!(
        core.truncate(2).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(
        core.create_proof(ProofRequest {
            block: Some(IndexRequest { index: 5, nodes: 0 }),
            ..Default::default()
        })
        .await
        .is_err()
    );
    assert!(
        core.create_proof(ProofRequest {
            upgrade: Some(UpgradeRequest {
                start: 0,
                length: u64::MAX
            }),
            ..Default::default()
        })
        .await
        .is_err()
    );
    let reader = store.get_remote([7; 32]).await.unwrap();
    assert!(!reader.writable());
    assert!(matches!(
        reader.append(b"no".to_vec()).await,
        Err(Error::NotWritable)
    ));
    assert!(matches!(reader.truncate(0).await, Err(Error::NotWritable)));
    // A proof of another core is rejected by the reader.
    let proof = core.create_proof(common::upgrade_request(1)).await.unwrap();
    assert!(reader.verify_and_apply_proof(proof).await.is_err());
    assert_eq!(reader.info().length, 0);
}

#[tokio::test]
async fn corrupt_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cores.redb"), vec![0x5a; 8192]).unwrap();
    let err = Corestore::persistent(dir.path()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Storage(StorageError::Corrupt(_) | StorageError::Database(_))
        ),
        "{err}"
    );

    // A redb file of another schema version.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cores.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(schema::META)
            .unwrap()
            .insert(schema::META_SCHEMA_VERSION, 99u32.to_le_bytes().as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Corestore::persistent(dir.path()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Storage(StorageError::SchemaMismatch {
                found: 99,
                expected: schema::SCHEMA_VERSION
            })
        ),
        "{err}"
    );

    // A corrupt core header is an error, not a panic.
    let dir = tempfile::tempdir().unwrap();
    let key = {
        let store = Corestore::persistent(dir.path()).await.unwrap();
        let core = store.get_named("h").await.unwrap();
        core.append(b"x".to_vec()).await.unwrap();
        store.close().await.unwrap();
        core.key()
    };
    {
        let db = redb::Database::create(dir.path().join("cores.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(schema::HEADERS)
            .unwrap()
            .insert(0u64, [0xffu8; 5].as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = Corestore::persistent(dir.path()).await.unwrap();
    let err = store.get(key).await.unwrap_err();
    assert!(
        matches!(err, Error::Storage(StorageError::Corrupt(_))),
        "{err}"
    );
}

#[tokio::test]
async fn delete_purges_every_byte_of_one_core() {
    let dir = tempfile::tempdir().unwrap();
    let (gone, kept) = {
        let store = Corestore::persistent(dir.path()).await.unwrap();
        let a = store.get_named("a").await.unwrap();
        let b = store.get_named("b").await.unwrap();
        a.append_batch((0..100u8).map(|i| vec![i; 10]))
            .await
            .unwrap();
        // Large blocks live in pieces: those must go too.
        a.append(vec![1u8; 100_000]).await.unwrap();
        b.append_batch((0..10u8).map(|i| vec![i; 10]))
            .await
            .unwrap();
        store.delete(a.key()).await.unwrap();
        assert!(matches!(
            a.append(b"late".to_vec()).await,
            Err(Error::Closed)
        ));
        assert!(matches!(
            store.delete(a.key()).await,
            Err(Error::NotFound(_))
        ));
        let out = (a.key(), b.key());
        store.close().await.unwrap();
        out
    };
    // Scan the tables directly: only core b (id 1) is left.
    let db = redb::Database::create(dir.path().join("cores.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let cores = txn.open_table(schema::CORES).unwrap();
    assert!(cores.get(gone).unwrap().is_none());
    assert_eq!(cores.get(kept).unwrap().unwrap().value(), 1);
    assert_eq!(txn.open_table(schema::HEADERS).unwrap().len().unwrap(), 1);
    for item in txn.open_table(schema::NODES).unwrap().iter().unwrap() {
        assert_eq!(
            item.unwrap().0.value().0,
            1,
            "node of the deleted core left"
        );
    }
    let stored = schema::BlocksRead::open(&txn).unwrap();
    assert_eq!(stored.view().count(1, 0, u64::MAX).unwrap(), 10);
    for item in txn.open_table(schema::PIECES).unwrap().iter().unwrap() {
        assert_eq!(
            item.unwrap().0.value().0,
            1,
            "piece of the deleted core left"
        );
    }
    let blocks = txn.open_table(schema::BLOCKS).unwrap();
    for item in blocks.iter().unwrap() {
        assert_eq!(
            item.unwrap().0.value().0,
            1,
            "block of the deleted core left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_cores_open_and_list_lazily() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        durability: Durability::Relaxed,
        ..Default::default()
    };
    let mut expected = Vec::new();
    {
        let store = Corestore::persistent_with(dir.path(), opts.clone())
            .await
            .unwrap();
        for chunk in 0..10 {
            let mut creating = Vec::new();
            for i in 0..1000 {
                let store = store.clone();
                creating.push(tokio::spawn(async move {
                    let core = store.get_named(&format!("core-{chunk}-{i}")).await.unwrap();
                    core.append(b"x".to_vec()).await.unwrap();
                    core.key()
                }));
            }
            for c in creating {
                expected.push(c.await.unwrap());
            }
        }
        store.close().await.unwrap();
    }
    let store = Corestore::persistent_with(dir.path(), opts).await.unwrap();
    let mut keys = store.list().await.unwrap();
    keys.sort();
    expected.sort();
    assert_eq!(keys.len(), 10_000);
    assert_eq!(keys, expected);
    // Only the core asked for is loaded.
    let one = store.get(keys[1234]).await.unwrap().unwrap();
    assert_eq!(one.info().length, 1);
}

/// A redb backend in memory that fails writes past a byte quota, like a full disk. Its bytes
/// outlive the database, so the store can be reopened on them.
#[derive(Debug, Clone)]
struct QuotaBackend {
    file: common::mem_file::MemFile,
    limit: Arc<AtomicU64>,
    /// Bytes read so far.
    reads: Arc<AtomicU64>,
}

impl QuotaBackend {
    fn unlimited() -> Self {
        Self {
            file: Default::default(),
            limit: Arc::new(AtomicU64::new(u64::MAX)),
            reads: Default::default(),
        }
    }
}

impl QuotaBackend {
    fn full(&self, end: u64) -> std::io::Result<()> {
        if end > self.limit.load(Ordering::Relaxed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "disk full",
            ));
        }
        Ok(())
    }
}

impl redb::StorageBackend for QuotaBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.reads.fetch_add(out.len() as u64, Ordering::Relaxed);
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.full(len)?;
        self.file.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn write(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.full(offset + bytes.len() as u64)?;
        self.file.write(offset, bytes)
    }
}

#[tokio::test]
async fn a_full_disk_fails_appends_cleanly() {
    let backend = QuotaBackend::unlimited();
    let open = |b: &QuotaBackend| {
        let storage = Storage::with_backend(b.clone(), StorageOptions::default()).unwrap();
        Corestore::with_storage(storage, None)
    };
    let store = open(&backend).await.unwrap();
    let core = store.get_named("full").await.unwrap();
    core.append_batch((0..10u8).map(|i| vec![i; 100]))
        .await
        .unwrap();
    let info = core.info();
    let hash = core.tree_hash();

    backend
        .limit
        .store(backend.file.len().unwrap(), Ordering::Relaxed);
    let err = core.append(vec![1u8; 4 << 20]).await.unwrap_err();
    assert!(
        matches!(err, Error::Storage(StorageError::Io(_))) && err.is_disk_full(),
        "the I/O error's kind is kept: {err}"
    );
    assert_eq!(core.info(), info, "nothing of the failed append is visible");
    assert_eq!(core.tree_hash(), hash);
    assert!(matches!(core.get(10).await, Err(Error::OutOfRange { .. })));
    // redb wants a reopen after an I/O error: writes keep failing clearly until then.
    assert!(core.append(b"small".to_vec()).await.is_err());
    drop(core);
    let _ = store.close().await;

    // With room again, the reopened log continues where it was, consistent.
    backend.limit.store(u64::MAX, Ordering::Relaxed);
    let store = open(&backend).await.unwrap();
    let core = store.get_named("full").await.unwrap();
    assert_eq!(core.info(), info);
    let outcome = core.append(b"next".to_vec()).await.unwrap();
    assert_eq!(outcome.length, 11);
    assert_eq!(core.get(10).await.unwrap().unwrap().as_ref(), b"next");
    assert_eq!(
        core.get(9).await.unwrap().unwrap().as_ref(),
        &[9u8; 100][..]
    );
    let reader = common::verified_reader(&core).await;
    common::fetch_block(&core, &reader, 10).await;
    assert_eq!(reader.get(10).await.unwrap().unwrap().as_ref(), b"next");
}

#[tokio::test]
async fn the_page_cache_size_is_applied() {
    /// Bytes the store reads from its backend to read back 4 MiB it just wrote.
    async fn read_back(cache_bytes: Option<usize>) -> u64 {
        let backend = QuotaBackend::unlimited();
        let opts = StorageOptions {
            cache_bytes,
            ..Default::default()
        };
        let storage = Storage::with_backend(backend.clone(), opts).unwrap();
        let store = Corestore::with_storage(storage, None).await.unwrap();
        let core = store.get_named("cached").await.unwrap();
        for b in 0..4u32 {
            core.append_batch((0..1024u32).map(|i| (b * 1024 + i).to_be_bytes().repeat(256)))
                .await
                .unwrap();
        }
        let before = backend.reads.load(Ordering::Relaxed);
        for i in 0..4096u32 {
            let block = core.get(i.into()).await.unwrap().unwrap();
            assert_eq!(block, i.to_be_bytes().repeat(256));
        }
        backend.reads.load(Ordering::Relaxed) - before
    }
    let default = read_back(None).await;
    let small = read_back(Some(256 * 1024)).await;
    assert!(default < 1 << 20, "default cache read {default} bytes");
    assert!(small > 2 << 20, "a 256 KiB cache read only {small} bytes");
}

/// A store in memory keeps a small page cache (8 MiB), so a batch larger than half of it has
/// its pages written out before its commit, and reads running beside it miss the cache. The
/// log must come out the same as on a store whose cache holds everything: every block, the
/// tree after a truncate, a clear, and appends after both, relaxed and durable.
#[tokio::test]
async fn a_memory_store_writes_more_than_its_cache_without_losing_anything() {
    /// 3,000 blocks of 4 KiB (12 MiB) in one batch while a task reads, then a truncate, a
    /// clear and 1,000 more blocks in batches of 100: the tree hash and the blocks kept.
    async fn run(
        durability: Durability,
        cache_bytes: Option<usize>,
    ) -> ([u8; 32], Vec<Option<Vec<u8>>>) {
        let store = Corestore::memory_with(StoreOptions {
            durability,
            cache_bytes,
            ..Default::default()
        })
        .await
        .unwrap();
        let core = store.get_named("large").await.unwrap();
        let block = |i: u32| i.to_be_bytes().repeat(1024);
        core.append_batch((0..10).map(block)).await.unwrap();
        let reader = core.clone();
        let reads = tokio::spawn(async move {
            for round in 0..200u32 {
                let i = u64::from(round % 10);
                let got = reader.get(i).await.unwrap().unwrap();
                assert_eq!(got, block(i as u32));
                tokio::task::yield_now().await;
            }
        });
        core.append_batch((10..3000).map(block)).await.unwrap();
        reads.await.unwrap();
        core.truncate(2500).await.unwrap();
        core.clear(100, 200).await.unwrap();
        for b in 0..10u32 {
            core.append_batch((0..100).map(|i| block(10_000 + b * 100 + i)))
                .await
                .unwrap();
        }
        core.flush().await.unwrap();
        let mut blocks = Vec::new();
        for i in 0..core.info().length {
            blocks.push(core.get(i).await.unwrap().map(|b| b.to_vec()));
        }
        (core.tree_hash(), blocks)
    }
    for durability in [Durability::Relaxed, Durability::Durable] {
        let (hash, blocks) = run(durability, None).await;
        let (all_cached_hash, all_cached) = run(durability, Some(256 << 20)).await;
        assert_eq!(blocks.len(), 3500);
        assert_eq!(hash, all_cached_hash, "{durability:?}");
        assert!(blocks == all_cached, "{durability:?}: the blocks differ");
        assert!(blocks[100..200].iter().all(Option::is_none));
        assert_eq!(
            blocks[2499].as_deref(),
            Some(&2499u32.to_be_bytes().repeat(1024)[..])
        );
        assert_eq!(
            blocks[3499].as_deref(),
            Some(&10_999u32.to_be_bytes().repeat(1024)[..])
        );
    }
}

#[tokio::test]
async fn memory_and_relaxed_stores_behave_the_same() {
    for durability in [Durability::Durable, Durability::Relaxed] {
        let store = Corestore::memory_with(StoreOptions {
            durability,
            ..Default::default()
        })
        .await
        .unwrap();
        let core: Hypercore = store.get_named("m").await.unwrap();
        for i in 0..100u32 {
            core.append(i.to_be_bytes().to_vec()).await.unwrap();
        }
        core.flush().await.unwrap();
        assert_eq!(core.info().length, 100);
        assert_eq!(
            core.get(42).await.unwrap().unwrap().as_ref(),
            &42u32.to_be_bytes()
        );
        let stats = store.stats();
        match durability {
            Durability::Durable => assert_eq!(stats.durable_commits, stats.commits),
            Durability::Relaxed => assert!(stats.durable_commits < stats.commits),
        }
    }
}

#[tokio::test]
async fn hash_and_seek_proofs_verify_on_a_reader() {
    let store = Corestore::memory().await.unwrap();
    let core = store.get_named("hs").await.unwrap();
    core.append_batch((0..10).map(|i| format!("block-{i}").into_bytes()))
        .await
        .unwrap();

    // Seek: which block holds byte 25? The proof carries the path, checked by the signature.
    let reader = common::remote_reader(core.key()).await;
    let proof = core
        .create_proof(ProofRequest {
            seek: Some(iroh_hypercore::tree::SeekRequest { bytes: 25 }),
            ..common::upgrade_request(10)
        })
        .await
        .unwrap();
    assert_eq!(
        indices(&proof.seek.as_ref().unwrap().nodes),
        vec![6, 4, 1, 11]
    );
    let mut forged = proof.clone();
    forged.seek.as_mut().unwrap().nodes[1].hash[0] ^= 1;
    assert!(reader.verify_and_apply_proof(forged).await.is_err());
    reader.verify_and_apply_proof(proof).await.unwrap();
    // Leaves 4 and 6 (blocks 2 and 3) come as a pair whose sizes only their parent's fixes:
    // how the bytes split between them is proven once one of the blocks is.
    assert!(matches!(
        reader.seek(25).await,
        Err(iroh_hypercore::Error::NodeNotAvailable(4))
    ));
    let lacking = reader.missing_nodes(3).await.unwrap();
    let block = common::block_proof(&core, 3, lacking).await;
    reader.verify_and_apply_proof(block).await.unwrap();
    assert_eq!(reader.seek(25).await.unwrap(), (3, 4));
    assert_eq!(core.seek(25).await.unwrap(), (3, 4));

    // Hash: node 3 (blocks 0..4) and its sibling proven against the root the reader has.
    let reader = common::verified_reader(&core).await;
    assert!(reader.tree_node(3).await.unwrap().is_none());
    let proof = core
        .create_proof(ProofRequest {
            hash: Some(IndexRequest { index: 3, nodes: 1 }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(indices(&proof.hash.as_ref().unwrap().nodes), vec![3, 11]);
    let mut forged = proof.clone();
    forged.hash.as_mut().unwrap().nodes[0].size += 1;
    assert!(reader.verify_and_apply_proof(forged).await.is_err());
    // Bytes moved between the two keep every hash: the sizes are proven only in sum, so the
    // proof verifies and nothing is stored from it.
    let mut moved = proof.clone();
    let nodes = &mut moved.hash.as_mut().unwrap().nodes;
    (nodes[0].size, nodes[1].size) = (nodes[0].size + 3, nodes[1].size - 3);
    reader.verify_and_apply_proof(moved).await.unwrap();
    reader.verify_and_apply_proof(proof).await.unwrap();
    assert!(reader.tree_node(3).await.unwrap().is_none());
    assert!(reader.tree_node(11).await.unwrap().is_none());
}

fn indices(nodes: &[iroh_hypercore::tree::Node]) -> Vec<u64> {
    nodes.iter().map(|n| n.index).collect()
}

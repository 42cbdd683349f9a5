//! The store's schema version 5: files written by version 4 are migrated on open (the
//! discovery-key index is built, the endpoint key made), the index follows creates and
//! deletes, and the endpoint key survives reopening.

use iroh_hypercore::{
    Corestore, StoreOptions, crypto::discovery_key, storage::test_view as schema,
};
use redb::{ReadableDatabase, ReadableTableMetadata};

/// The primary key `tests/data/schema-v4.redb` was written with.
const FIXTURE_PRIMARY_KEY: [u8; 32] = [7; 32];

fn fixture_options() -> StoreOptions {
    StoreOptions {
        primary_key: Some(FIXTURE_PRIMARY_KEY),
        ..Default::default()
    }
}

/// A copy of the version-4 file (named cores `a`, `b`, `c` with blocks `a0`..`c4`, and an
/// empty remote core `09…09`) as a store directory.
fn v4_store_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/schema-v4.redb"),
        dir.path().join("cores.redb"),
    )
    .unwrap();
    dir
}

fn stored_version(path: &std::path::Path) -> u32 {
    let db = redb::Database::open(path).unwrap();
    let read = db.begin_read().unwrap();
    let meta = read.open_table(schema::META).unwrap();
    let v = meta.get(schema::META_SCHEMA_VERSION).unwrap().unwrap();
    u32::from_le_bytes(v.value().try_into().unwrap())
}

#[tokio::test]
async fn a_version_4_file_is_migrated_with_its_cores_indexed() {
    let dir = v4_store_dir();
    let path = dir.path().join("cores.redb");
    assert_eq!(stored_version(&path), schema::PREVIOUS_SCHEMA_VERSION);

    let store = Corestore::persistent_with(dir.path(), fixture_options())
        .await
        .unwrap();
    let keys = store.list().await.unwrap();
    assert_eq!(keys.len(), 4);
    for name in ["a", "b", "c"] {
        let key = store.named_key(name);
        assert!(keys.contains(&key), "{name} listed");
        let core = store
            .get_by_discovery_key(&discovery_key(&key))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name} found by its discovery key"));
        assert_eq!(core.key(), key);
        assert_eq!(core.info().length, 5);
        for i in 0..5u64 {
            let block = core.get(i).await.unwrap().unwrap();
            assert_eq!(block, format!("{name}{i}").into_bytes(), "{name} block {i}");
        }
        // Still writable after the migration.
        core.append(b"after".to_vec()).await.unwrap();
    }
    let remote = store
        .get_by_discovery_key(&discovery_key(&[9; 32]))
        .await
        .unwrap()
        .expect("the remote core is indexed too");
    assert!(!remote.info().writable);
    assert!(
        store
            .get_by_discovery_key(&[1; 32])
            .await
            .unwrap()
            .is_none()
    );
    let endpoint = store.endpoint_secret_key();
    store.close().await.unwrap();
    drop(store);

    assert_eq!(stored_version(&path), schema::SCHEMA_VERSION);
    let db = redb::Database::open(&path).unwrap();
    let index_rows = db
        .begin_read()
        .unwrap()
        .open_table(schema::DISCOVERY)
        .unwrap()
        .len()
        .unwrap();
    assert_eq!(index_rows, 4, "one index row per core");
    drop(db);

    // Opened again: nothing to migrate, the same endpoint key, the appends kept.
    let store = Corestore::persistent_with(dir.path(), fixture_options())
        .await
        .unwrap();
    assert_eq!(store.endpoint_secret_key().to_bytes(), endpoint.to_bytes());
    assert_eq!(store.get_named("a").await.unwrap().info().length, 6);
}

#[tokio::test]
async fn the_discovery_index_follows_creates_and_deletes() {
    let store = Corestore::memory().await.unwrap();
    let core = store.get_named("x").await.unwrap();
    let dk = discovery_key(&core.key());
    let found = store.get_by_discovery_key(&dk).await.unwrap().unwrap();
    assert_eq!(found.key(), core.key());

    let remote_key = [3; 32];
    store.get_remote(remote_key).await.unwrap();
    assert!(
        store
            .get_by_discovery_key(&discovery_key(&remote_key))
            .await
            .unwrap()
            .is_some()
    );

    drop((core, found));
    // Closed, then found again from storage: one state with what `get` opens after it.
    let again = store.get_by_discovery_key(&dk).await.unwrap().unwrap();
    let same = store.get(store.named_key("x")).await.unwrap().unwrap();
    again.append(b"one state".to_vec()).await.unwrap();
    assert_eq!(same.info().length, 1);
    // Deleted while a handle is open: a peer's lookup no longer finds it.
    store.delete(store.named_key("x")).await.unwrap();
    assert!(store.get_by_discovery_key(&dk).await.unwrap().is_none());
    drop((again, same));
    assert!(store.get_by_discovery_key(&dk).await.unwrap().is_none());
    // A core's key is not its discovery key: asking with the key finds nothing.
    assert!(
        store
            .get_by_discovery_key(&remote_key)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn the_endpoint_key_is_made_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let store = Corestore::persistent(dir.path()).await.unwrap();
        let key = store.endpoint_secret_key();
        store.close().await.unwrap();
        key
    };
    let store = Corestore::persistent(dir.path()).await.unwrap();
    assert_eq!(store.endpoint_secret_key().to_bytes(), first.to_bytes());
    assert_eq!(store.endpoint_secret_key().public(), first.public());
    let other = Corestore::memory().await.unwrap();
    assert_ne!(other.endpoint_secret_key().to_bytes(), first.to_bytes());
}

#[tokio::test]
async fn stores_opening_a_new_database_at_once_agree_on_its_keys() {
    let storage = iroh_hypercore::storage::Storage::memory(Default::default()).unwrap();
    let (a, b) = tokio::join!(
        Corestore::with_storage(storage.clone(), None),
        Corestore::with_storage(storage.clone(), None)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.named_key("x"), b.named_key("x"));
    assert_eq!(
        a.endpoint_secret_key().to_bytes(),
        b.endpoint_secret_key().to_bytes()
    );
    let c = Corestore::with_storage(storage, None).await.unwrap();
    assert_eq!(c.named_key("x"), a.named_key("x"));
}

#[tokio::test]
async fn a_wait_on_a_closed_core_fails_at_once() {
    let store = Corestore::memory().await.unwrap();
    let core = store.get_remote([5; 32]).await.unwrap();
    core.close().await.unwrap();
    let patience = std::time::Duration::from_secs(600);
    let errors = [
        core.get(0).wait(patience).await.unwrap_err(),
        core.download(0..1).done(patience).await.unwrap_err(),
    ];
    for err in errors {
        assert!(matches!(err, iroh_hypercore::Error::Closed), "{err}");
    }
}

/// A download of blocks a writer appends later resolves with the append: its own appends
/// store blocks without a download.
#[tokio::test]
async fn a_download_resolves_when_the_writer_itself_appends_the_blocks() {
    let store = Corestore::memory().await.unwrap();
    let core = store.get_named("log").await.unwrap();
    let done = tokio::spawn(core.download(0..2).done(std::time::Duration::from_secs(30)));
    core.append_batch(vec![b"a".to_vec(), b"b".to_vec()])
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), done)
        .await
        .expect("resolved with the append, not at its timeout")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn many_discovery_keys_are_found_in_one_lookup_each_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (open_key, closed_key, corrupt_key) = {
        let store = Corestore::persistent(dir.path()).await.unwrap();
        let mut keys = Vec::new();
        for name in ["open", "closed", "corrupt"] {
            let core = store.get_named(name).await.unwrap();
            core.append(name.as_bytes().to_vec()).await.unwrap();
            keys.push(core.key());
        }
        store.close().await.unwrap();
        (keys[0], keys[1], keys[2])
    };
    // The third core's header no longer decodes (ids are given in order of creation).
    {
        let db = redb::Database::create(dir.path().join("cores.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(schema::HEADERS)
            .unwrap()
            .insert(2u64, [0xffu8; 5].as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = Corestore::persistent(dir.path()).await.unwrap();
    let open = store.get(open_key).await.unwrap().unwrap();
    let dks = vec![
        discovery_key(&closed_key),
        [5; 32],
        discovery_key(&corrupt_key),
        discovery_key(&open_key),
        discovery_key(&closed_key),
    ];
    let found = store.get_by_discovery_keys(dks).await.unwrap();
    assert_eq!(found.len(), 5);
    let key_at = |i: usize| found[i].as_ref().unwrap().as_ref().map(|c| c.key());
    assert_eq!(key_at(0), Some(closed_key));
    assert_eq!(key_at(1), None, "a key the store does not hold");
    assert!(
        found[2].is_err(),
        "the corrupt header fails its own lookup alone"
    );
    assert_eq!(key_at(3), Some(open_key));
    assert_eq!(key_at(4), Some(closed_key));
    // Each is the one open state of its core: what one handle appends, the others see.
    open.append(b"more".to_vec()).await.unwrap();
    assert_eq!(
        found[3].as_ref().unwrap().as_ref().unwrap().info().length,
        2
    );
    let closed = found[0].as_ref().unwrap().as_ref().unwrap();
    closed.append(b"more".to_vec()).await.unwrap();
    assert_eq!(
        found[4].as_ref().unwrap().as_ref().unwrap().info().length,
        2
    );
    let again = store.get(closed_key).await.unwrap().unwrap();
    assert_eq!(again.info().length, 2);
}

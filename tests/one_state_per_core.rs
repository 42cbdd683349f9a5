//! One state per core: however many handles or stores open a core, and whatever happens to it
//! meanwhile (a delete half-committed), its writes go through one state, and none that is
//! acknowledged vanishes.

use std::{
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::mem_file::MemFile;
use iroh_hypercore::{
    Corestore,
    storage::{Storage, StorageOptions},
};

mod common;

const TIMEOUT: Duration = Duration::from_secs(20);

/// A redb backend in memory whose `sync_data` can be held: a durable commit then stops
/// half-way, before the database makes it visible to readers. Its bytes outlive the database,
/// so a store can be reopened on them.
#[derive(Debug, Clone, Default)]
struct GateBackend {
    file: MemFile,
    gate: Arc<Gate>,
}

#[derive(Debug, Default)]
struct Gate {
    /// Set: the next `sync_data` waits until released.
    armed: AtomicBool,
    /// A `sync_data` is waiting.
    entered: AtomicBool,
    held: Mutex<bool>,
    released: Condvar,
}

impl Gate {
    fn arm(&self) {
        *self.held.lock().unwrap() = true;
        self.armed.store(true, Ordering::SeqCst);
    }

    fn release(&self) {
        self.armed.store(false, Ordering::SeqCst);
        *self.held.lock().unwrap() = false;
        self.released.notify_all();
    }

    async fn entered(&self) {
        tokio::time::timeout(TIMEOUT, async {
            while !self.entered.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("a commit reached sync_data");
    }
}

impl redb::StorageBackend for GateBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        if self.gate.armed.load(Ordering::SeqCst) {
            self.gate.entered.store(true, Ordering::SeqCst);
            let mut held = self.gate.held.lock().unwrap();
            while *held {
                held = self.gate.released.wait(held).unwrap();
            }
        }
        Ok(())
    }
    fn write(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write(offset, bytes)
    }
}

async fn open_store(backend: &GateBackend) -> Corestore {
    let storage = Storage::with_backend(backend.clone(), StorageOptions::default()).unwrap();
    Corestore::with_storage(storage, Some([7; 32]))
        .await
        .unwrap()
}

/// A core opened while its delete is being committed must not take writes that vanish.
///
/// Before the fix `Corestore::delete` took the core out of the store's map of open cores and
/// then, without holding the map, queued the delete. A `get` (or `get_named`, or a peer's
/// channel opening the core) in between found the core still stored, loaded a new handle with
/// a new slot that the delete never marked, and the handle then acknowledged appends to a
/// core id whose key row was gone: after a reopen the core did not exist, and the appended
/// rows stayed in the database, unreachable, forever.
#[tokio::test]
async fn a_core_opened_during_its_delete_takes_no_writes_that_vanish() {
    let backend = GateBackend::default();
    let store = open_store(&backend).await;
    let core = store.get_named("doomed").await.unwrap();
    core.append(b"before".to_vec()).await.unwrap();
    let key = core.key();
    drop(core);

    // The delete's durable commit stops before it is visible.
    backend.gate.arm();
    let deleting = tokio::spawn({
        let store = store.clone();
        async move { store.delete(key).await }
    });
    backend.gate.entered().await;
    // Meanwhile the core is opened again.
    let getting = tokio::spawn({
        let store = store.clone();
        async move { store.get(key).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    backend.gate.release();
    tokio::time::timeout(TIMEOUT, deleting)
        .await
        .unwrap()
        .unwrap()
        .expect("deleted");
    let reopened = tokio::time::timeout(TIMEOUT, getting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let acked = match &reopened {
        Some(core) => core.append(b"after".to_vec()).await.is_ok(),
        None => false,
    };
    drop(reopened);
    store.close().await.unwrap();
    drop(store);

    let store = open_store(&backend).await;
    let stored = store.get(key).await.unwrap();
    if acked {
        let length = stored.as_ref().map_or(0, |c| c.info().length);
        panic!(
            "an append to a deleted core was acknowledged; after a reopen the core's length is {length}"
        );
    }
    assert!(stored.is_none(), "the deleted core came back");
}

/// Two stores on one [`Storage`] share the cores' state: an append through one is not
/// overwritten by an append through the other.
///
/// Before the fix each `Corestore` kept its own map of open cores, so the same core opened
/// through two stores on one `Storage` had two `CoreSlot`s, each with its own staged length.
/// Both accepted an append at index 0: the second overwrote the first's block and signed
/// header, although the first had been acknowledged.
#[tokio::test]
async fn two_stores_on_one_storage_share_a_core() {
    let storage = Storage::memory(StorageOptions::default()).unwrap();
    let a = Corestore::with_storage(storage.clone(), None)
        .await
        .unwrap();
    let b = Corestore::with_storage(storage.clone(), None)
        .await
        .unwrap();
    let via_a = a.get_named("shared").await.unwrap();
    let via_b = b.get_named("shared").await.unwrap();
    assert_eq!(via_a.key(), via_b.key());

    via_a.append(b"first".to_vec()).await.unwrap();
    let second = via_b.append(b"second".to_vec()).await;
    let first = via_a.get(0).await.unwrap().map(|v| v.to_vec());
    assert_eq!(
        first.as_deref(),
        Some(&b"first"[..]),
        "the acknowledged first block was overwritten (second append: {second:?})"
    );
    if let Ok(outcome) = second {
        assert_eq!(outcome.length, 2, "the second append went to index 1");
        assert_eq!(via_a.info().length, 2);
    }
}

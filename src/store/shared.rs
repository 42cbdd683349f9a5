//! What every store on one database shares ([`SharedCores`]), and finding it by the
//! database: stores opened on one [`Storage`] share its open cores (a core has one state
//! however many stores open it), the news of cores created, and the blob side. It is held by
//! each store and each core open on the database, and found through a table of the databases
//! that have one, which holds neither open.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use crate::{
    blobs::BlobState,
    core::{CoreHome, CoreInnerHandle},
    crypto::{CoreKey, DiscoveryKey, discovery_key},
    storage::{Storage, WeakStorage},
};

/// News of created cores a lagging follower may miss before it lists the store again.
const CREATED_CAPACITY: usize = 1024;

/// The shared state of each database that has one: by a handle that does not keep the
/// database open, to state that lives as long as a store or core holds it.
static BY_DATABASE: Mutex<Vec<(WeakStorage, Weak<SharedCores>)>> = Mutex::new(Vec::new());

/// What every store on one database shares.
#[derive(Debug)]
pub(super) struct SharedCores {
    /// The open cores, by key, so that every handle of one core shares one state.
    pub open: tokio::sync::Mutex<OpenCores>,
    /// The key of each core created (a protocol replicating the whole store follows it).
    pub created: tokio::sync::broadcast::Sender<CoreKey>,
    /// The blob store beside the database, and the protocol that fetches blobs.
    pub blobs: Arc<BlobState>,
}

impl SharedCores {
    /// The shared state of `storage`'s database, made if no store or core holds one.
    pub fn of(storage: &Storage) -> Arc<Self> {
        let mut table = BY_DATABASE.lock().unwrap_or_else(|e| e.into_inner());
        table.retain(|(db, shared)| db.is_alive() && shared.strong_count() > 0);
        let found = table
            .iter()
            .find(|(db, _)| db.is(storage))
            .and_then(|(_, shared)| shared.upgrade());
        if let Some(shared) = found {
            return shared;
        }
        let shared = Arc::new(Self {
            open: Default::default(),
            created: tokio::sync::broadcast::channel(CREATED_CAPACITY).0,
            blobs: Default::default(),
        });
        table.push((storage.downgrade(), Arc::downgrade(&shared)));
        shared
    }

    /// Where a core of `storage`'s database lives: it holds this state while it is open.
    pub fn home(self: &Arc<Self>, storage: &Storage) -> CoreHome {
        CoreHome {
            storage: storage.clone(),
            blobs: self.blobs.clone(),
            held: self.clone(),
        }
    }
}

/// The open cores of a database by key and by discovery key, held weakly. The entries of
/// cores closed since are swept out when the map has doubled since the last sweep, so that
/// opening a core costs the same in a store of ten thousand open cores as in one of ten.
#[derive(Debug, Default)]
pub(super) struct OpenCores {
    by_key: HashMap<CoreKey, Weak<CoreInnerHandle>>,
    /// The same cores by discovery key (how a peer names the core it asks for).
    by_discovery: HashMap<DiscoveryKey, Weak<CoreInnerHandle>>,
    /// Size of the map at which the next insert sweeps it.
    sweep_at: usize,
    /// Cores removed so far (each before its delete commits, under the store's lock): a read
    /// made without the lock is stale if this moved since.
    removals: u64,
}

/// Entries below which the map of open cores is never swept.
const MIN_SWEEP: usize = 64;

impl OpenCores {
    /// The state of core `key`, if it is open.
    pub fn get(&self, key: &CoreKey) -> Option<Arc<CoreInnerHandle>> {
        self.by_key.get(key).and_then(Weak::upgrade)
    }

    /// How many cores were removed so far.
    pub fn removals(&self) -> u64 {
        self.removals
    }

    /// The state of the core whose discovery key is `dk`, if it is open.
    pub fn get_by_discovery(&self, dk: &DiscoveryKey) -> Option<Arc<CoreInnerHandle>> {
        self.by_discovery.get(dk).and_then(Weak::upgrade)
    }

    /// Records `inner` as the state of core `key`.
    pub fn insert(&mut self, key: CoreKey, inner: &Arc<CoreInnerHandle>) {
        if self.by_key.len() >= self.sweep_at {
            self.by_key.retain(|_, w| w.strong_count() > 0);
            self.by_discovery.retain(|_, w| w.strong_count() > 0);
            self.sweep_at = (self.by_key.len() * 2).max(MIN_SWEEP);
        }
        self.by_key.insert(key, Arc::downgrade(inner));
        self.by_discovery
            .insert(inner.discovery_key, Arc::downgrade(inner));
    }

    /// The state of every open core.
    pub fn all(&self) -> Vec<Arc<CoreInnerHandle>> {
        self.by_key.values().filter_map(Weak::upgrade).collect()
    }

    /// Forgets core `key`, returning its state if it was open.
    pub fn remove(&mut self, key: &CoreKey) -> Option<Arc<CoreInnerHandle>> {
        self.removals += 1;
        self.by_discovery.remove(&discovery_key(key));
        self.by_key.remove(key).and_then(|w| w.upgrade())
    }
}

//! The shared state behind a [`Hypercore`](super::Hypercore) handle, and loading/creating it.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use redb::ReadableTable;
use tokio::sync::broadcast;

use super::{
    events::{CoreEvent, EVENT_CAPACITY},
    recent::RecentAppends,
};
use crate::{
    crypto::{CoreKey, CoreKind, DiscoveryKey, KeyPair, Manifest, Verifier, discovery_key},
    error::{Error, Result},
    storage::{
        Storage, StorageError,
        schema::{self, CoreHeader},
    },
    tree::{Node, NodeSource, TreeState},
};

/// Capacity of each core's channel of wanted ranges.
const WANT_CAPACITY: usize = 256;
/// Capacity of each core's channel of verified blocks (a lagging read re-reads storage).
const VERIFIED_CAPACITY: usize = 64;

/// The header as the storage actor has applied it (ahead of the committed one while a batch is
/// open), and the events to emit once that batch commits.
#[derive(Debug)]
pub(crate) struct Staged {
    pub header: CoreHeader,
    pub events: Vec<CoreEvent>,
    /// Set by `Corestore::delete`: nothing more is written for this core.
    pub deleted: bool,
}

/// In-memory state of a core.
#[derive(Debug)]
pub(crate) struct CoreState {
    /// The committed header: what is durable (or about to be, in relaxed mode).
    pub committed: CoreHeader,
    /// The head appends build on: the committed tree plus queued appends.
    pub head: TreeState,
    /// Signature checker, once the kind (and manifest) is known.
    pub verifier: Option<Verifier>,
    /// Set by `close()`.
    pub closed: bool,
}

/// Everything a [`Hypercore`](super::Hypercore) handle shares.
#[derive(Debug)]
pub(crate) struct CoreInner {
    pub id: u64,
    pub key: CoreKey,
    pub discovery_key: DiscoveryKey,
    pub signer: Option<KeyPair>,
    pub storage: Storage,
    pub state: Mutex<CoreState>,
    /// Touched only by the storage actor: each write checks that it was prepared against this
    /// state, so nothing is applied on top of a failed or concurrent write.
    pub staged: Mutex<Staged>,
    pub events: broadcast::Sender<CoreEvent>,
    /// Ranges of blocks readers are waiting for; replication picks them up.
    pub wants: broadcast::Sender<(u64, u64)>,
    /// Blocks from peers that verified and are being written: waiting reads take them from
    /// here rather than waiting for the commit.
    pub verified: broadcast::Sender<(u64, Bytes)>,
    /// The latest local appends, to prove new blocks without a storage read.
    pub recent: Mutex<RecentAppends>,
}

impl CoreInner {
    pub fn state(&self) -> MutexGuard<'_, CoreState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn staged(&self) -> MutexGuard<'_, Staged> {
        self.staged.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn recent(&self) -> MutexGuard<'_, RecentAppends> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn emit(&self, ev: CoreEvent) {
        let _ = self.events.send(ev);
    }

    /// Hands blocks that verified against the signed tree, as `(index, value)`, to the reads
    /// waiting for them, ahead of their commit: they are authentic whether or not the write
    /// succeeds. Nothing is copied when no read waits.
    pub fn hand_over_verified<'a>(&self, blocks: impl IntoIterator<Item = (u64, &'a [u8])>) {
        if self.verified.receiver_count() == 0 {
            return;
        }
        for (index, value) in blocks {
            let _ = self.verified.send((index, Bytes::copy_from_slice(value)));
        }
    }

    /// Sets the actor-side state back to the committed one (after a failed batch).
    pub fn roll_back_staged(&self) {
        let committed = self.state().committed.clone();
        let mut staged = self.staged();
        staged.header = committed;
        staged.events.clear();
    }

    /// Drops queued-but-failed appends from the head.
    pub fn resync_head(&self) {
        let mut st = self.state();
        st.head = st.committed.tree.clone();
    }

    pub fn new(id: u64, header: CoreHeader, storage: Storage) -> Result<Arc<Self>> {
        let signer = header.secret.map(KeyPair::from_seed);
        let verifier = match (header.kind, &header.manifest) {
            (Some(CoreKind::Compat), _) => Some(Verifier::compat(header.key)?),
            (Some(CoreKind::Default), Some(m)) => Some(Verifier::from_manifest(
                header.key,
                Manifest::decode(m)
                    .map_err(|e| StorageError::Corrupt(format!("stored manifest: {e}")))?,
            )?),
            _ => None,
        };
        let staged = Staged {
            header: header.clone(),
            events: Vec::new(),
            deleted: false,
        };
        Ok(Arc::new(Self {
            id,
            key: header.key,
            discovery_key: discovery_key(&header.key),
            signer,
            storage,
            staged: Mutex::new(staged),
            state: Mutex::new(CoreState {
                head: header.tree.clone(),
                committed: header,
                verifier,
                closed: false,
            }),
            events: broadcast::channel(EVENT_CAPACITY).0,
            wants: broadcast::channel(WANT_CAPACITY).0,
            verified: broadcast::channel(VERIFIED_CAPACITY).0,
            recent: Mutex::new(RecentAppends::default()),
        }))
    }
}

/// Reads the nodes of one core inside a read transaction.
pub(crate) struct TxnNodes {
    table: redb::ReadOnlyTable<(u64, u64), &'static [u8]>,
    id: u64,
}

impl TxnNodes {
    pub fn open(txn: &redb::ReadTransaction, id: u64) -> Result<Self, StorageError> {
        Ok(Self {
            table: txn.open_table(schema::NODES)?,
            id,
        })
    }
}

impl NodeSource for TxnNodes {
    type Error = StorageError;
    fn node(&self, index: u64) -> Result<Option<Node>, StorageError> {
        crate::storage::nodes::get(&self.table, self.id, index)
    }
}

/// Loads the core stored under `key`, if any.
pub(crate) async fn load_core(storage: &Storage, key: CoreKey) -> Result<Option<Arc<CoreInner>>> {
    let found = storage
        .read(move |txn| {
            let cores = txn.open_table(schema::CORES)?;
            let Some(id) = cores.get(key)?.map(|v| v.value()) else {
                return Ok(None);
            };
            let headers = txn.open_table(schema::HEADERS)?;
            let raw = headers
                .get(id)?
                .ok_or_else(|| StorageError::Corrupt(format!("core {id} has no header")))?;
            Ok(Some((id, CoreHeader::decode(raw.value())?)))
        })
        .await?;
    match found {
        Some((id, header)) => Ok(Some(CoreInner::new(id, header, storage.clone())?)),
        None => Ok(None),
    }
}

/// Stores a new core (or returns the one already stored under the same key).
pub(crate) async fn create_core(
    storage: &Storage,
    key: CoreKey,
    kind: Option<CoreKind>,
    key_pair: Option<KeyPair>,
) -> Result<Arc<CoreInner>> {
    let manifest = match (kind, &key_pair) {
        (Some(CoreKind::Default), Some(kp)) => Some(Manifest::single(kp.public_key()).encode()),
        _ => None,
    };
    let header = CoreHeader {
        key,
        kind,
        manifest,
        secret: key_pair.as_ref().map(|k| k.seed()),
        tree: TreeState::default(),
        contiguous_length: 0,
    };
    let slot = Arc::new(Mutex::new(None));
    let out = slot.clone();
    let to_store = header.clone();
    storage
        .write(move |ctx| {
            let mut cores = ctx.txn.open_table(schema::CORES)?;
            let existing = cores.get(key)?.map(|v| v.value());
            if let Some(id) = existing {
                *out.lock().unwrap_or_else(|e| e.into_inner()) = Some((id, false));
                return Ok(());
            }
            let mut meta = ctx.txn.open_table(schema::META)?;
            let id = {
                let raw = meta
                    .get(schema::META_NEXT_CORE_ID)?
                    .ok_or_else(|| StorageError::Corrupt("no next core id".into()))?;
                let bytes: [u8; 8] = raw
                    .value()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt("malformed next core id".into()))?;
                u64::from_le_bytes(bytes)
            };
            meta.insert(schema::META_NEXT_CORE_ID, (id + 1).to_le_bytes().as_slice())?;
            cores.insert(key, id)?;
            ctx.txn
                .open_table(schema::HEADERS)?
                .insert(id, to_store.encode().as_slice())?;
            *out.lock().unwrap_or_else(|e| e.into_inner()) = Some((id, true));
            Ok(())
        })
        .await?;
    let (id, created) = slot
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .ok_or(Error::Closed)?;
    if created {
        CoreInner::new(id, header, storage.clone())
    } else {
        load_core(storage, key)
            .await?
            .ok_or_else(|| Error::NotFound(hex(&key)))
    }
}

/// Lowercase hex of a key, for messages.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! The shared state behind a [`Hypercore`](super::Hypercore) handle, and loading/creating it.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use bytes::Bytes;
use tokio::sync::watch;

use super::{
    apply_turns::ApplyTurns,
    lazy_broadcast::LazyBroadcast,
    news::CoreNews,
    recent::RecentAppends,
    signals::{Signal, SignalQueue},
};
use crate::{
    blobs::BlobState,
    crypto::{CoreKey, CoreKind, DiscoveryKey, KeyPair, Manifest, Verifier, discovery_key},
    error::{Error, Result},
    storage::{CoreHeader, CoreSlot, CoreState, Op, Outcome, Storage, StorageError},
    tree::TreeState,
};

/// Capacity of each core's channel of verified blocks (a lagging read re-reads storage).
const VERIFIED_CAPACITY: usize = 64;

/// Everything a [`Hypercore`](super::Hypercore) handle shares.
#[derive(Debug)]
pub(crate) struct CoreInner {
    pub id: u64,
    pub key: CoreKey,
    pub discovery_key: DiscoveryKey,
    pub storage: Storage,
    /// The blob side of the core's database: its blob store and the protocol fetching blobs.
    pub blobs: Arc<BlobState>,
    /// What the store that opened it keeps for every core of its database: held as long as
    /// the core is open (never read here).
    _held: Arc<dyn std::fmt::Debug + Send + Sync>,
    /// Storage's record of this core: its committed state and head. Every write of this core
    /// carries it.
    pub slot: Arc<CoreSlot>,
    /// Its events and the protocols watching it: storage tells it of every commit.
    pub news: Arc<CoreNews>,
    /// Signature checker, once the kind (and manifest) is known.
    pub verifier: Mutex<Option<Verifier>>,
    /// Blocks from peers that verified and are being written: waiting reads take them from
    /// here rather than waiting for the commit.
    pub verified: LazyBroadcast<(u64, Bytes)>,
    /// The ranges reads wait for now, with how many reads wait for each.
    open_wants: Mutex<BTreeMap<(u64, u64), u64>>,
    /// The latest local appends, to prove new blocks without a storage read.
    pub recent: Mutex<RecentAppends>,
    /// Bumped when nobody fetches for the reads waiting on this core any more: a protocol
    /// left it, or it was closed or deleted. Waiting reads fail then.
    pub stopped: watch::Sender<u64>,
    /// The number of `update()`s asked.
    pub update_requests: std::sync::atomic::AtomicU64,
    /// The last of `update_requests` a protocol answered.
    pub updated: watch::Sender<u64>,
    /// The block encryption key, once given: appends store ciphertext, reads return text.
    /// The keys are derived from it when used, for the kind the core has then (a reader
    /// learns a remote core's kind from its first upgrade).
    pub encryption_key: std::sync::OnceLock<[u8; 32]>,
    /// The replication engine's run applies, taking turns: one verifies while the one before
    /// it is written.
    pub apply_turns: Arc<ApplyTurns>,
}

impl CoreInner {
    /// The committed state and head, kept in the core's slot.
    pub fn state(&self) -> MutexGuard<'_, CoreState> {
        self.slot.state()
    }

    /// Whether the core is writable here, without deriving its key pair.
    pub fn writable(&self) -> bool {
        self.slot.writable()
    }

    /// The signature checker, once known.
    pub fn verifier(&self) -> MutexGuard<'_, Option<Verifier>> {
        self.verifier.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn recent(&self) -> MutexGuard<'_, RecentAppends> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands blocks that verified against the signed tree, as `(index, value)`, to the reads
    /// waiting for them, ahead of their commit: they are authentic whether or not the write
    /// succeeds. Nothing is copied when no read waits.
    pub fn hand_over_verified<'a>(&self, blocks: impl IntoIterator<Item = (u64, &'a [u8])>) {
        if self.verified.receiver_count() == 0 {
            return;
        }
        for (index, value) in blocks {
            self.verified.send((index, Bytes::copy_from_slice(value)));
        }
    }

    /// Tells the replicating protocols of `signal` (wants go through [`want`](Self::want)).
    pub fn signal(&self, signal: Signal) {
        self.news.signal(signal);
    }

    fn open_wants(&self) -> MutexGuard<'_, BTreeMap<(u64, u64), u64>> {
        self.open_wants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A read waits for blocks `start..end`: the replicating protocols are told, now and
    /// when they start watching, until it [unwants](Self::unwant) or
    /// [releases](Self::release_want) them.
    pub fn want(&self, start: u64, end: u64) {
        let mut wants = self.open_wants();
        *wants.entry((start, end)).or_default() += 1;
        // Under the lock: a protocol starting to watch sees the want once, replayed or sent.
        self.news.signal(Signal::Want(start, end));
    }

    /// A read no longer waits for blocks `start..end` it wanted: the protocols are told.
    pub fn unwant(&self, start: u64, end: u64) {
        let mut wants = self.open_wants();
        if Self::take_want(&mut wants, start, end) {
            self.news.signal(Signal::Unwant(start, end));
        }
    }

    /// The blocks `start..end` a read wanted arrived (the protocols dropped their want
    /// themselves): the want is no longer open.
    pub fn release_want(&self, start: u64, end: u64) {
        Self::take_want(&mut self.open_wants(), start, end);
    }

    fn take_want(wants: &mut BTreeMap<(u64, u64), u64>, start: u64, end: u64) -> bool {
        let Some(n) = wants.get_mut(&(start, end)) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            wants.remove(&(start, end));
        }
        true
    }

    /// Sends this core's signals to `queue` from now on, starting with the wants of the reads
    /// waiting now (so that each unwant the queue gets matches a want it got).
    pub fn watch(&self, queue: &Arc<SignalQueue>) {
        let wants = self.open_wants();
        if self.news.watchers.add(queue) {
            for (&(start, end), &n) in wants.iter() {
                for _ in 0..n {
                    queue.push(self.key, Signal::Want(start, end));
                }
            }
        }
    }

    /// Stops sending this core's signals to `queue`.
    pub fn unwatch(&self, queue: &Arc<SignalQueue>) {
        self.news.watchers.remove(queue);
    }

    /// Fails the reads waiting on this core ([`Error::Left`], or [`Error::Closed`] once
    /// closed).
    pub fn stop_waits(&self) {
        self.stopped.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The error of a wait for `what` given up by [`stop_waits`](Self::stop_waits).
    pub fn stopped_error(&self, what: String) -> Error {
        if self.state().closed {
            Error::Closed
        } else {
            Error::Left(what)
        }
    }

    /// The text of stored block `index`: decrypted when the core is encrypted.
    pub fn block_text(&self, index: u64, stored: Bytes) -> Result<Bytes> {
        text_of(self.encryption().as_ref(), index, stored)
    }

    /// The block encryption of this core, if a key was given: the keys of its kind now (a
    /// default core's until the kind is known).
    pub fn encryption(&self) -> Option<super::BlockEncryption> {
        let key = self.encryption_key.get()?;
        let kind = self.state().committed.kind.unwrap_or(CoreKind::Default);
        Some(super::BlockEncryption::new(&self.key, kind, key))
    }

    /// Drops queued-but-failed appends from the head.
    pub fn resync_head(&self) {
        self.slot.resync_head();
    }

    pub fn new(id: u64, header: CoreHeader, home: CoreHome) -> Result<Arc<Self>> {
        let verifier = match (header.kind, &header.manifest) {
            (Some(CoreKind::Compat), _) => Some(Verifier::compat(header.key)?),
            (Some(CoreKind::Default), Some(m)) => Some(Verifier::from_manifest(
                header.key,
                Manifest::decode(m)
                    .map_err(|e| StorageError::Corrupt(format!("stored manifest: {e}")))?,
            )?),
            _ => None,
        };
        let news = Arc::new(CoreNews::new(header.key));
        Ok(Arc::new(Self {
            id,
            key: header.key,
            discovery_key: discovery_key(&header.key),
            storage: home.storage,
            blobs: home.blobs,
            _held: home.held,
            slot: Arc::new(CoreSlot::new(id, header, news.clone())),
            news,
            verifier: Mutex::new(verifier),
            verified: LazyBroadcast::new(VERIFIED_CAPACITY),
            open_wants: Mutex::default(),
            recent: Mutex::new(RecentAppends::default()),
            stopped: watch::channel(0).0,
            update_requests: Default::default(),
            updated: watch::channel(0).0,
            encryption_key: std::sync::OnceLock::new(),
            apply_turns: Arc::default(),
        }))
    }
}

/// The text of stored block `index` under `encryption` (the stored bytes without one).
pub(crate) fn text_of(
    encryption: Option<&super::BlockEncryption>,
    index: u64,
    stored: Bytes,
) -> Result<Bytes> {
    match encryption {
        None => Ok(stored),
        Some(e) => e
            .decrypt(index, &stored)
            .map(Bytes::from)
            .ok_or(Error::InvalidArgument(
                "encrypted block shorter than its padding",
            )),
    }
}

impl Drop for CoreInner {
    /// The last handle went: a protocol replicating the core for the application stops.
    fn drop(&mut self) {
        self.news.signal(Signal::Dropped);
    }
}

/// Where a core lives: its database, the blob side of it, and what the store that opens it
/// keeps for every core of that database.
#[derive(Debug, Clone)]
pub(crate) struct CoreHome {
    /// The database.
    pub storage: Storage,
    /// Its blob store and blob fetcher.
    pub blobs: Arc<BlobState>,
    /// Held by each core as long as it is open.
    pub held: Arc<dyn std::fmt::Debug + Send + Sync>,
}

/// Loads the core stored under `key` in `home`, if any.
pub(crate) async fn load_core(home: &CoreHome, key: CoreKey) -> Result<Option<Arc<CoreInner>>> {
    let found = home.storage.read(move |r| r.core(key)).await?;
    match found {
        Some((id, header)) => Ok(Some(CoreInner::new(id, header, home.clone())?)),
        None => Ok(None),
    }
}

/// Stores a new core in `home` (or returns the one already stored under the same key).
pub(crate) async fn create_core(
    home: &CoreHome,
    key: CoreKey,
    kind: Option<CoreKind>,
    key_pair: Option<KeyPair>,
    name: Option<crate::storage::CoreName>,
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
    let outcome = home
        .storage
        .write(Op::CreateCore {
            key,
            header: Box::new(header.clone()),
            name: name.map(Box::new),
        })
        .await?;
    match outcome {
        Outcome::Core { id, created: true } => CoreInner::new(id, header, home.clone()),
        Outcome::Core { created: false, .. } => load_core(home, key)
            .await?
            .ok_or_else(|| Error::NotFound(hex(&key))),
        other => Err(StorageError::Database(format!("create answered {other:?}")).into()),
    }
}

/// Lowercase hex of a key, for messages.
pub(crate) fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

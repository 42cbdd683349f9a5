//! The [`Corestore`] handle.

use std::{path::Path, sync::Arc};

use super::{
    options::{CoreOptions, StoreOptions},
    shared::SharedCores,
};
use crate::{
    blobs::{BlobState, BlobStore},
    core::{CoreInnerHandle, Hypercore, create_core, load_core},
    crypto::{
        CoreKey, CoreKind, DiscoveryKey, Hash, KeyPair,
        derive::{DEFAULT_NAMESPACE, child_namespace, derive_key_pair},
    },
    error::{Error, Result},
    storage::{CoreName, Op, Outcome, Storage, StorageError, StorageOptions, StorageStats},
};

/// File name of a persistent store's database inside its directory.
pub const DB_FILE: &str = "cores.redb";

/// Directory of a persistent store's blob store inside its directory.
pub const BLOBS_DIR: &str = "blobs";

/// Many cores in one redb database, sharing one storage actor.
///
/// Named cores are derived from the store's primary key and namespace exactly as Corestore 7
/// derives them, so the same primary key gives the same core keys in both worlds.
///
/// ```
/// # #[tokio::main] async fn main() -> iroh_hypercore::Result<()> {
/// use iroh_hypercore::Corestore;
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = Corestore::persistent(dir.path()).await?;
/// let chat = store.get_named("chat").await?;
/// chat.append(b"hi".to_vec()).await?;
/// let key = chat.key();
/// store.close().await?;
///
/// let store = Corestore::persistent(dir.path()).await?;
/// assert_eq!(store.get_named("chat").await?.key(), key); // same name, same key
/// assert_eq!(store.list().await?, vec![key]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Corestore {
    inner: Arc<StoreInner>,
    namespace: Hash,
}

#[derive(Debug)]
struct StoreInner {
    storage: Storage,
    primary_key: [u8; 32],
    /// The secret key of the endpoint that serves this store, kept in the database.
    endpoint_key: [u8; 32],
    /// Open cores, news of created ones and the blob side: shared by every store opened on
    /// the same database.
    shared: Arc<SharedCores>,
}

/// The blob state of `store`.
pub(crate) fn shared_blobs_of(store: &Corestore) -> Arc<BlobState> {
    store.inner.shared.blobs.clone()
}

/// The database options of a store's options.
fn storage_options(opts: &StoreOptions) -> StorageOptions {
    StorageOptions {
        durability: opts.durability,
        cache_bytes: opts.cache_bytes,
    }
}

/// The key an [`Op::SetPrimaryKey`] or [`Op::SetEndpointKey`] left stored.
fn stored_key(outcome: Outcome) -> Result<[u8; 32]> {
    match outcome {
        Outcome::Key(key) => Ok(key),
        other => Err(Error::Storage(StorageError::Database(format!(
            "storing a key answered {other:?}"
        )))),
    }
}

impl Corestore {
    /// Opens (or creates) a store in directory `dir`, with default options.
    pub async fn persistent(dir: impl AsRef<Path>) -> Result<Self> {
        Self::persistent_with(dir, StoreOptions::default()).await
    }

    /// Opens (or creates) a store in directory `dir`.
    pub async fn persistent_with(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        let blob_dir = dir.join(BLOBS_DIR);
        let storage_opts = storage_options(&opts);
        let storage = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| {
                StorageError::Database(format!("cannot create {}: {e}", dir.display()))
            })?;
            Storage::open(&dir.join(DB_FILE), storage_opts)
        })
        .await
        .map_err(|e| StorageError::Database(e.to_string()))??;
        let shared = SharedCores::of(&storage);
        if shared.blobs.store().is_none() {
            let blobs = BlobStore::persistent(&blob_dir, &opts.blobs).await?;
            shared.blobs.set_store(blobs);
        }
        Self::with_storage(storage, opts.primary_key).await
    }

    /// Opens the store in directory `dir` for reading only: nothing is created or written,
    /// so the directory and its files may be read-only. Every write fails with
    /// [`StorageError::ReadOnly`]. The store must exist (a missing one is an
    /// [`Error::Io`] of kind `NotFound`), and another process must not hold it open for
    /// writing. Its blob store is not opened: blocks read as usual, blob contents do not.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> iroh_hypercore::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = iroh_hypercore::Corestore::persistent(dir.path()).await?;
    /// store.get_named("log").await?.append(b"kept".to_vec()).await?;
    /// store.close().await?;
    ///
    /// let store = iroh_hypercore::Corestore::open_read_only(dir.path()).await?;
    /// let (_, key) = store.names().await?.remove(0);
    /// let log = store.get(key).await?.expect("stored");
    /// assert_eq!(log.get(0).await?.as_deref(), Some(&b"kept"[..]));
    /// assert!(log.append(b"more".to_vec()).await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn open_read_only(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join(DB_FILE);
        let storage = tokio::task::spawn_blocking(move || {
            if !path.is_file() {
                return Err(Error::Io {
                    what: format!("no store at {}", path.display()),
                    source: std::io::ErrorKind::NotFound.into(),
                });
            }
            Storage::open_read_only(&path, StorageOptions::default()).map_err(Error::from)
        })
        .await
        .map_err(|e| StorageError::Database(e.to_string()))??;
        Self::with_storage(storage, None).await
    }

    /// A store in memory, with default options.
    pub async fn memory() -> Result<Self> {
        Self::memory_with(StoreOptions::default()).await
    }

    /// A store in memory: redb on chunks of memory that grow without copying, with a small
    /// page cache unless `opts` name its size ([`StoreOptions::cache_bytes`]).
    pub async fn memory_with(opts: StoreOptions) -> Result<Self> {
        let storage = Storage::memory(storage_options(&opts))?;
        let shared = SharedCores::of(&storage);
        shared.blobs.set_store(BlobStore::memory(&opts.blobs));
        Self::with_storage(storage, opts.primary_key).await
    }

    /// A store on an opened [`Storage`]; its primary key and endpoint key are read, or set on
    /// first open. Stores on one `Storage` share its open cores (a core opened through two of
    /// them has one state) and its blob store (a memory one, with default options, unless a
    /// store opened with [`persistent`](Self::persistent) or [`memory`](Self::memory) made
    /// it), as long as one of them, or a core opened through one, is open: a store opened on
    /// a `Storage` none of whose stores and cores is left starts that state afresh.
    pub async fn with_storage(storage: Storage, primary_key: Option<[u8; 32]>) -> Result<Self> {
        let (stored, endpoint_key) = storage
            .read(|r| Ok((r.primary_key()?, r.endpoint_key()?)))
            .await?;
        let primary_key = match (stored, primary_key) {
            (Some(s), Some(given)) if s != given => {
                return Err(Error::InvalidArgument(
                    "primary key differs from the stored one",
                ));
            }
            (Some(s), _) => s,
            (None, given) => {
                let key = given.unwrap_or_else(rand::random);
                // Another store opening the database at once may have stored one first.
                let stored = stored_key(storage.write(Op::SetPrimaryKey(key)).await?)?;
                if given.is_some_and(|g| g != stored) {
                    return Err(Error::InvalidArgument(
                        "primary key differs from the stored one",
                    ));
                }
                stored
            }
        };
        let endpoint_key = match endpoint_key {
            Some(key) => key,
            // A second store opening the file at once may have stored one first: the stored
            // one wins, so both agree.
            None => stored_key(storage.write(Op::SetEndpointKey(rand::random())).await?)?,
        };
        let shared = SharedCores::of(&storage);
        if shared.blobs.store().is_none() {
            shared
                .blobs
                .set_store(BlobStore::memory(&Default::default()));
        }
        Ok(Self {
            inner: Arc::new(StoreInner {
                storage,
                primary_key,
                endpoint_key,
                shared,
            }),
            namespace: DEFAULT_NAMESPACE,
        })
    }

    /// Where the cores of this store live.
    fn home(&self) -> crate::core::CoreHome {
        self.inner.shared.home(&self.inner.storage)
    }

    /// A view of this store in child namespace `name` (as Corestore's `store.namespace(name)`):
    /// the same database, other named keys.
    pub fn namespace(&self, name: &str) -> Self {
        Self {
            inner: self.inner.clone(),
            namespace: child_namespace(&self.namespace, name),
        }
    }

    /// The writable core `name` in this namespace, created on first use. Its key pair is
    /// derived from the primary key, so it is the same core every time.
    ///
    /// The name is stored with the core, in the transaction that creates it:
    /// [`names`](Self::names) lists it (a name over 1 KiB is not kept).
    pub async fn get_named(&self, name: &str) -> Result<Hypercore> {
        let kp = derive_key_pair(&self.inner.primary_key, &self.namespace, name);
        // A name too long to keep still names the core: it is only not listed.
        let name = (name.len() <= crate::storage::MAX_NAME_BYTES).then(|| CoreName {
            namespace: self.namespace,
            name: name.to_string(),
        });
        self.open_or_create(
            kp.core_key(CoreKind::Default),
            Some(CoreKind::Default),
            Some(kp),
            name,
        )
        .await
    }

    /// The names of the named cores of this namespace ([`get_named`](Self::get_named)) and
    /// their keys, sorted by name.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> iroh_hypercore::Result<()> {
    /// let store = iroh_hypercore::Corestore::memory().await?;
    /// let chat = store.get_named("chat").await?;
    /// store.namespace("other").get_named("notes").await?;
    /// assert_eq!(store.names().await?, vec![("chat".to_string(), chat.key())]);
    /// assert_eq!(store.name_of(chat.key()).await?.as_deref(), Some("chat"));
    /// # Ok(()) }
    /// ```
    pub async fn names(&self) -> Result<Vec<(String, CoreKey)>> {
        let all = self.inner.storage.read(|r| r.names()).await?;
        let mut names: Vec<(String, CoreKey)> = all
            .into_iter()
            .filter(|(_, n)| n.namespace == self.namespace)
            .map(|(key, n)| (n.name, key))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The name core `key` was made with in this namespace, if it is a named core.
    pub async fn name_of(&self, key: CoreKey) -> Result<Option<String>> {
        let name = self.inner.storage.read(move |r| r.name_of(&key)).await?;
        Ok(name
            .filter(|n| n.namespace == self.namespace)
            .map(|n| n.name))
    }

    /// The secret key of the endpoint that serves this store: made on the store's first open
    /// and kept in its database, so the endpoint id (and every ticket printed with it) stays
    /// the same across restarts. Bind the endpoint with it:
    /// `Endpoint::builder(..).secret_key(store.endpoint_secret_key())`.
    ///
    /// Whoever reads the database can act as this endpoint, as they can sign as its cores.
    pub fn endpoint_secret_key(&self) -> iroh::SecretKey {
        iroh::SecretKey::from_bytes(&self.inner.endpoint_key)
    }

    /// The key a named core would have, without opening it.
    pub fn named_key(&self, name: &str) -> CoreKey {
        derive_key_pair(&self.inner.primary_key, &self.namespace, name).core_key(CoreKind::Default)
    }

    /// A new writable core with a given or generated key pair.
    pub async fn create(&self, opts: CoreOptions) -> Result<Hypercore> {
        let kp = opts.key_pair.unwrap_or_else(KeyPair::generate);
        self.open_or_create(kp.core_key(opts.kind), Some(opts.kind), Some(kp), None)
            .await
    }

    /// The core with key `key`: the stored one, or a new empty read-only core that fills
    /// through replication (its kind is learned from the first verified proof).
    pub async fn get_remote(&self, key: CoreKey) -> Result<Hypercore> {
        self.open_or_create(key, None, None, None).await
    }

    /// The stored core with key `key`, if any.
    pub async fn get(&self, key: CoreKey) -> Result<Option<Hypercore>> {
        let mut open = self.inner.shared.open.lock().await;
        if let Some(inner) = open.get(&key) {
            return Ok(Some(Hypercore::from_inner(inner)));
        }
        let loaded = load_core(&self.home(), key).await?;
        Ok(loaded.map(|inner| {
            open.insert(key, &inner);
            Hypercore::from_inner(inner)
        }))
    }

    /// The stored core whose discovery key is `dk`, if any: how a peer names a core it asks
    /// for (the key itself never travels).
    pub async fn get_by_discovery_key(&self, dk: &DiscoveryKey) -> Result<Option<Hypercore>> {
        let mut found = self.get_by_discovery_keys(vec![*dk]).await?;
        found.pop().unwrap_or(Ok(None))
    }

    /// The stored cores whose discovery keys are `dks`, in order, each as
    /// [`get_by_discovery_key`](Self::get_by_discovery_key) finds it, with the cores not open
    /// read in one read transaction (how a node serving its whole store looks up the cores
    /// many channels ask for). The outer error is one that failed them all (the read); an
    /// inner one failed that core alone (its stored header or manifest is corrupt).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> iroh_hypercore::Result<()> {
    /// use iroh_hypercore::{Corestore, crypto::discovery_key};
    ///
    /// let store = Corestore::memory().await?;
    /// let core = store.get_named("log").await?;
    /// let found = store
    ///     .get_by_discovery_keys(vec![discovery_key(&core.key()), [0; 32]])
    ///     .await?;
    /// assert_eq!(found[0].as_ref().unwrap().as_ref().map(|c| c.key()), Some(core.key()));
    /// assert!(found[1].as_ref().unwrap().is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_by_discovery_keys(
        &self,
        dks: Vec<DiscoveryKey>,
    ) -> Result<Vec<Result<Option<Hypercore>>>> {
        let mut out: Vec<Result<Option<Hypercore>>> = dks.iter().map(|_| Ok(None)).collect();
        // Positions of the cores not open.
        let mut to_read = Vec::new();
        let removals = {
            let open = self.inner.shared.open.lock().await;
            for (i, dk) in dks.iter().enumerate() {
                match open.get_by_discovery(dk) {
                    Some(inner) => out[i] = Ok(Some(Hypercore::from_inner(inner))),
                    None => to_read.push(i),
                }
            }
            open.removals()
        };
        if to_read.is_empty() {
            return Ok(out);
        }
        // Not open: their keys and states in one read, without the lock, so that a peer
        // asking for cores the store does not hold never holds up the application's opens.
        let wanted: Vec<DiscoveryKey> = to_read.iter().map(|&i| dks[i]).collect();
        let read = |wanted: Vec<DiscoveryKey>| {
            self.inner
                .storage
                .read(move |r| r.cores_by_discovery_keys(&wanted))
        };
        let found = read(wanted.clone()).await?;
        let mut open = self.inner.shared.open.lock().await;
        // A delete since the read (it holds the lock until it committed) may have removed
        // some: they are read again, under the lock.
        let found = if open.removals() == removals {
            found
        } else {
            read(wanted).await?
        };
        for (i, stored) in to_read.into_iter().zip(found) {
            out[i] = match stored {
                Ok(Some((key, id, header))) => match open.get(&key) {
                    Some(inner) => Ok(Some(Hypercore::from_inner(inner))),
                    None => CoreInnerHandle::new(id, header, self.home()).map(|inner| {
                        open.insert(key, &inner);
                        Some(Hypercore::from_inner(inner))
                    }),
                },
                Ok(None) => Ok(None),
                Err(e) => Err(e.into()),
            };
        }
        Ok(out)
    }

    async fn open_or_create(
        &self,
        key: CoreKey,
        kind: Option<CoreKind>,
        key_pair: Option<KeyPair>,
        name: Option<CoreName>,
    ) -> Result<Hypercore> {
        let mut open = self.inner.shared.open.lock().await;
        if let Some(inner) = open.get(&key) {
            return Ok(Hypercore::from_inner(inner));
        }
        let inner = match load_core(&self.home(), key).await? {
            Some(inner) => {
                if let Some(name) = name {
                    self.keep_name(key, name).await?;
                }
                inner
            }
            None => {
                let inner = create_core(&self.home(), key, kind, key_pair, name).await?;
                let _ = self.inner.shared.created.send(key);
                inner
            }
        };
        open.insert(key, &inner);
        Ok(Hypercore::from_inner(inner))
    }

    /// Records the name of a named core stored before names were (once; later opens read it).
    async fn keep_name(&self, key: CoreKey, name: CoreName) -> Result<()> {
        if self.inner.storage.is_read_only() {
            return Ok(());
        }
        let stored = self.inner.storage.read(move |r| r.name_of(&key)).await?;
        if stored.as_ref() != Some(&name) {
            self.inner
                .storage
                .write(Op::SetName {
                    key,
                    name: Box::new(name),
                })
                .await?;
        }
        Ok(())
    }

    /// The peers the whole store is replicated with
    /// ([`HypercoreProtocol::join_store`](crate::HypercoreProtocol::join_store)), most
    /// recently joined first. A record that does not decode reads as none.
    pub async fn store_peers(&self) -> Result<Vec<iroh::EndpointAddr>> {
        let bytes = self.inner.storage.read(|r| r.store_peers()).await?;
        if bytes.is_empty() {
            return Ok(Vec::new());
        }
        Ok(postcard::from_bytes(&bytes).unwrap_or_else(|e| {
            tracing::warn!("the record of the store's peers does not decode: {e}");
            Vec::new()
        }))
    }

    /// Forgets the peers the store was joined with: a protocol started on the store later
    /// dials none of them (connections open now stay).
    pub async fn forget_store_peers(&self) -> Result<()> {
        self.inner
            .storage
            .write(Op::SetStorePeers(Vec::new()))
            .await?;
        Ok(())
    }

    /// Puts `nodes` first in the record of the store's peers (at most
    /// [`MAX_STORE_PEERS`](crate::replication::engine::MAX_STORE_PEERS), each with at most 8
    /// addresses), durably.
    pub(crate) async fn remember_store_peers(&self, nodes: &[iroh::EndpointAddr]) -> Result<()> {
        let mut peers: Vec<iroh::EndpointAddr> = nodes
            .iter()
            .map(|n| {
                let mut n = n.clone();
                n.addrs = n.addrs.into_iter().take(8).collect();
                n
            })
            .collect();
        for old in self.store_peers().await? {
            if !peers.iter().any(|p| p.id == old.id) {
                peers.push(old);
            }
        }
        let mut dedup = std::collections::HashSet::new();
        peers.retain(|p| dedup.insert(p.id));
        peers.truncate(crate::replication::engine::MAX_STORE_PEERS);
        // The encoding only fails on a writer error, which a Vec does not have.
        let mut bytes = postcard::to_stdvec(&peers).unwrap_or_default();
        while bytes.len() > crate::storage::MAX_PEERS_BYTES && !peers.is_empty() {
            peers.pop();
            bytes = postcard::to_stdvec(&peers).unwrap_or_default();
        }
        self.inner.storage.write(Op::SetStorePeers(bytes)).await?;
        Ok(())
    }

    /// The key of each core created from now on, through any store on this database (a
    /// lagging receiver should list the store again).
    pub(crate) fn subscribe_created(&self) -> tokio::sync::broadcast::Receiver<CoreKey> {
        self.inner.shared.created.subscribe()
    }

    /// Keys of every stored core, read in one pass over the key table (no core is loaded).
    pub async fn list(&self) -> Result<Vec<CoreKey>> {
        Ok(self.inner.storage.read(|r| r.core_keys()).await?)
    }

    /// Deletes core `key` and every byte stored for it. Open handles of it fail from now on.
    pub async fn delete(&self, key: CoreKey) -> Result<()> {
        // Held until the delete committed: a core opened meanwhile would be loaded from the
        // rows still stored, with a state the delete does not mark, and take writes that vanish.
        let mut open = self.inner.shared.open.lock().await;
        let handle = open.remove(&key);
        if let Some(h) = &handle {
            Hypercore::from_inner(h.clone()).mark_closed();
        }
        let outcome = self
            .inner
            .storage
            .write(Op::DeleteCore {
                key,
                slot: handle.map(|h| h.slot.clone()),
            })
            .await?;
        drop(open);
        if outcome != Outcome::Deleted(true) {
            return Err(Error::NotFound(crate::core::hex(&key)));
        }
        // After the delete: a crash before this leaves tags (blobs kept), never blocks
        // without theirs.
        if let Some(blobs) = self.inner.shared.blobs.store()
            && let Err(e) = blobs.release_core(&key).await
        {
            // The core is gone either way; a tag left keeps its blobs too long, not too short.
            tracing::warn!("blobs of a deleted core stay tagged: {e}");
        }
        Ok(())
    }

    /// The iroh-blobs store beside this store's database: a file store in the directory of a
    /// [`persistent`](Self::persistent) store, a memory store otherwise. Serve it with
    /// [`HypercoreProtocol::blobs_protocol`](crate::HypercoreProtocol::blobs_protocol).
    pub fn blobs(&self) -> iroh_blobs::api::Store {
        self.blob_store().store().clone()
    }

    /// The blob store with its tags.
    pub(crate) fn blob_store(&self) -> BlobStore {
        self.inner
            .shared
            .blobs
            .store()
            .cloned()
            .unwrap_or_else(|| BlobStore::memory(&Default::default()))
    }

    /// Resolves once everything written so far is durable.
    pub async fn flush(&self) -> Result<()> {
        Ok(self.inner.storage.flush().await?)
    }

    /// Makes everything durable and stops the storage actor and the blob store; the database
    /// closes when the last handle is dropped.
    pub async fn close(&self) -> Result<()> {
        for inner in self.inner.shared.open.lock().await.all() {
            Hypercore::from_inner(inner).mark_closed();
        }
        if let Some(blobs) = self.inner.shared.blobs.store() {
            // Already shut down by a router serving it: nothing more to do.
            let _ = blobs.store().shutdown().await;
        }
        Ok(self.inner.storage.close().await?)
    }

    /// The underlying storage (for its commit statistics).
    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    /// Commit counters of the storage actor.
    pub fn stats(&self) -> StorageStats {
        self.inner.storage.stats()
    }
}

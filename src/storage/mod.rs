//! Storage: one redb database per store (a file, or redb's in-memory backend), and the only
//! code that knows its schema.
//!
//! - **Typed operations.** `core/` and `store/` describe writes as plain data, an `Op`
//!   (create, delete a core; append; apply a verified proof or run; truncate; clear; set the
//!   primary key), and reads go through a `Reader` of typed queries. No redb table is opened
//!   anywhere else; the schema (`schema`), the block rows (`blocks`) and the node rows
//!   (`nodes`) are private to this module.
//! - **One actor, batches.** Writes are queued in call order and committed together (group
//!   commit) by one storage thread; with relaxed durability a small write may be committed by
//!   its caller when the thread is idle. The ops of a batch share one transaction (`batch`;
//!   `apply` and `catalog` execute them).
//! - **Cores.** Each open core has a `CoreSlot` shared by its handles and the actor: the
//!   writes of a core carry it, with the core's key pair. At the end of a batch the actor signs
//!   each changed core's tree once and writes its header; after the commit it publishes the
//!   new header as the core's committed state and emits the batch's events, before any write
//!   of the batch is answered. Nothing calls back into `core/`.
//!
//! Reads use redb read transactions on tokio's blocking pool, so they never block the runtime.
//! With the `test-utils` feature, `test_view` gives tests and fuzz targets access to the rows.

mod actor;
mod apply;
mod batch;
pub(crate) mod blocks;
mod catalog;
mod change;
mod error;
mod memory;
pub(crate) mod nodes;
mod ops;
mod read;
pub(crate) mod schema;
mod slot;
#[cfg(feature = "test-utils")]
pub mod test_view;

use std::{path::Path, sync::Arc};

use redb::{ReadableDatabase, StorageBackend};

pub use actor::StorageStats;
pub(crate) use change::{Change, CommitListener};
pub use error::StorageError;
#[cfg(test)]
pub(crate) use ops::Probe;
pub(crate) use ops::{ApplyProof, Op, Outcome};
pub(crate) use read::{CoreNodes, Reader};
pub(crate) use schema::{CoreHeader, CoreName, MAX_NAME_BYTES, MAX_PEERS_BYTES};
pub(crate) use slot::{CoreSlot, CoreState};

/// When an acknowledged write is on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// Every write resolves after a durable (fsynced) commit: it survives kill -9 and power loss.
    /// Concurrent writes share one commit (group commit).
    #[default]
    Durable,
    /// Writes resolve after a non-durable commit; a durable commit follows within 100 ms and on
    /// `flush()`/close. A crash loses at most that window and never corrupts the log. redb keeps
    /// non-durable commits in process memory, so even kill -9 of the process can lose the window.
    Relaxed,
}

/// How to open a store's database.
#[derive(Debug, Clone, Default)]
pub struct StorageOptions {
    /// Durability of acknowledged writes.
    pub durability: Durability,
    /// Bytes of redb's page cache; `None` keeps redb's default (1 GiB) for a file or a custom
    /// backend, and 8 MiB for [`Storage::memory`], whose pages are in memory already.
    /// redb keeps the pages it writes in this cache, so a store's memory grows with what it
    /// writes up to this size.
    pub cache_bytes: Option<usize>,
}

/// redb's builder for `opts`.
fn builder(opts: &StorageOptions) -> redb::Builder {
    let mut builder = redb::Database::builder();
    if let Some(bytes) = opts.cache_bytes {
        builder.set_cache_size(bytes);
    }
    builder
}

/// A handle to one database and its storage actor. Cheap to clone.
///
/// After an I/O error (a full disk, say) redb refuses further writes until the database is
/// reopened: every later write fails with a clear [`StorageError::Database`] and nothing is lost.
#[derive(Debug, Clone)]
pub struct Storage {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// `None` once closed, so that the file is released even while handles remain.
    db: std::sync::RwLock<Option<Db>>,
    /// The writer; `None` for a database opened read-only.
    actor: Option<actor::ActorHandle>,
}

/// The database, opened for writing or read-only.
#[derive(Clone)]
enum Db {
    Writable(Arc<redb::Database>),
    ReadOnly(Arc<redb::ReadOnlyDatabase>),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Writable(_) => "Db::Writable",
            Self::ReadOnly(_) => "Db::ReadOnly",
        })
    }
}

impl Db {
    fn begin_read(&self) -> Result<redb::ReadTransaction, redb::TransactionError> {
        match self {
            Self::Writable(db) => db.begin_read(),
            Self::ReadOnly(db) => db.begin_read(),
        }
    }
}

/// A handle that names a database without keeping it open: the layers above find their own
/// per-database state by it.
#[derive(Debug, Clone)]
pub(crate) struct WeakStorage(std::sync::Weak<Shared>);

impl WeakStorage {
    /// Whether it names `storage` (and that database is still open somewhere).
    pub(crate) fn is(&self, storage: &Storage) -> bool {
        self.0
            .upgrade()
            .is_some_and(|s| Arc::ptr_eq(&s, &storage.shared))
    }

    /// Whether some handle of the database is left.
    pub(crate) fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

impl Storage {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path, opts: StorageOptions) -> Result<Self, StorageError> {
        let db = builder(&opts).create(path)?;
        Self::from_db(db, opts)
    }

    /// Opens the database file at `path` for reading only: nothing is written (the file and
    /// its directory may be read-only), and every write fails with
    /// [`StorageError::ReadOnly`]. A file of another schema version (one this build would
    /// migrate when opened for writing) is a [`StorageError::SchemaMismatch`].
    pub fn open_read_only(path: &Path, opts: StorageOptions) -> Result<Self, StorageError> {
        let mut builder = redb::Database::builder();
        if let Some(bytes) = opts.cache_bytes {
            builder.set_cache_size(bytes);
        }
        let db = builder.open_read_only(path)?;
        match schema::stored_version(&db)? {
            Some(schema::SCHEMA_VERSION) => {}
            Some(found) => {
                return Err(StorageError::SchemaMismatch {
                    found,
                    expected: schema::SCHEMA_VERSION,
                });
            }
            None => return Err(StorageError::Corrupt("no schema version".into())),
        }
        Ok(Self {
            shared: Arc::new(Shared {
                db: std::sync::RwLock::new(Some(Db::ReadOnly(Arc::new(db)))),
                actor: None,
            }),
        })
    }

    /// Whether the database was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.shared.actor.is_none()
    }

    /// A database in memory, in chunks that grow without copying (see `memory`): the same
    /// code path as a file. Unless `opts` name a size, redb's page cache is small (8 MiB): its
    /// default (1 GiB) would keep a second copy of every page written, up to that size.
    pub fn memory(opts: StorageOptions) -> Result<Self, StorageError> {
        Self::memory_on(memory::ChunkedMemory::new(), opts)
    }

    /// A database in memory on `backend`, with the options of one ([`Storage::memory`]).
    fn memory_on(backend: impl StorageBackend, opts: StorageOptions) -> Result<Self, StorageError> {
        Self::with_backend(backend, memory::options(opts))
    }

    /// A database on a custom redb backend (for example one that simulates a full disk).
    pub fn with_backend(
        backend: impl StorageBackend,
        opts: StorageOptions,
    ) -> Result<Self, StorageError> {
        let db = builder(&opts).create_with_backend(backend)?;
        Self::from_db(db, opts)
    }

    fn from_db(db: redb::Database, opts: StorageOptions) -> Result<Self, StorageError> {
        schema::init(&db)?;
        let db = Arc::new(db);
        let actor = actor::ActorHandle::spawn(db.clone(), opts.durability)?;
        Ok(Self {
            shared: Arc::new(Shared {
                db: std::sync::RwLock::new(Some(Db::Writable(db))),
                actor: Some(actor),
            }),
        })
    }

    fn db(&self) -> Result<Db, StorageError> {
        self.shared
            .db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StorageError::Closed)
    }

    /// Queues a write; it runs on the storage actor in a shared transaction and resolves after
    /// that transaction commits. A write that is [`StorageError::Rejected`] wrote nothing: only
    /// it fails. Any other error aborts the whole transaction.
    pub(crate) fn write(
        &self,
        op: Op,
    ) -> impl Future<Output = Result<Outcome, StorageError>> + Send + 'static + use<> {
        self.write_sized(false, op)
    }

    /// Like [`Storage::write`]; a `small` write is one that takes a few microseconds (one
    /// small append). With relaxed durability, when nothing else holds the database, the
    /// future's first poll commits a small write on the caller's thread instead of handing it
    /// to the storage thread and back. Durable commits always run on the storage thread.
    pub(crate) fn write_sized(
        &self,
        small: bool,
        op: Op,
    ) -> impl Future<Output = Result<Outcome, StorageError>> + Send + 'static + use<> {
        let pending = self.shared.actor.as_ref().map(|a| a.write(op, small));
        async move {
            match pending {
                Some(pending) => pending.await,
                None => Err(StorageError::ReadOnly),
            }
        }
    }

    /// Resolves once every write queued before it committed (without forcing durability);
    /// at once on a read-only database, where nothing is written.
    pub(crate) fn barrier(
        &self,
    ) -> impl Future<Output = Result<(), StorageError>> + Send + 'static + use<> {
        let f = self
            .shared
            .actor
            .as_ref()
            .map(|a| a.write(Op::Barrier, false));
        async move {
            match f {
                Some(f) => f.await.map(|_| ()),
                None => Ok(()),
            }
        }
    }

    /// A handle naming this database that does not keep it open.
    pub(crate) fn downgrade(&self) -> WeakStorage {
        WeakStorage(Arc::downgrade(&self.shared))
    }

    /// Runs `f` on a [`Reader`] of a read transaction on the blocking pool.
    pub(crate) fn read<T, F>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<T, StorageError>> + Send + 'static + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&Reader<'_>) -> Result<T, StorageError> + Send + 'static,
    {
        let db = self.db();
        async move {
            let db = db?;
            tokio::task::spawn_blocking(move || f(&Reader::new(&db.begin_read()?)))
                .await
                .map_err(|e| StorageError::Database(format!("read task failed: {e}")))?
        }
    }

    /// Resolves after everything written so far is durable.
    pub fn flush(&self) -> impl Future<Output = Result<(), StorageError>> + Send + 'static + use<> {
        let f = self.shared.actor.as_ref().map(actor::ActorHandle::flush);
        async move {
            match f {
                Some(f) => f.await.map(|_| ()),
                None => Ok(()),
            }
        }
    }

    /// Makes everything durable, stops the actor and releases the database (the file can be
    /// opened again at once); later reads and writes fail with [`StorageError::Closed`].
    pub fn close(&self) -> impl Future<Output = Result<(), StorageError>> + Send + 'static + use<> {
        self.shared
            .db
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let f = self.shared.actor.as_ref().map(actor::ActorHandle::close);
        async move {
            match f {
                Some(f) => f.await.map(|_| ()),
                None => Ok(()),
            }
        }
    }

    /// Commit counters of the storage actor.
    pub fn stats(&self) -> StorageStats {
        self.shared
            .actor
            .as_ref()
            .map(actor::ActorHandle::stats)
            .unwrap_or_default()
    }
}

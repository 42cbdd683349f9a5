//! Storage errors.

use std::sync::Arc;

/// Why a storage operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StorageError {
    /// The database reported an error (I/O, a full disk, ...). Nothing of the failed
    /// transaction was stored.
    #[error("database error: {0}")]
    Database(String),
    /// Reading or writing the database file failed (a full disk, a file size limit, a
    /// permission): the I/O error is the source, with its kind. Nothing of the failed
    /// transaction was stored.
    #[error("database I/O error: {0}")]
    Io(#[source] IoCause),
    /// The database file or a stored value is corrupt.
    #[error("corrupt database: {0}")]
    Corrupt(String),
    /// The database was written by another schema version.
    #[error("database has schema version {found}, this build reads version {expected}")]
    SchemaMismatch {
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// The write conflicts with the stored state and was not applied.
    #[error("write rejected: {0}")]
    Rejected(String),
    /// The store is closed.
    #[error("storage is closed")]
    Closed,
    /// The database was opened read-only: nothing can be written.
    #[error("the store is open read-only")]
    ReadOnly,
}

impl StorageError {
    /// The I/O error behind this one, if the file system failed.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            Self::Io(cause) => Some(&cause.0),
            _ => None,
        }
    }
}

/// An I/O error shared by everyone the failure is reported to (a failed commit fails every
/// write of its group). Two are equal when their kinds and texts are.
#[derive(Debug, Clone)]
pub struct IoCause(Arc<std::io::Error>);

impl IoCause {
    /// The I/O error.
    pub fn get(&self) -> &std::io::Error {
        &self.0
    }
}

impl PartialEq for IoCause {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.to_string() == other.0.to_string()
    }
}

impl Eq for IoCause {}

impl std::fmt::Display for IoCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for IoCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl From<std::io::Error> for IoCause {
    fn from(e: std::io::Error) -> Self {
        Self(Arc::new(e))
    }
}

impl From<redb::Error> for StorageError {
    fn from(e: redb::Error) -> Self {
        match e {
            // What redb reads and cannot make sense of ("not a redb database"): a corrupt
            // file, not a failing disk.
            redb::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                Self::Corrupt(e.to_string())
            }
            redb::Error::Io(e) => Self::Io(IoCause(Arc::new(e))),
            redb::Error::PreviousIo => Self::Database(
                "an earlier write failed (a full disk?): the store takes no more writes until \
                 it is opened again"
                    .into(),
            ),
            redb::Error::Corrupted(msg) => Self::Corrupt(msg),
            redb::Error::UpgradeRequired(v) => Self::Corrupt(format!("redb file format {v}")),
            other => Self::Database(other.to_string()),
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                redb::Error::from(e).into()
            }
        }
    )*};
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

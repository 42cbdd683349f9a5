//! Storage errors.

/// Why a storage operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StorageError {
    /// The database reported an error (I/O, a full disk, ...). Nothing of the failed
    /// transaction was stored.
    #[error("database error: {0}")]
    Database(String),
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
}

impl From<redb::Error> for StorageError {
    fn from(e: redb::Error) -> Self {
        match e {
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

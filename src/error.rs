//! The error type of cores and stores.

use crate::{crypto::signer::SignatureError, storage::StorageError, tree::ProofError};

/// Why an operation on a core or a store failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The core has no secret key: it can only be read and replicated.
    #[error("core is not writable")]
    NotWritable,
    /// An index at or past the end of the log.
    #[error("index {index} is out of range (length {length})")]
    OutOfRange {
        /// Index asked for.
        index: u64,
        /// Length of the log.
        length: u64,
    },
    /// A byte offset at or past the end of the log.
    #[error("byte offset {bytes} is out of range (byte length {byte_length})")]
    ByteOutOfRange {
        /// Offset asked for.
        bytes: u64,
        /// Byte length of the log.
        byte_length: u64,
    },
    /// A block within the log that is not stored locally.
    #[error("block {0} is not available locally")]
    BlockNotAvailable(u64),
    /// A tree node needed to answer is not stored locally.
    #[error("tree node {0} is not available locally")]
    NodeNotAvailable(u64),
    /// An argument makes no sense (for example truncating to a greater length).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A proof was invalid, or a proof could not be created.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// A signature or manifest did not check out.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The database failed; nothing of the failed operation was stored.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// No core with this key is stored.
    #[error("no core with key {0}")]
    NotFound(String),
    /// The core or store was closed.
    #[error("closed")]
    Closed,
    /// A read waiting for peers was given up: the protocol left the core
    /// (`HypercoreProtocol::leave`), so nobody fetches for it any more.
    #[error("the core stopped replicating while waiting for {0}")]
    Left(String),
    /// Waiting for data from peers took longer than allowed.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// A blob could not be stored, fetched or read, or a block names none or one too big.
    #[error("blob: {0}")]
    Blob(String),
    /// A file could not be read or written (a full disk, a file size limit, a permission):
    /// `source` is the I/O error, with its kind.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The I/O error behind this one, if a file or the disk failed.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Storage(e) => e.io_error(),
            _ => None,
        }
    }

    /// Whether the disk had no room for a write: a full disk or quota
    /// ([`StorageFull`](std::io::ErrorKind::StorageFull),
    /// [`QuotaExceeded`](std::io::ErrorKind::QuotaExceeded)), or the file size limit
    /// ([`FileTooLarge`](std::io::ErrorKind::FileTooLarge)). Nothing of the failed write was
    /// stored.
    pub fn is_disk_full(&self) -> bool {
        self.io_error().is_some_and(is_disk_full)
    }

    /// The error of `what` failing with `cause`: [`Error::Io`] when an I/O error is among its
    /// sources (its kind and text kept), else [`Error::Blob`] with its text.
    pub(crate) fn blob(
        what: impl std::fmt::Display,
        cause: &(dyn std::error::Error + 'static),
    ) -> Self {
        match io_source(cause) {
            Some(io) => Self::Io {
                what: format!("blob: {what}"),
                source: std::io::Error::new(io.kind(), io.to_string()),
            },
            None => Self::Blob(format!("{what}: {cause}")),
        }
    }
}

/// Whether an I/O error says the disk had no room (full, over quota, over the size limit).
pub fn is_disk_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{FileTooLarge, QuotaExceeded, StorageFull};
    matches!(e.kind(), StorageFull | QuotaExceeded | FileTooLarge)
}

/// The first I/O error in the chain of `e`'s sources (`e` included).
fn io_source<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        next = e.source();
    }
    None
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

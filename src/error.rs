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
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

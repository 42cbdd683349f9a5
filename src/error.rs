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
    /// A connection on Hypercore's own wire failed before it was up (the handshake failed,
    /// timed out, or the stream ended).
    #[error("hypercore wire: {0}")]
    Wire(String),
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

/// Whether `e` or any error behind it is an I/O error of a full disk, a quota or the file
/// size limit ([`is_disk_full`]): for errors of other crates that wrap this crate's or
/// `std`'s.
pub fn is_disk_full_within(e: &(dyn std::error::Error + 'static)) -> bool {
    io_errors(e).into_iter().any(is_disk_full)
}

/// The I/O error behind `e` that says most: the first of a kind other than `Other` (which
/// wraps errors, `io::Error::other`), else the first.
fn io_source<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let all = io_errors(e);
    all.iter()
        .find(|io| io.kind() != std::io::ErrorKind::Other)
        .or(all.first())
        .copied()
}

/// Every I/O error in the chain of `e`'s sources (`e` included), in order, with those that
/// wrapping I/O errors hold: `source()` of an `io::Error::other(inner)` skips `inner` itself.
fn io_errors<'a>(e: &'a (dyn std::error::Error + 'static)) -> Vec<&'a std::io::Error> {
    let mut out = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let mut io = e.downcast_ref::<std::io::Error>();
        while let Some(wrapper) = io {
            out.push(wrapper);
            io = wrapper
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<std::io::Error>());
        }
        next = e.source();
    }
    out
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::io::{Error as IoError, ErrorKind};

    use super::*;

    /// An error whose source is `inner`, as a library's error type would wrap it.
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] IoError);

    #[test]
    fn a_full_disk_is_found_however_it_is_wrapped() {
        let full = || IoError::from(ErrorKind::StorageFull);
        for cause in [
            Box::new(full()) as Box<dyn std::error::Error>,
            Box::new(Outer(full())),
            Box::new(IoError::other(full())),
            Box::new(IoError::other(IoError::other(full()))),
            Box::new(Outer(IoError::other(full()))),
            Box::new(IoError::other(Outer(IoError::from(
                ErrorKind::QuotaExceeded,
            )))),
        ] {
            assert!(is_disk_full_within(&*cause), "{cause:?}");
            let e = Error::blob("adding a blob", &*cause);
            assert!(e.is_disk_full(), "{e}: {cause:?}");
            assert!(is_disk_full_within(&e), "{e}");
            assert!(e.to_string().starts_with("blob: adding a blob: "), "{e}");
        }
        // From the database: through `Error::Storage` and `StorageError::Io`.
        let stored = Error::Storage(StorageError::Io(full().into()));
        assert!(
            stored.is_disk_full() && is_disk_full_within(&stored),
            "{stored}"
        );
        let other = Error::blob("adding a blob", &IoError::other("no"));
        assert!(!is_disk_full_within(&other));
        assert!(!other.is_disk_full());
        let text = Error::blob("adding a blob", &std::fmt::Error);
        assert!(matches!(text, Error::Blob(_)) && text.io_error().is_none());
    }
}

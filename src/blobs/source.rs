//! What a blob is made from ([`BlobSource`]), and how far getting one went
//! ([`BlobProgress`]).

use std::{
    path::{Path, PathBuf},
    pin::Pin,
};

use bytes::Bytes;
use iroh::EndpointId;
use n0_future::Stream;

/// Where the content of a blob comes from (see [`Hypercore::append_blob`]).
pub enum BlobSource {
    /// Bytes in memory.
    Bytes(Bytes),
    /// A file, read (and hashed) where it lies.
    Path(PathBuf),
    /// A stream of chunks.
    Stream(Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send + Sync>>),
}

impl std::fmt::Debug for BlobSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Self::Path(p) => write!(f, "Path({})", p.display()),
            Self::Stream(_) => write!(f, "Stream"),
        }
    }
}

impl From<Bytes> for BlobSource {
    fn from(bytes: Bytes) -> Self {
        Self::Bytes(bytes)
    }
}

impl From<Vec<u8>> for BlobSource {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Bytes(bytes.into())
    }
}

impl From<&[u8]> for BlobSource {
    fn from(bytes: &[u8]) -> Self {
        Self::Bytes(Bytes::copy_from_slice(bytes))
    }
}

impl From<PathBuf> for BlobSource {
    fn from(path: PathBuf) -> Self {
        Self::Path(path)
    }
}

impl From<&Path> for BlobSource {
    fn from(path: &Path) -> Self {
        Self::Path(path.to_owned())
    }
}

/// How far a [`GetBlob`](crate::core::GetBlob) got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobProgress {
    /// Bytes of the blob stored.
    pub done: u64,
    /// The blob's size (0 until its block was read).
    pub total: u64,
    /// The peer asked last, if any.
    pub provider: Option<EndpointId>,
    /// Each provider that sent verified bytes of this fetch, with how many, in the order they
    /// first sent some (at most 8: a fetch asks that many providers at most).
    pub served: Vec<(EndpointId, u64)>,
}

impl BlobProgress {
    /// Counts `bytes` more from `provider`.
    pub(crate) fn served_by(&mut self, provider: EndpointId, bytes: u64) {
        if bytes == 0 {
            return;
        }
        match self.served.iter_mut().find(|(p, _)| *p == provider) {
            Some((_, n)) => *n = n.saturating_add(bytes),
            None => self.served.push((provider, bytes)),
        }
    }
}

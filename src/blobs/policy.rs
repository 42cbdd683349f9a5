//! [`BlobPolicy`]: which blobs a core replicated in full fetches along with its blocks.

/// Which blobs a core replicated in full ([`Mode::Full`](crate::Mode::Full)) fetches as its
/// blocks arrive (set with
/// [`Builder::blob_policy`](crate::net::Builder::blob_policy)). Blobs are fetched as
/// [`Hypercore::get_blob`](crate::Hypercore::get_blob) fetches them, within the store's
/// `max_blob_size`; each one fetched is reported as a `BlobDownloaded` event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BlobPolicy {
    /// Only blocks: blobs are fetched when the application asks (the default).
    #[default]
    None,
    /// Every blob the blocks name.
    All,
    /// Blobs of at most this many bytes.
    UpTo(u64),
}

impl BlobPolicy {
    /// Whether a blob of `size` bytes is fetched with its block.
    pub fn admits(&self, size: u64) -> bool {
        match self {
            Self::None => false,
            Self::All => true,
            Self::UpTo(max) => size <= *max,
        }
    }
}

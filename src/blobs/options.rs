//! How a store keeps and fetches blobs.

use std::time::Duration;

/// How a store keeps and fetches blobs (see [`Hypercore::append_blob`](crate::Hypercore::append_blob)).
#[derive(Debug, Clone)]
pub struct BlobOptions {
    /// How often iroh-blobs' garbage collection runs (`None`: never). Blobs a block of this
    /// store names are kept; others go.
    pub gc_interval: Option<Duration>,
    /// The largest blob fetched: a block naming a bigger one is refused before anything is
    /// downloaded.
    pub max_blob_size: u64,
}

/// The default of [`BlobOptions::max_blob_size`]: 16 GiB.
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 16 << 30;

impl Default for BlobOptions {
    fn default() -> Self {
        Self {
            gc_interval: Some(Duration::from_secs(60)),
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
        }
    }
}

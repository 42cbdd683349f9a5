//! [`Corestore`]: many cores in one database, named cores derived from a primary key exactly as
//! Corestore 7 derives them.

mod corestore;
mod options;

pub use corestore::Corestore;
pub(crate) use corestore::{shared_blobs, shared_blobs_of};
pub use options::{BlobOptions, CoreOptions, DEFAULT_MAX_BLOB_SIZE, StoreOptions};

//! [`Corestore`]: many cores in one database, named cores derived from a primary key exactly as
//! Corestore 7 derives them.

mod corestore;
mod options;
mod shared;

pub(crate) use corestore::shared_blobs_of;
pub use corestore::{BLOBS_DIR, Corestore, DB_FILE};
pub use options::{CoreOptions, StoreOptions};

pub use crate::blobs::{BlobOptions, DEFAULT_MAX_BLOB_SIZE};

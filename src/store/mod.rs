//! [`Corestore`]: many cores in one database, named cores derived from a primary key exactly as
//! Corestore 7 derives them.

mod corestore;
mod options;

pub use corestore::Corestore;
pub use options::{CoreOptions, StoreOptions};

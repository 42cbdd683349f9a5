//! Hypercore-compatible signed append-only logs, replicated peer to peer over iroh.
#![warn(missing_docs)]

pub mod core;
pub mod crypto;
mod error;
pub mod storage;
pub mod store;
pub mod tree;

pub use crate::core::{CoreEvent, Hypercore, Info};
pub use crypto::{CoreKey, CoreKind, KeyPair};
pub use error::{Error, Result};
pub use storage::Durability;
pub use store::{CoreOptions, Corestore, StoreOptions};

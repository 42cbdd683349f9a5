//! Hypercore-compatible signed append-only logs, replicated peer to peer over iroh.
#![warn(missing_docs)]

pub mod blobs;
pub mod core;
pub mod crypto;
pub mod error;
pub mod hyperwire;
pub mod net;
pub mod replication;
#[cfg(feature = "test-utils")]
pub mod sim;
pub mod storage;
pub mod store;
#[cfg(feature = "test-utils")]
pub mod testnet;
pub mod tree;

pub use crate::core::{CoreEvent, Hypercore, Info};
pub use crypto::{CoreKey, CoreKind, KeyPair};
pub use error::{Error, Result};
pub use net::{ALPN, CoreTicket, HypercoreProtocol};
pub use replication::Mode;
pub use storage::Durability;
pub use store::{CoreOptions, Corestore, StoreOptions};

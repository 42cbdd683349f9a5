//! Cryptographic primitives, byte-compatible with JS Hypercore 11 and Corestore 7.
//!
//! - [`hash`]: BLAKE2b-256 leaf, parent and tree hashes, discovery keys.
//! - [`namespace`]: the hypercore and corestore namespaces.
//! - [`manifest`]: the v1 manifest, its hash (the core key) and the multisig envelope.
//! - [`signer`]: key pairs, signables and signature checks for both kinds of core.
//! - [`capability`]: channel capabilities bound to both endpoints.
//! - [`derive`](mod@derive): Corestore 7 key derivation of named cores.

pub mod capability;
pub mod derive;
pub mod hash;
pub mod manifest;
pub mod namespace;
pub mod signer;

pub use hash::{Hash, discovery_key};
pub use manifest::Manifest;
pub use signer::{CoreKind, KeyPair, Verifier};

/// A 32-byte core key: the manifest hash of a default core, or the public key of a compat core.
pub type CoreKey = [u8; 32];
/// A 32-byte discovery key: a keyed hash of the core key, safe to announce publicly.
pub type DiscoveryKey = [u8; 32];

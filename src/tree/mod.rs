//! The Merkle tree of a log: flat-tree math, nodes, the tree state, and proofs (create and
//! verify), independent of storage and networking.

pub mod flat;
mod node;
mod proof;
mod proof_create;
mod proof_verify;
mod proven_sizes;
mod range;
mod state;

pub use node::{Node, NodeSource};
pub use proof::{
    BlockProof, HashProof, IndexRequest, Proof, ProofError, ProofRequest, SeekProof, SeekRequest,
    UpgradeProof, UpgradeRequest,
};
pub use proof_create::create_proof;
pub(crate) use proof_verify::verify_proof_hashed;
pub use proof_verify::{VerifiedProof, verify_proof};
pub use range::run_proof_levels;
pub use state::TreeState;

/// Largest log length this implementation accepts from anywhere (2^56 blocks).
pub const MAX_LENGTH: u64 = 1 << 56;

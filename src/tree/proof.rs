//! Proof requests and proofs, after hypercore's `request` and `data` messages.

use bytes::Bytes;

use super::node::Node;

/// Asks for a block or a tree node, with how many nodes of its path to the root the
/// requester lacks (the prover sends that many levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexRequest {
    /// Block index for a block request, flat-tree index for a hash request.
    pub index: u64,
    /// Levels of the path above the node that the requester does not have.
    pub nodes: u64,
}

/// Asks for the block containing a byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SeekRequest {
    /// Byte offset.
    pub bytes: u64,
}

/// Asks for a signed upgrade from `start` (the requester's length) to `start + length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpgradeRequest {
    /// The requester's current length (0 to receive every root).
    pub start: u64,
    /// How many blocks to grow by.
    pub length: u64,
}

/// What a requester asks a prover to prove.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProofRequest {
    /// Fork the requester is on.
    pub fork: u64,
    /// A block, with its value.
    pub block: Option<IndexRequest>,
    /// A tree node, without a value.
    pub hash: Option<IndexRequest>,
    /// The block at a byte offset.
    pub seek: Option<SeekRequest>,
    /// A signed upgrade.
    pub upgrade: Option<UpgradeRequest>,
    /// Whether the requester needs the manifest.
    pub manifest: bool,
}

/// A block with the nodes that connect it to a root the requester can verify.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockProof {
    /// Block index.
    pub index: u64,
    /// Block value (serialized as one byte string, not element by element). Shared, not
    /// copied: a large block read from a frame, or sent in one, is the frame's own bytes.
    #[serde(with = "value_bytes")]
    pub value: Bytes,
    /// Uncle nodes, bottom up.
    pub nodes: Vec<Node>,
}

/// A tree node (first in `nodes`) with the nodes that connect it to a verifiable root.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HashProof {
    /// Flat-tree index of the proven node.
    pub index: u64,
    /// The node, then uncle nodes bottom up.
    pub nodes: Vec<Node>,
}

/// The nodes that locate a byte offset.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SeekProof {
    /// The byte offset asked for.
    pub bytes: u64,
    /// The subtree containing the offset, then uncle nodes bottom up.
    pub nodes: Vec<Node>,
}

/// A signed upgrade: the nodes that extend the requester's tree to a new length.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpgradeProof {
    /// Requester's length the upgrade starts from.
    pub start: u64,
    /// Blocks added up to the length that is proven.
    pub length: u64,
    /// Nodes up to `start + length`.
    pub nodes: Vec<Node>,
    /// Nodes from `start + length` up to the prover's signed length.
    pub additional_nodes: Vec<Node>,
    /// Signature over the prover's signed length.
    pub signature: Vec<u8>,
}

/// A proof answering a [`ProofRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Proof {
    /// Prover's fork.
    pub fork: u64,
    /// Block part.
    pub block: Option<BlockProof>,
    /// Hash part.
    pub hash: Option<HashProof>,
    /// Seek part.
    pub seek: Option<SeekProof>,
    /// Upgrade part.
    pub upgrade: Option<UpgradeProof>,
    /// Encoded manifest, when asked for.
    pub manifest: Option<Vec<u8>>,
}

impl Proof {
    /// The lists of nodes the proof carries (its block's, hash's, seek's and upgrade's, and
    /// the upgrade's additional nodes), each one present.
    pub(crate) fn node_lists(&self) -> impl Iterator<Item = &Vec<Node>> {
        [
            self.block.as_ref().map(|b| &b.nodes),
            self.hash.as_ref().map(|h| &h.nodes),
            self.seek.as_ref().map(|s| &s.nodes),
            self.upgrade.as_ref().map(|u| &u.nodes),
            self.upgrade.as_ref().map(|u| &u.additional_nodes),
        ]
        .into_iter()
        .flatten()
    }
}

/// Why a proof could not be created or did not verify.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// The request cannot be answered from this tree.
    #[error("invalid proof request: {0}")]
    InvalidRequest(&'static str),
    /// A node the proof needs is not stored.
    #[error("node {0} is not available")]
    MissingNode(u64),
    /// The proof is malformed or does not hash to a trusted root.
    #[error("invalid proof: {0}")]
    Invalid(String),
    /// The signature over the upgraded tree does not verify.
    #[error("invalid signature: {0}")]
    Signature(#[from] crate::crypto::signer::SignatureError),
    /// The proof is for another fork than the verifier's tree.
    #[error("proof is for fork {proof}, tree is at fork {tree}")]
    ForkMismatch {
        /// Fork in the proof.
        proof: u64,
        /// Fork of the tree.
        tree: u64,
    },
    /// Reading nodes failed.
    #[error("storage error: {0}")]
    Storage(String),
}

impl ProofError {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(msg.into())
    }
}

/// A block value's serde form: one byte string, as `serde_bytes` writes a `Vec<u8>` (the same
/// bytes on the wire).
mod value_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(value)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        serde_bytes::ByteBuf::deserialize(d).map(|b| Bytes::from(b.into_vec()))
    }
}

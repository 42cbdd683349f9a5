//! Key pairs, signables and signature verification for both kinds of core.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use super::{
    hash::Hash,
    manifest::{Manifest, ManifestError, MultiSignature, SignerProof},
    namespace::NS,
};

/// Which kind of core: how its key is derived and how lengths are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum CoreKind {
    /// Hypercore 11 default: key = hash of a v1 manifest with one signer; 112-byte signable;
    /// the signature is stored in a 68-byte multisig envelope.
    Default,
    /// Hypercore 10 compat: key = public key; 80-byte signable; raw 64-byte signature.
    Compat,
}

/// An Ed25519 key pair that signs a writable core.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field(
                "public_key",
                &data_encoding::HEXLOWER.encode(&self.public_key()),
            )
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh random key pair.
    pub fn generate() -> Self {
        Self::from_seed(rand::random())
    }

    /// The key pair of a 32-byte Ed25519 seed (libsodium `crypto_sign_seed_keypair`).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The 32-byte seed (secret key) of this pair.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// Signs `msg` with a raw Ed25519 signature.
    pub fn sign_raw(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// The core key of a core of `kind` signed by this pair.
    pub fn core_key(&self, kind: CoreKind) -> Hash {
        match kind {
            CoreKind::Default => Manifest::single(self.public_key()).hash(),
            CoreKind::Compat => self.public_key(),
        }
    }

    /// Signs a tree state of core `key` and returns the signature as hypercore stores it
    /// (envelope for default cores, raw for compat cores).
    pub fn sign_tree(
        &self,
        kind: CoreKind,
        key: &Hash,
        tree_hash: &Hash,
        length: u64,
        fork: u64,
    ) -> Vec<u8> {
        let raw = self.sign_raw(&signable(kind, key, tree_hash, length, fork));
        match kind {
            CoreKind::Compat => raw.to_vec(),
            CoreKind::Default => MultiSignature {
                proofs: vec![SignerProof {
                    signer: 0,
                    signature: raw,
                }],
            }
            .encode(),
        }
    }
}

/// The bytes that are signed for a tree state.
///
/// Default: `TREE ‖ key ‖ tree_hash ‖ u64le(length) ‖ u64le(fork)` (112 B);
/// compat: `TREE ‖ tree_hash ‖ u64le(length) ‖ u64le(fork)` (80 B).
pub fn signable(kind: CoreKind, key: &Hash, tree_hash: &Hash, length: u64, fork: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(112);
    out.extend_from_slice(&NS.tree);
    if kind == CoreKind::Default {
        out.extend_from_slice(key);
    }
    out.extend_from_slice(tree_hash);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&fork.to_le_bytes());
    out
}

/// Errors building a verifier or checking a signature.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The manifest hash is not the core key.
    #[error("manifest does not hash to the core key")]
    ManifestMismatch,
    /// The manifest could not be used.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A public key is not a valid Ed25519 point.
    #[error("invalid public key")]
    InvalidPublicKey,
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
}

/// Checks signatures of one core's tree states against its key.
///
/// Caches the decompressed public keys, so verifying many lengths of one core is cheap.
#[derive(Debug, Clone)]
pub struct Verifier {
    kind: CoreKind,
    key: Hash,
    manifest: Option<Manifest>,
    keys: Vec<VerifyingKey>,
}

impl Verifier {
    /// A verifier for a compat core, whose key is the public key.
    pub fn compat(key: Hash) -> Result<Self, SignatureError> {
        let vk = VerifyingKey::from_bytes(&key).map_err(|_| SignatureError::InvalidPublicKey)?;
        Ok(Self {
            kind: CoreKind::Compat,
            key,
            manifest: None,
            keys: vec![vk],
        })
    }

    /// A verifier for a default core; fails unless `manifest` hashes to `key`.
    pub fn from_manifest(key: Hash, manifest: Manifest) -> Result<Self, SignatureError> {
        if manifest.hash() != key {
            return Err(SignatureError::ManifestMismatch);
        }
        let keys = manifest
            .signers
            .iter()
            .map(|s| {
                VerifyingKey::from_bytes(&s.public_key)
                    .map_err(|_| SignatureError::InvalidPublicKey)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            kind: CoreKind::Default,
            key,
            manifest: Some(manifest),
            keys,
        })
    }

    /// The kind of core.
    pub fn kind(&self) -> CoreKind {
        self.kind
    }

    /// The manifest, for default cores.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    /// Checks `signature` over the tree state `(tree_hash, length, fork)`.
    pub fn verify(
        &self,
        signature: &[u8],
        tree_hash: &Hash,
        length: u64,
        fork: u64,
    ) -> Result<(), SignatureError> {
        let msg = signable(self.kind, &self.key, tree_hash, length, fork);
        match (&self.manifest, self.kind) {
            (None, _) | (_, CoreKind::Compat) => {
                let sig =
                    Signature::from_slice(signature).map_err(|_| SignatureError::BadSignature)?;
                self.keys[0]
                    .verify_strict(&msg, &sig)
                    .map_err(|_| SignatureError::BadSignature)
            }
            (Some(manifest), CoreKind::Default) => {
                let env = MultiSignature::decode(signature)?;
                let mut seen = Vec::with_capacity(env.proofs.len());
                for p in &env.proofs {
                    let idx = p.signer as usize;
                    let vk = self.keys.get(idx).ok_or(SignatureError::BadSignature)?;
                    if seen.contains(&idx) {
                        return Err(SignatureError::BadSignature);
                    }
                    let sig = Signature::from_bytes(&p.signature);
                    vk.verify_strict(&msg, &sig)
                        .map_err(|_| SignatureError::BadSignature)?;
                    seen.push(idx);
                }
                if seen.len() < manifest.quorum as usize {
                    return Err(SignatureError::BadSignature);
                }
                Ok(())
            }
        }
    }
}

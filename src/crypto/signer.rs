//! Key pairs, signables and signature verification for both kinds of core.

use std::sync::{Arc, OnceLock};

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
/// The signers' public keys are decompressed at the first verification and kept, so verifying
/// many lengths of one core is cheap, and a writer's own cores, which sign and never verify,
/// never pay for it (a decompression is about a sixth of a verification).
#[derive(Debug, Clone)]
pub struct Verifier {
    kind: CoreKind,
    key: Hash,
    manifest: Option<Manifest>,
    /// The signers' keys once decompressed (`None` inside if one is not a point), shared by
    /// the clones: a core's verifier is cloned for each verification.
    keys: Arc<OnceLock<Option<Vec<VerifyingKey>>>>,
}

impl Verifier {
    /// A verifier for a compat core, whose key is the public key. A key that is not an
    /// Ed25519 point fails every verification with [`SignatureError::InvalidPublicKey`].
    pub fn compat(key: Hash) -> Result<Self, SignatureError> {
        Ok(Self {
            kind: CoreKind::Compat,
            key,
            manifest: None,
            keys: Arc::default(),
        })
    }

    /// A verifier for a default core; fails unless `manifest` hashes to `key`. A signer's key
    /// that is not an Ed25519 point fails every verification with
    /// [`SignatureError::InvalidPublicKey`].
    pub fn from_manifest(key: Hash, manifest: Manifest) -> Result<Self, SignatureError> {
        if manifest.hash() != key {
            return Err(SignatureError::ManifestMismatch);
        }
        Ok(Self {
            kind: CoreKind::Default,
            key,
            manifest: Some(manifest),
            keys: Arc::default(),
        })
    }

    /// Checks now that every signer's key is an Ed25519 point (else every verification
    /// fails with [`SignatureError::InvalidPublicKey`]); the keys are kept for verifying.
    pub fn check_keys(&self) -> Result<(), SignatureError> {
        self.keys().map(|_| ())
    }

    /// Whether the signers' keys were decompressed (by a verification or a check).
    #[cfg(test)]
    pub(crate) fn keys_decompressed(&self) -> bool {
        self.keys.get().is_some()
    }

    /// The signers' keys, decompressed at the first call.
    fn keys(&self) -> Result<&[VerifyingKey], SignatureError> {
        let keys = self.keys.get_or_init(|| {
            let decompress = |k: &[u8; 32]| VerifyingKey::from_bytes(k).ok();
            match &self.manifest {
                Some(m) if self.kind == CoreKind::Default => m
                    .signers
                    .iter()
                    .map(|s| decompress(&s.public_key))
                    .collect(),
                _ => decompress(&self.key).map(|k| vec![k]),
            }
        });
        keys.as_deref().ok_or(SignatureError::InvalidPublicKey)
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
                let key = self
                    .keys()?
                    .first()
                    .ok_or(SignatureError::InvalidPublicKey)?;
                let sig =
                    Signature::from_slice(signature).map_err(|_| SignatureError::BadSignature)?;
                key.verify_strict(&msg, &sig)
                    .map_err(|_| SignatureError::BadSignature)
            }
            (Some(manifest), CoreKind::Default) => {
                let keys = self.keys()?;
                let env = MultiSignature::decode(signature)?;
                let mut seen = Vec::with_capacity(env.proofs.len());
                for p in &env.proofs {
                    let idx = p.signer as usize;
                    let vk = keys.get(idx).ok_or(SignatureError::BadSignature)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// 32 bytes that are no Ed25519 point.
    fn not_a_point() -> [u8; 32] {
        (0..=u8::MAX)
            .map(|b| [b; 32])
            .find(|k| VerifyingKey::from_bytes(k).is_err())
            .expect("some repeated byte is no point")
    }

    #[test]
    fn verifies_what_the_key_signed_and_nothing_else() {
        let kp = KeyPair::from_seed([1; 32]);
        for kind in [CoreKind::Default, CoreKind::Compat] {
            let key = kp.core_key(kind);
            let verifier = match kind {
                CoreKind::Default => {
                    Verifier::from_manifest(key, Manifest::single(kp.public_key())).unwrap()
                }
                CoreKind::Compat => Verifier::compat(key).unwrap(),
            };
            let sig = kp.sign_tree(kind, &key, &[3; 32], 5, 0);
            // Nothing decompressed until a verification; a clone made before it shares the
            // keys it decompresses.
            assert!(!verifier.keys_decompressed());
            let clone = verifier.clone();
            assert_eq!(clone.verify(&sig, &[3; 32], 5, 0), Ok(()));
            assert!(verifier.keys_decompressed());
            assert_eq!(verifier.verify(&sig, &[3; 32], 5, 0), Ok(()));
            assert_eq!(
                verifier.verify(&sig, &[3; 32], 6, 0),
                Err(SignatureError::BadSignature)
            );
            let other = KeyPair::from_seed([2; 32]).sign_tree(kind, &key, &[3; 32], 5, 0);
            assert_eq!(
                verifier.verify(&other, &[3; 32], 5, 0),
                Err(SignatureError::BadSignature)
            );
        }
    }

    #[test]
    fn a_key_that_is_no_point_fails_every_verification() {
        let bad = not_a_point();
        let kp = KeyPair::from_seed([1; 32]);
        let manifest = Manifest::single(bad);
        let key = manifest.hash();
        let default = Verifier::from_manifest(key, manifest).unwrap();
        let sig = kp.sign_tree(CoreKind::Default, &key, &[3; 32], 1, 0);
        assert_eq!(default.check_keys(), Err(SignatureError::InvalidPublicKey));
        let compat = Verifier::compat(bad).unwrap();
        assert_eq!(compat.check_keys(), Err(SignatureError::InvalidPublicKey));
        let raw = kp.sign_tree(CoreKind::Compat, &bad, &[3; 32], 1, 0);
        for _ in 0..2 {
            assert_eq!(
                default.verify(&sig, &[3; 32], 1, 0),
                Err(SignatureError::InvalidPublicKey)
            );
            assert_eq!(
                compat.verify(&[0; 3], &[3; 32], 1, 0),
                Err(SignatureError::InvalidPublicKey),
                "the key is checked before the signature's length"
            );
            assert_eq!(
                compat.verify(&raw, &[3; 32], 1, 0),
                Err(SignatureError::InvalidPublicKey)
            );
        }
    }

    #[test]
    fn a_manifest_of_another_key_is_refused() {
        let manifest = Manifest::single(KeyPair::from_seed([1; 32]).public_key());
        assert_eq!(
            Verifier::from_manifest([0; 32], manifest).err(),
            Some(SignatureError::ManifestMismatch)
        );
    }
}

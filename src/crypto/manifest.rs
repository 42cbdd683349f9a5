//! The v1 manifest of a default core, its hash (the core key) and the multisig envelope of
//! its signatures, in hypercore's compact encoding.

use super::{
    hash::{Hash, hash_parts},
    namespace::NS,
};

/// Errors decoding a manifest or a signature envelope.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// The bytes ended before the value did.
    #[error("manifest or signature truncated")]
    Truncated,
    /// Bytes were left after the value.
    #[error("trailing bytes after manifest or signature")]
    Trailing,
    /// A feature this implementation does not support (other version, hash, signature scheme,
    /// prologue, patches).
    #[error("unsupported manifest or signature: {0}")]
    Unsupported(&'static str),
    /// The manifest does not describe a usable core.
    #[error("invalid manifest: {0}")]
    Invalid(&'static str),
}

/// One signer of a manifest: an Ed25519 public key and its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestSigner {
    /// Signer namespace; [`NS.default_namespace`](NS) for default cores.
    pub namespace: Hash,
    /// Ed25519 public key.
    pub public_key: [u8; 32],
}

/// A v1 manifest: who may sign the core. The core key is [`Manifest::hash`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Whether signers may patch (kept for byte compatibility; patches are not supported).
    pub allow_patch: bool,
    /// Whether the core is marked unencrypted.
    pub unencrypted: bool,
    /// How many distinct signers must sign a length.
    pub quorum: u32,
    /// The signers.
    pub signers: Vec<ManifestSigner>,
}

const VERSION: u64 = 1;
const FLAG_ALLOW_PATCH: u64 = 1;
const FLAG_PROLOGUE: u64 = 2;
const FLAG_UNENCRYPTED: u64 = 4;
const HASH_BLAKE2B: u64 = 0;
const SIG_ED25519: u64 = 0;
/// Largest number of signers a manifest may name; bounds decoding work.
pub const MAX_SIGNERS: usize = 64;

impl Manifest {
    /// The manifest of a default core with one Ed25519 signer in the default namespace.
    pub fn single(public_key: [u8; 32]) -> Self {
        Self {
            allow_patch: false,
            unencrypted: false,
            quorum: 1,
            signers: vec![ManifestSigner {
                namespace: NS.default_namespace,
                public_key,
            }],
        }
    }

    /// The compact encoding of this manifest.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(6 + 64 * self.signers.len());
        let flags = (if self.allow_patch {
            FLAG_ALLOW_PATCH
        } else {
            0
        }) | (if self.unencrypted {
            FLAG_UNENCRYPTED
        } else {
            0
        });
        put_uint(&mut out, VERSION);
        put_uint(&mut out, flags);
        put_uint(&mut out, HASH_BLAKE2B);
        put_uint(&mut out, self.quorum as u64);
        put_uint(&mut out, self.signers.len() as u64);
        for s in &self.signers {
            put_uint(&mut out, SIG_ED25519);
            out.extend_from_slice(&s.namespace);
            out.extend_from_slice(&s.public_key);
        }
        out
    }

    /// Decodes a manifest, rejecting anything this implementation cannot verify.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let mut r = Reader(bytes);
        if r.uint()? != VERSION {
            return Err(ManifestError::Unsupported("manifest version"));
        }
        let flags = r.uint()?;
        if flags & FLAG_PROLOGUE != 0 {
            return Err(ManifestError::Unsupported("prologue"));
        }
        if flags & !(FLAG_ALLOW_PATCH | FLAG_UNENCRYPTED) != 0 {
            return Err(ManifestError::Unsupported("manifest flags"));
        }
        if r.uint()? != HASH_BLAKE2B {
            return Err(ManifestError::Unsupported("hash type"));
        }
        let quorum = u32::try_from(r.uint()?).map_err(|_| ManifestError::Invalid("quorum"))?;
        let count = r.uint()? as usize;
        if count == 0 || count > MAX_SIGNERS {
            return Err(ManifestError::Invalid("signer count"));
        }
        let mut signers = Vec::with_capacity(count);
        for _ in 0..count {
            if r.uint()? != SIG_ED25519 {
                return Err(ManifestError::Unsupported("signature scheme"));
            }
            signers.push(ManifestSigner {
                namespace: r.fixed32()?,
                public_key: r.fixed32()?,
            });
        }
        r.finish()?;
        if quorum == 0 || quorum as usize > signers.len() {
            return Err(ManifestError::Invalid("quorum"));
        }
        Ok(Self {
            allow_patch: flags & FLAG_ALLOW_PATCH != 0,
            unencrypted: flags & FLAG_UNENCRYPTED != 0,
            quorum,
            signers,
        })
    }

    /// The manifest hash, which is the key of a default core: `H(MANIFEST ‖ encoding)`.
    pub fn hash(&self) -> Hash {
        hash_parts(&[&NS.manifest, &self.encode()])
    }
}

/// One signer's signature inside a [`MultiSignature`] envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerProof {
    /// Index of the signer in the manifest.
    pub signer: u32,
    /// Raw Ed25519 signature.
    pub signature: [u8; 64],
}

/// The multisig envelope hypercore stores as the signature of a default core
/// (68 bytes for one signer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiSignature {
    /// One entry per signer that signed.
    pub proofs: Vec<SignerProof>,
}

impl MultiSignature {
    /// The compact encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 67 * self.proofs.len());
        put_uint(&mut out, self.proofs.len() as u64);
        for p in &self.proofs {
            put_uint(&mut out, p.signer as u64);
            out.extend_from_slice(&p.signature);
            put_uint(&mut out, 0); // patch
        }
        put_uint(&mut out, 0); // no patch nodes
        out
    }

    /// Decodes an envelope; patches are rejected as unsupported.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let mut r = Reader(bytes);
        let count = r.uint()? as usize;
        if count > MAX_SIGNERS {
            return Err(ManifestError::Invalid("signature count"));
        }
        let mut proofs = Vec::with_capacity(count);
        for _ in 0..count {
            let signer =
                u32::try_from(r.uint()?).map_err(|_| ManifestError::Invalid("signer index"))?;
            let signature = r.fixed::<64>()?;
            if r.uint()? != 0 {
                return Err(ManifestError::Unsupported("patch"));
            }
            proofs.push(SignerProof { signer, signature });
        }
        if r.uint()? != 0 {
            return Err(ManifestError::Unsupported("patch nodes"));
        }
        r.finish()?;
        Ok(Self { proofs })
    }
}

/// Appends a compact-encoding unsigned integer.
fn put_uint(out: &mut Vec<u8>, n: u64) {
    if n < 0xfd {
        out.push(n as u8);
    } else if n <= u16::MAX as u64 {
        out.push(0xfd);
        out.extend_from_slice(&(n as u16).to_le_bytes());
    } else if n <= u32::MAX as u64 {
        out.push(0xfe);
        out.extend_from_slice(&(n as u32).to_le_bytes());
    } else {
        out.push(0xff);
        out.extend_from_slice(&n.to_le_bytes());
    }
}

/// A cursor over compact-encoded bytes that never panics.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ManifestError> {
        if self.0.len() < n {
            return Err(ManifestError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], ManifestError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn fixed32(&mut self) -> Result<[u8; 32], ManifestError> {
        self.fixed::<32>()
    }

    fn uint(&mut self) -> Result<u64, ManifestError> {
        let first = self.take(1)?[0];
        Ok(match first {
            0xfd => u16::from_le_bytes(self.fixed::<2>()?) as u64,
            0xfe => u32::from_le_bytes(self.fixed::<4>()?) as u64,
            0xff => u64::from_le_bytes(self.fixed::<8>()?),
            n => n as u64,
        })
    }

    fn finish(&self) -> Result<(), ManifestError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ManifestError::Trailing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_and_rejects_garbage() {
        let m = Manifest::single([9; 32]);
        let enc = m.encode();
        assert_eq!(enc.len(), 70);
        assert_eq!(Manifest::decode(&enc).unwrap(), m);
        for cut in 0..enc.len() {
            assert!(Manifest::decode(&enc[..cut]).is_err());
        }
        let mut long = enc.clone();
        long.push(0);
        assert_eq!(Manifest::decode(&long), Err(ManifestError::Trailing));
    }

    #[test]
    fn envelope_round_trips() {
        let s = MultiSignature {
            proofs: vec![SignerProof {
                signer: 0,
                signature: [7; 64],
            }],
        };
        let enc = s.encode();
        assert_eq!(enc.len(), 68);
        assert_eq!(MultiSignature::decode(&enc).unwrap(), s);
        assert!(MultiSignature::decode(&enc[..67]).is_err());
        assert!(MultiSignature::decode(&[0xff; 3]).is_err());
    }
}

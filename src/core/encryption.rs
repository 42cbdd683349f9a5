//! Block encryption as JS Hypercore 11 does it (`encryption: { key }`, its default
//! encryption): the log stores, hashes, signs and replicates ciphertext, so peers without the
//! key replicate and verify it as any other log; only readers holding the key see the text.
//!
//! - block key: BLAKE2b-256 of the default-encryption namespace, the core key and the
//!   encryption key (for a compat core, BLAKE2b-256 of the encryption key keyed by the core
//!   key); blinding key: BLAKE2b-256 of the block key.
//! - a stored block is 8 bytes of padding, then the text XORed with XSalsa20 under the block
//!   key and the nonce `u64le(index) ‖ padding ‖ 0⁸`; the padding is the fork at append
//!   time, XORed with the first 8 bytes of XSalsa20 under the blinding key and the nonce
//!   `u64le(index) ‖ 0¹⁶`.
//!
//! The key never leaves the process: not in a ticket, not on the wire, not in the database.

use salsa20::{
    XSalsa20,
    cipher::{KeyIvInit, StreamCipher},
};

use crate::crypto::{
    CoreKind,
    hash::{hash_parts, keyed_hash_parts},
    namespace::NS,
};

/// Bytes an encrypted block grows by.
pub const PADDING: usize = 8;

/// The keys of an encrypted core.
#[derive(Clone)]
pub struct BlockEncryption {
    block_key: [u8; 32],
    blinding_key: [u8; 32],
}

impl std::fmt::Debug for BlockEncryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockEncryption")
    }
}

impl BlockEncryption {
    /// The keys of core `core_key` (of `kind`) under `encryption_key`.
    pub fn new(core_key: &[u8; 32], kind: CoreKind, encryption_key: &[u8; 32]) -> Self {
        let block_key = match kind {
            CoreKind::Default => hash_parts(&[&NS.default_encryption, core_key, encryption_key]),
            CoreKind::Compat => keyed_hash_parts(core_key, &[encryption_key]),
        };
        Self {
            block_key,
            blinding_key: hash_parts(&[&block_key]),
        }
    }

    /// The stored form of block `index` appended on `fork`.
    pub fn encrypt(&self, index: u64, fork: u64, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(PADDING + text.len());
        let mut padding = fork.to_le_bytes();
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&index.to_le_bytes());
        XSalsa20::new(&self.blinding_key.into(), &nonce.into()).apply_keystream(&mut padding);
        out.extend_from_slice(&padding);
        out.extend_from_slice(text);
        nonce[8..16].copy_from_slice(&padding);
        XSalsa20::new(&self.block_key.into(), &nonce.into()).apply_keystream(&mut out[PADDING..]);
        out
    }

    /// The text of stored block `index`; `None` if it is shorter than its padding.
    pub fn decrypt(&self, index: u64, stored: &[u8]) -> Option<Vec<u8>> {
        if stored.len() < PADDING {
            return None;
        }
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&index.to_le_bytes());
        nonce[8..16].copy_from_slice(&stored[..PADDING]);
        let mut text = stored[PADDING..].to_vec();
        XSalsa20::new(&self.block_key.into(), &nonce.into()).apply_keystream(&mut text);
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JS Hypercore 11.37.1: writer seed 01×32, encryption key 05×32, blocks "a" and "b",
    /// a default core and a compat core (`compat: true`, stored bytes from `get(i, { raw })`).
    #[test]
    fn hypercore_vectors() {
        let hex = |s: &str| data_encoding::HEXLOWER.decode(s.as_bytes()).unwrap();
        let key: [u8; 32] = hex("d8c3a0597903b28d751c6e0b7107775e388ec5a3cf669bdd1e7ec41b8b8f6e72")
            .try_into()
            .unwrap();
        let e = BlockEncryption::new(&key, CoreKind::Default, &[5; 32]);
        assert_eq!(
            e.block_key.to_vec(),
            hex("5e2fa2036327f88673a3ded7406be507c56dce825c50c987aef7c1348f336d8e")
        );
        assert_eq!(
            e.blinding_key.to_vec(),
            hex("448c65387a4312354cfd10e5f0a9b4e9522beb0835582e42d14954d2408fb064")
        );
        assert_eq!(e.encrypt(0, 0, b"a"), hex("f3f6d6ed1ad15f8d76"));
        assert_eq!(e.encrypt(1, 0, b"b"), hex("c3e52eeaf649df5f35"));
        assert_eq!(e.decrypt(1, &hex("c3e52eeaf649df5f35")).unwrap(), b"b");
        assert_eq!(e.decrypt(0, &[1, 2, 3]), None);
        // A compat core (Hypercore 10 keys: the key is the public key).
        let compat: [u8; 32] =
            hex("8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c")
                .try_into()
                .unwrap();
        let c = BlockEncryption::new(&compat, CoreKind::Compat, &[5; 32]);
        assert_eq!(c.encrypt(0, 0, b"a"), hex("9c96d43c89a0ba5be3"));
        assert_eq!(c.encrypt(1, 0, b"b"), hex("64b4f72f1838fc876e"));
        // Another fork pads differently and still decrypts.
        let other = e.encrypt(0, 7, b"a");
        assert_ne!(other, hex("f3f6d6ed1ad15f8d76"));
        assert_eq!(e.decrypt(0, &other).unwrap(), b"a");
    }
}

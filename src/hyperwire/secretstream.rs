//! libsodium's `crypto_secretstream_xchacha20poly1305`, the encryption of every message after
//! the Noise handshake (`@hyperswarm/secret-stream`): a 24-byte header starts a stream, and
//! each message is pushed as its encrypted tag byte, its ciphertext and a 16-byte Poly1305 tag
//! ([`ABYTES`] in all). Messages are authenticated in order: a nonce moves with each one.
//!
//! Built from the `chacha20` and `poly1305` crates, as libsodium builds it: the stream key is
//! HChaCha20 of the key and the header's first 16 bytes; each message's Poly1305 key is the
//! first keystream block, its tag byte the second block's first byte, and its text the
//! keystream from the third block.

use chacha20::{
    ChaCha20,
    cipher::{KeyIvInit, StreamCipher, StreamCipherSeek},
};
use poly1305::{
    Poly1305,
    universal_hash::{KeyInit, UniversalHash},
};

/// Bytes of a stream's header.
pub const HEADER_BYTES: usize = 24;
/// Bytes a message grows by: its tag byte and its MAC.
pub const ABYTES: usize = 17;
/// The tag of an ordinary message.
pub const TAG_MESSAGE: u8 = 0;
/// The tag of the last message of a stream.
pub const TAG_FINAL: u8 = 3;
const TAG_REKEY: u8 = 2;

/// A message did not decrypt: it was forged, altered, reordered or cut.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a message did not authenticate")]
pub struct Forged;

/// One direction of a stream: its key and nonce.
pub struct SecretStream {
    key: [u8; 32],
    /// Counter (4 bytes, little-endian) then the 8-byte inner nonce.
    nonce: [u8; 12],
}

impl std::fmt::Debug for SecretStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretStream")
    }
}

impl SecretStream {
    /// The state of a stream under `key` that starts with `header` (the pushing side makes the
    /// header at random and sends it; the pulling side starts from what it received).
    pub fn new(key: &[u8; 32], header: &[u8; HEADER_BYTES]) -> Self {
        let mut input = [0u8; 16];
        input.copy_from_slice(&header[..16]);
        let subkey = chacha20::hchacha::<chacha20::R20>(&(*key).into(), &input.into());
        let mut nonce = [0u8; 12];
        nonce[0] = 1;
        nonce[4..].copy_from_slice(&header[16..]);
        Self {
            key: subkey.into(),
            nonce,
        }
    }

    fn cipher(&self) -> ChaCha20 {
        ChaCha20::new(&self.key.into(), &self.nonce.into())
    }

    /// Encrypts `msg` with `tag`, appending `msg.len() + ABYTES` bytes to `out`.
    pub fn push(&mut self, msg: &[u8], tag: u8, out: &mut Vec<u8>) {
        let mut cipher = self.cipher();
        let mut block = [0u8; 64];
        cipher.apply_keystream(&mut block);
        let mac = Poly1305::new((&block[..32]).try_into().expect("32 bytes"));
        block = [0; 64];
        block[0] = tag;
        cipher.apply_keystream(&mut block);
        let start = out.len();
        out.push(block[0]);
        out.extend_from_slice(msg);
        cipher.apply_keystream(&mut out[start + 1..]);
        let mac = authenticate(mac, &block, &out[start + 1..]);
        out.extend_from_slice(&mac);
        self.advance(&mac, tag);
    }

    /// Decrypts a pushed message in place: returns its tag and the text (`sealed` without its
    /// first byte and its MAC), or [`Forged`] with nothing changed in the stream's state.
    pub fn pull<'a>(&mut self, sealed: &'a mut [u8]) -> Result<(u8, &'a [u8]), Forged> {
        if sealed.len() < ABYTES {
            return Err(Forged);
        }
        let mut cipher = self.cipher();
        let mut block = [0u8; 64];
        cipher.apply_keystream(&mut block);
        let mac = Poly1305::new((&block[..32]).try_into().expect("32 bytes"));
        block = [0; 64];
        block[0] = sealed[0];
        cipher.apply_keystream(&mut block);
        let tag = block[0];
        block[0] = sealed[0];
        let (body, expected) = sealed.split_at_mut(sealed.len() - 16);
        let text = &mut body[1..];
        let mac = authenticate(mac, &block, text);
        let equal = mac
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if !equal {
            return Err(Forged);
        }
        cipher.seek(128u64);
        cipher.apply_keystream(text);
        self.advance(&mac, tag);
        Ok((tag, text))
    }

    /// After a message: the MAC goes into the inner nonce, the counter moves on, and the key
    /// changes when the counter wraps or the tag asks for it.
    fn advance(&mut self, mac: &[u8], tag: u8) {
        for (n, m) in self.nonce[4..].iter_mut().zip(mac) {
            *n ^= m;
        }
        let counter = u32::from_le_bytes(self.nonce[..4].try_into().expect("4 bytes"));
        let counter = counter.wrapping_add(1);
        self.nonce[..4].copy_from_slice(&counter.to_le_bytes());
        if tag & TAG_REKEY != 0 || counter == 0 {
            self.rekey();
        }
    }

    fn rekey(&mut self) {
        let mut next = [0u8; 40];
        next[..32].copy_from_slice(&self.key);
        next[32..].copy_from_slice(&self.nonce[4..]);
        self.cipher().apply_keystream(&mut next);
        self.key.copy_from_slice(&next[..32]);
        self.nonce[4..].copy_from_slice(&next[32..]);
        self.nonce[..4].copy_from_slice(&1u32.to_le_bytes());
    }
}

/// The MAC of a message as libsodium computes it: over the encrypted tag block, the
/// ciphertext, `len % 16` zero bytes (libsodium pads by `(0x10 - 64 + len) & 0xf`, not to a
/// multiple of 16), the AD's length (0) and the length of the tag block and text.
fn authenticate(mut mac: Poly1305, block: &[u8; 64], text: &[u8]) -> [u8; 16] {
    mac.update_padded(block);
    let whole = text.len() - text.len() % 16;
    mac.update_padded(&text[..whole]);
    let rest = &text[whole..];
    let mut tail = [0u8; 46];
    tail[..rest.len()].copy_from_slice(rest);
    let lengths = 2 * rest.len();
    tail[lengths + 8..lengths + 16].copy_from_slice(&(64 + text.len() as u64).to_le_bytes());
    mac.compute_unpadded(&tail[..lengths + 16]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushed_messages_pull_in_order_and_forgeries_do_not() {
        let key = [7u8; 32];
        let header = [9u8; HEADER_BYTES];
        let mut tx = SecretStream::new(&key, &header);
        let mut rx = SecretStream::new(&key, &header);
        let mut sealed = Vec::new();
        for msg in [&b"hello"[..], b"", &[0xaa; 300]] {
            sealed.clear();
            tx.push(msg, TAG_MESSAGE, &mut sealed);
            assert_eq!(sealed.len(), msg.len() + ABYTES);
            let mut forged = sealed.clone();
            *forged.last_mut().unwrap() ^= 1;
            assert_eq!(rx.pull(&mut forged), Err(Forged));
            let (tag, text) = rx.pull(&mut sealed).unwrap();
            assert_eq!((tag, text), (TAG_MESSAGE, msg));
        }
        // A replayed message does not pull again.
        let mut again = Vec::new();
        tx.push(b"x", TAG_MESSAGE, &mut again);
        let mut replay = again.clone();
        rx.pull(&mut again).unwrap();
        assert_eq!(rx.pull(&mut replay), Err(Forged));
    }

    /// libsodium's output (sodium-native), key 01×32, header 00..17: messages of 5, 0 and 70
    /// bytes, a final message (which rekeys), and one after it.
    #[test]
    fn libsodium_vectors() {
        let hex = |s: &str| data_encoding::HEXLOWER.decode(s.as_bytes()).unwrap();
        let header: [u8; HEADER_BYTES] = std::array::from_fn(|i| i as u8);
        let mut tx = SecretStream::new(&[1; 32], &header);
        let mut rx = SecretStream::new(&[1; 32], &header);
        let cases: [(&[u8], u8, &str); 5] = [
            (
                b"hello",
                TAG_MESSAGE,
                "8747dddb1070acec0915f1fc76ff37a79c30f58abecc",
            ),
            (b"", TAG_MESSAGE, "c254a010a9ef14e8f6d07086d5112da54a"),
            (
                &[b'x'; 70],
                TAG_MESSAGE,
                "e94733c687f5f6c360b64ebcabec65433b2cc9ea480c89a16c75a0cc5cbf01b15c6629abc3db9f38da4a67f24cee92a7e195669234b6c85a1f53a3fc074247e26410e4a8a8b2ebb01afb53a77c0e2f20114944f85c6ae7",
            ),
            (
                b"bye",
                TAG_FINAL,
                "1834f1aa09c780e38650ccc684b2874f7cad149b",
            ),
            (
                b"after-final",
                TAG_MESSAGE,
                "502b6e2d3125709df22186844e7a332efab8f50280a58c76a4b37df0",
            ),
        ];
        for (msg, tag, expected) in cases {
            let mut sealed = Vec::new();
            tx.push(msg, tag, &mut sealed);
            assert_eq!(sealed, hex(expected));
            assert_eq!(rx.pull(&mut sealed).unwrap(), (tag, msg));
        }
    }
}

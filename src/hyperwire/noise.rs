//! The Noise handshake of `@hyperswarm/secret-stream`: `Noise_XX_Ed25519_ChaChaPoly_BLAKE2b`,
//! with an empty prologue and empty payloads, as a sans-IO state machine.
//!
//! XX: the initiator sends `e`; the responder `e, ee, s, es`; the initiator `s, se`. Both
//! sides learn the other's static key (an Ed25519 public key: the peer's identity) and end
//! with two 32-byte keys, one per direction, and the handshake hash that channel capabilities
//! are bound to. Diffie-Hellman is done on the Edwards curve, as `noise-curve-ed` does it: the
//! scalar of an Ed25519 secret key times the other side's public point, refused when that
//! point is not canonical, has small order or is outside the prime-order subgroup.
//!
//! The hash is BLAKE2b-512, HKDF uses HMAC-BLAKE2b (RFC 2104 over a 128-byte block), and the
//! cipher is ChaCha20-Poly1305 with a 64-bit little-endian counter after four zero bytes.

use blake2::{Blake2b512, Digest};
use chacha20poly1305::{
    ChaCha20Poly1305,
    aead::{AeadInOut, KeyInit},
};
use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::SigningKey;

/// The protocol name, hashed into the first state.
const PROTOCOL_NAME: &[u8] = b"Noise_XX_Ed25519_ChaChaPoly_BLAKE2b";
/// BLAKE2b-512's output.
pub const HASH_LEN: usize = 64;
const BLOCK_LEN: usize = 128;
const TAG_LEN: usize = 16;

/// Bytes of the three handshake messages: `e`; `e, ee, s, es` with an empty payload; `s, se`
/// with an empty payload.
pub const MESSAGE_LENS: [usize; 3] = [32, 32 + 32 + TAG_LEN + TAG_LEN, 32 + TAG_LEN + TAG_LEN];

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoiseError {
    /// A message has the wrong length for its place in the handshake.
    #[error("handshake message {0} has {1} bytes, expected {2}")]
    Length(usize, usize, usize),
    /// A key is not a valid point of the prime-order subgroup.
    #[error("the peer's {0} key is not a valid Ed25519 point")]
    BadKey(&'static str),
    /// An encrypted part did not authenticate.
    #[error("a handshake message did not authenticate")]
    Forged,
    /// A message came out of turn.
    #[error("handshake message out of turn")]
    OutOfTurn,
}

/// What a finished handshake gives.
#[derive(Clone)]
pub struct Session {
    /// Whether this side sent the first message.
    pub initiator: bool,
    /// The peer's static Ed25519 public key.
    pub remote_static: [u8; 32],
    /// The handshake hash: what capabilities are bound to.
    pub hash: [u8; HASH_LEN],
    /// The key of what this side sends.
    pub tx: [u8; 32],
    /// The key of what it receives.
    pub rx: [u8; 32],
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("initiator", &self.initiator)
            .field(
                "remote_static",
                &data_encoding::HEXLOWER.encode(&self.remote_static),
            )
            .finish_non_exhaustive()
    }
}

/// The symmetric state: chaining key, hash, and the cipher key once there is one.
struct Symmetric {
    ck: [u8; HASH_LEN],
    h: [u8; HASH_LEN],
    k: Option<[u8; 32]>,
    n: u64,
}

impl Symmetric {
    fn new() -> Self {
        let mut h = [0u8; HASH_LEN];
        h[..PROTOCOL_NAME.len()].copy_from_slice(PROTOCOL_NAME);
        let mut s = Self {
            ck: h,
            h,
            k: None,
            n: 0,
        };
        s.mix_hash(&[]); // The empty prologue.
        s
    }

    fn mix_hash(&mut self, data: &[u8]) {
        let mut d = Blake2b512::new();
        d.update(self.h);
        d.update(data);
        self.h = d.finalize().into();
    }

    fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, k) = hkdf(&self.ck, ikm);
        self.ck = ck;
        let mut key = [0u8; 32];
        key.copy_from_slice(&k[..32]);
        self.k = Some(key);
        self.n = 0;
    }

    fn nonce(&mut self) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.n.to_le_bytes());
        self.n += 1;
        nonce
    }

    fn encrypt_and_hash(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(plain);
        if let Some(k) = self.k {
            let nonce = self.nonce();
            let mut text = out.split_off(start);
            ChaCha20Poly1305::new(&k.into())
                .encrypt_in_place(&nonce.into(), &self.h, &mut text)
                .expect("a handshake message fits the cipher");
            out.extend_from_slice(&text);
        }
        let written = out[start..].to_vec();
        self.mix_hash(&written);
    }

    fn decrypt_and_hash(&mut self, sealed: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let Some(k) = self.k else {
            self.mix_hash(sealed);
            return Ok(sealed.to_vec());
        };
        let nonce = self.nonce();
        let mut text = sealed.to_vec();
        ChaCha20Poly1305::new(&k.into())
            .decrypt_in_place(&nonce.into(), &self.h, &mut text)
            .map_err(|_| NoiseError::Forged)?;
        self.mix_hash(sealed);
        Ok(text)
    }

    fn split(&self) -> ([u8; 32], [u8; 32]) {
        let (a, b) = hkdf(&self.ck, &[]);
        let (mut k1, mut k2) = ([0u8; 32], [0u8; 32]);
        k1.copy_from_slice(&a[..32]);
        k2.copy_from_slice(&b[..32]);
        (k1, k2)
    }
}

/// HMAC-BLAKE2b-512 (RFC 2104).
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut block = [0u8; BLOCK_LEN];
    if key.len() > BLOCK_LEN {
        block[..HASH_LEN].copy_from_slice(&Blake2b512::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Blake2b512::new();
    inner.update(block.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Blake2b512::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Noise's HKDF with two outputs.
fn hkdf(ck: &[u8; HASH_LEN], ikm: &[u8]) -> ([u8; HASH_LEN], [u8; HASH_LEN]) {
    let prk = hmac(ck, &[ikm]);
    let out1 = hmac(&prk, &[&[1]]);
    let out2 = hmac(&prk, &[&out1, &[2]]);
    (out1, out2)
}

/// Diffie-Hellman on the Edwards curve: the scalar of `secret` times the point `public`.
fn dh(secret: &SigningKey, public: &[u8; 32], which: &'static str) -> Result<[u8; 32], NoiseError> {
    let point = CompressedEdwardsY(*public)
        .decompress()
        .filter(|p| p.compress().0 == *public && !p.is_small_order() && p.is_torsion_free())
        .ok_or(NoiseError::BadKey(which))?;
    let shared = point.mul_clamped(secret.to_scalar_bytes());
    if shared.is_small_order() {
        return Err(NoiseError::BadKey(which));
    }
    Ok(shared.compress().0)
}

/// Where a handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The initiator is to send `e`; the responder waits for it.
    First,
    /// The initiator waits for `e, ee, s, es`; the responder is to send it.
    Second,
    /// The initiator is to send `s, se`; the responder waits for it.
    Third,
    Done,
}

/// A Noise XX handshake in progress; see the module docs.
pub struct Handshake {
    initiator: bool,
    s: SigningKey,
    e: SigningKey,
    re: Option<[u8; 32]>,
    rs: Option<[u8; 32]>,
    sym: Symmetric,
    step: Step,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("initiator", &self.initiator)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// A handshake with static key `seed` (an Ed25519 seed) and a fresh ephemeral key.
    pub fn new(initiator: bool, seed: &[u8; 32]) -> Self {
        Self::with_ephemeral(initiator, seed, &rand::random())
    }

    /// A handshake with a given ephemeral seed (for test vectors).
    pub fn with_ephemeral(initiator: bool, seed: &[u8; 32], ephemeral: &[u8; 32]) -> Self {
        Self {
            initiator,
            s: SigningKey::from_bytes(seed),
            e: SigningKey::from_bytes(ephemeral),
            re: None,
            rs: None,
            sym: Symmetric::new(),
            step: Step::First,
        }
    }

    /// Whether it is this side's turn to send.
    pub fn is_my_turn(&self) -> bool {
        match self.step {
            Step::First | Step::Third => self.initiator,
            Step::Second => !self.initiator,
            Step::Done => false,
        }
    }

    /// The next message of this side, appended to `out`.
    pub fn write(&mut self, out: &mut Vec<u8>) -> Result<(), NoiseError> {
        if !self.is_my_turn() {
            return Err(NoiseError::OutOfTurn);
        }
        match self.step {
            Step::First => {
                let e = self.e.verifying_key().to_bytes();
                out.extend_from_slice(&e);
                self.sym.mix_hash(&e);
                self.sym.encrypt_and_hash(&[], out);
                self.step = Step::Second;
            }
            Step::Second => {
                let re = self.re.ok_or(NoiseError::OutOfTurn)?;
                let e = self.e.verifying_key().to_bytes();
                out.extend_from_slice(&e);
                self.sym.mix_hash(&e);
                self.sym.mix_key(&dh(&self.e, &re, "ephemeral")?);
                let s = self.s.verifying_key().to_bytes();
                self.sym.encrypt_and_hash(&s, out);
                self.sym.mix_key(&dh(&self.s, &re, "ephemeral")?);
                self.sym.encrypt_and_hash(&[], out);
                self.step = Step::Third;
            }
            Step::Third => {
                let re = self.re.ok_or(NoiseError::OutOfTurn)?;
                let s = self.s.verifying_key().to_bytes();
                self.sym.encrypt_and_hash(&s, out);
                self.sym.mix_key(&dh(&self.s, &re, "ephemeral")?);
                self.sym.encrypt_and_hash(&[], out);
                self.step = Step::Done;
            }
            Step::Done => return Err(NoiseError::OutOfTurn),
        }
        Ok(())
    }

    /// Takes the peer's next message.
    pub fn read(&mut self, msg: &[u8]) -> Result<(), NoiseError> {
        if self.is_my_turn() || self.step == Step::Done {
            return Err(NoiseError::OutOfTurn);
        }
        let index = match self.step {
            Step::First => 0,
            Step::Second => 1,
            _ => 2,
        };
        if msg.len() != MESSAGE_LENS[index] {
            return Err(NoiseError::Length(
                index + 1,
                msg.len(),
                MESSAGE_LENS[index],
            ));
        }
        match self.step {
            Step::First => {
                let re = key(&msg[..32]);
                self.sym.mix_hash(&re);
                self.re = Some(re);
                self.sym.decrypt_and_hash(&msg[32..])?;
                self.step = Step::Second;
            }
            Step::Second => {
                let re = key(&msg[..32]);
                self.sym.mix_hash(&re);
                self.re = Some(re);
                self.sym.mix_key(&dh(&self.e, &re, "ephemeral")?);
                let rs = key(&self.sym.decrypt_and_hash(&msg[32..32 + 32 + TAG_LEN])?);
                self.sym.mix_key(&dh(&self.e, &rs, "static")?);
                self.rs = Some(rs);
                self.sym.decrypt_and_hash(&msg[32 + 32 + TAG_LEN..])?;
                self.step = Step::Third;
            }
            _ => {
                let rs = key(&self.sym.decrypt_and_hash(&msg[..32 + TAG_LEN])?);
                self.sym.mix_key(&dh(&self.e, &rs, "static")?);
                self.rs = Some(rs);
                self.sym.decrypt_and_hash(&msg[32 + TAG_LEN..])?;
                self.step = Step::Done;
            }
        }
        Ok(())
    }

    /// The session, once both sides sent their messages.
    pub fn session(&self) -> Option<Session> {
        if self.step != Step::Done {
            return None;
        }
        let (k1, k2) = self.sym.split();
        let (tx, rx) = if self.initiator { (k1, k2) } else { (k2, k1) };
        Some(Session {
            initiator: self.initiator,
            remote_static: self.rs?,
            hash: self.sym.h,
            tx,
            rx,
        })
    }
}

fn key(b: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 32];
    k.copy_from_slice(b);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(a: &mut Handshake, b: &mut Handshake) -> Vec<Vec<u8>> {
        let mut msgs = Vec::new();
        for _ in 0..3 {
            let (from, to) = if a.is_my_turn() {
                (&mut *a, &mut *b)
            } else {
                (&mut *b, &mut *a)
            };
            let mut m = Vec::new();
            from.write(&mut m).unwrap();
            to.read(&m).unwrap();
            msgs.push(m);
        }
        msgs
    }

    #[test]
    fn both_sides_agree_and_learn_each_others_static_key() {
        let mut i = Handshake::new(true, &[1; 32]);
        let mut r = Handshake::new(false, &[2; 32]);
        let msgs = run(&mut i, &mut r);
        assert_eq!(
            msgs.iter().map(Vec::len).collect::<Vec<_>>(),
            MESSAGE_LENS.to_vec()
        );
        let (si, sr) = (i.session().unwrap(), r.session().unwrap());
        assert_eq!(si.hash, sr.hash);
        assert_eq!((si.tx, si.rx), (sr.rx, sr.tx));
        assert_eq!(
            si.remote_static,
            SigningKey::from_bytes(&[2; 32]).verifying_key().to_bytes()
        );
        assert_eq!(
            sr.remote_static,
            SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes()
        );
    }

    /// noise-handshake's transcript: static seeds 01×32 (initiator) and 02×32, ephemeral
    /// seeds 03×32 and 04×32.
    #[test]
    fn noise_handshake_vectors() {
        let hex = |s: &str| data_encoding::HEXLOWER.decode(s.as_bytes()).unwrap();
        let mut i = Handshake::with_ephemeral(true, &[1; 32], &[3; 32]);
        let mut r = Handshake::with_ephemeral(false, &[2; 32], &[4; 32]);
        let msgs = run(&mut i, &mut r);
        assert_eq!(
            msgs[0],
            hex("ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1")
        );
        assert_eq!(
            msgs[1],
            hex(
                "ca93ac1705187071d67b83c7ff0efe8108e8ec4530575d7726879333dbdabe7c8924380c5066a7dcffff1174cebcbfefc17dafd675f6dc2e688de867ff96c431a1fcb7f80997fba29d5bbc64a50e8d74e82bc092a89c62eacaf68db17bb5d0b5"
            )
        );
        assert_eq!(
            msgs[2],
            hex(
                "585b6e8320c9dfc6764d48e242b912333244a85ae8769c90ee632f1d3bf6945d6d4729ee9c716f0f82946ce191158c480d53f508585c93bb66354bbee6b8bdad"
            )
        );
        let s = i.session().unwrap();
        assert_eq!(
            s.hash.to_vec(),
            hex(
                "aa42bcea44d843e3803e549191ae7eac847a85dccf21ef3918a7cf228d87b7889b194cdb190b8b2cf82daf543e71e86871532b84ba1d7982489eb3040dcfc412"
            )
        );
        assert_eq!(
            s.tx.to_vec(),
            hex("36e72ba85cd0a2b5e7c9f44704a1757d7230c30dd39736e46f2190fcd1300c13")
        );
        assert_eq!(
            s.rx.to_vec(),
            hex("29c4a931005b47aaf766f5ec7a119810eb15399b8612e79071f77447826dee17")
        );
    }

    #[test]
    fn altered_messages_and_bad_points_fail() {
        let mut i = Handshake::new(true, &[1; 32]);
        let mut r = Handshake::new(false, &[2; 32]);
        let mut m1 = Vec::new();
        i.write(&mut m1).unwrap();
        r.read(&m1).unwrap();
        let mut m2 = Vec::new();
        r.write(&mut m2).unwrap();
        let mut bad = m2.clone();
        bad[40] ^= 1;
        assert_eq!(i.read(&bad), Err(NoiseError::Forged));

        // The identity point as an ephemeral key.
        let mut r = Handshake::new(false, &[2; 32]);
        let mut identity = vec![0u8; 32];
        identity[0] = 1;
        r.read(&identity).unwrap();
        assert_eq!(
            r.write(&mut Vec::new()),
            Err(NoiseError::BadKey("ephemeral"))
        );
        // A non-canonical encoding (y ≥ p) and a point with a torsion part.
        for bad in [[0xff; 32], {
            let mut p = [0u8; 32];
            p[0] = 0xee;
            p[1..31].fill(0xff);
            p[31] = 0x7f;
            p
        }] {
            let mut r = Handshake::new(false, &[2; 32]);
            r.read(&bad).unwrap();
            assert_eq!(
                r.write(&mut Vec::new()),
                Err(NoiseError::BadKey("ephemeral"))
            );
        }
        let torsion = (curve25519_dalek::constants::EIGHT_TORSION[1]
            + SigningKey::from_bytes(&[5; 32])
                .verifying_key()
                .to_edwards())
        .compress()
        .0;
        let mut r = Handshake::new(false, &[2; 32]);
        r.read(&torsion).unwrap();
        assert_eq!(
            r.write(&mut Vec::new()),
            Err(NoiseError::BadKey("ephemeral"))
        );
        assert_eq!(
            Handshake::new(false, &[2; 32]).read(&[0; 31]),
            Err(NoiseError::Length(1, 31, 32))
        );
    }
}

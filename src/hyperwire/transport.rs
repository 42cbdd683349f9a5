//! `@hyperswarm/secret-stream` as a sans-IO state machine: the Noise handshake, each side's
//! setup message, then encrypted messages, every one behind a 3-byte little-endian length.
//!
//! Bytes from the stream go in with [`Transport::recv`]; decrypted messages come out of
//! [`Transport::next_message`]; messages to send go in with [`Transport::send`] and the bytes
//! to write come out of [`Transport::outgoing`]. A frame of length 0, a frame over
//! [`MAX_FRAME`], a handshake message that does not verify, a setup message with the wrong
//! stream id, and a message that does not decrypt each end the stream with an error.

use std::collections::VecDeque;

use blake2::{
    Blake2bMac,
    digest::{KeyInit, Mac, consts::U32},
};

use super::{
    noise::{HASH_LEN, Handshake, NoiseError, Session},
    secretstream::{ABYTES, Forged, HEADER_BYTES, SecretStream, TAG_MESSAGE},
};

/// The largest frame body: what 3 length bytes can say.
pub const MAX_FRAME: usize = 0xff_ffff;
/// The largest message: a frame less the encryption's bytes.
pub const MAX_MESSAGE: usize = MAX_FRAME - ABYTES;
const LEN_BYTES: usize = 3;
/// The largest frame before the stream is open: the handshake's messages are 32, 96 and 64
/// bytes and the setup message 56.
pub const MAX_HANDSHAKE_FRAME: usize = 256;
const SETUP_BYTES: usize = 32 + HEADER_BYTES;

/// The secret-stream namespace: BLAKE2b-256 of "hyperswarm/secret-stream", then of it and a
/// byte 0 (initiator) or 1 (responder).
const NS_INITIATOR: [u8; 32] =
    hex32("a931a0155b5c09e6d28628236af83c4b8a6af9af60986edeede9dc5d63192bf7");
const NS_RESPONDER: [u8; 32] =
    hex32("742c9d833d430af4c48a8705e91631eecf295442bbca18996e597097723b1061");

/// Why a stream ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The handshake failed.
    #[error("noise handshake failed: {0}")]
    Handshake(#[from] NoiseError),
    /// An empty frame.
    #[error("empty frame")]
    EmptyFrame,
    /// The setup message is not 56 bytes or names another stream.
    #[error("invalid setup message")]
    Setup,
    /// A message did not decrypt.
    #[error("a message did not decrypt")]
    Forged,
    /// A message to send is too large for one frame.
    #[error("message of {0} bytes is too large")]
    TooLarge(usize),
    /// Asked to send before the handshake ended.
    #[error("the stream is not open yet")]
    NotOpen,
}

impl From<Forged> for TransportError {
    fn from(_: Forged) -> Self {
        Self::Forged
    }
}

const fn hex32(s: &str) -> [u8; 32] {
    let b = s.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = nibble(b[2 * i]) << 4 | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'a' + 10,
    }
}

/// The id a side's setup message carries: keyed BLAKE2b-256 (the key is the handshake hash)
/// of its role's namespace.
pub fn stream_id(hash: &[u8; HASH_LEN], initiator: bool) -> [u8; 32] {
    let mut mac =
        <Blake2bMac<U32> as KeyInit>::new_from_slice(hash).expect("64-byte keys are valid");
    Mac::update(
        &mut mac,
        if initiator {
            &NS_INITIATOR
        } else {
            &NS_RESPONDER
        },
    );
    mac.finalize().into_bytes().into()
}

enum Phase {
    Handshake(Box<Handshake>),
    /// Waiting for the peer's setup message.
    Setup {
        rx_key: [u8; 32],
    },
    Open {
        rx: SecretStream,
    },
    Failed,
}

/// One side of a secret stream; see the module docs.
pub struct Transport {
    phase: Phase,
    session: Option<Session>,
    tx: Option<SecretStream>,
    /// Bytes of an unfinished frame (its length bytes included).
    partial: Vec<u8>,
    out: Vec<u8>,
    received: VecDeque<Vec<u8>>,
    max_frame: usize,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// A stream with static key `seed`; the initiator's first message is queued at once.
    /// Frames over `max_frame` bytes (at most [`MAX_FRAME`]) end the stream.
    pub fn new(initiator: bool, seed: &[u8; 32], max_frame: usize) -> Self {
        Self::with_handshake(Handshake::new(initiator, seed), max_frame)
    }

    /// A stream that runs a given handshake (for test vectors).
    pub fn with_handshake(handshake: Handshake, max_frame: usize) -> Self {
        let mut t = Self {
            phase: Phase::Handshake(Box::new(handshake)),
            session: None,
            tx: None,
            partial: Vec::new(),
            out: Vec::new(),
            received: VecDeque::new(),
            max_frame: max_frame.min(MAX_FRAME),
        };
        if let Phase::Handshake(h) = &mut t.phase
            && h.is_my_turn()
        {
            let mut msg = Vec::new();
            h.write(&mut msg)
                .expect("the first message is the initiator's");
            frame(&mut t.out, &msg);
        }
        t
    }

    /// The session, once the handshake ended.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Whether the handshake ended and the stream did not fail.
    pub fn is_open(&self) -> bool {
        self.session.is_some() && !matches!(self.phase, Phase::Failed)
    }

    /// Bytes to write to the stream (taken: the caller writes them in order).
    pub fn outgoing(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Bytes held of an unfinished frame.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// The next decrypted message, in order; empty messages (keep-alives) are dropped.
    pub fn next_message(&mut self) -> Option<Vec<u8>> {
        self.received.pop_front()
    }

    /// Encrypts and queues a message.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), TransportError> {
        let tx = self.tx.as_mut().ok_or(TransportError::NotOpen)?;
        seal(tx, msg, &mut self.out)
    }

    /// Moves the sending side out, once the handshake ended and what it queued was taken
    /// (so that another task can encrypt and write while this one reads); `send` fails after.
    pub fn take_sender(&mut self) -> Option<Sender> {
        if !self.out.is_empty() {
            return None;
        }
        self.tx.take().map(|tx| Sender { tx })
    }

    /// Takes bytes read from the stream. After an error the stream is over: later calls
    /// fail too.
    pub fn recv(&mut self, mut bytes: &[u8]) -> Result<(), TransportError> {
        if matches!(self.phase, Phase::Failed) {
            return Err(TransportError::Setup);
        }
        while !bytes.is_empty() {
            // The length, then the body, gathered in `partial` unless a whole frame is at
            // hand.
            if self.partial.is_empty() && bytes.len() >= LEN_BYTES {
                let len = frame_len(&bytes[..LEN_BYTES]);
                self.check_len(len)?;
                if bytes.len() >= LEN_BYTES + len {
                    let (body, rest) = bytes[LEN_BYTES..].split_at(len);
                    bytes = rest;
                    self.on_frame(body.to_vec())?;
                    continue;
                }
            }
            let need = if self.partial.len() < LEN_BYTES {
                LEN_BYTES - self.partial.len()
            } else {
                LEN_BYTES + frame_len(&self.partial[..LEN_BYTES]) - self.partial.len()
            };
            let take = need.min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() == LEN_BYTES {
                let len = frame_len(&self.partial);
                self.check_len(len)?;
            }
            if self.partial.len() >= LEN_BYTES
                && self.partial.len() == LEN_BYTES + frame_len(&self.partial[..LEN_BYTES])
            {
                let body = self.partial.split_off(LEN_BYTES);
                // A large frame's buffer is not kept for the small ones after it.
                self.partial = Vec::new();
                self.on_frame(body)?;
            }
        }
        Ok(())
    }

    fn check_len(&mut self, len: usize) -> Result<(), TransportError> {
        let max = match self.phase {
            Phase::Open { .. } => self.max_frame,
            _ => MAX_HANDSHAKE_FRAME,
        };
        let result = if len == 0 {
            Err(TransportError::EmptyFrame)
        } else if len > max {
            Err(TransportError::TooLarge(len))
        } else {
            Ok(())
        };
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result
    }

    fn on_frame(&mut self, mut body: Vec<u8>) -> Result<(), TransportError> {
        let result = self.take_frame(&mut body);
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result
    }

    fn take_frame(&mut self, body: &mut [u8]) -> Result<(), TransportError> {
        match &mut self.phase {
            Phase::Handshake(h) => {
                h.read(body)?;
                if h.is_my_turn() {
                    let mut msg = Vec::new();
                    h.write(&mut msg)?;
                    frame(&mut self.out, &msg);
                }
                if let Some(session) = h.session() {
                    self.start(session);
                }
            }
            Phase::Setup { rx_key } => {
                let session = self.session.as_ref().ok_or(TransportError::Setup)?;
                if body.len() != SETUP_BYTES
                    || body[..32] != stream_id(&session.hash, !session.initiator)
                {
                    return Err(TransportError::Setup);
                }
                let header: [u8; HEADER_BYTES] =
                    body[32..].try_into().map_err(|_| TransportError::Setup)?;
                self.phase = Phase::Open {
                    rx: SecretStream::new(rx_key, &header),
                };
            }
            Phase::Open { rx } => {
                let (_tag, text) = rx.pull(body)?;
                if !text.is_empty() {
                    self.received.push_back(text.to_vec());
                }
            }
            Phase::Failed => return Err(TransportError::Setup),
        }
        Ok(())
    }

    /// The handshake ended: our setup message goes out, and theirs is awaited.
    fn start(&mut self, session: Session) {
        let header: [u8; HEADER_BYTES] = rand::random();
        let mut setup = Vec::with_capacity(SETUP_BYTES);
        setup.extend_from_slice(&stream_id(&session.hash, session.initiator));
        setup.extend_from_slice(&header);
        frame(&mut self.out, &setup);
        self.tx = Some(SecretStream::new(&session.tx, &header));
        self.phase = Phase::Setup { rx_key: session.rx };
        self.session = Some(session);
    }
}

/// The sending side of an open stream.
pub struct Sender {
    tx: SecretStream,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sender")
    }
}

impl Sender {
    /// Encrypts a message into a frame appended to `out`.
    pub fn send(&mut self, msg: &[u8], out: &mut Vec<u8>) -> Result<(), TransportError> {
        seal(&mut self.tx, msg, out)
    }
}

fn seal(tx: &mut SecretStream, msg: &[u8], out: &mut Vec<u8>) -> Result<(), TransportError> {
    if msg.len() > MAX_MESSAGE {
        return Err(TransportError::TooLarge(msg.len()));
    }
    let len = msg.len() + ABYTES;
    out.extend_from_slice(&(len as u32).to_le_bytes()[..LEN_BYTES]);
    tx.push(msg, TAG_MESSAGE, out);
    Ok(())
}

fn frame_len(b: &[u8]) -> usize {
    usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16
}

fn frame(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes()[..LEN_BYTES]);
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Transport, Transport) {
        pair_with(MAX_FRAME)
    }

    fn pair_with(max: usize) -> (Transport, Transport) {
        let mut a = Transport::new(true, &[1; 32], max);
        let mut b = Transport::new(false, &[2; 32], max);
        for _ in 0..4 {
            let x = std::mem::take(a.outgoing());
            b.recv(&x).unwrap();
            let y = std::mem::take(b.outgoing());
            a.recv(&y).unwrap();
        }
        (a, b)
    }

    #[test]
    fn stream_ids_match_secret_stream() {
        let hash: [u8; 64] = data_encoding::HEXLOWER
            .decode(b"aa42bcea44d843e3803e549191ae7eac847a85dccf21ef3918a7cf228d87b7889b194cdb190b8b2cf82daf543e71e86871532b84ba1d7982489eb3040dcfc412")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(
            stream_id(&hash, true),
            hex32("a1d1ba79814a026a75d3d0d86df2d767c48c1a62a59d9e5d47876ab9b0867673")
        );
        assert_eq!(
            stream_id(&hash, false),
            hex32("87964fe510a0eef9766102bc05eb51bd18d4baf59ec0fe2e51fa323b19101cf6")
        );
    }

    #[test]
    fn messages_cross_byte_by_byte_and_keep_alives_are_dropped() {
        let (mut a, mut b) = pair();
        assert!(a.is_open() && b.is_open());
        a.send(b"hello").unwrap();
        a.send(b"").unwrap();
        a.send(&[7; 1000]).unwrap();
        let bytes = std::mem::take(a.outgoing());
        for byte in bytes.chunks(1) {
            b.recv(byte).unwrap();
        }
        assert_eq!(b.next_message().unwrap(), b"hello");
        assert_eq!(b.next_message().unwrap(), vec![7; 1000]);
        assert!(b.next_message().is_none());
        assert_eq!(
            a.session().unwrap().remote_static,
            b.session()
                .map(|_| ed25519_dalek::SigningKey::from_bytes(&[2; 32])
                    .verifying_key()
                    .to_bytes())
                .unwrap()
        );
    }

    #[test]
    fn bad_frames_end_the_stream() {
        let (mut a, mut b) = pair();
        // Empty frame.
        assert_eq!(b.recv(&[0, 0, 0]), Err(TransportError::EmptyFrame));
        assert!(b.recv(&[1]).is_err());
        // A flipped bit.
        a.send(b"x").unwrap();
        let mut bytes = std::mem::take(a.outgoing());
        *bytes.last_mut().unwrap() ^= 1;
        let (_, mut c) = pair();
        assert_eq!(c.recv(&bytes), Err(TransportError::Forged));
        // Over the limit, said by the length alone: before the stream is open, and after.
        let mut fresh = Transport::new(false, &[2; 32], MAX_FRAME);
        assert_eq!(fresh.recv(&[1, 1, 0]), Err(TransportError::TooLarge(257)));
        let (mut a, mut b) = pair_with(100);
        a.send(&[0; 200]).unwrap();
        let bytes = std::mem::take(a.outgoing());
        assert_eq!(b.recv(&bytes), Err(TransportError::TooLarge(217)));
    }

    #[test]
    fn a_setup_message_for_the_other_role_is_refused() {
        let mut a = Transport::new(true, &[1; 32], MAX_FRAME);
        let mut b = Transport::new(false, &[2; 32], MAX_FRAME);
        let x = std::mem::take(a.outgoing());
        b.recv(&x).unwrap();
        let y = std::mem::take(b.outgoing());
        a.recv(&y).unwrap();
        // a's third message and its setup message: reflect the setup back to a.
        let z = std::mem::take(a.outgoing());
        b.recv(&z).unwrap();
        let setup = z[3 + 64..].to_vec();
        assert_eq!(a.recv(&setup), Err(TransportError::Setup));
    }
}

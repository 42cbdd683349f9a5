//! Messages on a channel and their framing: a 4-byte big-endian length, then postcard.
//!
//! The set follows hypercore's wire protocol (sync, request, data, no-data, want/unwant,
//! range, cancel, extension), plus `RequestRun` for runs of consecutive blocks, `Push` for a
//! writer's new blocks to live followers, and `Open`/`Accept`/`Close` for the channel itself.
//! Decoding never panics and refuses frames over [`MAX_FRAME`].
//!
//! # The channel handshake
//!
//! A channel carries nothing until both sides proved they know the core key:
//!
//! 1. The opener sends `Open { discovery_key, capability }` and nothing else. Its capability
//!    is a keyed hash of the key, the opener role and both endpoint ids
//!    ([`crate::crypto::capability`]).
//! 2. The acceptor checks it. If it is wrong the channel is closed; if the acceptor does not
//!    know the core yet, the channel waits (parked) and carries nothing but its `Open`. Once
//!    valid, the acceptor sends `Accept { capability }` with its own capability (the acceptor
//!    role), then its `Sync`.
//! 3. The opener checks the acceptor's capability, then sends its `Sync`. Any other message
//!    before that, a wrong capability, or no `Accept` within the handshake timeout closes the
//!    channel.
//!
//! Until a channel is authenticated its stream may carry only frames of at most
//! [`MAX_HANDSHAKE_FRAME`] bytes.
//!
//! # When a signed state may replace another
//!
//! A reader moves only forward: to a longer state on its fork (an upgrade that starts at its
//! length), or to a higher fork proven by the writer's signature (the blocks the new tree shares
//! are kept, the rest dropped). A shorter or equal state, a lower fork, or an answer that does not
//! answer the request (another start, another block) is rejected and blamed on the peer. A
//! writable core never takes a signed state from the wire.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{
    core::MAX_BLOCK_SIZE,
    crypto::DiscoveryKey,
    tree::{Proof, ProofRequest},
};

/// Largest frame accepted or sent: the largest block plus room for its proof.
pub const MAX_FRAME: usize = MAX_BLOCK_SIZE + 64 * 1024;

/// Largest frame a channel carries before both sides proved the key (`Open`, `Accept`,
/// `Close`).
pub const MAX_HANDSHAKE_FRAME: usize = 1024;

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// What a peer says about its copy of a core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncInfo {
    /// Fork id.
    pub fork: u64,
    /// Signed length.
    pub length: u64,
    /// Leading blocks it holds (and can serve).
    pub contiguous: u64,
    /// Whether the receiver should answer with its own `Sync` (after a gossip lag, say).
    pub ask: bool,
    /// Whether the sender is a reader that downloads every block (full mode). While such a
    /// peer holds the whole log, the writer pushes it the first new block with its upgrade
    /// ([`Message::Push`]) instead of waiting to be asked.
    pub downloading: bool,
}

/// One message on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First message of a channel: which core, and the capability proving the opener knows
    /// its key. The opener sends nothing else until the acceptor's [`Message::Accept`].
    Open {
        /// Discovery key of the core.
        discovery_key: DiscoveryKey,
        /// The opener's capability ([`crate::crypto::capability::Role::Opener`]).
        capability: [u8; 32],
    },
    /// The acceptor's answer to a valid `Open`: the capability proving it knows the key too.
    /// Only after it does either side send state, data or requests.
    Accept {
        /// The acceptor's capability ([`crate::crypto::capability::Role::Acceptor`]).
        capability: [u8; 32],
    },
    /// The channel is refused or closed, and why.
    Close {
        /// Human-readable reason.
        reason: String,
    },
    /// The sender's state of the core.
    Sync(SyncInfo),
    /// A proof request (upgrade, block, hash or seek).
    Request {
        /// Request id, echoed in the answer.
        id: u64,
        /// What to prove.
        request: ProofRequest,
    },
    /// Blocks `start..end` for a requester on `fork` whose tree has `length` blocks; answered
    /// by one `Data` per block, in order, and `NoData` for blocks the sender lacks.
    RequestRun {
        /// Request id.
        id: u64,
        /// Requester's fork.
        fork: u64,
        /// First block.
        start: u64,
        /// End of the run (exclusive).
        end: u64,
        /// Requester's signed length.
        length: u64,
    },
    /// A proof answering request `id`.
    Data {
        /// Request id.
        id: u64,
        /// The proof.
        proof: Proof,
    },
    /// The sender cannot answer request `id` for blocks `start..end` (or at all, for a
    /// proof request).
    NoData {
        /// Request id.
        id: u64,
        /// First unanswered block.
        start: u64,
        /// End of the unanswered blocks.
        end: u64,
    },
    /// The sender would like to hear about blocks `start..end`.
    Want {
        /// First block.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
    /// The sender no longer wants blocks `start..end`.
    Unwant {
        /// First block.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
    /// The sender now holds blocks `start..end`.
    Range {
        /// First block.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
    /// The sender no longer needs the answer to request `id`.
    Cancel {
        /// Request id.
        id: u64,
    },
    /// An application extension message; ignored by the engine.
    Extension {
        /// Extension name.
        name: String,
        /// Payload.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// A new block with the upgrade that signs it, sent unasked by the writer to a peer whose
    /// last `Sync` said it downloads everything and held the whole log: it saves the `Sync` →
    /// `Request` round trip of following a log live. The receiver verifies it like any answer,
    /// and ignores it if it no longer fits its state. The sender's `Sync` follows it.
    Push {
        /// The proof: the block at the receiver's length, and the upgrade from there.
        proof: Proof,
    },
}

impl Message {
    /// At least the bytes of its encoding that are not fixed-size fields: the block value or
    /// payload it carries. Lets a writer make room for a frame before encoding it.
    pub fn size_hint(&self) -> usize {
        match self {
            Message::Data { proof, .. } | Message::Push { proof } => {
                proof.block.as_ref().map_or(0, |b| b.value.len())
            }
            Message::Extension { name, payload } => name.len() + payload.len(),
            _ => 0,
        }
    }
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The frame is larger than [`MAX_FRAME`] (or, before the handshake, than
    /// [`MAX_HANDSHAKE_FRAME`]).
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The frame does not decode to a message.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes a message as one frame.
pub fn encode_frame(msg: &Message) -> Result<Bytes, WireError> {
    let mut buf = Vec::new();
    encode_frame_into(msg, &mut buf)?;
    Ok(Bytes::from(buf))
}

/// Appends a message as one frame to `buf`, where frames queue for one stream. On error
/// (an oversized message) `buf` is left as it was.
pub fn encode_frame_into(msg: &Message, buf: &mut Vec<u8>) -> Result<(), WireError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_LEN]);
    let written = postcard::serialize_with_flavor(msg, AppendTo(buf))
        .map_err(|e| WireError::Malformed(e.to_string()))
        .and_then(|()| {
            let len = buf.len() - start - HEADER_LEN;
            if len > MAX_FRAME {
                return Err(WireError::TooLarge(len));
            }
            buf[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
            Ok(())
        });
    if written.is_err() {
        buf.truncate(start);
    }
    written
}

/// A postcard output that appends to a byte vector: values are copied whole, not byte by byte.
struct AppendTo<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// The body length announced by a frame header, checked against [`MAX_FRAME`].
pub fn frame_len(header: [u8; HEADER_LEN]) -> Result<usize, WireError> {
    frame_len_within(header, MAX_FRAME)
}

/// The body length announced by a frame header, checked against `max` (at most [`MAX_FRAME`]).
pub fn frame_len_within(header: [u8; HEADER_LEN], max: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max.min(MAX_FRAME) {
        return Err(WireError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes the complete frames (each of at most `max_frame` bytes) at the start of `bytes`
/// into `out`, only the first if `one`; returns the bytes they took. What follows them is an
/// unfinished frame. This is how the frame reader splits what it reads.
pub fn decode_frames(
    bytes: &[u8],
    max_frame: usize,
    one: bool,
    out: &mut Vec<Message>,
) -> Result<usize, WireError> {
    let mut used = 0;
    while let Some(header) = bytes.get(used..used + HEADER_LEN) {
        if one && !out.is_empty() {
            break;
        }
        let header: [u8; HEADER_LEN] = [header[0], header[1], header[2], header[3]];
        let len = frame_len_within(header, max_frame)?;
        let Some(body) = bytes.get(used + HEADER_LEN..used + HEADER_LEN + len) else {
            break;
        };
        out.push(decode_body(body)?);
        used += HEADER_LEN + len;
    }
    Ok(used)
}

/// Decodes a frame body; trailing bytes are an error.
pub fn decode_body(body: &[u8]) -> Result<Message, WireError> {
    match postcard::take_from_bytes::<Message>(body) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(WireError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        ))),
        Err(e) => Err(WireError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::tree::{BlockProof, IndexRequest, Node};

    fn decode_frame(frame: &[u8]) -> Result<Message, WireError> {
        let header: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().unwrap();
        let len = frame_len(header)?;
        decode_body(&frame[HEADER_LEN..HEADER_LEN + len])
    }

    #[test]
    fn messages_round_trip() {
        let msgs = [
            Message::Open {
                discovery_key: [1; 32],
                capability: [2; 32],
            },
            Message::Sync(SyncInfo {
                fork: 1,
                length: 2,
                contiguous: 3,
                ask: true,
                downloading: true,
            }),
            Message::Request {
                id: 7,
                request: ProofRequest {
                    block: Some(IndexRequest { index: 3, nodes: 2 }),
                    ..Default::default()
                },
            },
            Message::Data {
                id: 7,
                proof: Proof {
                    block: Some(BlockProof {
                        index: 3,
                        value: b"hello".to_vec(),
                        nodes: vec![Node {
                            index: 4,
                            size: 5,
                            hash: [9; 32],
                        }],
                    }),
                    ..Default::default()
                },
            },
            Message::NoData {
                id: 1,
                start: 2,
                end: 3,
            },
            Message::Extension {
                name: "x".into(),
                payload: vec![1],
            },
        ];
        for m in msgs {
            assert_eq!(decode_frame(&encode_frame(&m).unwrap()).unwrap(), m);
        }
    }

    #[test]
    fn oversized_frames_are_refused_both_ways() {
        let huge = Message::Extension {
            name: String::new(),
            payload: vec![0; MAX_FRAME],
        };
        assert!(matches!(encode_frame(&huge), Err(WireError::TooLarge(_))));
        assert_eq!(
            frame_len(((MAX_FRAME + 1) as u32).to_be_bytes()),
            Err(WireError::TooLarge(MAX_FRAME + 1))
        );
    }

    #[test]
    fn frames_queue_back_to_back_and_a_refused_one_leaves_no_trace() {
        let (a, b) = (Message::Cancel { id: 1 }, Message::Cancel { id: 2 });
        let mut buf = Vec::new();
        encode_frame_into(&a, &mut buf).unwrap();
        let huge = Message::Extension {
            name: String::new(),
            payload: vec![0; MAX_FRAME],
        };
        let before = buf.clone();
        assert!(matches!(
            encode_frame_into(&huge, &mut buf),
            Err(WireError::TooLarge(_))
        ));
        assert_eq!(buf, before);
        encode_frame_into(&b, &mut buf).unwrap();
        let first = HEADER_LEN + frame_len(buf[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(decode_frame(&buf).unwrap(), a);
        assert_eq!(decode_frame(&buf[first..]).unwrap(), b);
        assert_eq!(buf[first..], encode_frame(&b).unwrap()[..]);
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut body = encode_frame(&Message::Cancel { id: 1 }).unwrap()[HEADER_LEN..].to_vec();
        body.push(0);
        assert!(matches!(decode_body(&body), Err(WireError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_body(&body);
        }
    }
}

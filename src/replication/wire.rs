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
    tree::{BlockProof, Proof, ProofRequest},
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

/// Block values at least this long are not copied into or out of their frame: a frame that
/// carries one is written as the bytes before it, the value itself and the bytes after it
/// ([`encode_frame_parts`]), and a frame read whole shares it ([`decode_frame_shared`]).
pub const SHARED_VALUE_BYTES: usize = 64 * 1024;

/// Postcard's indices of the two messages that carry a block (their places in the enum).
const DATA_VARIANT: u32 = 6;
const PUSH_VARIANT: u32 = 13;

/// A frame carrying a block value, in three parts: the header and every byte before the
/// value, the value, and the bytes after it. Together they are the bytes
/// [`encode_frame_into`] writes.
#[derive(Debug)]
pub struct FrameParts {
    /// The frame header and the message up to the value.
    pub head: Vec<u8>,
    /// The block value.
    pub value: Bytes,
    /// The message after the value.
    pub tail: Vec<u8>,
}

impl FrameParts {
    /// Bytes of the whole frame.
    pub fn frame_len(&self) -> usize {
        self.head.len() + self.value.len() + self.tail.len()
    }
}

/// `msg` as [`FrameParts`], if it is a `Data` or `Push` with a block; `None` for any other
/// message. Fails as [`encode_frame_into`] does on an oversized message.
pub fn encode_frame_parts(msg: &Message) -> Option<Result<FrameParts, WireError>> {
    let (variant, id, proof) = match msg {
        Message::Data { id, proof } => (DATA_VARIANT, Some(*id), proof),
        Message::Push { proof } => (PUSH_VARIANT, None, proof),
        _ => return None,
    };
    let block = proof.block.as_ref()?;
    // What postcard writes, field by field: a struct's fields, like a tuple's, one after the
    // other; an enum's index as a u32; `Some` as the byte 1; a byte string's length as a u64.
    let (fork, some, index, len) = (proof.fork, 1u8, block.index, block.value.len() as u64);
    let header = vec![0; HEADER_LEN];
    let head = match id {
        Some(id) => postcard::to_extend(&(variant, id, fork, some, index, len), header),
        None => postcard::to_extend(&(variant, fork, some, index, len), header),
    };
    let rest = (
        &block.nodes,
        &proof.hash,
        &proof.seek,
        &proof.upgrade,
        &proof.manifest,
    );
    let written = head.and_then(|head| Ok((head, postcard::to_stdvec(&rest)?)));
    let (mut head, tail) = match written {
        Ok(parts) => parts,
        Err(e) => return Some(Err(WireError::Malformed(e.to_string()))),
    };
    let len = head.len() - HEADER_LEN + block.value.len() + tail.len();
    if len > MAX_FRAME {
        return Some(Err(WireError::TooLarge(len)));
    }
    head[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Some(Ok(FrameParts {
        head,
        value: block.value.clone(),
        tail,
    }))
}

/// Decodes a frame body held whole in `body`. A `Data` or `Push` whose block value is at
/// least [`SHARED_VALUE_BYTES`] and half the body keeps the value as a slice of `body`
/// rather than a copy; anything else decodes as [`decode_body`] does, with the same result.
pub fn decode_frame_shared(body: &Bytes) -> Result<Message, WireError> {
    if body.len() >= SHARED_VALUE_BYTES
        && let Some(msg) = decode_shared_value(body)
    {
        return Ok(msg);
    }
    decode_body(body)
}

/// The message of `body` with its block value shared, if `body` is a `Data` or `Push` whose
/// head reads plainly (varints of at most 9 bytes, which postcard reads the same way; the
/// block's option tag 1) and whose value is long enough; `None` leaves the body to
/// [`decode_body`]. What follows the value is decoded by postcard.
fn decode_shared_value(body: &Bytes) -> Option<Message> {
    // Postcard reads a variant index as a u32 varint of at most 5 bytes, where a padded one
    // could pass for 6 or 13 in 9: only the one-byte form is read here.
    let mut head = Head { body, at: 1 };
    let id = match u32::from(*body.first()?) {
        DATA_VARIANT => Some(head.varint()?),
        PUSH_VARIANT => None,
        _ => return None,
    };
    let fork = head.varint()?;
    if head.byte()? != 1 {
        return None;
    }
    let index = head.varint()?;
    let len = usize::try_from(head.varint()?).ok()?;
    let start = head.at;
    let end = start.checked_add(len)?;
    if len < SHARED_VALUE_BYTES || len < body.len() / 2 || end > body.len() {
        return None;
    }
    let (nodes, hash, seek, upgrade, manifest) = match postcard::take_from_bytes(&body[end..]) {
        Ok((rest, [])) => rest,
        _ => return None,
    };
    let proof = Proof {
        fork,
        block: Some(BlockProof {
            index,
            value: body.slice(start..end),
            nodes,
        }),
        hash,
        seek,
        upgrade,
        manifest,
    };
    Some(match id {
        Some(id) => Message::Data { id, proof },
        None => Message::Push { proof },
    })
}

/// A read position in a frame body, for the fields before a block value.
struct Head<'a> {
    body: &'a [u8],
    at: usize,
}

impl Head<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.body.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    /// A varint of at most 9 bytes (63 bits); a longer one is left to postcard, which checks
    /// its last byte.
    fn varint(&mut self) -> Option<u64> {
        let mut out = 0u64;
        for i in 0..9 {
            let b = self.byte()?;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(out);
            }
        }
        None
    }
}

/// A `Data` answering request 1 with block 0: `len` bytes of `fill` (for tests).
#[cfg(test)]
pub(crate) fn data_with_block(len: usize, fill: u8) -> Message {
    Message::Data {
        id: 1,
        proof: Proof {
            block: Some(BlockProof {
                index: 0,
                value: vec![fill; len].into(),
                nodes: vec![],
            }),
            ..Default::default()
        },
    }
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
    use crate::tree::{HashProof, IndexRequest, Node, SeekProof, UpgradeProof};

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
                        value: b"hello".to_vec().into(),
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

    fn node() -> impl Strategy<Value = Node> {
        (any::<u64>(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(index, size, hash)| Node {
            index,
            size,
            hash,
        })
    }

    fn nodes() -> impl Strategy<Value = Vec<Node>> {
        prop::collection::vec(node(), 0..3)
    }

    /// A `Data` or `Push` with a block of `len` bytes and any other parts, with numbers over
    /// the whole range (the longest varints included).
    fn block_message(len: std::ops::Range<usize>) -> impl Strategy<Value = Message> {
        let parts = (
            any::<u64>(),
            any::<u64>(),
            (any::<u64>(), len, any::<u8>(), nodes()),
            prop::option::of((any::<u64>(), nodes())),
            prop::option::of((any::<u64>(), nodes())),
            prop::option::of((any::<u64>(), any::<u64>(), nodes(), nodes())),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
            any::<bool>(),
        );
        parts.prop_map(
            |(id, fork, (index, len, fill, block_nodes), hash, seek, upgrade, manifest, push)| {
                let proof = Proof {
                    fork,
                    block: Some(BlockProof {
                        index,
                        value: vec![fill; len].into(),
                        nodes: block_nodes,
                    }),
                    hash: hash.map(|(index, nodes)| HashProof { index, nodes }),
                    seek: seek.map(|(bytes, nodes)| SeekProof { bytes, nodes }),
                    upgrade: upgrade.map(|(start, length, nodes, additional_nodes)| UpgradeProof {
                        start,
                        length,
                        nodes,
                        additional_nodes,
                        signature: vec![7; 64],
                    }),
                    manifest,
                };
                if push {
                    Message::Push { proof }
                } else {
                    Message::Data { id, proof }
                }
            },
        )
    }

    proptest! {
        // A frame of 16 KiB decoded about two thousand times a case.
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// A frame written in parts is, byte for byte, the frame written whole.
        #[test]
        fn a_frame_in_parts_is_the_frame_written_whole(msg in block_message(0..40)) {
            let parts = encode_frame_parts(&msg).unwrap().unwrap();
            let mut joined = parts.head.clone();
            joined.extend_from_slice(&parts.value);
            joined.extend_from_slice(&parts.tail);
            prop_assert_eq!(parts.frame_len(), joined.len());
            prop_assert_eq!(&joined[..], &encode_frame(&msg).unwrap()[..]);
        }

        /// A frame read whole decodes as `decode_body` decodes it, and shares its large value;
        /// damaged (each byte of its head, of the start of its tail and of its end set in turn
        /// to values that matter to a decoder, or the frame cut there), it still decodes, or
        /// fails, exactly as `decode_body`.
        #[test]
        fn a_frame_read_whole_decodes_as_decode_body_does(
            msg in block_message(SHARED_VALUE_BYTES..SHARED_VALUE_BYTES + 64),
            extra in any::<u8>(),
        ) {
            let frame = encode_frame(&msg).unwrap();
            let body = frame.slice(HEADER_LEN..);
            let decoded = decode_frame_shared(&body).unwrap();
            prop_assert_eq!(&decoded, &msg);
            let (Message::Data { proof, .. } | Message::Push { proof }) = &decoded else {
                unreachable!()
            };
            let block = proof.block.as_ref().unwrap();
            let value = &block.value;
            // A number past 63 bits (a 10-byte varint) is left to postcard, which copies.
            let plain = [proof.fork, block.index]
                .into_iter()
                .chain(match &decoded {
                    Message::Data { id, .. } => Some(*id),
                    _ => None,
                })
                .all(|n| n < 1 << 63);
            prop_assert_eq!(body.as_ptr_range().contains(&value.as_ptr()), plain, "shared");
            // Where the value starts and the tail after it.
            let start = encode_frame_parts(&msg).unwrap().unwrap().head.len() - HEADER_LEN;
            let tail = start + value.len();
            let len = body.len();
            let positions = (0..len)
                .filter(|i| *i < start + 8 || (tail..tail + 64).contains(i) || *i + 16 >= len);
            for i in positions {
                for b in [0, 1, 2, 0x7f, 0x80, 0x81, 0xff, extra] {
                    let mut damaged = body.to_vec();
                    damaged[i] = b;
                    let damaged = Bytes::from(damaged);
                    prop_assert_eq!(
                        decode_frame_shared(&damaged),
                        decode_body(&damaged),
                        "byte {} set to {:#x}", i, b
                    );
                }
                let cut = body.slice(..i);
                prop_assert_eq!(decode_frame_shared(&cut), decode_body(&cut), "cut at {}", i);
            }
        }
    }

    /// A variant index padded to more bytes than postcard reads (a u32 varint, at most 5) is
    /// refused, as postcard refuses it, however long the value.
    #[test]
    fn a_padded_variant_index_is_refused_like_postcard_does() {
        let msg = data_with_block(SHARED_VALUE_BYTES, 7);
        let body = encode_frame(&msg).unwrap().slice(HEADER_LEN..);
        assert_eq!(decode_frame_shared(&body).unwrap(), msg);
        for extra in 1..=8 {
            // 6 written in 1 + `extra` bytes.
            let mut padded = vec![0x86];
            padded.extend(std::iter::repeat_n(0x80, extra - 1));
            padded.push(0);
            padded.extend_from_slice(&body[1..]);
            let padded = Bytes::from(padded);
            assert_eq!(decode_body(&padded).is_ok(), extra < 5, "{extra}");
            assert_eq!(
                decode_frame_shared(&padded),
                decode_body(&padded),
                "{extra}"
            );
        }
    }

    /// Messages without a block are never written in parts; a value shorter than the bound,
    /// or not half its frame, is copied out.
    #[test]
    fn only_large_values_are_shared() {
        assert!(encode_frame_parts(&Message::Cancel { id: 1 }).is_none());
        let no_block = Message::Data {
            id: 1,
            proof: Proof::default(),
        };
        assert!(encode_frame_parts(&no_block).is_none());
        let with = |len: usize, manifest: usize| Message::Data {
            id: 1,
            proof: Proof {
                block: Some(BlockProof {
                    index: 0,
                    value: vec![1; len].into(),
                    nodes: vec![],
                }),
                manifest: Some(vec![2; manifest]),
                ..Default::default()
            },
        };
        for (len, manifest, shared) in [
            (SHARED_VALUE_BYTES, 0, true),
            (SHARED_VALUE_BYTES - 1, 0, false),
            (SHARED_VALUE_BYTES, SHARED_VALUE_BYTES * 2, false),
        ] {
            let msg = with(len, manifest);
            let body = encode_frame(&msg).unwrap().slice(HEADER_LEN..);
            let decoded = decode_frame_shared(&body).unwrap();
            assert_eq!(decoded, msg);
            let Message::Data { proof, .. } = decoded else {
                unreachable!()
            };
            let ptr = proof.block.unwrap().value.as_ptr();
            assert_eq!(
                body.as_ptr_range().contains(&ptr),
                shared,
                "{len} {manifest}"
            );
        }
    }
}

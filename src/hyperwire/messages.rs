//! Hypercore 11's messages on a core's channel (`hypercore/alpha`), in compact-encoding, in
//! their protomux type order: sync (0), request (1), cancel (2), data (3), no-data (4),
//! want (5), unwant (6), bitfield (7), range (8), extension (9). The channel's `open` carries
//! [`ChannelHandshake`].
//!
//! Proofs are the crate's own [`Proof`] and [`ProofRequest`]: hypercore's `data` and
//! `request` are the same shapes. Decoding bounds every count (nodes per proof, bitfield
//! words, names) and refuses truncated input; trailing bytes are ignored, as JS ignores them
//! (newer fields go at the end).

use super::compact::{DecodeError, Reader, Writer};
use crate::{
    core::MAX_BLOCK_SIZE,
    tree::{
        BlockProof, HashProof, IndexRequest, Node, Proof, ProofRequest, SeekProof, SeekRequest,
        UpgradeProof, UpgradeRequest,
    },
};

/// The protocol name of a core's channel.
pub const PROTOCOL: &str = "hypercore/alpha";
/// The older name JS still matches.
pub const PROTOCOL_ALIAS: &str = "hypercore";

/// Most nodes taken in one list of a proof.
pub const MAX_NODES: usize = 256;
/// Longest signature taken (a multisig envelope of a few signers).
pub const MAX_SIGNATURE: usize = 4096;
/// Longest manifest taken.
pub const MAX_MANIFEST: usize = 64 * 1024;
/// Most 32-bit words in a bitfield message.
pub const MAX_BITFIELD_WORDS: usize = 1 << 16;
/// Longest extension name.
pub const MAX_EXTENSION_NAME: usize = 256;

/// The message types.
pub mod kind {
    /// `sync`
    pub const SYNC: u64 = 0;
    /// `request`
    pub const REQUEST: u64 = 1;
    /// `cancel`
    pub const CANCEL: u64 = 2;
    /// `data`
    pub const DATA: u64 = 3;
    /// `noData`
    pub const NO_DATA: u64 = 4;
    /// `want`
    pub const WANT: u64 = 5;
    /// `unwant`
    pub const UNWANT: u64 = 6;
    /// `bitfield`
    pub const BITFIELD: u64 = 7;
    /// `range`
    pub const RANGE: u64 = 8;
    /// `extension`
    pub const EXTENSION: u64 = 9;
}

/// What a side's `open` of a core's channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelHandshake {
    /// Whether the side answers seek requests.
    pub seeks: bool,
    /// Proof that the side knows the core key, bound to the Noise session
    /// ([`capability`](super::capability)).
    pub capability: [u8; 32],
}

/// A side's state of a core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sync {
    /// Fork id.
    pub fork: u64,
    /// Signed length.
    pub length: u64,
    /// The receiver's length as the sender last heard it.
    pub remote_length: u64,
    /// The sender can upgrade the receiver (it holds a longer signed state).
    pub can_upgrade: bool,
    /// The sender serves blocks.
    pub uploading: bool,
    /// The sender fetches blocks.
    pub downloading: bool,
    /// The sender holds the manifest.
    pub has_manifest: bool,
    /// The sender takes blocks pushed to it unasked.
    pub allow_push: bool,
}

/// One of hypercore's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HyperMessage {
    /// `sync`
    Sync(Sync),
    /// `request`: what to prove, with hypercore's request id.
    Request {
        /// Request id (echoed in the answer).
        id: u64,
        /// What to prove.
        request: ProofRequest,
        /// The seek's padding (hypercore 11).
        seek_padding: u64,
        /// Priority (0 when absent).
        priority: u64,
    },
    /// `cancel`
    Cancel {
        /// The request no longer wanted.
        request: u64,
    },
    /// `data`: a proof answering `request`.
    Data {
        /// The request answered.
        request: u64,
        /// The proof.
        proof: Proof,
    },
    /// `noData`
    NoData {
        /// The request the sender cannot answer.
        request: u64,
        /// Why, when given.
        reason: Option<u64>,
    },
    /// `want`
    Want {
        /// First block.
        start: u64,
        /// Blocks.
        length: u64,
        /// Any block of the range will do.
        any: bool,
    },
    /// `unwant`
    Unwant {
        /// First block.
        start: u64,
        /// Blocks.
        length: u64,
        /// As in `want`.
        any: bool,
    },
    /// `bitfield`: which blocks from `start` the sender holds, 32 per word.
    Bitfield {
        /// First block.
        start: u64,
        /// The words, least significant bit first.
        words: Vec<u32>,
    },
    /// `range`: the sender now holds (or, with `drop`, dropped) blocks `start..start+length`.
    Range {
        /// Dropped rather than held.
        drop: bool,
        /// First block.
        start: u64,
        /// Blocks.
        length: u64,
    },
    /// `extension`
    Extension {
        /// Its name.
        name: String,
        /// Its payload.
        message: Vec<u8>,
    },
}

impl ChannelHandshake {
    /// Encodes the handshake.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out);
        w.uint(u64::from(self.seeks));
        w.bytes(&self.capability);
    }

    /// Decodes a handshake.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let flags = r.uint("handshake flags")?;
        Ok(Self {
            seeks: flags & 1 != 0,
            capability: r.array("capability")?,
        })
    }
}

fn bit(flags: u64, b: u64) -> bool {
    flags & b != 0
}

fn write_nodes(w: &mut Writer<'_>, nodes: &[Node]) {
    w.uint(nodes.len() as u64);
    for n in nodes {
        w.uint(n.index);
        w.uint(n.size);
        w.bytes(&n.hash);
    }
}

fn read_nodes(r: &mut Reader<'_>) -> Result<Vec<Node>, DecodeError> {
    let n = r.len(MAX_NODES, "node count")?;
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        nodes.push(Node {
            index: r.uint("node index")?,
            size: r.uint("node size")?,
            hash: r.array("node hash")?,
        });
    }
    Ok(nodes)
}

impl HyperMessage {
    /// The message's protomux type.
    pub fn kind(&self) -> u64 {
        match self {
            Self::Sync(_) => kind::SYNC,
            Self::Request { .. } => kind::REQUEST,
            Self::Cancel { .. } => kind::CANCEL,
            Self::Data { .. } => kind::DATA,
            Self::NoData { .. } => kind::NO_DATA,
            Self::Want { .. } => kind::WANT,
            Self::Unwant { .. } => kind::UNWANT,
            Self::Bitfield { .. } => kind::BITFIELD,
            Self::Range { .. } => kind::RANGE,
            Self::Extension { .. } => kind::EXTENSION,
        }
    }

    /// Encodes the message's body.
    pub fn encode(&self, w: &mut Writer<'_>) {
        match self {
            Self::Sync(s) => {
                let flags = u64::from(s.can_upgrade)
                    | u64::from(s.uploading) << 1
                    | u64::from(s.downloading) << 2
                    | u64::from(s.has_manifest) << 3
                    | u64::from(s.allow_push) << 4;
                w.uint(flags);
                w.uint(s.fork);
                w.uint(s.length);
                w.uint(s.remote_length);
            }
            Self::Request {
                id,
                request: q,
                seek_padding,
                priority,
            } => {
                let flags = u64::from(q.block.is_some())
                    | u64::from(q.hash.is_some()) << 1
                    | u64::from(q.seek.is_some()) << 2
                    | u64::from(q.upgrade.is_some()) << 3
                    | u64::from(q.manifest) << 4
                    | u64::from(*priority != 0) << 5;
                w.uint(flags);
                w.uint(*id);
                w.uint(q.fork);
                for part in [q.block, q.hash].into_iter().flatten() {
                    w.uint(part.index);
                    w.uint(part.nodes);
                }
                if let Some(s) = q.seek {
                    w.uint(s.bytes);
                    w.uint(*seek_padding);
                }
                if let Some(u) = q.upgrade {
                    w.uint(u.start);
                    w.uint(u.length);
                }
                if *priority != 0 {
                    w.uint(*priority);
                }
            }
            Self::Cancel { request } => w.uint(*request),
            Self::Data { request, proof: p } => {
                let flags = u64::from(p.block.is_some())
                    | u64::from(p.hash.is_some()) << 1
                    | u64::from(p.seek.is_some()) << 2
                    | u64::from(p.upgrade.is_some()) << 3
                    | u64::from(p.manifest.is_some()) << 4;
                w.uint(flags);
                w.uint(*request);
                w.uint(p.fork);
                if let Some(b) = &p.block {
                    w.uint(b.index);
                    w.buffer(&b.value);
                    write_nodes(w, &b.nodes);
                }
                if let Some(h) = &p.hash {
                    w.uint(h.index);
                    write_nodes(w, &h.nodes);
                }
                if let Some(s) = &p.seek {
                    w.uint(s.bytes);
                    write_nodes(w, &s.nodes);
                }
                if let Some(u) = &p.upgrade {
                    w.uint(u.start);
                    w.uint(u.length);
                    write_nodes(w, &u.nodes);
                    write_nodes(w, &u.additional_nodes);
                    w.buffer(&u.signature);
                }
                if let Some(m) = &p.manifest {
                    w.bytes(m);
                }
            }
            Self::NoData { request, reason } => {
                w.uint(*request);
                if let Some(reason) = reason {
                    w.uint(1);
                    w.uint(*reason);
                }
            }
            Self::Want { start, length, any } | Self::Unwant { start, length, any } => {
                w.uint(*start);
                w.uint(*length);
                if *any {
                    w.uint(1);
                }
            }
            Self::Bitfield { start, words } => {
                w.uint(*start);
                w.uint(words.len() as u64);
                for word in words {
                    w.bytes(&word.to_le_bytes());
                }
            }
            Self::Range {
                drop,
                start,
                length,
            } => {
                let one = *length == 1;
                w.uint(u64::from(*drop) | u64::from(one) << 1);
                w.uint(*start);
                if !one {
                    w.uint(*length);
                }
            }
            Self::Extension { name, message } => {
                w.string(name);
                w.bytes(message);
            }
        }
    }

    /// Decodes a message of type `kind`; `None` for a type this crate does not know (JS
    /// ignores those too).
    pub fn decode(kind: u64, body: &[u8]) -> Result<Option<Self>, DecodeError> {
        let mut r = Reader::new(body);
        let msg = match kind {
            kind::SYNC => {
                let flags = r.uint("sync flags")?;
                Self::Sync(Sync {
                    can_upgrade: bit(flags, 1),
                    uploading: bit(flags, 2),
                    downloading: bit(flags, 4),
                    has_manifest: bit(flags, 8),
                    allow_push: bit(flags, 16),
                    fork: r.uint("fork")?,
                    length: r.uint("length")?,
                    remote_length: r.uint("remote length")?,
                })
            }
            kind::REQUEST => {
                let flags = r.uint("request flags")?;
                let id = r.uint("request id")?;
                let fork = r.uint("fork")?;
                let index = |r: &mut Reader<'_>| -> Result<IndexRequest, DecodeError> {
                    Ok(IndexRequest {
                        index: r.uint("index")?,
                        nodes: r.uint("nodes")?,
                    })
                };
                let block = bit(flags, 1).then(|| index(&mut r)).transpose()?;
                let hash = bit(flags, 2).then(|| index(&mut r)).transpose()?;
                let (seek, seek_padding) = if bit(flags, 4) {
                    let bytes = r.uint("seek")?;
                    (Some(SeekRequest { bytes }), r.uint("seek padding")?)
                } else {
                    (None, 0)
                };
                let upgrade = if bit(flags, 8) {
                    Some(UpgradeRequest {
                        start: r.uint("upgrade start")?,
                        length: r.uint("upgrade length")?,
                    })
                } else {
                    None
                };
                let priority = if bit(flags, 32) {
                    r.uint("priority")?
                } else {
                    0
                };
                Self::Request {
                    id,
                    request: ProofRequest {
                        fork,
                        block,
                        hash,
                        seek,
                        upgrade,
                        manifest: bit(flags, 16),
                    },
                    seek_padding,
                    priority,
                }
            }
            kind::CANCEL => Self::Cancel {
                request: r.uint("request")?,
            },
            kind::DATA => {
                let flags = r.uint("data flags")?;
                let request = r.uint("request")?;
                let fork = r.uint("fork")?;
                let block = if bit(flags, 1) {
                    Some(BlockProof {
                        index: r.uint("block index")?,
                        value: bytes::Bytes::copy_from_slice(r.buffer(MAX_BLOCK_SIZE, "block")?),
                        nodes: read_nodes(&mut r)?,
                    })
                } else {
                    None
                };
                let hash = if bit(flags, 2) {
                    Some(HashProof {
                        index: r.uint("hash index")?,
                        nodes: read_nodes(&mut r)?,
                    })
                } else {
                    None
                };
                let seek = if bit(flags, 4) {
                    Some(SeekProof {
                        bytes: r.uint("seek")?,
                        nodes: read_nodes(&mut r)?,
                    })
                } else {
                    None
                };
                let upgrade = if bit(flags, 8) {
                    Some(UpgradeProof {
                        start: r.uint("upgrade start")?,
                        length: r.uint("upgrade length")?,
                        nodes: read_nodes(&mut r)?,
                        additional_nodes: read_nodes(&mut r)?,
                        signature: r.buffer(MAX_SIGNATURE, "signature")?.to_vec(),
                    })
                } else {
                    None
                };
                let manifest = if bit(flags, 16) {
                    let rest = r.remaining();
                    if rest.is_empty() || rest.len() > MAX_MANIFEST {
                        return Err(DecodeError::Invalid("manifest"));
                    }
                    Some(rest.to_vec())
                } else {
                    None
                };
                Self::Data {
                    request,
                    proof: Proof {
                        fork,
                        block,
                        hash,
                        seek,
                        upgrade,
                        manifest,
                    },
                }
            }
            kind::NO_DATA => {
                let request = r.uint("request")?;
                let reason = if r.is_empty() {
                    None
                } else if r.uint("no-data flags")? & 1 != 0 {
                    Some(r.uint("reason")?)
                } else {
                    None
                };
                Self::NoData { request, reason }
            }
            kind::WANT | kind::UNWANT => {
                let start = r.uint("start")?;
                let length = r.uint("length")?;
                let any = !r.is_empty() && r.uint("want flags")? & 1 != 0;
                if kind == kind::WANT {
                    Self::Want { start, length, any }
                } else {
                    Self::Unwant { start, length, any }
                }
            }
            kind::BITFIELD => {
                let start = r.uint("start")?;
                let n = r.len(MAX_BITFIELD_WORDS, "bitfield")?;
                let mut words = Vec::with_capacity(n);
                for _ in 0..n {
                    words.push(u32::from_le_bytes(r.array("bitfield")?));
                }
                Self::Bitfield { start, words }
            }
            kind::RANGE => {
                let flags = r.uint("range flags")?;
                let start = r.uint("start")?;
                let length = if bit(flags, 2) { 1 } else { r.uint("length")? };
                Self::Range {
                    drop: bit(flags, 1),
                    start,
                    length,
                }
            }
            kind::EXTENSION => Self::Extension {
                name: String::from_utf8_lossy(r.buffer(MAX_EXTENSION_NAME, "extension name")?)
                    .into_owned(),
                message: r.remaining().to_vec(),
            },
            _ => return Ok(None),
        };
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        data_encoding::HEXLOWER.decode(s.as_bytes()).unwrap()
    }

    fn round_trip(kind: u64, body: &str) -> HyperMessage {
        let bytes = hex(body);
        let msg = HyperMessage::decode(kind, &bytes).unwrap().unwrap();
        assert_eq!(msg.kind(), kind);
        let mut again = Vec::new();
        msg.encode(&mut Writer::new(&mut again));
        assert_eq!(again, bytes, "{msg:?}");
        msg
    }

    /// Bodies JS Hypercore 11.37.1 sent: a reader following a writer of "a", "b", "c", then
    /// "d" appended live.
    #[test]
    fn hypercore_transcript() {
        let HyperMessage::Sync(s) = round_trip(kind::SYNC, "0f000300") else {
            panic!()
        };
        assert_eq!(
            s,
            Sync {
                fork: 0,
                length: 3,
                remote_length: 0,
                can_upgrade: true,
                uploading: true,
                downloading: true,
                has_manifest: true,
                allow_push: false
            }
        );
        let HyperMessage::Request { id, request, .. } = round_trip(kind::REQUEST, "1801000003")
        else {
            panic!()
        };
        assert_eq!(id, 1);
        assert!(request.manifest && request.block.is_none());
        assert_eq!(
            request.upgrade,
            Some(UpgradeRequest {
                start: 0,
                length: 3
            })
        );
        round_trip(kind::REQUEST, "0101000001");
        round_trip(kind::REQUEST, "09020003000301");
        let HyperMessage::Data { request, proof } = round_trip(
            kind::DATA,
            "18010000030201029cac92aaed9e7d11eb629465684582ce39cb496303998de123533b09e16f2f0604019435aca782b6bc40e253392d45c885f3b1ad47f23e7b6c3f9daf5b0868c438c500440100ffc0d71651d8c0c24962a662c90f411f371945e3514669899d3189b832a1bd960415ee04d8ccb4c4159506ad230d223f33ca3dce6aa6d16d27e9fbd47efa250500000100000101004144eea531e483d54e0c14f4ca68e0644f355343ff6fcb0f005200e12cd747cb8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c",
        ) else {
            panic!()
        };
        assert_eq!(request, 1);
        let u = proof.upgrade.unwrap();
        assert_eq!(
            (u.start, u.length, u.nodes.len(), u.signature.len()),
            (0, 3, 2, 68)
        );
        assert_eq!(proof.manifest.unwrap().len(), 70);
        let HyperMessage::Data { proof, .. } = round_trip(
            kind::DATA,
            "010100000161010201520abb1082986713dabf6862ccfe1bb6b87037647d0019b31219493ef186597c",
        ) else {
            panic!()
        };
        assert_eq!(proof.block.unwrap().value, &b"a"[..]);
        assert_eq!(
            round_trip(kind::RANGE, "000003"),
            HyperMessage::Range {
                drop: false,
                start: 0,
                length: 3
            }
        );
        assert_eq!(
            round_trip(kind::WANT, "00fd0004"),
            HyperMessage::Want {
                start: 0,
                length: 1024,
                any: false
            }
        );
        let handshake = hex("0163ee242b4ff8792663e5b44d609aae768ed8994514f2a84d88ecc70fefc474cc");
        let h = ChannelHandshake::decode(&handshake).unwrap();
        assert!(h.seeks);
        let mut again = Vec::new();
        h.encode(&mut again);
        assert_eq!(again, handshake);
    }

    #[test]
    fn short_and_oversized_bodies_are_refused() {
        assert!(HyperMessage::decode(kind::SYNC, &hex("0f0003")).is_err());
        // A node count over the bound, whatever follows.
        assert_eq!(
            HyperMessage::decode(kind::DATA, &hex("010100000161fde803")),
            Err(DecodeError::Invalid("node count"))
        );
        assert!(HyperMessage::decode(kind::BITFIELD, &hex("00ffffffffffffffff00")).is_err());
        assert!(
            HyperMessage::decode(kind::DATA, &hex("100100")).is_err(),
            "empty manifest"
        );
        assert_eq!(HyperMessage::decode(42, &[1, 2, 3]), Ok(None));
        // Hypercore's optional trailing fields.
        assert_eq!(
            HyperMessage::decode(kind::NO_DATA, &hex("07")).unwrap(),
            Some(HyperMessage::NoData {
                request: 7,
                reason: None
            })
        );
        assert_eq!(
            HyperMessage::decode(kind::NO_DATA, &hex("070102")).unwrap(),
            Some(HyperMessage::NoData {
                request: 7,
                reason: Some(2)
            })
        );
    }
}

//! The checks run by the fuzz targets in `fuzz/fuzz_targets/` and, on the kept corpus, by
//! `tests/fuzz_corpus.rs` (an ordinary `cargo test`). Each check takes one input, feeds it to
//! a public decoder or verifier of the crate, and panics if an invariant breaks: not only "does
//! not panic" but "what decodes re-encodes to the same value", "a verified proof proves only
//! nodes of the real tree", "a stored row reads back as its format says".
//!
//! The file is included by both (`#[path]`), so it uses only crates that the root package
//! depends on and the fuzz package lists too.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, OnceLock},
};

use iroh_hypercore::{
    CoreTicket, Corestore, Hypercore, StoreOptions,
    crypto::{
        CoreKind, KeyPair, Manifest, Verifier,
        manifest::{MAX_SIGNERS, MultiSignature, SignerProof},
        signer::{SignatureError, signable},
    },
    replication::{
        gossip::{GOSSIP_MAX_MESSAGE, GossipError, GossipOp, topic},
        wire::{
            HEADER_LEN, MAX_FRAME, MAX_HANDSHAKE_FRAME, Message, SyncInfo, WireError, decode_body,
            encode_frame, encode_frame_into, frame_len, frame_len_within,
        },
    },
    storage::{
        StorageError,
        test_view::{self as schema, BlocksWrite, CHUNK_BYTES, CoreHeader, GROUP, NodesWrite},
    },
    tree::{
        self, BlockProof, HashProof, IndexRequest, Node, NodeSource, Proof, ProofRequest,
        SeekRequest, TreeState, UpgradeRequest, VerifiedProof,
    },
};
use iroh_hypercore_tickets::{EndpointAddr, MAX_TICKET_BYTES, MAX_TICKET_LEN, PREFIX, Ticket};
use redb::{ReadableTable, backends::InMemoryBackend};

/// A check: panics if an invariant breaks on the input.
pub type Check = fn(&[u8]);

/// Checks that replay `fuzz/regressions/<target>/` where they differ from the target's: the
/// inputs there fail until a bug is fixed, and the target skips them meanwhile.
pub const REGRESSIONS: &[(&str, Check)] = &[];

/// Every fuzz target, by name, with the check it runs. The name is the target's binary in
/// `fuzz/Cargo.toml` and its corpus directory `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Check)] = &[
    ("frame_reader", |d| {
        frame_reader(d);
    }),
    ("wire_decode", |d| {
        wire_decode(d);
    }),
    ("gossip_op", |d| {
        gossip_op(d);
    }),
    ("ticket", |d| {
        ticket(d);
    }),
    ("manifest", |d| {
        manifest(d);
    }),
    ("proof_verify", |d| {
        proof_verify(d);
    }),
    ("proof_apply", |d| {
        proof_apply(d);
    }),
    ("storage_rows", storage_rows),
    ("storage_header", |d| {
        storage_header(d);
    }),
    ("hostile_node", hostile_node),
];

// ---------------------------------------------------------------------------------------------
// Frames and wire messages
// ---------------------------------------------------------------------------------------------

/// Checks one decoded message: it re-encodes as a frame of at most `max_body` bytes that
/// decodes to the same message.
fn check_message(msg: &Message, max_body: usize) {
    let frame = encode_frame(msg).expect("a decoded message re-encodes");
    let header: [u8; HEADER_LEN] = frame[..HEADER_LEN]
        .try_into()
        .expect("a frame has a header");
    let len = frame_len(header).expect("an encoded frame is within MAX_FRAME");
    assert_eq!(
        len,
        frame.len() - HEADER_LEN,
        "the header announces the body"
    );
    assert!(
        len <= max_body,
        "re-encoded body of {len} bytes is longer than the {max_body} it was decoded from"
    );
    assert_eq!(
        decode_body(&frame[HEADER_LEN..]).as_ref(),
        Ok(msg),
        "re-encoded message decodes to itself"
    );
    let mut queued = vec![0xa5; 3];
    encode_frame_into(msg, &mut queued).expect("a decoded message re-encodes");
    assert_eq!(
        queued[3..],
        frame[..],
        "encode_frame_into appends the same frame"
    );
}

/// `wire_decode`: `frame_len`/`frame_len_within` on the first four bytes, and
/// `decode_body` on the whole input. Returns whether the input decoded.
pub fn wire_decode(data: &[u8]) -> bool {
    if let Some(header) = data.first_chunk::<HEADER_LEN>() {
        let announced = u32::from_be_bytes(*header) as usize;
        for max in [
            0,
            1,
            MAX_HANDSHAKE_FRAME,
            MAX_FRAME - 1,
            MAX_FRAME,
            usize::MAX,
        ] {
            let limit = max.min(MAX_FRAME);
            let got = if max == MAX_FRAME {
                frame_len(*header)
            } else {
                frame_len_within(*header, max)
            };
            match got {
                Ok(n) => assert!(n == announced && n <= limit, "{n} within {limit}"),
                Err(WireError::TooLarge(n)) => {
                    assert!(n == announced && n > limit, "{n} refused at {limit}")
                }
                Err(e) => panic!("frame_len_within gave {e:?}"),
            }
        }
    }
    match decode_body(data) {
        Ok(msg) => {
            check_message(&msg, data.len());
            // A message decodes from exactly one prefix of any input (postcard reads no
            // further than it needs): without its last byte this one does not decode.
            assert!(
                decode_body(&data[..data.len() - 1]).is_err(),
                "a strict prefix of a message also decodes"
            );
            let mut longer = data.to_vec();
            longer.push(0);
            assert!(
                matches!(decode_body(&longer), Err(WireError::Malformed(_))),
                "trailing bytes are refused"
            );
            true
        }
        Err(WireError::Malformed(_)) => false,
        Err(e) => panic!("decode_body gave {e:?}"),
    }
}

/// The complete frames at the start of `bytes`: the split the frame reader makes.
fn split_frames(
    bytes: &[u8],
    max_frame: usize,
    one: bool,
    out: &mut Vec<Message>,
) -> Result<usize, WireError> {
    iroh_hypercore::replication::wire::decode_frames(bytes, max_frame, one, out)
}

/// How a stream of frames ended.
#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    /// Between two frames.
    Clean,
    /// Inside a frame.
    Truncated,
    /// At a frame that is too large or malformed.
    Error(WireError),
}

/// Read chunk sizes, from a seed: mostly small, sometimes everything that is left.
struct ChunkSizes(u32);

impl ChunkSizes {
    fn next(&mut self, limit: usize) -> usize {
        // xorshift32
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        let n = match self.0 % 8 {
            0 => usize::MAX,
            1..=3 => (self.0 >> 8) as usize % 8 + 1,
            _ => (self.0 >> 8) as usize % 300 + 1,
        };
        n.min(limit)
    }
}

/// `frame_reader`: a byte stream split into frames the way the frame reader does, read in
/// chunks of varying sizes with the reader's buffering (decode straight from a chunk when
/// nothing is buffered, keep only the partial frame), compared with decoding the whole stream
/// frame by frame. The first byte picks the frame limit (`MAX_FRAME`, the handshake limit, or
/// 64 bytes) and the chunk sizes. Returns how many messages were read.
pub fn frame_reader(data: &[u8]) -> usize {
    let Some((&cfg, stream)) = data.split_first() else {
        return 0;
    };
    let max_frame = match cfg & 3 {
        0 | 1 => MAX_FRAME,
        2 => MAX_HANDSHAKE_FRAME,
        _ => 64,
    };
    let one = max_frame < MAX_FRAME;

    // The reference: the whole stream, one frame at a time.
    let mut all = Vec::new();
    let mut pos = 0;
    let expected = loop {
        let mut one_frame = Vec::new();
        match split_frames(&stream[pos..], max_frame, true, &mut one_frame) {
            Err(e) => break StreamEnd::Error(e),
            Ok(0) if pos == stream.len() => break StreamEnd::Clean,
            Ok(0) => break StreamEnd::Truncated,
            Ok(n) => {
                assert_eq!(one_frame.len(), 1);
                pos += n;
                all.append(&mut one_frame);
            }
        }
    };
    for m in &all {
        check_message(m, max_frame);
    }

    // The reader: batches of frames from chunks.
    const CHUNK: usize = 256 * 1024;
    let mut sizes = ChunkSizes(u32::from(cfg) << 16 | 0x9e37);
    let mut buf: Vec<u8> = Vec::new();
    let mut delivered = Vec::new();
    let mut pos = 0;
    let got = 'stream: loop {
        let mut frames = Vec::new();
        loop {
            let used = match split_frames(&buf, max_frame, one, &mut frames) {
                Ok(used) => used,
                Err(e) => break 'stream StreamEnd::Error(e),
            };
            buf.drain(..used);
            if !frames.is_empty() {
                assert!(
                    !one || frames.len() == 1,
                    "a handshake batch holds one frame"
                );
                delivered.append(&mut frames);
                continue 'stream;
            }
            if pos == stream.len() {
                break 'stream if buf.is_empty() {
                    StreamEnd::Clean
                } else {
                    StreamEnd::Truncated
                };
            }
            let limit = if one { max_frame + HEADER_LEN } else { CHUNK };
            let n = sizes.next(limit).min(stream.len() - pos);
            let chunk = &stream[pos..pos + n];
            pos += n;
            if buf.is_empty() {
                match split_frames(chunk, max_frame, one, &mut frames) {
                    Ok(used) => buf.extend_from_slice(&chunk[used..]),
                    Err(e) => break 'stream StreamEnd::Error(e),
                }
            } else {
                buf.extend_from_slice(chunk);
            }
        }
    };
    assert_eq!(got, expected, "chunked reading ends like the whole stream");
    assert!(
        delivered.len() <= all.len() && delivered[..] == all[..delivered.len()],
        "chunked reading delivers the stream's frames in order"
    );
    if !matches!(expected, StreamEnd::Error(_)) {
        assert_eq!(delivered.len(), all.len(), "every frame is delivered");
    }
    delivered.len()
}

// ---------------------------------------------------------------------------------------------
// Gossip ops
// ---------------------------------------------------------------------------------------------

/// `gossip_op`: `GossipOp::decode`; a decoded op re-encodes within the gossip limit to no
/// more bytes, decodes to itself, and is refused by `encode` under a smaller limit.
pub fn gossip_op(data: &[u8]) -> bool {
    match GossipOp::decode(data) {
        Ok(op) => {
            let enc = op
                .encode(GOSSIP_MAX_MESSAGE)
                .expect("a decoded op fits the limit");
            assert!(enc.len() <= data.len(), "re-encoding is no longer");
            assert_eq!(GossipOp::decode(&enc), Ok(op));
            assert!(GossipOp::decode(&data[..data.len() - 1]).is_err());
            // 64 bytes of the limit are left for iroh-gossip's framing.
            assert_eq!(op.encode(enc.len() + 64).as_ref(), Ok(&enc));
            assert!(matches!(
                op.encode(enc.len() + 63),
                Err(GossipError::TooLarge(..))
            ));
            let GossipOp::Announce { origin, .. } = op;
            assert_ne!(topic(&origin), origin);
            true
        }
        Err(GossipError::Malformed(_)) => false,
        Err(e) => panic!("GossipOp::decode gave {e:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tickets
// ---------------------------------------------------------------------------------------------

/// `ticket`: the first byte picks `CoreTicket::from_bytes` on the rest (0), `from_str` on the
/// rest as UTF-8 (1), or `from_str` on `core` + base32 of the rest (2); the bytes are versioned
/// (a postcard enum: the version, then its fields). iroh's `Ticket::decode_bytes` /
/// `decode_string` accept exactly what `from_bytes` / `from_str` do, as the same ticket. A
/// decoded ticket's string and bytes decode back to it (both ways), its string is lowercase,
/// within the limit and the same as `Ticket::encode_string`.
pub fn ticket(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let (parsed, theirs) = match mode % 3 {
        0 => {
            let t = CoreTicket::from_bytes(rest);
            if rest.len() > MAX_TICKET_BYTES {
                assert!(t.is_err(), "more than MAX_TICKET_BYTES is refused");
            }
            (t, CoreTicket::decode_bytes(rest).ok())
        }
        1 => {
            let Ok(s) = std::str::from_utf8(rest) else {
                return false;
            };
            let t = s.parse::<CoreTicket>();
            if s.len() > MAX_TICKET_LEN {
                assert!(t.is_err(), "a string over MAX_TICKET_LEN is refused");
            } else if !s.starts_with(PREFIX) {
                assert!(t.is_err(), "a string without the prefix is refused");
            }
            (t, CoreTicket::decode_string(s).ok())
        }
        _ => {
            let mut s = PREFIX.to_string();
            s.push_str(&data_encoding::BASE32_NOPAD.encode(rest).to_lowercase());
            (s.parse::<CoreTicket>(), CoreTicket::decode_string(&s).ok())
        }
    };
    assert_eq!(
        parsed.as_ref().ok(),
        theirs.as_ref(),
        "the Ticket trait decodes the input as CoreTicket does"
    );
    let Ok(t) = parsed else {
        return false;
    };
    let bytes = t.to_bytes();
    assert_eq!(
        CoreTicket::from_bytes(&bytes).as_ref(),
        Ok(&t),
        "a ticket's bytes decode to it"
    );
    let text = t.to_string();
    assert!(text.starts_with(PREFIX));
    assert_eq!(text, text.to_lowercase());
    assert!(
        text.len() <= MAX_TICKET_LEN,
        "a decoded ticket's string is {} characters, over the limit",
        text.len()
    );
    assert_eq!(
        text.parse::<CoreTicket>().as_ref(),
        Ok(&t),
        "a ticket's string parses to it"
    );
    assert_eq!(t.encode_string(), text, "Ticket::encode_string is Display");
    assert_eq!(t.encode_bytes(), bytes, "Ticket::encode_bytes is to_bytes");
    assert_eq!(
        CoreTicket::decode_string(&text).ok().as_ref(),
        Some(&t),
        "Ticket::decode_string reads a ticket's string back"
    );
    assert_eq!(CoreTicket::new(t.key(), t.nodes().to_vec()), t);
    true
}

// ---------------------------------------------------------------------------------------------
// Manifests and signature envelopes
// ---------------------------------------------------------------------------------------------

/// A key pair whose secret the checks know, so that they can sign for manifests naming it.
fn known_key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| KeyPair::from_seed([0x11; 32]))
}

/// The tree state the envelope checks sign: (tree hash, length, fork).
const SIGNED: ([u8; 32], u64, u64) = ([9; 32], 5, 2);

/// `manifest`: the first byte picks `Manifest::decode` then `Verifier::from_manifest` (even)
/// or `MultiSignature::decode` then `Verifier::verify` (odd) on the rest.
pub fn manifest(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    if mode & 1 == 0 {
        check_manifest(rest)
    } else {
        check_envelope(rest)
    }
}

fn check_manifest(bytes: &[u8]) -> bool {
    let Ok(m) = Manifest::decode(bytes) else {
        return false;
    };
    assert!(m.quorum >= 1 && m.quorum as usize <= m.signers.len());
    assert!(m.signers.len() <= MAX_SIGNERS);
    let enc = m.encode();
    assert!(enc.len() <= bytes.len(), "re-encoding is no longer");
    assert_eq!(
        Manifest::decode(&enc).as_ref(),
        Ok(&m),
        "re-encoding decodes"
    );
    let key = m.hash();
    let mut other = key;
    other[31] ^= 1;
    assert_eq!(
        Verifier::from_manifest(other, m.clone()).unwrap_err(),
        SignatureError::ManifestMismatch
    );
    let v = match Verifier::from_manifest(key, m.clone()) {
        Ok(v) => v,
        Err(e) => panic!("from_manifest gave {e:?}"),
    };
    assert_eq!(v.kind(), CoreKind::Default);
    assert_eq!(v.manifest(), Some(&m));
    // Sign as every slot that names the known key: enough slots make a quorum.
    let signers: Vec<u32> = (0..m.signers.len() as u32)
        .filter(|i| m.signers[*i as usize].public_key == known_key().public_key())
        .collect();
    let (tree_hash, length, fork) = SIGNED;
    let raw = known_key().sign_raw(&signable(CoreKind::Default, &key, &tree_hash, length, fork));
    let envelope = |slots: &[u32]| {
        MultiSignature {
            proofs: slots
                .iter()
                .map(|&signer| SignerProof {
                    signer,
                    signature: raw,
                })
                .collect(),
        }
        .encode()
    };
    let env = envelope(&signers);
    // A signer's key that is no point: every verification fails, however many sign.
    if let Err(e) = v.check_keys() {
        assert_eq!(e, SignatureError::InvalidPublicKey);
        assert_eq!(
            v.verify(&env, &tree_hash, length, fork),
            Err(SignatureError::InvalidPublicKey)
        );
        return false;
    }
    assert_eq!(
        v.verify(&env, &tree_hash, length, fork).is_ok(),
        signers.len() >= m.quorum as usize,
        "signatures by {} of {} signers, quorum {}",
        signers.len(),
        m.signers.len(),
        m.quorum
    );
    assert!(v.verify(&env, &tree_hash, length + 1, fork).is_err());
    if let Some(&first) = signers.first() {
        assert!(
            v.verify(&envelope(&[first, first]), &tree_hash, length, fork)
                .is_err(),
            "one signer counted twice"
        );
    }
    let out_of_range = m.signers.len() as u32;
    assert!(
        v.verify(&envelope(&[out_of_range]), &tree_hash, length, fork)
            .is_err()
    );
    true
}

/// The verifiers of a default and a compat core of the known key, and the key's signatures
/// of [`SIGNED`] for each.
struct Envelopes {
    default: Verifier,
    compat: Verifier,
    default_sig: Vec<u8>,
    compat_sig: Vec<u8>,
}

fn envelopes() -> &'static Envelopes {
    static E: OnceLock<Envelopes> = OnceLock::new();
    E.get_or_init(|| {
        let kp = known_key();
        let manifest = Manifest::single(kp.public_key());
        let key = manifest.hash();
        let (tree_hash, length, fork) = SIGNED;
        Envelopes {
            default: Verifier::from_manifest(key, manifest).expect("a valid manifest"),
            compat: Verifier::compat(kp.public_key()).expect("a valid key"),
            default_sig: kp.sign_tree(CoreKind::Default, &key, &tree_hash, length, fork),
            compat_sig: kp.sign_tree(CoreKind::Compat, &kp.public_key(), &tree_hash, length, fork),
        }
    })
}

fn check_envelope(bytes: &[u8]) -> bool {
    let e = envelopes();
    let (tree_hash, length, fork) = SIGNED;
    let compat_ok = e.compat.verify(bytes, &tree_hash, length, fork).is_ok();
    assert_eq!(
        compat_ok,
        bytes == e.compat_sig,
        "only the real signature verifies"
    );
    let ok = e.default.verify(bytes, &tree_hash, length, fork).is_ok();
    match MultiSignature::decode(bytes) {
        Ok(s) => {
            assert!(s.proofs.len() <= MAX_SIGNERS);
            let enc = s.encode();
            assert!(enc.len() <= bytes.len(), "re-encoding is no longer");
            assert_eq!(MultiSignature::decode(&enc).as_ref(), Ok(&s));
            if ok {
                let real = MultiSignature::decode(&e.default_sig).expect("a real envelope");
                assert!(
                    s.proofs.iter().any(|p| *p == real.proofs[0]),
                    "an envelope verified without the real signature"
                );
                assert!(e.default.verify(&enc, &tree_hash, length, fork).is_ok());
            }
        }
        Err(_) => assert!(!ok, "an envelope that does not decode verified"),
    }
    ok || compat_ok
}

// ---------------------------------------------------------------------------------------------
// Proofs against a real log
// ---------------------------------------------------------------------------------------------

/// Primary key of the writer's store: the log is the same on every run, so the signatures in
/// the corpus stay valid.
const PRIMARY_KEY: [u8; 32] = [0x42; 32];

/// One reader state proofs are verified against.
pub struct ReaderState {
    /// What the state is.
    pub name: &'static str,
    /// The reader's signed tree.
    pub tree: TreeState,
    /// Every node the reader stores.
    pub nodes: HashMap<u64, Node>,
    /// The proofs (from the writer) that bring a new reader core to this state.
    pub setup: Vec<Proof>,
}

/// A small real log and reader states of it, made once with `Corestore::memory()`.
pub struct Fixture {
    /// The core key.
    pub key: [u8; 32],
    /// The writer's manifest.
    pub manifest: Manifest,
    /// Verifier of the key.
    pub verifier: Verifier,
    /// The writer's final signed tree (fork 1, 15 blocks).
    pub tree: TreeState,
    /// Every node of the final tree.
    pub nodes: HashMap<u64, Node>,
    /// The final block values.
    pub values: Vec<Vec<u8>>,
    /// Readers at: nothing (0), fork 0 length 7 (1), fork 1 length 12 with every node of
    /// its blocks (2), and the final length (3).
    pub readers: Vec<ReaderState>,
    /// Proofs the writer made for each reader state: `[reader] ‖ postcard(proof)`.
    pub seeds: Vec<Vec<u8>>,
}

/// A runtime for the async set-up of the fixtures.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn value(i: usize, fork: u64) -> Vec<u8> {
    if fork == 0 || i < 12 {
        format!("block {i};").repeat(i + 1).into_bytes()
    } else {
        format!("fork {fork} block {i}").into_bytes()
    }
}

/// The roots and every node of a reader core.
async fn read_state(core: &Hypercore) -> (TreeState, HashMap<u64, Node>) {
    let info = core.info();
    let mut nodes = HashMap::new();
    for i in 0..2 * info.length {
        if let Some(n) = core.tree_node(i).await.expect("a tree node") {
            nodes.insert(i, n);
        }
    }
    let roots = TreeState::root_indices(info.length)
        .into_iter()
        .map(|i| *nodes.get(&i).expect("a reader stores its roots"))
        .collect();
    let tree = TreeState {
        fork: info.fork,
        length: info.length,
        byte_length: info.byte_length,
        roots,
        signature: core.signature(),
    };
    assert_eq!(tree.hash(), core.tree_hash());
    (tree, nodes)
}

/// A reader core of `key` in a new memory store, brought to a state by `setup`.
async fn new_reader(key: [u8; 32], setup: &[Proof]) -> (Corestore, Hypercore) {
    let store = Corestore::memory().await.expect("a memory store");
    new_reader_in(store, key, setup).await
}

/// A reader core of `key` in `store`, brought to a state by `setup`.
async fn new_reader_in(store: Corestore, key: [u8; 32], setup: &[Proof]) -> (Corestore, Hypercore) {
    let core = store.get_remote(key).await.expect("a remote core");
    for p in setup {
        core.verify_and_apply_proof(p.clone())
            .await
            .expect("a set-up proof applies");
    }
    (store, core)
}

/// The writer's proof answering `req`.
async fn proof_for(writer: &Hypercore, req: ProofRequest) -> Proof {
    writer
        .create_proof(req.clone())
        .await
        .unwrap_or_else(|e| panic!("the writer proves {req:?}: {e}"))
}

fn block_req(index: u64, nodes: u64, upgrade: Option<(u64, u64)>) -> ProofRequest {
    ProofRequest {
        fork: 0,
        block: Some(IndexRequest { index, nodes }),
        upgrade: upgrade.map(|(start, length)| UpgradeRequest { start, length }),
        ..Default::default()
    }
}

fn upgrade_req(start: u64, length: u64, manifest: bool) -> ProofRequest {
    ProofRequest {
        upgrade: Some(UpgradeRequest { start, length }),
        manifest,
        ..Default::default()
    }
}

async fn build_fixture() -> Fixture {
    let store = Corestore::memory_with(StoreOptions {
        primary_key: Some(PRIMARY_KEY),
        ..Default::default()
    })
    .await
    .expect("a memory store");
    let writer = store.get_named("fuzz").await.expect("a named core");
    let key = writer.key();
    let mut setups: Vec<Vec<Proof>> = vec![Vec::new(); 4];

    // Fork 0: 7 blocks; reader 1 takes them.
    writer
        .append_batch((0..7).map(|i| value(i, 0)))
        .await
        .expect("append");
    setups[1].push(proof_for(&writer, upgrade_req(0, 7, true)).await);
    // Fork 0: 16 blocks, then truncated to 12 on fork 1; reader 2 takes that with every block.
    writer
        .append_batch((7..10).map(|i| value(i, 0)))
        .await
        .expect("append");
    writer
        .append_batch((10..16).map(|i| value(i, 0)))
        .await
        .expect("append");
    writer.truncate(12).await.expect("truncate");
    setups[2].push(proof_for(&writer, upgrade_req(0, 12, true)).await);
    {
        let (_s, reader) = new_reader(key, &setups[2]).await;
        for i in 0..12 {
            let missing = reader.missing_nodes(i).await.expect("missing nodes");
            let p = proof_for(&writer, block_req(i, missing, None)).await;
            reader
                .verify_and_apply_proof(p.clone())
                .await
                .expect("a block applies");
            setups[2].push(p);
        }
    }
    // Fork 1: 15 blocks; reader 3 takes the final state.
    writer
        .append_batch((12..15).map(|i| value(i, 1)))
        .await
        .expect("append");
    setups[3].push(proof_for(&writer, upgrade_req(0, 15, true)).await);

    let info = writer.info();
    assert_eq!((info.fork, info.length), (1, 15));
    let values: Vec<Vec<u8>> = (0..15).map(|i| value(i, 1)).collect();
    // The final tree, recomputed from the values, is the writer's.
    let mut tree = TreeState {
        fork: 1,
        ..Default::default()
    };
    let mut all = Vec::new();
    for v in &values {
        tree.append(v, &mut all).expect("append");
    }
    tree.signature = writer.signature();
    assert_eq!(
        tree.hash(),
        writer.tree_hash(),
        "the recomputed tree is the writer's"
    );
    let nodes: HashMap<u64, Node> = all.into_iter().map(|n| (n.index, n)).collect();
    for (i, n) in &nodes {
        assert_eq!(writer.tree_node(*i).await.expect("a node"), Some(*n));
    }
    let manifest_bytes = writer.manifest().expect("a default core has a manifest");
    let manifest = Manifest::decode(&manifest_bytes).expect("the writer's manifest decodes");
    let verifier = Verifier::from_manifest(key, manifest.clone()).expect("a verifier");

    let names = [
        "empty",
        "fork 0, length 7",
        "fork 1, length 12, every node",
        "fork 1, length 15, roots",
    ];
    let mut readers = Vec::new();
    for (name, setup) in names.into_iter().zip(setups) {
        let (s, core) = new_reader(key, &setup).await;
        let (tree, nodes) = read_state(&core).await;
        s.close().await.expect("close");
        readers.push(ReaderState {
            name,
            tree,
            nodes,
            setup,
        });
    }

    // Proofs the writer makes for each reader.
    let mut seeds = Vec::new();
    let mut seed = |reader: u8, p: &Proof| {
        let mut bytes = vec![reader];
        bytes.extend(postcard::to_stdvec(p).expect("a proof encodes"));
        seeds.push(bytes);
    };
    let seek = |bytes, upgrade: Option<(u64, u64)>| ProofRequest {
        seek: Some(SeekRequest { bytes }),
        upgrade: upgrade.map(|(start, length)| UpgradeRequest { start, length }),
        ..Default::default()
    };
    let hash = |index, nodes| ProofRequest {
        hash: Some(IndexRequest { index, nodes }),
        ..Default::default()
    };
    let full = tree.byte_length;
    let requests: Vec<(u8, ProofRequest)> = vec![
        (0, upgrade_req(0, 15, true)),
        (0, upgrade_req(0, 9, true)),
        (
            0,
            ProofRequest {
                manifest: true,
                ..block_req(4, 64, Some((0, 15)))
            },
        ),
        (0, block_req(14, 64, Some((0, 15)))),
        (0, seek(full / 2, Some((0, 15)))),
        (1, upgrade_req(0, 15, false)),
        (1, block_req(3, 64, Some((0, 15)))),
        (1, block_req(13, 64, Some((0, 15)))),
        (2, upgrade_req(12, 3, false)),
        (2, upgrade_req(12, 1, false)),
        (2, block_req(12, 1, Some((12, 3)))),
        (2, block_req(5, 0, None)),
        (2, block_req(9, 2, None)),
        (2, hash(5, 0)),
        (2, hash(9, 1)),
        (1, seek(40, Some((0, 15)))),
        (3, block_req(14, 0, None)),
        (3, block_req(2, 64, None)),
        (3, block_req(13, 64, None)),
        (3, hash(17, 64)),
        (2, seek(full - 1, Some((12, 3)))),
    ];
    for (reader, mut req) in requests {
        let state = &readers[reader as usize];
        req.fork = state.tree.fork;
        // A reader that does not know the kind yet takes only proofs with the manifest.
        req.manifest |= state.tree.length == 0;
        if let Some(b) = &mut req.block
            && b.nodes == 64
        {
            b.nodes = missing_nodes(&state.tree, &state.nodes, b.index);
        }
        if let Some(h) = &mut req.hash
            && h.nodes == 64
        {
            h.nodes = missing_above(&state.tree, &state.nodes, h.index);
        }
        let p = proof_for(&writer, req).await;
        seed(reader, &p);
    }
    store.close().await.expect("close");
    Fixture {
        key,
        manifest,
        verifier,
        tree,
        nodes,
        values,
        readers,
        seeds,
    }
}

/// How many nodes above block `index` a reader lacks (as `Hypercore::missing_nodes`).
fn missing_nodes(tree: &TreeState, nodes: &HashMap<u64, Node>, index: u64) -> u64 {
    missing_above(tree, nodes, 2 * index)
}

fn missing_above(tree: &TreeState, nodes: &HashMap<u64, Node>, index: u64) -> u64 {
    let head = 2 * tree.length;
    let mut c = tree::flat::Cursor::new(index);
    let mut count = 0;
    while !c.contains(head) && c.index < tree::flat::MAX_INDEX {
        if tree.roots.iter().any(|r| r.index == c.index) || nodes.contains_key(&c.index) {
            break;
        }
        count += 1;
        c.parent();
    }
    count
}

/// The fixture, made on first use.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // Made on a thread of its own: the caller may be inside a runtime.
        std::thread::spawn(|| runtime().block_on(build_fixture()))
            .join()
            .expect("the fixture builds")
    })
}

/// A reader's roots as its only nodes, as `Hypercore::verify_and_apply_proof` first tries.
struct Roots<'a>(&'a [Node]);

impl NodeSource for Roots<'_> {
    type Error = std::convert::Infallible;
    fn node(&self, index: u64) -> Result<Option<Node>, Self::Error> {
        Ok(self.0.iter().find(|n| n.index == index).copied())
    }
}

/// Splits an input into a reader state and a proof.
fn reader_and_proof(data: &[u8]) -> Option<(usize, Proof)> {
    let (&sel, rest) = data.split_first()?;
    let (proof, _) = postcard::take_from_bytes::<Proof>(rest).ok()?;
    Some((sel as usize % fixture().readers.len(), proof))
}

/// Checks a proof that verified against reader state `r`: everything it proves is the
/// writer's, sizes included (a parent's hash commits only to the sum of its children's sizes,
/// so a node whose size the proof fixes only in sum with its sibling's must not be among the
/// nodes to store).
fn check_verified(r: &ReaderState, proof: &Proof, v: &VerifiedProof) {
    let fx = fixture();
    for n in &v.nodes {
        let real = fx.nodes.get(&n.index).unwrap_or_else(|| {
            panic!(
                "a verified proof proves node {} that the writer does not have",
                n.index
            )
        });
        assert_eq!(
            n.hash, real.hash,
            "a verified proof proves node {} with another hash",
            n.index
        );
        assert_eq!(
            n.size, real.size,
            "a verified proof proves node {} of {} bytes, the writer's has {}",
            n.index, n.size, real.size
        );
    }
    if let Some(i) = v.block {
        let b = proof
            .block
            .as_ref()
            .expect("a verified block comes from the proof");
        assert_eq!(b.index, i);
        assert_eq!(
            fx.values.get(i as usize).map(Vec::as_slice),
            Some(&b.value[..]),
            "a verified block is the writer's"
        );
        assert!(v.nodes.contains(&Node::leaf(i, &b.value)));
    } else {
        assert!(proof.block.is_none());
    }
    match &v.upgrade {
        Some(up) => {
            let u = proof
                .upgrade
                .as_ref()
                .expect("an upgrade comes from the proof");
            assert_eq!(
                (up.fork, up.length, up.byte_length, &up.roots),
                (
                    fx.tree.fork,
                    fx.tree.length,
                    fx.tree.byte_length,
                    &fx.tree.roots
                ),
                "a verified upgrade is to the writer's signed state"
            );
            assert_eq!(up.signature.as_ref(), Some(&u.signature));
            assert!(
                v.reorg || up.length > r.tree.length,
                "an upgrade grows the tree"
            );
            assert_eq!(
                v.reorg,
                proof.fork > r.tree.fork,
                "a reorg is to a higher fork"
            );
        }
        None => {
            assert!(!v.reorg);
            assert_eq!(proof.fork, r.tree.fork);
        }
    }
}

/// `proof_verify`: `tree::verify_proof` of a postcard `Proof` against a reader state of the
/// fixture log (the first byte picks the state), with every node the reader stores and with
/// only its roots. Returns whether the proof verified.
pub fn proof_verify(data: &[u8]) -> bool {
    let Some((sel, proof)) = reader_and_proof(data) else {
        return false;
    };
    let fx = fixture();
    let r = &fx.readers[sel];
    let result = tree::verify_proof(&r.nodes, &r.tree, &fx.verifier, &proof);
    let in_place = tree::verify_proof(&Roots(&r.tree.roots), &r.tree, &fx.verifier, &proof);
    if let Ok(v) = &in_place {
        assert_eq!(
            result.as_ref().ok(),
            Some(v),
            "verifying against more nodes gives the same result"
        );
    }
    match result {
        Ok(v) => {
            check_verified(r, &proof, &v);
            true
        }
        Err(_) => false,
    }
}

/// Reader cores in the fixture's states, on a runtime of their own.
struct ApplyFixture {
    rt: tokio::runtime::Runtime,
    readers: Mutex<Vec<(Corestore, Hypercore)>>,
}

fn apply_fixture() -> &'static ApplyFixture {
    static A: OnceLock<ApplyFixture> = OnceLock::new();
    A.get_or_init(|| {
        let fx = fixture();
        let rt = runtime();
        let readers = fx
            .readers
            .iter()
            .map(|r| rt.block_on(new_reader(fx.key, &r.setup)))
            .collect();
        ApplyFixture {
            rt,
            readers: Mutex::new(readers),
        }
    })
}

/// `proof_apply`: `Hypercore::verify_and_apply_proof` of a postcard `Proof` on a reader core
/// in a fixture state (the first byte picks it), compared with `tree::verify_proof` on the
/// same state: it applies exactly the proofs that verify (for the reader that does not know
/// the core's kind yet, those that also carry the real manifest), and then holds what they
/// proved. A reader that took a proof is made anew. Returns whether the proof applied.
pub fn proof_apply(data: &[u8]) -> bool {
    let Some((sel, proof)) = reader_and_proof(data) else {
        return false;
    };
    let fx = fixture();
    let ap = apply_fixture();
    let r = &fx.readers[sel];
    let mut readers = ap.readers.lock().unwrap_or_else(|e| e.into_inner());
    let core = readers[sel].1.clone();
    let pure = tree::verify_proof(&r.nodes, &r.tree, &fx.verifier, &proof);
    let kind_known = r.tree.length > 0;
    let manifest_ok = proof
        .manifest
        .as_ref()
        .is_some_and(|m| Manifest::decode(m).as_ref() == Ok(&fx.manifest));
    let expected = pure.is_ok() && (kind_known || manifest_ok);
    let applied = ap.rt.block_on(core.verify_and_apply_proof(proof.clone()));
    assert_eq!(
        applied.is_ok(),
        expected,
        "reader {:?}: applied {applied:?}, verify_proof gave {pure:?}",
        r.name
    );
    let Ok(a) = applied else {
        let info = core.info();
        assert_eq!((info.fork, info.length), (r.tree.fork, r.tree.length));
        return false;
    };
    let v = pure.expect("applied proofs verify");
    check_verified(r, &proof, &v);
    assert_eq!(a.upgraded, v.upgrade.as_ref().map(|u| u.length));
    assert_eq!(a.block, v.block);
    assert!(a.truncated.is_none_or(|t| t < r.tree.length));
    let info = core.info();
    let (fork, length) = v
        .upgrade
        .as_ref()
        .map_or((r.tree.fork, r.tree.length), |u| (u.fork, u.length));
    assert_eq!((info.fork, info.length), (fork, length));
    assert_eq!(info.kind, Some(CoreKind::Default));
    if let (Some(i), Some(b)) = (a.block, &proof.block) {
        let got = ap.rt.block_on(core.get(i).into_future());
        assert_eq!(got.expect("a get").as_deref(), Some(&b.value[..]));
    }
    // Back to the state the other inputs expect.
    let (store, _) = &readers[sel];
    let store = store.clone();
    ap.rt
        .block_on(store.delete(fx.key))
        .expect("the reader core is deleted");
    readers[sel] = ap.rt.block_on(new_reader_in(store, fx.key, &r.setup));
    true
}

// ---------------------------------------------------------------------------------------------
// Storage rows
// ---------------------------------------------------------------------------------------------

/// `storage_header`: `CoreHeader::decode`; a decoded header re-encodes to no more bytes and
/// decodes to itself. Returns whether the input decoded.
pub fn storage_header(data: &[u8]) -> bool {
    match CoreHeader::decode(data) {
        Ok(h) => {
            let enc = h.encode();
            assert!(enc.len() <= data.len(), "re-encoding is no longer");
            assert_eq!(CoreHeader::decode(&enc).as_ref(), Ok(&h));
            true
        }
        Err(StorageError::Corrupt(_)) => false,
        Err(e) => panic!("CoreHeader::decode gave {e:?}"),
    }
}

/// A cursor over a fuzz input; past its end every read is zero.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u8(&mut self) -> u8 {
        self.byte().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
}

/// Where fuzzed keys start, from two bits: near 0 as written (0 and 2), near the largest
/// block index a writer uses, `tree::MAX_LENGTH` (1), or near `u64::MAX`, which only a
/// corrupt file holds (3).
fn block_base(sel: u8) -> u64 {
    match sel & 3 {
        1 => tree::MAX_LENGTH - 1024,
        3 => u64::MAX - 1023,
        _ => 0,
    }
}

/// Node-group counterpart of [`block_base`].
fn group_base(sel: u8) -> u64 {
    match sel & 3 {
        1 => (2 * tree::MAX_LENGTH) / GROUP - 64,
        3 => u64::MAX / GROUP - 255,
        _ => 0,
    }
}

/// The contents of the three tables, read back, with the blocks table's rows decoded by
/// [`RefRow::parse`] (`None` for a malformed row).
#[derive(Default, Clone, Debug)]
struct Snapshot {
    nodes: BTreeMap<(u64, u64), Vec<u8>>,
    chunks: BTreeMap<(u64, u64), Option<RefRow>>,
    pieces: BTreeMap<(u64, u64, u32), Vec<u8>>,
}

/// A row of the blocks table, decoded as the format in `src/storage/blocks.rs` says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RefRow {
    Chunk { first: u64, values: Vec<Vec<u8>> },
    Large { index: u64, len: u64 },
}

impl RefRow {
    fn parse(first: u64, b: &[u8]) -> Option<Self> {
        if b.len() == 12 && b[..4] == [0; 4] {
            let len = u64::from_le_bytes(b[4..].try_into().ok()?);
            // A row whose block would end past `u64::MAX` is corrupt.
            first.checked_add(1)?;
            return Some(RefRow::Large { index: first, len });
        }
        let count = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
        let header = 4 + 4 * count;
        let data = b.get(header..)?;
        let mut values = Vec::with_capacity(count);
        let mut prev = 0;
        for i in 0..count {
            let end = u32::from_le_bytes(b[4 + 4 * i..8 + 4 * i].try_into().ok()?) as usize;
            if end < prev || end > data.len() {
                return None;
            }
            values.push(data[prev..end].to_vec());
            prev = end;
        }
        first.checked_add(count as u64)?;
        (count > 0 && prev == data.len()).then_some(RefRow::Chunk { first, values })
    }

    fn first(&self) -> u64 {
        match self {
            RefRow::Chunk { first, .. } => *first,
            RefRow::Large { index, .. } => *index,
        }
    }

    /// Index after its last block (`None` past `u64::MAX`).
    fn end(&self) -> Option<u64> {
        match self {
            RefRow::Chunk { first, values } => first.checked_add(values.len() as u64),
            RefRow::Large { index, .. } => index.checked_add(1),
        }
    }
}

type NodesTable<'t> = redb::Table<'t, (u64, u64), &'static [u8]>;
type ChunksTable<'t> = redb::Table<'t, (u64, u64), &'static [u8]>;
type PiecesTable<'t> = redb::Table<'t, (u64, u64, u32), &'static [u8]>;

impl Snapshot {
    fn read(nodes: &NodesTable<'_>, chunks: &ChunksTable<'_>, pieces: &PiecesTable<'_>) -> Self {
        let mut s = Snapshot::default();
        for row in nodes.iter().expect("iterate") {
            let (k, v) = row.expect("a row");
            s.nodes.insert(k.value(), v.value().to_vec());
        }
        for row in chunks.iter().expect("iterate") {
            let (k, v) = row.expect("a row");
            let (id, first) = k.value();
            s.chunks
                .insert((id, first), RefRow::parse(first, v.value()));
        }
        for row in pieces.iter().expect("iterate") {
            let (k, v) = row.expect("a row");
            s.pieces.insert(k.value(), v.value().to_vec());
        }
        s
    }

    /// The node at `index` of core `id`: `Err` for a malformed row.
    fn node(&self, id: u64, index: u64) -> Result<Option<Node>, ()> {
        let (group, slot) = (index / GROUP, (index % GROUP) as u32);
        let Some(row) = self.nodes.get(&(id, group)) else {
            return Ok(None);
        };
        let present = u32::from_le_bytes(row.get(..4).ok_or(())?.try_into().map_err(|_| ())?);
        if present == 0 || row.len() != 4 + 40 * present.count_ones() as usize {
            return Err(());
        }
        if present & (1 << slot) == 0 {
            return Ok(None);
        }
        let at = 4 + 40 * (present & ((1u32 << slot) - 1)).count_ones() as usize;
        Ok(Some(Node {
            index,
            size: u64::from_le_bytes(row[at..at + 8].try_into().map_err(|_| ())?),
            hash: row[at + 8..at + 40].try_into().map_err(|_| ())?,
        }))
    }

    /// Whether the node row of core `id` for group `group` is malformed.
    fn group_malformed(&self, id: u64, group: u64) -> bool {
        self.node(id, group * GROUP).is_err()
    }

    /// Every node index of core `id` in a group that has a row.
    fn node_indices(&self, id: u64) -> Vec<u64> {
        self.nodes
            .keys()
            .filter(|(c, _)| *c == id)
            .flat_map(|&(_, g)| (0..GROUP).map(move |s| g * GROUP + s))
            .collect()
    }

    /// The parsed rows of core `id` by first block; `None` if one does not parse.
    fn rows(&self, id: u64) -> Option<BTreeMap<u64, &RefRow>> {
        self.chunks
            .range((id, 0)..=(id, u64::MAX))
            .map(|(k, v)| v.as_ref().map(|r| (k.1, r)))
            .collect()
    }

    /// The row of core `id` that would hold block `index`: the last one starting at or
    /// before it.
    fn row_at(&self, id: u64, index: u64) -> Option<&Option<RefRow>> {
        self.chunks
            .range((id, 0)..=(id, index))
            .next_back()
            .map(|(_, v)| v)
    }

    /// Whether block `index` of core `id` is stored (its row covers it): `Err` for a
    /// malformed row.
    fn has(&self, id: u64, index: u64) -> Result<bool, ()> {
        let Some(row) = self.row_at(id, index) else {
            return Ok(false);
        };
        let row = row.as_ref().ok_or(())?;
        Ok(row.end().is_none_or(|end| index < end))
    }

    /// Block `index` of core `id`: `Err` for a malformed row or malformed pieces.
    fn block(&self, id: u64, index: u64) -> Result<Option<Vec<u8>>, ()> {
        let Some(row) = self.row_at(id, index) else {
            return Ok(None);
        };
        match row.as_ref().ok_or(())? {
            RefRow::Chunk { first, values } => Ok(values.get((index - first) as usize).cloned()),
            &RefRow::Large { index: at, len } => {
                if at != index {
                    return Ok(None);
                }
                let mut out = Vec::new();
                for (n, ((_, _, p), v)) in self
                    .pieces
                    .range((id, index, 0)..=(id, index, u32::MAX))
                    .enumerate()
                {
                    if *p as usize != n {
                        return Err(());
                    }
                    out.extend_from_slice(v);
                }
                if out.len() as u64 != len {
                    return Err(());
                }
                Ok(Some(out))
            }
        }
    }

    /// Whether the rows of core `id` are as a writer leaves them: each parses, none overlaps
    /// the next, none ends past `u64::MAX`, and every chunk fits a page.
    fn well_formed(&self, id: u64) -> bool {
        let Some(rows) = self.rows(id) else {
            return false;
        };
        let mut prev_end = 0;
        for row in rows.values() {
            let Some(end) = row.end() else {
                return false;
            };
            if row.first() < prev_end {
                return false;
            }
            prev_end = end;
        }
        true
    }

    /// Every block index of core `id` that a row covers, and the indices next to them.
    fn block_indices(&self, id: u64) -> Vec<u64> {
        let mut out = Vec::new();
        for (&(c, first), row) in &self.chunks {
            if c != id {
                continue;
            }
            let n = match row {
                Some(RefRow::Chunk { values, .. }) => values.len() as u64,
                _ => 1,
            };
            out.push(first.saturating_sub(1));
            for k in 0..=n {
                out.push(first.saturating_add(k));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// The database the storage checks write to; every check aborts its transaction.
fn storage_db() -> &'static redb::Database {
    static DB: OnceLock<redb::Database> = OnceLock::new();
    DB.get_or_init(|| {
        let db = redb::Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .expect("an in-memory database");
        schema::init(&db).expect("the schema");
        db
    })
}

/// Whether `r` failed as a malformed row must: with [`StorageError::Corrupt`].
fn is_corrupt<T: std::fmt::Debug>(r: &Result<T, StorageError>) -> bool {
    match r {
        Err(StorageError::Corrupt(_)) => true,
        Err(e) => panic!("a storage read gave {e:?}, not Corrupt"),
        Ok(_) => false,
    }
}

/// A generated value of `len` bytes.
fn filler(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

/// The tables of one write transaction.
struct Tables<'t> {
    nodes: NodesTable<'t>,
    chunks: ChunksTable<'t>,
    pieces: PiecesTable<'t>,
}

impl<'t> Tables<'t> {
    fn snapshot(&self) -> Snapshot {
        Snapshot::read(&self.nodes, &self.chunks, &self.pieces)
    }

    fn blocks(&mut self) -> BlocksWrite<'_, 't> {
        BlocksWrite::new(&mut self.chunks, &mut self.pieces)
    }
}

/// `storage_rows`: rows of the node-group, block-chunk and piece tables written from the
/// input, then reads and writes through the row codecs that `storage::test_view` exposes
/// (feature `test-utils`), compared with a decoder written from the row formats their docs
/// give. The row decoders themselves (`RowView::parse`, `Chunk::parse`, `Row::parse`) are
/// private; this reaches them through every function of the view that reads a row.
///
/// The input is a list of records. A record's first byte says what it is (bits 0–1: a node
/// row, a chunk row, a piece, or an operation), for which core (bit 2), near which index
/// (bits 3–4, see [`block_base`]), and how its bytes are made (bits 5–7).
pub fn storage_rows(data: &[u8]) {
    let db = storage_db();
    let txn = db.begin_write().expect("a write transaction");
    {
        let mut t = Tables {
            nodes: txn.open_table(schema::NODES).expect("nodes"),
            chunks: txn.open_table(schema::BLOCKS).expect("blocks"),
            pieces: txn.open_table(schema::PIECES).expect("pieces"),
        };
        let mut input = Input(data);
        let mut ops = 0;
        while let Some(tag) = input.byte() {
            let id = u64::from((tag >> 2) & 1);
            let base = (tag >> 3) & 3;
            let structured = tag & 0x20 != 0;
            match tag & 3 {
                0 => {
                    let group = group_base(base) + u64::from(input.u8());
                    let row = if structured {
                        let present = input.u32();
                        let seed = input.u8();
                        let mut row = present.to_le_bytes().to_vec();
                        for slot in 0..32u8 {
                            if present & (1 << slot) != 0 {
                                row.extend_from_slice(&u64::from(seed ^ slot).to_le_bytes());
                                row.extend_from_slice(&[seed.wrapping_add(slot); 32]);
                            }
                        }
                        row
                    } else {
                        let n = input.u8() as usize;
                        input.bytes(n)
                    };
                    t.nodes.insert((id, group), row.as_slice()).expect("insert");
                }
                1 => {
                    let first = block_base(base) + u64::from(input.u16() % 1024);
                    let row = if structured && tag & 0x40 != 0 {
                        let mut marker = vec![0; 4];
                        marker.extend_from_slice(&u64::from(input.u16()).to_le_bytes());
                        marker
                    } else if structured {
                        let count = input.u8() % 8 + 1;
                        let seed = input.u8();
                        let values: Vec<Vec<u8>> = (0..count)
                            .map(|k| filler(usize::from(input.u8() % 24), seed ^ k))
                            .collect();
                        let mut row = u32::from(count).to_le_bytes().to_vec();
                        let mut end = 0u32;
                        for v in &values {
                            end += v.len() as u32;
                            row.extend_from_slice(&end.to_le_bytes());
                        }
                        for v in &values {
                            row.extend_from_slice(v);
                        }
                        row
                    } else {
                        let n = (input.u16() % 2048) as usize;
                        input.bytes(n)
                    };
                    t.chunks
                        .insert((id, first), row.as_slice())
                        .expect("insert");
                }
                2 => {
                    let index = block_base(base) + u64::from(input.u16() % 1024);
                    let n = u32::from(input.u8() % 4);
                    // Pieces of any size read back: small ones keep the runs fast.
                    let len = usize::from(input.u16() % 4096);
                    let piece = if structured {
                        filler(len, tag)
                    } else {
                        input.bytes(len % 256)
                    };
                    t.pieces
                        .insert((id, index, n), piece.as_slice())
                        .expect("insert");
                }
                _ => {
                    ops += 1;
                    if ops > 16 {
                        break;
                    }
                    storage_op(tag >> 5, id, base, &mut input, &mut t);
                }
            }
        }
        // Every read agrees with the reference at the end.
        let snap = t.snapshot();
        for id in 0..2 {
            check_reads(&snap, id, &mut t);
        }
    }
    txn.abort().expect("abort");
}

/// Compares every single-index read of core `id` with the reference.
fn check_reads(snap: &Snapshot, id: u64, t: &mut Tables<'_>) {
    for i in snap.node_indices(id) {
        let got = schema::node(&t.nodes, id, i);
        match snap.node(id, i) {
            Ok(n) => assert_eq!(got, Ok(n), "node {i} of core {id}"),
            Err(()) => assert!(is_corrupt(&got), "node {i} of a malformed row: {got:?}"),
        }
    }
    let blocks = t.blocks();
    let view = blocks.view();
    for i in snap.block_indices(id) {
        let got = view.get(id, i);
        match snap.block(id, i) {
            Ok(v) => assert_eq!(got, Ok(v), "block {i} of core {id}"),
            Err(()) => assert!(is_corrupt(&got), "block {i} of a malformed row: {got:?}"),
        }
        let got = view.has(id, i);
        match snap.has(id, i) {
            Ok(h) => assert_eq!(got, Ok(h), "has block {i} of core {id}"),
            Err(()) => assert!(is_corrupt(&got), "has block {i} of a malformed row"),
        }
    }
}

/// A range of block indices from the input, at most 600 long.
fn block_range(input: &mut Input<'_>, base: u8) -> (u64, u64) {
    let start = block_base(base).saturating_add(u64::from(input.u16() % 1100));
    let len = u64::from(input.u16() % 600);
    (start, start.saturating_add(len))
}

/// One operation of [`storage_rows`], checked against the tables before and after.
fn storage_op(op: u8, id: u64, base: u8, input: &mut Input<'_>, t: &mut Tables<'_>) {
    let before = t.snapshot();
    let other = 1 - id;
    match op {
        // Range reads of blocks.
        0 => {
            let (start, end) = block_range(input, base);
            let max_bytes = u64::from(input.u16());
            let blocks = t.blocks();
            let view = blocks.view();
            let present = view.present(id, start, end);
            let count = view.count(id, start, end);
            let missing = view.first_missing(id, start, end);
            let mut visited = Vec::new();
            let within =
                view.for_each_within(id, start, end, max_bytes, |i, v| visited.push((i, v)));
            if !before.well_formed(id) {
                for r in [
                    &present.map(|_| ()),
                    &count.map(|_| ()),
                    &missing.map(|_| ()),
                ] {
                    is_corrupt(r);
                }
                is_corrupt(&within);
                return;
            }
            let rows = before.rows(id).expect("well formed");
            let has = |i: u64| {
                rows.range(..=i)
                    .next_back()
                    .is_some_and(|(_, r)| r.end().is_some_and(|e| i < e))
            };
            let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
            for i in start..end {
                if has(i) {
                    match ranges.last_mut() {
                        Some(r) if r.end == i => r.end = i + 1,
                        _ => ranges.push(i..i + 1),
                    }
                }
            }
            assert_eq!(present, Ok(ranges.clone()), "present({start}..{end})");
            let n: u64 = ranges.iter().map(|r| r.end - r.start).sum();
            assert_eq!(count, Ok(n));
            let first_missing = (start..end).find(|i| !has(*i)).unwrap_or(end);
            assert_eq!(missing, Ok(first_missing), "first_missing({start}, {end})");
            // for_each_within: every stored block in order until `max_bytes` are handed out.
            let mut want = Vec::new();
            let mut total = 0u64;
            let mut stop = end;
            let mut failed = false;
            for i in start..end {
                match before.block(id, i) {
                    Ok(Some(v)) => {
                        total = total.saturating_add(v.len() as u64);
                        want.push((i, v));
                        if total >= max_bytes {
                            stop = i + 1;
                            break;
                        }
                    }
                    Ok(None) => {}
                    Err(()) => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                assert!(is_corrupt(&within), "a large block with malformed pieces");
            } else {
                assert_eq!(
                    within,
                    Ok(stop.min(end)),
                    "for_each_within({start}..{end}, {max_bytes})"
                );
                assert_eq!(
                    visited, want,
                    "for_each_within({start}..{end}, {max_bytes})"
                );
            }
        }
        // Nodes: put, remove, remove_from.
        1..=3 => {
            let gbase = group_base(base) * GROUP;
            let mut put: BTreeMap<u64, Node> = BTreeMap::new();
            let mut list = Vec::new();
            let (from, touched): (u64, Vec<u64>) = match op {
                1 => {
                    for k in 0..input.u8() % 8 + 1 {
                        let n = Node {
                            index: gbase + u64::from(input.u16() % 8192),
                            size: u64::from(input.u8()),
                            hash: [k; 32],
                        };
                        put.insert(n.index, n);
                        list.push(n);
                    }
                    let mut groups: Vec<u64> = list.iter().map(|n| n.index / GROUP).collect();
                    groups.sort_unstable();
                    groups.dedup();
                    (u64::MAX, groups)
                }
                _ => {
                    let i = gbase + u64::from(input.u16() % 8192);
                    (i, vec![i / GROUP])
                }
            };
            let mut w = NodesWrite::new(&mut t.nodes);
            let result = match op {
                1 => w.put(id, &list),
                2 => w.remove(id, from),
                _ => w.remove_from(id, from),
            };
            let malformed = touched.iter().any(|g| before.group_malformed(id, *g));
            if malformed {
                assert!(
                    is_corrupt(&result),
                    "a write to a malformed node row: {result:?}"
                );
                return;
            }
            assert_eq!(result, Ok(()), "a node write");
            let after = t.snapshot();
            // Untouched groups: the same rows; for `remove_from`, none above its group.
            let groups = before.nodes.keys().chain(after.nodes.keys());
            for &(c, g) in groups.filter(|(c, g)| *c == id && !touched.contains(g)) {
                let want = if op == 3 && g > from / GROUP {
                    None
                } else {
                    before.nodes.get(&(c, g))
                };
                assert_eq!(
                    after.nodes.get(&(c, g)),
                    want,
                    "node row {g} after node op {op}"
                );
            }
            // Touched groups: node by node.
            for g in &touched {
                for i in (0..GROUP).map(|slot| g * GROUP + slot) {
                    let want = match op {
                        1 => match put.get(&i) {
                            Some(n) => Ok(Some(*n)),
                            None => before.node(id, i),
                        },
                        2 if i == from => Ok(None),
                        3 if i >= from => Ok(None),
                        _ => before.node(id, i),
                    };
                    assert_eq!(after.node(id, i), want, "node {i} after node op {op}");
                }
            }
            for (&(c, g), row) in &after.nodes {
                if c == id && touched.contains(&g) {
                    assert!(row.len() > 4, "an empty node row is kept");
                }
            }
            assert_same_core(&before, &after, other);
        }
        // Blocks: remove a range.
        4 => {
            let (start, end) = block_range(input, base);
            let well_formed = before.well_formed(id);
            let result = t.blocks().remove(id, start, end);
            if !well_formed {
                is_corrupt(&result);
                return;
            }
            assert_eq!(result, Ok(()), "remove({start}..{end}) of well-formed rows");
            let after = t.snapshot();
            assert!(after.well_formed(id), "rows after remove({start}..{end})");
            let mut indices = before.block_indices(id);
            indices.extend(after.block_indices(id));
            indices.extend([start, end.saturating_sub(1), end]);
            for i in indices {
                let want = if (start..end).contains(&i) {
                    Ok(None)
                } else {
                    before.block(id, i)
                };
                assert_eq!(
                    after.block(id, i),
                    want,
                    "block {i} after remove({start}..{end})"
                );
            }
            for row in before.rows(id).expect("well formed").values() {
                if let RefRow::Large { index, .. } = row
                    && (start..end).contains(index)
                {
                    assert!(
                        after
                            .pieces
                            .range((id, *index, 0)..=(id, *index, u32::MAX))
                            .next()
                            .is_none(),
                        "pieces of removed block {index} are left"
                    );
                }
            }
            assert_same_core(&before, &after, other);
        }
        // Blocks: put a run, or sorted blocks.
        5 | 6 => {
            let first = block_base(base).saturating_add(u64::from(input.u16() % 1100));
            let mut blocks: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut at = first;
            for k in 0..input.u8() % 4 + 1 {
                let size = input.u16();
                let len = if size & 0x8000 != 0 {
                    CHUNK_BYTES - 16 + usize::from(size & 0x7fff)
                } else {
                    usize::from(size % 2048)
                };
                blocks.push((at, filler(len, k)));
                let step = if op == 5 {
                    1
                } else {
                    1 + u64::from(input.u8() % 3)
                };
                let Some(next) = at.checked_add(step) else {
                    break;
                };
                at = next;
            }
            // A put is for blocks that are not stored, below the largest length, over rows a
            // writer left.
            let free = before.well_formed(id)
                && blocks.iter().all(|(i, _)| {
                    *i < tree::MAX_LENGTH
                        && before.has(id, *i) == Ok(false)
                        && before
                            .pieces
                            .range((id, *i, 0)..=(id, *i, u32::MAX))
                            .next()
                            .is_none()
                });
            if !free {
                return;
            }
            let result = if op == 5 {
                let values: Vec<&[u8]> = blocks.iter().map(|(_, v)| v.as_slice()).collect();
                t.blocks().put(id, first, &values)
            } else {
                let sorted: Vec<(u64, &[u8])> =
                    blocks.iter().map(|(i, v)| (*i, v.as_slice())).collect();
                t.blocks().put_sorted(id, &sorted)
            };
            assert_eq!(result, Ok(()), "a put of free blocks");
            let after = t.snapshot();
            assert!(after.well_formed(id), "rows after a put");
            for (i, v) in &blocks {
                assert_eq!(
                    after.block(id, *i),
                    Ok(Some(v.clone())),
                    "block {i} after a put"
                );
            }
            for i in before.block_indices(id) {
                if blocks.iter().all(|(j, _)| *j != i) {
                    assert_eq!(
                        after.block(id, i),
                        before.block(id, i),
                        "block {i} after a put"
                    );
                }
            }
            for (k, v) in &after.chunks {
                let len = match v {
                    Some(RefRow::Chunk { values, .. }) => {
                        4 + values.iter().map(|v| 4 + v.len()).sum::<usize>()
                    }
                    _ => 0,
                };
                assert!(len <= CHUNK_BYTES, "row {k:?} of {len} bytes");
            }
            assert_same_core(&before, &after, other);
        }
        // Remove a whole core.
        _ => {
            assert_eq!(NodesWrite::new(&mut t.nodes).remove_core(id), Ok(()));
            assert_eq!(t.blocks().remove_core(id), Ok(()));
            let after = t.snapshot();
            assert!(after.nodes.keys().all(|k| k.0 != id));
            assert!(after.chunks.keys().all(|k| k.0 != id));
            assert!(after.pieces.keys().all(|k| k.0 != id));
            assert_same_core(&before, &after, other);
        }
    }
}

/// Core `id`'s rows are the same in both snapshots.
fn assert_same_core(before: &Snapshot, after: &Snapshot, id: u64) {
    assert!(
        (before.nodes.iter().filter(|(k, _)| k.0 == id))
            .eq(after.nodes.iter().filter(|(k, _)| k.0 == id)),
        "core {id}'s node rows changed"
    );
    assert!(
        (before.chunks.iter().filter(|(k, _)| k.0 == id))
            .eq(after.chunks.iter().filter(|(k, _)| k.0 == id)),
        "core {id}'s chunk rows changed"
    );
    assert!(
        (before.pieces.iter().filter(|(k, _)| k.0 == id))
            .eq(after.pieces.iter().filter(|(k, _)| k.0 == id)),
        "core {id}'s pieces changed"
    );
}

// ---------------------------------------------------------------------------------------------
// A hostile node
// ---------------------------------------------------------------------------------------------

/// `hostile_node`: the first 8 bytes seed the simulation (links, timing), the rest is the
/// script of a hostile node beside a writer and two honest readers (`sim::scripted_run`): it
/// panics if an honest node ever holds what the writer did not sign, goes back, holds more
/// for a peer than its bounds, or does not converge once the hostile node is gone.
pub fn hostile_node(data: &[u8]) {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
    }
    let (seed, script) = match data.split_first_chunk::<8>() {
        Some((seed, script)) => (u64::from_le_bytes(*seed), script),
        None => (0, data),
    };
    RUNTIME.with(|rt| {
        if let Err(e) = rt.block_on(iroh_hypercore::sim::scripted_run(seed, script)) {
            panic!("seed {seed}: {e}");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

/// Inputs to start each target's corpus from: real encodings made by the crate.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let fx = fixture();
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let proof = Proof {
        fork: 1,
        block: Some(BlockProof {
            index: 3,
            value: b"hello".to_vec().into(),
            nodes: vec![fx.nodes[&4]],
        }),
        hash: Some(HashProof {
            index: 5,
            nodes: vec![fx.nodes[&5]],
        }),
        ..Default::default()
    };
    let msgs = vec![
        Message::Open {
            discovery_key: [1; 32],
            capability: [2; 32],
        },
        Message::Accept {
            capability: [3; 32],
        },
        Message::Close {
            reason: "bye".into(),
        },
        Message::Sync(SyncInfo {
            fork: 1,
            length: 15,
            contiguous: 12,
            ask: true,
            downloading: false,
        }),
        Message::Request {
            id: 7,
            request: block_req(3, 2, Some((0, 15))),
        },
        Message::RequestRun {
            id: 8,
            fork: 1,
            start: 0,
            end: 300,
            length: 15,
        },
        Message::Data {
            id: 7,
            proof: proof.clone(),
        },
        Message::NoData {
            id: 1,
            start: 2,
            end: 3,
        },
        Message::Want { start: 0, end: 9 },
        Message::Unwant { start: 4, end: 5 },
        Message::Range {
            start: 0,
            end: 1 << 40,
        },
        Message::Cancel { id: u64::MAX },
        Message::Extension {
            name: "ext".into(),
            payload: vec![1, 2, 3],
        },
        Message::Push { proof },
    ];
    let mut stream = Vec::new();
    for m in &msgs {
        let frame = encode_frame(m).expect("encodes");
        out.push(("wire_decode", frame[HEADER_LEN..].to_vec()));
        let mut one = vec![0u8];
        one.extend_from_slice(&frame);
        out.push(("frame_reader", one));
        stream.extend_from_slice(&frame);
    }
    for cfg in [0u8, 2, 3, 0x41] {
        let mut s = vec![cfg];
        s.extend_from_slice(&stream);
        out.push(("frame_reader", s));
    }
    for s in &fx.seeds {
        let mut data = Message::Data {
            id: 1,
            proof: postcard::from_bytes(&s[1..]).expect("a proof"),
        };
        out.push((
            "wire_decode",
            encode_frame(&data).expect("encodes")[4..].to_vec(),
        ));
        if let Message::Data { proof, .. } = data {
            data = Message::Push { proof };
        }
        out.push((
            "wire_decode",
            encode_frame(&data).expect("encodes")[4..].to_vec(),
        ));
        out.push(("proof_verify", s.clone()));
        out.push(("proof_apply", s.clone()));
    }

    let op = GossipOp::Announce {
        origin: [5; 32],
        fork: 1,
        length: 15,
        contiguous: u64::MAX,
    };
    out.push(("gossip_op", op.encode(GOSSIP_MAX_MESSAGE).expect("encodes")));

    let id = |seed: u8| iroh_hypercore::crypto::KeyPair::from_seed([seed; 32]).public_key();
    let addr = |seed: u8| {
        let a = EndpointAddr::new(
            iroh_hypercore_tickets::EndpointId::from_bytes(&id(seed)).expect("a public key"),
        )
        .with_ip_addr(std::net::SocketAddr::from((
            [127, 0, 0, seed],
            4000 + u16::from(seed),
        )));
        if seed.is_multiple_of(2) {
            a.with_relay_url("https://relay.example.org/".parse().expect("a relay url"))
        } else {
            a
        }
    };
    let tickets = [
        CoreTicket::new(fx.key, vec![]),
        CoreTicket::new(fx.key, vec![addr(1)]),
        CoreTicket::new([7; 32], vec![addr(2), addr(3)]),
    ];
    for t in &tickets {
        let mut b = vec![0];
        b.extend(t.to_bytes());
        out.push(("ticket", b));
        let mut s = vec![1];
        s.extend(t.to_string().into_bytes());
        out.push(("ticket", s));
        let mut e = vec![2];
        e.extend(t.to_bytes());
        out.push(("ticket", e));
    }

    let kp = known_key();
    let other = KeyPair::from_seed([0x22; 32]);
    let single = Manifest::single(kp.public_key());
    let mut multi = Manifest::single(kp.public_key());
    multi.signers.push(multi.signers[0].clone());
    multi.signers.insert(
        1,
        iroh_hypercore::crypto::manifest::ManifestSigner {
            namespace: [3; 32],
            public_key: other.public_key(),
        },
    );
    multi.quorum = 2;
    for m in [&single, &multi, &fx.manifest] {
        let mut b = vec![0];
        b.extend(m.encode());
        out.push(("manifest", b));
    }
    let e = envelopes();
    for sig in [&e.default_sig, &e.compat_sig] {
        let mut b = vec![1];
        b.extend_from_slice(sig);
        out.push(("manifest", b));
    }

    // Storage rows: records as `storage_rows` reads them (see its docs); `x` sets the core
    // and the base of the keys.
    let le16 = |n: u16| n.to_le_bytes();
    let node_row = |x: u8, group: u8, present: u32, seed: u8| {
        let mut r = vec![0x20 | x, group];
        r.extend(present.to_le_bytes());
        r.push(seed);
        r
    };
    let chunk = |x: u8, first: u16, seed: u8, lens: &[u8]| {
        let mut r = vec![0x21 | x];
        r.extend(le16(first));
        r.extend([lens.len() as u8 - 1, seed]);
        r.extend(lens);
        r
    };
    let large = |x: u8, index: u16, pieces: &[u16]| {
        let mut r = vec![0x61 | x];
        r.extend(le16(index));
        r.extend(le16(pieces.iter().sum()));
        for (n, len) in pieces.iter().enumerate() {
            r.push(0x22 | x);
            r.extend(le16(index));
            r.push(n as u8);
            r.extend(le16(*len));
        }
        r
    };
    let range_op = |x: u8, op: u8, start: u16, len: u16, max: Option<u16>| {
        let mut r = vec![0x03 | op << 5 | x];
        r.extend(le16(start));
        r.extend(le16(len));
        if let Some(max) = max {
            r.extend(le16(max));
        }
        r
    };
    let put_op = |x: u8, first: u16, sizes: &[u16], steps: Option<&[u8]>| {
        let mut r = vec![if steps.is_some() { 0xc3 } else { 0xa3 } | x];
        r.extend(le16(first));
        r.push(sizes.len() as u8 - 1);
        for (k, size) in sizes.iter().enumerate() {
            r.extend(le16(*size));
            r.extend(steps.map(|s| s[k]));
        }
        r
    };
    let node_op = |x: u8, op: u8, indices: &[u16]| {
        let mut r = vec![0x03 | op << 5 | x];
        if op == 1 {
            r.push(indices.len() as u8 - 1);
        }
        for (k, i) in indices.iter().enumerate() {
            r.extend(le16(*i));
            if op == 1 {
                r.push(k as u8 + 1);
            }
        }
        r
    };
    for x in [0u8, 0x04 | 0x08] {
        out.push((
            "storage_rows",
            [
                node_row(x, 0, 0x0000_80ff, 7),
                node_row(x, 1, u32::MAX, 9),
                node_row(x ^ 0x04, 0, 0b1010, 3),
                node_op(x, 1, &[3, 40, 70]),
                node_op(x, 2, &[1]),
                node_op(x, 2, &[33]),
                node_op(x, 3, &[36]),
            ]
            .concat(),
        ));
        out.push((
            "storage_rows",
            [
                chunk(x, 0, 1, &[3, 0, 9, 20]),
                chunk(x, 4, 5, &[17, 1]),
                large(x, 6, &[1000, 500]),
                chunk(x ^ 0x04, 2, 8, &[4]),
                range_op(x, 0, 0, 20, Some(30)),
                put_op(x, 10, &[5, 0x8010], None),
                put_op(x, 30, &[4, 0, 2], Some(&[1, 2, 1])),
                range_op(x, 4, 2, 5, None),
                range_op(x, 0, 0, 40, Some(u16::MAX)),
                range_op(x, 4, 6, 1, None),
                vec![0xe3 | x],
            ]
            .concat(),
        ));
    }

    let header = CoreHeader {
        key: fx.key,
        kind: Some(CoreKind::Default),
        manifest: Some(fx.manifest.encode()),
        secret: Some([1; 32]),
        tree: fx.tree.clone(),
        contiguous_length: 12,
    };
    out.push(("storage_header", header.encode()));
    out.push((
        "storage_header",
        CoreHeader {
            kind: None,
            manifest: None,
            secret: None,
            tree: TreeState::default(),
            contiguous_length: 0,
            ..header
        }
        .encode(),
    ));
    // Scripts of a hostile node: honest, mutating every message, replaying what it heard on
    // other channels many times, and made-up messages with numbers at their limits.
    let script = |seed: u64, body: Vec<u8>| [seed.to_le_bytes().to_vec(), body].concat();
    out.push(("hostile_node", script(0, Vec::new())));
    out.push((
        "hostile_node",
        script(
            1,
            (0..1024u32)
                .map(|i| [4, 7, 3, 1, 0][i as usize % 5])
                .collect(),
        ),
    ));
    out.push((
        "hostile_node",
        script(
            2,
            (0..1024u32)
                .map(|i| [0x1d, 9, 5, 0][i as usize % 4])
                .collect(),
        ),
    ));
    let made_up = [
        Message::Sync(SyncInfo {
            fork: 0,
            length: u64::MAX,
            contiguous: u64::MAX,
            ask: true,
            downloading: true,
        }),
        Message::Want {
            start: 0,
            end: u64::MAX,
        },
        Message::RequestRun {
            id: u64::MAX,
            fork: 0,
            start: u64::MAX - 1,
            end: u64::MAX,
            length: u64::MAX,
        },
        Message::Data {
            id: 1 << 63,
            proof: Proof {
                fork: 0,
                block: None,
                hash: None,
                seek: None,
                upgrade: None,
                manifest: Some(vec![0xff; 64]),
            },
        },
    ];
    let mut body = Vec::new();
    for _ in 0..16 {
        for msg in &made_up {
            let encoded = postcard::to_allocvec(msg).expect("encodes");
            body.push(6);
            body.push(u8::try_from(encoded.len().div_ceil(2)).unwrap_or(u8::MAX));
            body.extend_from_slice(&encoded);
            body.extend(std::iter::repeat_n(0, encoded.len() % 2));
        }
    }
    out.push(("hostile_node", script(3, body)));
    out
}

//! One connection on Hypercore's own wire as the replication engine sees it: protomux
//! channels mapped to engine channels, and hypercore's messages translated to and from the
//! crate's [`Message`]s, so the engine that serves iroh peers serves JS peers too.
//!
//! Sans-IO: decrypted frames go in with [`WireConnection::on_frame`], the engine's outputs for
//! this peer with [`WireConnection::open`], [`send`](WireConnection::send) and
//! [`close`](WireConnection::close); what the engine is to hear comes out of
//! [`WireConnection::next_input`], and the frames to encrypt and write out of
//! [`WireConnection::frames`].
//!
//! # Channels
//!
//! protomux has no opener and acceptor: each side sends its own `open` of a core's channel,
//! with its capability, and the two pair up. We map that onto the engine's handshake: a
//! peer's `open` we did not ask for is the engine's `Open` on a new odd channel, and the
//! engine's `Accept` sends our `open`; the engine's `Open` sends our `open`, and the peer's
//! `open` for the same core is its `Accept`. A channel the engine refuses is rejected.
//!
//! # Messages
//!
//! - `sync` carries no contiguous length and no "answer me": the peer's contiguous prefix
//!   comes from its `range` messages, and our `Sync` goes with a `range` when ours grew. A
//!   peer's `sync` whose echo of our length is stale asks for ours. The engine never pushes to
//!   these peers (they pull on a `sync` that acknowledges their length, as JS writers do).
//! - hypercore has no run of blocks: the engine's `RequestRun` goes out as one `request` per
//!   block, each asking for the uncle levels a run's proof carries, and the answers go back
//!   to the engine in block order (a run's proofs verify in order). A block the peer lacks
//!   ends the run there.
//! - `want` asks for 2^21-block batches, as JS asks; `bitfield` answers become `Range`s.
//!
//! # Bounds
//!
//! A peer's channel ids grow one at a time up to [`MAX_CHANNELS`]; messages on a channel we
//! have not accepted yet are held up to [`MAX_PENDING_BYTES`] in all; a bitfield gives at most
//! [`MAX_BITFIELD_RANGES`] ranges. Past a bound, or on a malformed frame, the connection ends
//! (as JS ends it).

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::{
    compact::DecodeError,
    messages::{ChannelHandshake, HyperMessage, PROTOCOL, PROTOCOL_ALIAS, Sync},
    mux::{FrameBuilder, MuxMessage, decode_frame},
};
use crate::{
    crypto::DiscoveryKey,
    replication::{
        engine::{ChannelId, store_channel_discovery_key},
        wire::{Message, SyncInfo},
    },
    tree::{IndexRequest, Proof, ProofRequest, run_proof_levels},
};

/// Most channels a peer may have opened on one connection (open or closed).
pub const MAX_CHANNELS: usize = 8192;
/// Bytes of messages held for channels the engine has not accepted yet.
pub const MAX_PENDING_BYTES: usize = 256 * 1024;
/// Channels the peer opened that the engine is deciding on at once; the others wait here in
/// order (a JS Corestore opens all its cores' channels at once, and never again after a
/// refusal).
pub const MAX_OFFERED: usize = 32;
/// Inputs for the engine one read of frames may make; past it the connection ends (an
/// honest peer's frame of 1 KiB blocks makes one per block).
pub const MAX_INPUTS: usize = 65536;
/// Bytes of frames to the peer that one read of its frames may queue (rejects, cancels).
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;
/// Bytes of run answers held until the ones before them come, over a connection's channels;
/// past it a run ends where it is, and is asked again.
pub const MAX_RUN_HELD: usize = 16 * 1024 * 1024;
/// Requests of ours on the wire unanswered, over all channels: the engine's runs go out as
/// one request per block, and a peer that serves a bounded queue (this crate does) refuses
/// what comes past it.
pub const MAX_IN_FLIGHT: usize = 64;
/// Requests of ours a channel remembers unanswered (the engine gives up on some without a
/// `Cancel`); the oldest proof requests go first past it.
const MAX_ASKED: usize = 8192;
/// Most ranges one `bitfield` message becomes.
pub const MAX_BITFIELD_RANGES: usize = 256;
/// The batch of blocks hypercore's `want` names.
const WANT_BATCH: u64 = 1 << 21;
/// Distinct batches wanted per channel (JS keeps 512 per peer).
const MAX_WANTS: usize = 512;
/// Frames are gathered up to this size.
const FRAME_BYTES: usize = 64 * 1024;

/// Why a connection ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// A frame or message did not decode.
    #[error("malformed frame: {0}")]
    Malformed(#[from] DecodeError),
    /// The peer broke protomux's rules.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
}

/// What the engine is to hear from this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // Handed on at once, as the engine's `Input` is.
pub enum WireInput {
    /// A message on a channel (the first of a channel the peer opened is `Open`).
    Message(ChannelId, Message),
    /// A channel ended.
    Closed(ChannelId),
}

/// A slot of the peer's channel ids.
#[derive(Debug)]
enum Remote {
    Free,
    /// Opened by the peer, waiting for the engine's answer.
    Pending(Pending),
    /// Paired with our channel (our id).
    Bound(u64),
}

#[derive(Debug)]
struct Pending {
    /// Its engine channel, once offered to the engine.
    engine: Option<ChannelId>,
    discovery_key: DiscoveryKey,
    capability: [u8; 32],
    /// Messages that came before the engine accepted: (type, body).
    held: Vec<(u64, Vec<u8>)>,
    /// The peer closed it meanwhile.
    closed: bool,
}

/// One of our channel ids.
#[derive(Debug)]
struct Local {
    engine: ChannelId,
    /// The peer's id once its `open` paired with ours.
    remote: Option<u64>,
    /// Closed before the peer's `open` came: the id stays taken until it does.
    closed: bool,
    state: ChannelState,
}

/// Where an engine channel is.
#[derive(Debug, Clone, Copy)]
enum Route {
    Local(u64),
    Pending(u64),
    /// The engine's own open of a core whose channel the peer opened too, while the engine
    /// decides on the peer's (by its id): whichever the engine keeps is the channel.
    Deferred(u64),
}

/// A request of ours on a channel.
#[derive(Debug, Clone, Copy)]
enum Asked {
    /// A proof request of the engine, by its id.
    Proof(u64),
    /// Block `index` of the engine's run `run`.
    Block { run: u64, index: u64 },
}

/// A run of the engine, asked for block by block.
#[derive(Debug)]
struct Run {
    end: u64,
    /// The next block to hand the engine.
    next: u64,
    /// Answers that came before their turn.
    held: BTreeMap<u64, Proof>,
    /// The first block the peer said it lacks.
    missing_from: Option<u64>,
    /// Our request id of each block still unanswered.
    asked: BTreeMap<u64, u64>,
}

/// The requests of one run of the engine waiting to go out.
#[derive(Debug)]
struct Queued {
    /// Our channel.
    local: u64,
    /// The engine's run.
    run: u64,
    /// Our request ids and requests, in block order.
    requests: VecDeque<(u64, HyperMessage)>,
}

/// What one channel's translation remembers.
#[derive(Debug, Default)]
struct ChannelState {
    /// Our last `sync`.
    sent: Option<(u64, u64)>,
    sent_contiguous: u64,
    /// The peer's last `sync`.
    theirs: Option<Sync>,
    /// The peer's fork and length as our last `sync` acknowledged them.
    acked: Option<(u64, u64)>,
    their_contiguous: u64,
    next_request: u64,
    asked: HashMap<u64, Asked>,
    /// Those of `asked` sent (the others wait in the connection's outbox).
    on_wire: std::collections::HashSet<u64>,
    /// Our request id of each engine proof request.
    proof_ids: HashMap<u64, u64>,
    runs: HashMap<u64, Run>,
    /// Block bytes held in `runs` out of their turn.
    run_held: usize,
    wants: std::collections::BTreeSet<u64>,
    last_extension: Option<String>,
}

/// One connection; see the module docs.
#[derive(Debug)]
pub struct WireConnection {
    locals: Vec<Option<Local>>,
    free: Vec<u64>,
    remotes: Vec<Remote>,
    routes: HashMap<ChannelId, Route>,
    /// Our ids opened and not yet paired, per core.
    outgoing: HashMap<DiscoveryKey, VecDeque<u64>>,
    next_engine: ChannelId,
    /// Peer-opened channels offered to the engine and not answered yet.
    offered: usize,
    /// The engine's opens deferred while it decides on the peer's channel of the same core
    /// (by the peer's id): our channel and capability.
    deferred: HashMap<u64, (ChannelId, [u8; 32])>,
    /// Peer-opened channels waiting to be offered, in order (their ids).
    waiting: VecDeque<u64>,
    held_bytes: usize,
    /// Block requests waiting for room among [`MAX_IN_FLIGHT`], one queue per run, taken
    /// from in turn: every run makes progress (the engine gives each a deadline).
    outbox: VecDeque<Queued>,
    /// Requests sent and not answered, over all channels.
    in_flight: usize,
    /// Bytes of run answers held out of their turn, over all channels.
    run_held: usize,
    frames: FrameBuilder,
    inputs: VecDeque<WireInput>,
}

impl WireConnection {
    /// A connection whose peer-opened channels get engine ids from `first_channel` (odd), by
    /// steps of 2.
    pub fn new(first_channel: ChannelId) -> Self {
        Self {
            locals: Vec::new(),
            free: Vec::new(),
            remotes: Vec::new(),
            routes: HashMap::new(),
            outgoing: HashMap::new(),
            next_engine: first_channel | 1,
            offered: 0,
            deferred: HashMap::new(),
            waiting: VecDeque::new(),
            held_bytes: 0,
            outbox: VecDeque::new(),
            in_flight: 0,
            run_held: 0,
            frames: FrameBuilder::default(),
            inputs: VecDeque::new(),
        }
    }

    /// The next thing the engine is to hear.
    pub fn next_input(&mut self) -> Option<WireInput> {
        let next = self.inputs.pop_front();
        if next.is_none() && self.inputs.capacity() > 1024 {
            self.inputs = VecDeque::new();
        }
        next
    }

    /// The frames queued, to encrypt and write in order.
    pub fn frames(&mut self) -> Vec<Vec<u8>> {
        if self.frames.is_empty() {
            return Vec::new();
        }
        self.frames.frames(FRAME_BYTES)
    }

    /// Whether `channel` is one of this connection's.
    pub fn has(&self, channel: ChannelId) -> bool {
        self.routes.contains_key(&channel)
    }

    /// The engine channels of this connection.
    pub fn channels(&self) -> Vec<ChannelId> {
        self.routes.keys().copied().collect()
    }

    // From the engine.

    /// The engine opens `channel` with `first` (its `Open`).
    pub fn open(&mut self, channel: ChannelId, first: &Message) {
        let Message::Open {
            discovery_key,
            capability,
        } = first
        else {
            return;
        };
        let refuse = |reason: &str| Message::Close {
            reason: reason.into(),
        };
        if *discovery_key == store_channel_discovery_key() {
            let close = refuse("no store channel on this wire");
            self.inputs.push_back(WireInput::Message(channel, close));
            return;
        }
        // A channel of the peer's for this core that it closed before we answered: our open
        // is what frees its id there (JS takes it as the answer, and pairs nothing), so it is
        // done with here too.
        let closed = self
            .remotes
            .iter()
            .enumerate()
            .find_map(|(slot, r)| match r {
                Remote::Pending(p) if p.discovery_key == *discovery_key && p.closed => {
                    Some((slot as u64 + 1, p.engine))
                }
                _ => None,
            });
        if let Some((rid, offered)) = closed {
            self.waiting.retain(|w| *w != rid);
            if let Some(odd) = offered {
                self.routes.remove(&odd);
                let before = self.inputs.len();
                self.inputs.retain(
                    |i| !matches!(i, WireInput::Message(c, Message::Open { .. }) if *c == odd),
                );
                if self.inputs.len() == before {
                    self.inputs.push_back(WireInput::Closed(odd));
                }
            }
            self.drop_pending(rid);
        }
        // The peer opened this core's channel first. If the engine has not heard of it yet,
        // the engine's open is our answer to it (protomux pairs the two opens into one
        // channel); if it has, that is the channel, and this one is refused.
        let pending = self
            .remotes
            .iter()
            .enumerate()
            .find_map(|(slot, r)| match r {
                Remote::Pending(p) if p.discovery_key == *discovery_key && !p.closed => {
                    Some((slot as u64 + 1, p.engine))
                }
                _ => None,
            });
        if let Some((rid, offered)) = pending {
            let unheard = match offered {
                None => true,
                Some(odd) => {
                    let before = self.inputs.len();
                    self.inputs.retain(
                        |i| !matches!(i, WireInput::Message(c, Message::Open { .. }) if *c == odd),
                    );
                    self.inputs.len() != before
                }
            };
            tracing::trace!(channel, rid, unheard, "wire: our open meets the peer's");
            if !unheard {
                // The engine holds both and keeps one (its own, if it refuses the peer's).
                self.deferred.insert(rid, (channel, *capability));
                self.routes.insert(channel, Route::Deferred(rid));
                return;
            }
            if let Some(odd) = offered {
                self.routes.remove(&odd);
            } else {
                self.waiting.retain(|w| *w != rid);
            }
            let before = self.inputs.len();
            if let Some(theirs) = self.pair(channel, rid, capability) {
                let accept = Message::Accept { capability: theirs };
                // The engine hears its `Accept` before anything the channel carried.
                self.inputs
                    .insert(before, WireInput::Message(channel, accept));
            }
            self.offer_waiting();
            return;
        }
        tracing::trace!(channel, "wire: our open");
        let id = self.allocate(Local {
            engine: channel,
            remote: None,
            closed: false,
            state: ChannelState::default(),
        });
        self.outgoing
            .entry(*discovery_key)
            .or_default()
            .push_back(id);
        self.routes.insert(channel, Route::Local(id));
        self.send_open(id, discovery_key, capability);
    }

    /// The engine sends `msg` on `channel`.
    pub fn send(&mut self, channel: ChannelId, msg: Message) {
        match self.routes.get(&channel).copied() {
            Some(Route::Pending(rid)) => match msg {
                Message::Accept { capability } => {
                    self.accept(channel, rid, &capability);
                    // The engine kept the peer's channel: its own open of the core is over.
                    if let Some((ours, _)) = self.deferred.remove(&rid) {
                        self.routes.remove(&ours);
                        let close = Message::Close {
                            reason: "duplicate channel".into(),
                        };
                        self.inputs.push_back(WireInput::Message(ours, close));
                    }
                }
                Message::Close { .. } => self.close(channel),
                _ => {}
            },
            Some(Route::Deferred(_)) => {}
            Some(Route::Local(id)) => match msg {
                Message::Close { .. } => self.close(channel),
                Message::Open { .. } | Message::Accept { .. } | Message::Push { .. } => {}
                msg => self.translate_out(id, msg),
            },
            None => {}
        }
    }

    /// The engine closes `channel`.
    pub fn close(&mut self, channel: ChannelId) {
        tracing::trace!(channel, "wire: the engine closes");
        match self.routes.remove(&channel) {
            Some(Route::Pending(rid)) => {
                if let Some((ours, capability)) = self.deferred.remove(&rid) {
                    // The engine refused the peer's channel and keeps its own: the peer's
                    // open answers ours.
                    if let Some(Remote::Pending(p)) = rid
                        .checked_sub(1)
                        .and_then(|s| self.remotes.get_mut(s as usize))
                    {
                        p.engine = None;
                        self.offered -= 1;
                    }
                    let before = self.inputs.len();
                    if let Some(theirs) = self.pair(ours, rid, &capability) {
                        let accept = Message::Accept { capability: theirs };
                        self.inputs.insert(before, WireInput::Message(ours, accept));
                    }
                } else {
                    self.drop_pending(rid);
                    self.frames.reject(rid);
                }
                self.offer_waiting();
            }
            Some(Route::Deferred(rid)) => {
                self.deferred.remove(&rid);
            }
            Some(Route::Local(id)) => {
                let Some(local) = self.local_mut(id) else {
                    return;
                };
                if local.closed {
                    return;
                }
                local.closed = true;
                let remote = local.remote;
                self.frames.close(id);
                if let Some(rid) = remote {
                    self.set_remote(rid, Remote::Free);
                    self.release(id);
                }
            }
            None => {}
        }
    }

    fn send_open(&mut self, id: u64, discovery_key: &DiscoveryKey, capability: &[u8; 32]) {
        let mut handshake = Vec::with_capacity(33);
        ChannelHandshake {
            seeks: true,
            capability: *capability,
        }
        .encode(&mut handshake);
        self.frames.open(id, PROTOCOL, discovery_key, &handshake);
    }

    /// The engine accepted the peer's channel `rid`: our `open` pairs with it, and what it
    /// sent meanwhile is heard.
    fn accept(&mut self, channel: ChannelId, rid: u64, capability: &[u8; 32]) {
        self.pair(channel, rid, capability);
        self.offer_waiting();
    }

    /// Pairs the peer's pending channel `rid` with the engine's `channel`: our `open` (with
    /// `capability`) goes out, and what the peer sent on it meanwhile is heard. Returns the
    /// peer's capability, unless the peer closed the channel meanwhile.
    fn pair(&mut self, channel: ChannelId, rid: u64, capability: &[u8; 32]) -> Option<[u8; 32]> {
        let Some(Remote::Pending(p)) = self.take_remote(rid) else {
            return None;
        };
        self.held_bytes -= p.held.iter().map(|(_, b)| b.len() + 16).sum::<usize>();
        if p.engine.is_some() {
            self.offered -= 1;
        }
        let id = self.allocate(Local {
            engine: channel,
            remote: Some(rid),
            closed: false,
            state: ChannelState::default(),
        });
        self.send_open(id, &p.discovery_key, capability);
        if p.closed {
            // The peer gave the channel up before we answered: our `open` frees its id there.
            self.routes.remove(&channel);
            self.release(id);
            self.inputs.push_back(WireInput::Closed(channel));
            return None;
        }
        self.set_remote(rid, Remote::Bound(id));
        self.routes.insert(channel, Route::Local(id));
        for (kind, body) in p.held {
            // The bytes were not decoded yet; a malformed one ends nothing here but is
            // dropped (the connection would have ended had it come after the pairing).
            if let Ok(Some(msg)) = HyperMessage::decode(kind, &body) {
                self.translate_in(id, msg);
            }
        }
        Some(p.capability)
    }

    // From the peer.

    /// Takes one decrypted frame. After an error the connection is to end.
    pub fn on_frame(&mut self, frame: &[u8]) -> Result<(), ConnectionError> {
        decode_frame(frame, &mut |m| {
            // What a frame makes (inputs for the engine, rejects and cancels for the peer) is
            // bounded: a frame of broken opens must not queue millions of rejects.
            if self.inputs.len() >= MAX_INPUTS || self.frames.queued() >= MAX_REPLY_BYTES {
                return Err(ConnectionError::Protocol("too many messages at once"));
            }
            self.on_mux(m)
        })
    }

    fn on_mux(&mut self, m: MuxMessage<'_>) -> Result<(), ConnectionError> {
        match m {
            MuxMessage::Open {
                channel,
                protocol,
                id,
                handshake,
            } => self.on_open(channel, protocol, id, handshake),
            MuxMessage::Reject { channel } => self.on_reject(channel),
            MuxMessage::Close { channel } => {
                self.on_close(channel);
                Ok(())
            }
            MuxMessage::Message {
                channel,
                kind,
                body,
            } => self.on_message(channel, kind, body),
        }
    }

    fn on_open(
        &mut self,
        rid: u64,
        protocol: &str,
        id: &[u8],
        handshake: &[u8],
    ) -> Result<(), ConnectionError> {
        let slot = rid
            .checked_sub(1)
            .and_then(|s| usize::try_from(s).ok())
            .unwrap_or(usize::MAX);
        if slot > self.remotes.len() || slot >= MAX_CHANNELS {
            return Err(ConnectionError::Protocol(
                "open of a channel id out of order",
            ));
        }
        if slot == self.remotes.len() {
            self.remotes.push(Remote::Free);
        } else if !matches!(self.remotes[slot], Remote::Free) {
            return Err(ConnectionError::Protocol("open of a channel id in use"));
        }
        let Ok(discovery_key) = <[u8; 32]>::try_from(id) else {
            self.frames.reject(rid);
            return Ok(());
        };
        // The crate's own store channel has a public key: not on this wire.
        if (protocol != PROTOCOL && protocol != PROTOCOL_ALIAS)
            || discovery_key == store_channel_discovery_key()
        {
            self.frames.reject(rid);
            return Ok(());
        }
        let handshake = ChannelHandshake::decode(handshake)?;
        if let Some(ours) = self
            .outgoing
            .get_mut(&discovery_key)
            .and_then(VecDeque::pop_front)
        {
            let Some(local) = self.local_mut(ours) else {
                return Ok(());
            };
            if local.closed {
                // We closed it before this came: both ids are done with.
                self.release(ours);
                return Ok(());
            }
            local.remote = Some(rid);
            let engine = local.engine;
            tracing::trace!(engine, rid, "wire: the peer's open answers ours");
            self.remotes[slot] = Remote::Bound(ours);
            self.inputs.push_back(WireInput::Message(
                engine,
                Message::Accept {
                    capability: handshake.capability,
                },
            ));
            return Ok(());
        }
        self.remotes[slot] = Remote::Pending(Pending {
            engine: None,
            discovery_key,
            capability: handshake.capability,
            held: Vec::new(),
            closed: false,
        });
        self.waiting.push_back(rid);
        self.offer_waiting();
        Ok(())
    }

    /// Offers the engine the peer's waiting channels while it decides on fewer than
    /// [`MAX_OFFERED`].
    fn offer_waiting(&mut self) {
        while self.offered < MAX_OFFERED
            && let Some(rid) = self.waiting.pop_front()
        {
            let engine = self.next_engine;
            let Some(Remote::Pending(p)) = rid
                .checked_sub(1)
                .and_then(|s| self.remotes.get_mut(s as usize))
            else {
                continue;
            };
            if p.closed {
                // Given up before its turn: the reject frees its id at the peer.
                self.drop_pending(rid);
                self.frames.reject(rid);
                continue;
            }
            p.engine = Some(engine);
            tracing::trace!(engine, rid, "wire: the peer's open offered");
            let open = Message::Open {
                discovery_key: p.discovery_key,
                capability: p.capability,
            };
            self.next_engine += 2;
            self.offered += 1;
            self.routes.insert(engine, Route::Pending(rid));
            self.inputs.push_back(WireInput::Message(engine, open));
        }
    }

    /// Forgets the peer's pending channel `rid` (and what it held).
    fn drop_pending(&mut self, rid: u64) {
        if let Some(Remote::Pending(p)) = self.take_remote(rid) {
            self.held_bytes -= p.held.iter().map(|(_, b)| b.len() + 16).sum::<usize>();
            if p.engine.is_some() {
                self.offered -= 1;
            }
        }
    }

    fn on_reject(&mut self, id: u64) -> Result<(), ConnectionError> {
        tracing::trace!(id, "wire: rejected");
        let found = self.outgoing.values_mut().any(|q| {
            let before = q.len();
            q.retain(|x| *x != id);
            q.len() != before
        });
        if !found {
            return Err(ConnectionError::Protocol("reject of a channel not opened"));
        }
        if let Some(local) = self.local_mut(id) {
            let (engine, closed) = (local.engine, local.closed);
            if !closed {
                self.routes.remove(&engine);
                let close = Message::Close {
                    reason: "rejected".into(),
                };
                self.inputs.push_back(WireInput::Message(engine, close));
            }
        }
        self.release(id);
        Ok(())
    }

    fn on_close(&mut self, rid: u64) {
        tracing::trace!(rid, "wire: the peer closed");
        let Some(slot) = rid.checked_sub(1).and_then(|s| usize::try_from(s).ok()) else {
            return;
        };
        match self.remotes.get_mut(slot) {
            Some(Remote::Pending(p)) => p.closed = true,
            Some(Remote::Bound(id)) => {
                let id = *id;
                self.remotes[slot] = Remote::Free;
                if let Some(local) = self.local_mut(id) {
                    let (engine, closed) = (local.engine, local.closed);
                    if !closed {
                        self.routes.remove(&engine);
                        self.inputs.push_back(WireInput::Closed(engine));
                    }
                }
                self.release(id);
            }
            _ => {}
        }
    }

    fn on_message(&mut self, rid: u64, kind: u64, body: &[u8]) -> Result<(), ConnectionError> {
        let Some(slot) = rid.checked_sub(1).and_then(|s| usize::try_from(s).ok()) else {
            return Ok(());
        };
        match self.remotes.get_mut(slot) {
            Some(Remote::Pending(p)) => {
                if self.held_bytes + body.len() + 16 > MAX_PENDING_BYTES {
                    return Err(ConnectionError::Protocol(
                        "too many messages on channels not open yet",
                    ));
                }
                self.held_bytes += body.len() + 16;
                p.held.push((kind, body.to_vec()));
                Ok(())
            }
            Some(Remote::Bound(id)) => {
                let id = *id;
                if let Some(msg) = HyperMessage::decode(kind, body)? {
                    self.translate_in(id, msg);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    // Channel ids.

    fn allocate(&mut self, local: Local) -> u64 {
        if let Some(id) = self.free.pop() {
            self.locals[(id - 1) as usize] = Some(local);
            return id;
        }
        self.locals.push(Some(local));
        self.locals.len() as u64
    }

    fn release(&mut self, id: u64) {
        if let Some(slot) = self.locals.get_mut((id - 1) as usize)
            && let Some(local) = slot.take()
        {
            self.in_flight = self.in_flight.saturating_sub(local.state.on_wire.len());
            self.run_held = self.run_held.saturating_sub(local.state.run_held);
            // Its waiting requests go with it (a channel that takes the id later numbers its
            // requests afresh).
            self.outbox.retain(|q| q.local != id);
            self.free.push(id);
            self.pump();
        }
    }

    /// Sends waiting block requests while fewer than [`MAX_IN_FLIGHT`] are unanswered.
    fn pump(&mut self) {
        while self.in_flight < MAX_IN_FLIGHT
            && let Some(mut queued) = self.outbox.pop_front()
        {
            let local = queued.local;
            let Some((ours, msg)) = queued.requests.pop_front() else {
                continue;
            };
            if !queued.requests.is_empty() {
                self.outbox.push_back(queued);
            }
            let Some(l) = self.local_mut(local) else {
                continue;
            };
            // A request cancelled while it waited.
            if l.closed || !l.state.asked.contains_key(&ours) || !l.state.on_wire.insert(ours) {
                continue;
            }
            self.in_flight += 1;
            self.frames.message(local, msg.kind(), |w| msg.encode(w));
        }
    }

    fn local_mut(&mut self, id: u64) -> Option<&mut Local> {
        self.locals.get_mut(id.checked_sub(1)? as usize)?.as_mut()
    }

    fn take_remote(&mut self, rid: u64) -> Option<Remote> {
        let slot = self.remotes.get_mut(rid.checked_sub(1)? as usize)?;
        Some(std::mem::replace(slot, Remote::Free))
    }

    fn set_remote(&mut self, rid: u64, r: Remote) {
        if let Some(slot) = rid
            .checked_sub(1)
            .and_then(|s| self.remotes.get_mut(s as usize))
        {
            *slot = r;
        }
    }

    // Translation.

    /// One of the engine's messages on our channel `id`, in hypercore's terms.
    fn translate_out(&mut self, id: u64, msg: Message) {
        let Some(local) = self.local_mut(id) else {
            return;
        };
        if local.closed || local.remote.is_none() {
            return;
        }
        let engine = local.engine;
        let st = &mut local.state;
        let held_before = st.run_held;
        let mut out: Vec<HyperMessage> = Vec::new();
        let mut echo = None;
        // Requests sent now and answered-by-cancel now, for `in_flight`; block requests
        // queued for the outbox.
        let (mut sent_now, mut freed) = (0usize, 0usize);
        let mut queued = Vec::new();
        let (mut new_run, mut cancelled_run) = (None, None);
        match msg {
            Message::Sync(info) => {
                let theirs = st.theirs.filter(|t| t.fork == info.fork);
                let their_length = theirs.map_or(0, |t| t.length);
                // Before the peer's state is known, hypercore assumes it can be upgraded.
                let can_upgrade = match st.theirs {
                    None => info.length > 0,
                    Some(_) => theirs.is_some() && info.length > their_length,
                };
                st.acked = st.theirs.map(|t| (t.fork, t.length));
                out.push(HyperMessage::Sync(Sync {
                    fork: info.fork,
                    length: info.length,
                    remote_length: their_length,
                    can_upgrade,
                    uploading: true,
                    downloading: true,
                    has_manifest: info.length > 0,
                    allow_push: false,
                }));
                let fork_changed = st.sent.is_some_and(|(f, _)| f != info.fork);
                if info.contiguous > 0 && (info.contiguous > st.sent_contiguous || fork_changed) {
                    out.push(HyperMessage::Range {
                        drop: false,
                        start: 0,
                        length: info.contiguous,
                    });
                }
                st.sent = Some((info.fork, info.length));
                st.sent_contiguous = info.contiguous;
                // hypercore answers a `sync` only when it is ahead; it says every change of
                // its own unasked, so its last state is the answer.
                if info.ask
                    && let Some(t) = st.theirs
                {
                    echo = Some(their_sync(t, st.their_contiguous, false));
                }
            }
            Message::Request {
                id: rq,
                mut request,
            } => {
                // hypercore's request names the fork the responder is on (an upgrade to a new
                // fork is asked on it).
                if request.upgrade.is_some()
                    && let Some(t) = st.theirs
                {
                    request.fork = t.fork;
                }
                if st.asked.len() >= MAX_ASKED
                    && let Some(oldest) = st
                        .asked
                        .iter()
                        .filter(|(_, a)| matches!(a, Asked::Proof(_)))
                        .map(|(id, _)| *id)
                        .min()
                    && let Some(Asked::Proof(old)) = st.asked.remove(&oldest)
                {
                    st.proof_ids.remove(&old);
                    // Given up on: off the wire, and the peer told.
                    if st.on_wire.remove(&oldest) {
                        freed += 1;
                        out.push(HyperMessage::Cancel { request: oldest });
                    }
                }
                let ours = next_id(st);
                st.asked.insert(ours, Asked::Proof(rq));
                st.proof_ids.insert(rq, ours);
                st.on_wire.insert(ours);
                sent_now += 1;
                out.push(HyperMessage::Request {
                    id: ours,
                    request,
                    seek_padding: 0,
                    priority: 0,
                });
            }
            Message::RequestRun {
                id: run,
                fork,
                start,
                end,
                length,
            } => {
                if start >= end || end > length {
                    return;
                }
                let mut asked = BTreeMap::new();
                for index in start..end {
                    let ours = next_id(st);
                    st.asked.insert(ours, Asked::Block { run, index });
                    asked.insert(index, ours);
                    queued.push((
                        ours,
                        HyperMessage::Request {
                            id: ours,
                            request: ProofRequest {
                                fork,
                                block: Some(IndexRequest {
                                    index,
                                    nodes: run_proof_levels(start, index, length),
                                }),
                                ..Default::default()
                            },
                            seek_padding: 0,
                            priority: 0,
                        },
                    ));
                }
                new_run = Some(run);
                st.runs.insert(
                    run,
                    Run {
                        end,
                        next: start,
                        held: BTreeMap::new(),
                        missing_from: None,
                        asked,
                    },
                );
            }
            Message::Cancel { id: rq } => {
                if let Some(run) = st.runs.remove(&rq) {
                    cancelled_run = Some(rq);
                    for proof in run.held.values() {
                        let size = proof.block.as_ref().map_or(0, |b| b.value.len());
                        st.run_held = st.run_held.saturating_sub(size);
                    }
                    for ours in run.asked.into_values() {
                        st.asked.remove(&ours);
                        // One still waiting in the outbox is dropped there.
                        if st.on_wire.remove(&ours) {
                            freed += 1;
                            out.push(HyperMessage::Cancel { request: ours });
                        }
                    }
                } else if let Some(ours) = st.proof_ids.remove(&rq) {
                    st.asked.remove(&ours);
                    if st.on_wire.remove(&ours) {
                        freed += 1;
                        out.push(HyperMessage::Cancel { request: ours });
                    }
                }
            }
            Message::Data { id: rq, proof } => out.push(HyperMessage::Data { request: rq, proof }),
            // No reason: JS counts "not available" answers against the peer, and ours include
            // requests refused for a full queue, which says nothing about the peer.
            Message::NoData { id: rq, .. } => out.push(HyperMessage::NoData {
                request: rq,
                reason: None,
            }),
            Message::Want { start, end } => {
                let first = start / WANT_BATCH;
                let last = end.saturating_sub(1) / WANT_BATCH;
                for batch in (first..=last).take(4) {
                    if st.wants.len() < MAX_WANTS && st.wants.insert(batch) {
                        out.push(HyperMessage::Want {
                            start: batch * WANT_BATCH,
                            length: WANT_BATCH,
                            any: false,
                        });
                    }
                }
            }
            Message::Range { start, end } if end > start => out.push(HyperMessage::Range {
                drop: false,
                start,
                length: end - start,
            }),
            Message::Extension { name, payload } => out.push(HyperMessage::Extension {
                name,
                message: payload,
            }),
            _ => {}
        }
        let held_after = st.run_held;
        for m in out {
            self.frames.message(id, m.kind(), |w| m.encode(w));
        }
        self.run_held = self.run_held.saturating_sub(held_before) + held_after;
        self.in_flight = (self.in_flight + sent_now).saturating_sub(freed);
        if let Some(run) = cancelled_run {
            self.outbox.retain(|q| !(q.local == id && q.run == run));
        }
        if let Some(run) = new_run {
            self.outbox.push_back(Queued {
                local: id,
                run,
                requests: queued.into(),
            });
        }
        self.pump();
        if let Some(sync) = echo {
            self.inputs
                .push_back(WireInput::Message(engine, Message::Sync(sync)));
        }
    }

    /// One of the peer's messages on our channel `id`, in the engine's terms.
    fn translate_in(&mut self, id: u64, msg: HyperMessage) {
        let conn_held = self.run_held;
        let Some(local) = self.local_mut(id) else {
            return;
        };
        if local.closed {
            return;
        }
        let engine = local.engine;
        let st = &mut local.state;
        // What the connection's other channels hold out of turn.
        let others = conn_held.saturating_sub(st.run_held);
        let mut out: Vec<Message> = Vec::new();
        let mut cancels = Vec::new();
        // An answer frees its place among the requests in flight.
        let freed = usize::from(matches!(
            &msg,
            HyperMessage::Data { request, .. } | HyperMessage::NoData { request, .. }
                if st.on_wire.contains(request)
        ));
        match msg {
            HyperMessage::Sync(s) => {
                if st.theirs.is_some_and(|t| t.fork != s.fork) {
                    st.their_contiguous = 0;
                }
                st.theirs = Some(s);
                // Answered when the peer's view of us is stale, or ours of it was: hypercore
                // asks for an upgrade only once a `sync` acknowledges its length.
                let stale = st
                    .sent
                    .is_some_and(|(fork, length)| s.fork != fork || s.remote_length != length)
                    || st.acked != Some((s.fork, s.length));
                out.push(Message::Sync(their_sync(s, st.their_contiguous, stale)));
            }
            HyperMessage::Range {
                drop,
                start,
                length,
            } => {
                let Some(end) = start.checked_add(length) else {
                    return;
                };
                if drop {
                    if start < st.their_contiguous {
                        st.their_contiguous = start;
                    }
                } else if end > start {
                    if start == 0 {
                        st.their_contiguous = st.their_contiguous.max(end);
                    }
                    out.push(Message::Range { start, end });
                }
            }
            HyperMessage::Bitfield { start, words } => {
                if start % 32 == 0 {
                    for (s, e) in bitfield_ranges(start, &words) {
                        out.push(Message::Range { start: s, end: e });
                    }
                }
            }
            HyperMessage::Request {
                id: rq, request, ..
            } => out.push(Message::Request { id: rq, request }),
            HyperMessage::Cancel { request } => out.push(Message::Cancel { id: request }),
            // An answer to a request not sent (or already answered) is nobody's.
            HyperMessage::Data { request, .. } | HyperMessage::NoData { request, .. }
                if !st.on_wire.remove(&request) => {}
            HyperMessage::Data { request, proof } => match st.asked.remove(&request) {
                Some(Asked::Proof(rq)) => {
                    st.proof_ids.remove(&rq);
                    out.push(Message::Data { id: rq, proof });
                }
                Some(Asked::Block { run, index }) => {
                    let size = proof.block.as_ref().map_or(0, |b| b.value.len());
                    if let Some(r) = st.runs.get_mut(&run) {
                        r.asked.remove(&index);
                        if index != r.next && others + st.run_held + size > MAX_RUN_HELD {
                            // Too much waits for a block that does not come: the run ends
                            // there, and the engine asks again.
                            r.missing_from = Some(r.next);
                        } else {
                            st.run_held += size;
                            r.held.insert(index, proof);
                        }
                    }
                    drain_run(st, run, &mut out, &mut cancels);
                }
                None => {}
            },
            HyperMessage::NoData { request, .. } => match st.asked.remove(&request) {
                Some(Asked::Proof(rq)) => {
                    st.proof_ids.remove(&rq);
                    out.push(Message::NoData {
                        id: rq,
                        start: 0,
                        end: 0,
                    });
                }
                Some(Asked::Block { run, index }) => {
                    if let Some(r) = st.runs.get_mut(&run) {
                        r.asked.remove(&index);
                        r.missing_from = Some(r.missing_from.map_or(index, |m| m.min(index)));
                    }
                    drain_run(st, run, &mut out, &mut cancels);
                }
                None => {}
            },
            HyperMessage::Want { start, length, .. } => {
                let end = start.saturating_add(length.min(WANT_BATCH));
                out.push(Message::Want { start, end });
            }
            HyperMessage::Unwant { start, length, .. } => {
                let end = start.saturating_add(length.min(WANT_BATCH));
                out.push(Message::Unwant { start, end });
            }
            HyperMessage::Extension { name, message } => {
                let name = if name.is_empty() {
                    match &st.last_extension {
                        Some(n) => n.clone(),
                        None => return,
                    }
                } else {
                    st.last_extension = Some(name.clone());
                    name
                };
                out.push(Message::Extension {
                    name,
                    payload: message,
                });
            }
        }
        self.run_held = others + st.run_held;
        self.inputs
            .extend(out.into_iter().map(|m| WireInput::Message(engine, m)));
        // The rest of a run that ended: cancelled, and off the wire.
        let freed = freed + cancels.len();
        for request in cancels {
            let m = HyperMessage::Cancel { request };
            self.frames.message(id, m.kind(), |w| m.encode(w));
        }
        self.in_flight = self.in_flight.saturating_sub(freed);
        self.pump();
    }
}

/// The engine's view of a peer's `sync`: contiguous from its ranges, never pushed to.
fn their_sync(s: Sync, contiguous: u64, ask: bool) -> SyncInfo {
    SyncInfo {
        fork: s.fork,
        length: s.length,
        contiguous: contiguous.min(s.length),
        ask,
        downloading: false,
    }
}

fn next_id(st: &mut ChannelState) -> u64 {
    st.next_request += 1;
    st.next_request
}

/// Hands the engine what of run `run` is in order: each proof in turn, and, once the peer
/// said it lacks a block and everything before it was handed on, `NoData` for the rest (and
/// our requests for the rest go in `cancels`).
fn drain_run(st: &mut ChannelState, run: u64, out: &mut Vec<Message>, cancels: &mut Vec<u64>) {
    let Some(r) = st.runs.get_mut(&run) else {
        return;
    };
    let stop = r.missing_from.unwrap_or(r.end);
    while r.next < stop
        && let Some(proof) = r.held.remove(&r.next)
    {
        let size = proof.block.as_ref().map_or(0, |b| b.value.len());
        out.push(Message::Data { id: run, proof });
        r.next += 1;
        st.run_held = st.run_held.saturating_sub(size);
    }
    if r.next == stop {
        for proof in std::mem::take(&mut r.held).into_values() {
            let size = proof.block.as_ref().map_or(0, |b| b.value.len());
            st.run_held = st.run_held.saturating_sub(size);
        }
        if stop < r.end {
            out.push(Message::NoData {
                id: run,
                start: stop,
                end: r.end,
            });
            for ours in r.asked.values() {
                st.asked.remove(ours);
                if st.on_wire.remove(ours) {
                    cancels.push(*ours);
                }
            }
        }
        st.runs.remove(&run);
    }
}

/// The stretches of set bits of a bitfield from block `start`, at most
/// [`MAX_BITFIELD_RANGES`].
fn bitfield_ranges(start: u64, words: &[u32]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut open: Option<u64> = None;
    for (w, word) in words.iter().enumerate() {
        for b in 0..32u64 {
            let Some(index) = start.checked_add(w as u64 * 32 + b) else {
                return out;
            };
            let set = word & (1 << b) != 0;
            match (set, open) {
                (true, None) => open = Some(index),
                (false, Some(s)) => {
                    out.push((s, index));
                    open = None;
                    if out.len() == MAX_BITFIELD_RANGES {
                        return out;
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(s) = open {
        out.push((s, start.saturating_add(words.len() as u64 * 32)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        hyperwire::compact::Writer,
        tree::{BlockProof, Proof},
    };

    const DK: [u8; 32] = [3; 32];

    fn open_frame(rid: u64, dk: &[u8; 32]) -> Vec<u8> {
        let mut hs = Vec::new();
        ChannelHandshake {
            seeks: true,
            capability: [9; 32],
        }
        .encode(&mut hs);
        let mut b = FrameBuilder::default();
        b.open(rid, PROTOCOL, dk, &hs);
        b.frames(1 << 20).remove(0)
    }

    fn message_frame(rid: u64, msgs: &[HyperMessage]) -> Vec<u8> {
        let mut b = FrameBuilder::default();
        for m in msgs {
            b.message(rid, m.kind(), |w: &mut Writer<'_>| m.encode(w));
        }
        let mut frames = b.frames(1 << 30);
        assert_eq!(frames.len(), 1);
        frames.remove(0)
    }

    fn inputs(c: &mut WireConnection) -> Vec<WireInput> {
        std::iter::from_fn(|| c.next_input()).collect()
    }

    /// A connection with one channel for `DK`, opened by the peer and accepted: its engine
    /// channel.
    fn accepted(c: &mut WireConnection) -> ChannelId {
        c.on_frame(&open_frame(1, &DK)).unwrap();
        let [WireInput::Message(ch, Message::Open { .. })] = inputs(c)[..] else {
            panic!("an Open for the engine")
        };
        c.send(
            ch,
            Message::Accept {
                capability: [1; 32],
            },
        );
        assert_eq!(c.frames().len(), 1, "our open");
        ch
    }

    /// The engine's run `id` of blocks `0..end` of a log of `end` blocks.
    fn run_of(id: u64, end: u64) -> Message {
        Message::RequestRun {
            id,
            fork: 0,
            start: 0,
            end,
            length: end,
        }
    }

    fn block(index: u64) -> Proof {
        Proof {
            block: Some(BlockProof {
                index,
                value: vec![index as u8; 10].into(),
                nodes: Vec::new(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn peer_channel_ids_must_grow_one_at_a_time_and_rejects_must_name_ours() {
        let mut c = WireConnection::new(1);
        assert!(c.on_frame(&open_frame(2, &DK)).is_err(), "a jump");
        let mut c = WireConnection::new(1);
        c.on_frame(&open_frame(1, &DK)).unwrap();
        assert!(c.on_frame(&open_frame(1, &DK)).is_err(), "an id in use");
        let mut c = WireConnection::new(1);
        let mut b = FrameBuilder::default();
        b.reject(5);
        assert!(
            c.on_frame(&b.frames(64)[0]).is_err(),
            "a reject of nothing ours"
        );
        // The crate's store channel is refused on this wire.
        let mut c = WireConnection::new(1);
        c.on_frame(&open_frame(1, &store_channel_discovery_key()))
            .unwrap();
        assert!(inputs(&mut c).is_empty());
        assert_eq!(c.frames().len(), 1, "a reject");
    }

    #[test]
    fn one_frame_makes_at_most_max_inputs() {
        let mut c = WireConnection::new(1);
        accepted(&mut c);
        let cancels: Vec<HyperMessage> = (0..MAX_INPUTS as u64 + 1)
            .map(|request| HyperMessage::Cancel { request })
            .collect();
        assert_eq!(
            c.on_frame(&message_frame(1, &cancels)),
            Err(ConnectionError::Protocol("too many messages at once"))
        );
    }

    #[test]
    fn a_runs_answers_reach_the_engine_in_block_order_and_a_gap_ends_it() {
        let mut c = WireConnection::new(1);
        let ch = accepted(&mut c);
        c.send(ch, run_of(7, 3));
        assert_eq!(c.frames().len(), 1);
        // Our requests are ids 1, 2, 3 for blocks 0, 1, 2; answered 2, 1, 0.
        for (request, index) in [(3, 2), (2, 1), (1, 0)] {
            let data = HyperMessage::Data {
                request,
                proof: block(index),
            };
            c.on_frame(&message_frame(1, &[data])).unwrap();
        }
        let order: Vec<u64> = inputs(&mut c)
            .into_iter()
            .map(|i| match i {
                WireInput::Message(_, Message::Data { id: 7, proof }) => proof.block.unwrap().index,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(order, vec![0, 1, 2]);

        // A second run: block 1 is missing, block 2 came first.
        c.send(ch, run_of(8, 3));
        c.frames();
        let frame = message_frame(
            1,
            &[
                HyperMessage::Data {
                    request: 6,
                    proof: block(2),
                },
                HyperMessage::NoData {
                    request: 5,
                    reason: None,
                },
                HyperMessage::Data {
                    request: 4,
                    proof: block(0),
                },
            ],
        );
        c.on_frame(&frame).unwrap();
        let got = inputs(&mut c);
        assert!(matches!(
            &got[0],
            WireInput::Message(_, Message::Data { id: 8, .. })
        ));
        assert_eq!(
            got[1],
            WireInput::Message(
                ch,
                Message::NoData {
                    id: 8,
                    start: 1,
                    end: 3
                }
            )
        );
        assert_eq!(got.len(), 2, "block 2 rode on the missing one: dropped");
    }

    /// The requests in `frames`, by id.
    fn requests(frames: Vec<Vec<u8>>) -> Vec<u64> {
        let mut ids = Vec::new();
        for f in frames {
            decode_frame(&f, &mut |m| {
                if let MuxMessage::Message { kind, body, .. } = m
                    && let Ok(Some(HyperMessage::Request { id, .. })) =
                        HyperMessage::decode(kind, body)
                {
                    ids.push(id);
                }
                Ok::<_, DecodeError>(())
            })
            .unwrap();
        }
        ids
    }

    #[test]
    fn at_most_max_in_flight_requests_are_on_the_wire() {
        let mut c = WireConnection::new(1);
        let ch = accepted(&mut c);
        c.send(ch, run_of(7, 200));
        let sent = requests(c.frames());
        assert_eq!(sent.len(), MAX_IN_FLIGHT);
        // Two answers, two more requests; an answer to a request not sent yet is nobody's
        // and frees nothing.
        let frame = message_frame(
            1,
            &[
                HyperMessage::Data {
                    request: sent[0],
                    proof: block(0),
                },
                HyperMessage::NoData {
                    request: 150,
                    reason: None,
                },
                HyperMessage::Data {
                    request: sent[1],
                    proof: block(1),
                },
            ],
        );
        c.on_frame(&frame).unwrap();
        let more = requests(c.frames());
        assert_eq!(
            more,
            vec![MAX_IN_FLIGHT as u64 + 1, MAX_IN_FLIGHT as u64 + 2]
        );
        // The engine cancels the run: only what is on the wire is cancelled there.
        c.send(ch, Message::Cancel { id: 7 });
        assert!(requests(c.frames()).is_empty());
    }

    #[test]
    fn a_closed_channels_waiting_requests_go_with_it() {
        let mut c = WireConnection::new(1);
        let ch = accepted(&mut c);
        c.send(ch, run_of(7, 200));
        assert_eq!(requests(c.frames()).len(), MAX_IN_FLIGHT);
        // The peer closes the channel, and opens another on the same ids: its requests are
        // its own, and all of the window is there for them.
        let mut b = FrameBuilder::default();
        b.close(1);
        c.on_frame(&b.frames(64)[0]).unwrap();
        assert_eq!(inputs(&mut c), vec![WireInput::Closed(ch)]);
        let ch = accepted(&mut c);
        c.send(ch, run_of(7, 10));
        assert_eq!(requests(c.frames()), (1..=10).collect::<Vec<u64>>());
        assert_eq!(c.in_flight, 10);
    }

    #[test]
    fn the_engine_decides_on_a_bounded_window_of_the_peers_opens() {
        let mut c = WireConnection::new(1);
        let mut b = FrameBuilder::default();
        for rid in 1..=(MAX_OFFERED as u64 + 5) {
            let mut hs = Vec::new();
            ChannelHandshake {
                seeks: true,
                capability: [9; 32],
            }
            .encode(&mut hs);
            b.open(rid, PROTOCOL, &[rid as u8; 32], &hs);
        }
        for f in b.frames(1 << 20) {
            c.on_frame(&f).unwrap();
        }
        let offered = inputs(&mut c);
        assert_eq!(offered.len(), MAX_OFFERED);
        let WireInput::Message(first, _) = offered[0] else {
            panic!()
        };
        // One answered: the next one waiting is offered.
        c.send(
            first,
            Message::Close {
                reason: "no".into(),
            },
        );
        assert_eq!(inputs(&mut c).len(), 1);
    }

    #[test]
    fn our_open_of_a_core_the_peer_opened_pairs_with_it_or_waits_for_the_engine() {
        // The engine has not heard of the peer's open: ours answers it.
        let mut c = WireConnection::new(1);
        c.on_frame(&open_frame(1, &DK)).unwrap();
        let open = Message::Open {
            discovery_key: DK,
            capability: [1; 32],
        };
        c.open(0, &open);
        assert_eq!(
            inputs(&mut c),
            vec![WireInput::Message(
                0,
                Message::Accept {
                    capability: [9; 32]
                }
            )]
        );
        assert!(c.has(0));

        // It has: ours waits; the engine refuses the peer's, and ours is the channel.
        let mut c = WireConnection::new(1);
        c.on_frame(&open_frame(1, &DK)).unwrap();
        let [WireInput::Message(odd, _)] = inputs(&mut c)[..] else {
            panic!()
        };
        c.open(0, &open);
        assert!(inputs(&mut c).is_empty());
        c.send(
            odd,
            Message::Close {
                reason: "duplicate channel".into(),
            },
        );
        assert_eq!(
            inputs(&mut c),
            vec![WireInput::Message(
                0,
                Message::Accept {
                    capability: [9; 32]
                }
            )]
        );
        assert!(c.has(0) && !c.has(odd));
    }
}

//! What the engine and its driver say to each other: the [`Input`]s the driver reports, the
//! [`Output`]s the engine asks for, the [`Event`]s it reports, and the per-peer [`PeerStats`].
//! (Storage tasks and their results are in `task`.)

use bytes::Bytes;

use super::task::{Task, TaskDone};
use crate::{
    crypto::{CoreKey, DiscoveryKey, capability::NoiseBinding},
    replication::{PeerId, wire::Message},
};

/// Identifies a channel (one stream, one core) within the engine. Ids of channels the engine
/// opens are even; the driver gives odd ids to channels a peer opens.
pub type ChannelId = u64;

/// How much of a core to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Every block, following the log live.
    #[default]
    Full,
    /// Only blocks asked for with [`Input::Want`]; the length is still followed live.
    Sparse,
}

/// The local state of a core, as the engine needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LocalInfo {
    /// Fork id.
    pub fork: u64,
    /// Signed length.
    pub length: u64,
    /// Bytes in the signed length.
    pub byte_length: u64,
    /// Leading blocks stored.
    pub contiguous: u64,
    /// Whether this node holds the key pair: it makes the new blocks, and pushes them to the
    /// peers that follow it live.
    pub writable: bool,
}

/// Something the driver tells the engine, with [`Engine::handle`](super::Engine::handle).
/// When each must be reported is part of the calling contract on
/// [`Engine`](super::Engine).
#[derive(Debug)]
pub enum Input {
    /// Data `peer` sent for `core` outside the engine (a blob) failed verification: counted
    /// in its [`PeerStats::invalid`] and backed off, as bad blocks are.
    Invalid(CoreKey, PeerId, String),
    /// A connection to `peer` is up: reported before any message of that peer.
    PeerConnected(PeerId),
    /// A connection to `peer` on Hypercore's own wire is up (a JS Hypercore peer): as
    /// [`Input::PeerConnected`], and its channels' capabilities are bound to this Noise session
    /// instead of both endpoint ids.
    WirePeerConnected(PeerId, NoiseBinding),
    /// The connection to `peer` is gone: its channels, requests and queues are forgotten.
    PeerDisconnected(PeerId),
    /// A message arrived on a channel; the first message of a channel the peer opened is
    /// `Open`, on a new odd channel id.
    Message(PeerId, ChannelId, Message),
    /// A channel's stream ended or failed.
    ChannelClosed(PeerId, ChannelId),
    /// A storage task finished: exactly once for every [`Output::Task`], made by its task's
    /// [`Reply::done`](super::Reply::done).
    TaskDone(TaskDone),
    /// A gossip message arrived on a core's topic.
    Gossip(CoreKey, Bytes),
    /// The gossip subscription of a core lagged (messages were lost).
    GossipLagged(CoreKey),
    /// The core changed outside the engine (a local append or truncate).
    LocalChanged(CoreKey, LocalInfo),
    /// The application wants blocks `start..end` (sparse cores).
    Want(CoreKey, u64, u64),
    /// The application no longer wants blocks `start..end` it wanted (one `Unwant` undoes one
    /// `Want`): blocks nobody wants any more leave the fetch queue, and requests left with
    /// nothing wanted are cancelled with their peers.
    Unwant(CoreKey, u64, u64),
    /// The application asks for the newest state of a core's peers (`update`): answered with
    /// [`Event::Updated`].
    Update(CoreKey),
    /// Bytes queued towards a peer that QUIC has not taken yet, reported by the driver at least
    /// each time the peer goes over its limit or back under it. A peer is over at
    /// `max_backlog_bytes`, or, while the backlog of every peer together is at
    /// `max_backlog_total`, at its fair share of that (the total over the peers with a
    /// backlog). Requests wait while it is over.
    Backlog {
        /// The peer.
        peer: PeerId,
        /// Its backlog.
        bytes: u64,
        /// Whether it is over its limit.
        over: bool,
    },
    /// Peers the application named for `core` (the nodes of its ticket or `join`, or those its
    /// record named before a restart): dialed again while the core has no channel, and, with
    /// the peers it learnt ([`Input::PeersSeen`], a channel, a gossip announcement), the only
    /// peers we open a channel for it to. At most [`MAX_NAMED`](super::MAX_NAMED) are kept
    /// (the first given, and then the most recently named); learnt peers never take their
    /// place.
    Peers(CoreKey, Vec<PeerId>),
    /// Peers seen with `core` (its gossip neighbours, or the peers its record says it had a
    /// channel with): learnt, as a channel's peer would be, in the
    /// [`MAX_LEARNT`](super::MAX_LEARNT) places the named ones leave.
    PeersSeen(CoreKey, Vec<PeerId>),
    /// Peers the application joined while it replicates its whole store (as Corestore
    /// replicates every core with the peers it is given): each gets a channel for every core
    /// we replicate, now and added later. At most
    /// [`MAX_STORE_PEERS`](super::MAX_STORE_PEERS) are kept, the most recent.
    StorePeers(Vec<PeerId>),
}

/// How a task that applies data from a peer ended.
#[derive(Debug)]
pub enum ApplyOutcome<T> {
    /// Verified and stored.
    Done(T),
    /// The data did not verify: the peer's fault, nothing stored.
    Invalid(String),
    /// Storing failed: our fault, nothing stored.
    Failed(String),
}

/// Something the engine asks the driver to do.
#[derive(Debug)]
pub enum Output {
    /// Connect to `peer` (the driver knows or looks up its address).
    Connect(PeerId),
    /// Open a new stream to `peer` as channel `channel`, starting with `first`.
    OpenChannel(PeerId, ChannelId, Message),
    /// Send a message on a channel.
    Send(PeerId, ChannelId, Message),
    /// Close a channel's stream (after sending what was queued).
    CloseChannel(PeerId, ChannelId),
    /// Run a storage task on a core and report it with [`Input::TaskDone`].
    Task(CoreKey, Task),
    /// Subscribe to the gossip topic of a core.
    JoinGossip(CoreKey, [u8; 32]),
    /// Leave the gossip topic of a core (it is no longer replicated).
    LeaveGossip(CoreKey),
    /// A peer opened a channel for a core we do not replicate, named by this discovery key:
    /// if the application's store holds that core and serves it, hand it to
    /// [`Engine::serve_core`](super::Engine::serve_core). Otherwise nothing: the channel
    /// waits, parked, until the handshake timeout (the application may be about to replicate
    /// that core; refusing at once would race with its own open). Given once per discovery
    /// key while channels for it are parked.
    FindCore(DiscoveryKey),
    /// Broadcast an encoded [`GossipOp`](crate::replication::gossip::GossipOp) on the topic of a
    /// core.
    Broadcast(CoreKey, Bytes),
    /// Something happened.
    Event(Event),
}

/// What the engine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A peer connected.
    PeerAdd(PeerId),
    /// A peer disconnected.
    PeerRemove(PeerId),
    /// A channel for `core` with `peer` is open.
    ChannelOpen {
        /// Core.
        core: CoreKey,
        /// Peer.
        peer: PeerId,
    },
    /// The channel for `core` with `peer` closed (it was open: a `ChannelOpen` came before).
    ChannelClosed {
        /// Core.
        core: CoreKey,
        /// Peer.
        peer: PeerId,
    },
    /// A peer's channel was refused.
    ChannelRefused {
        /// Peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The core grew to `length` (locally or by a verified upgrade).
    Append {
        /// Core.
        core: CoreKey,
        /// New length.
        length: u64,
        /// Fork.
        fork: u64,
    },
    /// The core moved to a new fork at `length`.
    Truncate {
        /// Core.
        core: CoreKey,
        /// Length after the truncation.
        length: u64,
        /// New fork.
        fork: u64,
    },
    /// A verified block from `peer` was stored.
    Download {
        /// Core.
        core: CoreKey,
        /// Block index.
        index: u64,
        /// Block size.
        bytes: u64,
        /// Peer that sent it.
        peer: PeerId,
    },
    /// The blob named by block `index` of `core` was fetched by the protocol, under its blob
    /// policy (the engine itself never emits this).
    BlobDownloaded {
        /// Core.
        core: CoreKey,
        /// Index of the block naming the blob.
        index: u64,
        /// The blob's BLAKE3 hash.
        hash: [u8; 32],
        /// The blob's size in bytes.
        size: u64,
        /// The peer asked last.
        peer: PeerId,
    },
    /// A block was sent to `peer`.
    Upload {
        /// Core.
        core: CoreKey,
        /// Block index.
        index: u64,
        /// Block size.
        bytes: u64,
        /// Peer it was sent to.
        peer: PeerId,
    },
    /// `peer` sent data that did not verify.
    Invalid {
        /// Core.
        core: CoreKey,
        /// Peer.
        peer: PeerId,
        /// Why it was rejected.
        reason: String,
    },
    /// `peer` failed (timeout or invalid data) and is backed off.
    Backoff(PeerId),
    /// `peer` failed after its last back-off and is penalized: asked for nothing during
    /// `penalty`, which doubles with each offence on the connection and is longer for data
    /// that did not verify than for slowness; then probed again. Nobody is dropped for good
    /// while its connection lasts.
    Penalized {
        /// Peer.
        peer: PeerId,
        /// How long it is asked nothing.
        penalty: std::time::Duration,
    },
    /// `core` has no peer now: its last channel closed, or the peer its channel closed idle
    /// with (both held the same log) went away. It looks for the peers it knows
    /// ([`Event::Reconnecting`]).
    NoPeers {
        /// Core.
        core: CoreKey,
    },
    /// `core` has no channel and dials the peers it knows again: `attempt` dials so far in
    /// this search (0 when it starts), the next in `next_in`.
    Reconnecting {
        /// Core.
        core: CoreKey,
        /// Dials so far.
        attempt: u32,
        /// When the next ones go.
        next_in: std::time::Duration,
    },
    /// An [`Input::Update`] of `core` is answered: every peer asked sent its state (or went),
    /// and the upgrade to the longest, if any, ended; `length` is the core's signed length.
    Updated {
        /// Core.
        core: CoreKey,
        /// Its signed length now.
        length: u64,
    },
    /// An extension message from `peer`, of a name the application registered (the protocol
    /// hands these to `Extension::subscribe`, apart from its other events).
    Extension {
        /// The core whose channel carried it; `None` for the store channel.
        core: Option<CoreKey>,
        /// Peer.
        peer: PeerId,
        /// The extension's name.
        name: String,
        /// Its payload (at most `MAX_EXTENSION_PAYLOAD` bytes).
        payload: Bytes,
    },
    /// A subscriber fell behind and missed this many events (never emitted by the engine:
    /// the event streams of [`HypercoreProtocol`](crate::net::HypercoreProtocol) yield it).
    Lagged(u64),
}

/// Counters of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Peer id.
    pub peer: PeerId,
    /// Open channels.
    pub channels: usize,
    /// Verified blocks received.
    pub blocks_down: u64,
    /// Bytes of verified blocks received.
    pub bytes_down: u64,
    /// Blocks sent.
    pub blocks_up: u64,
    /// Bytes of blocks sent.
    pub bytes_up: u64,
    /// Blocks pushed to this peer unasked, as it followed a log live (counted in `blocks_up`).
    pub pushes_sent: u64,
    /// Pushes from this peer that fit our state and were taken to be verified.
    pub pushes_taken: u64,
    /// Proofs from this peer that did not verify.
    pub invalid: u64,
    /// Requests and channels refused because the peer asked for too much (a full serve
    /// queue, a run too long, too many channels for unknown cores).
    pub refused: u64,
    /// Messages and channels dropped because they broke the protocol: anything before the
    /// handshake, a wrong capability, a second `Open`.
    pub dropped: u64,
    /// Extension messages from the peer delivered to the application.
    pub extensions_received: u64,
    /// Extension messages from the peer dropped: a name not registered, a payload over the
    /// limit, or over the peer's rate.
    pub extensions_dropped: u64,
    /// Bytes queued towards the peer and not yet taken by QUIC.
    pub backlog_bytes: u64,
    /// Bytes of unfinished frames from the peer held in memory.
    pub buffered_bytes: u64,
}

//! The replication engine: one state machine that owns every peer, channel, the fetch queue and
//! the gossip state of all replicated cores.
//!
//! It does no IO. The driver feeds it [`Input`]s (messages, finished storage tasks, gossip,
//! local changes) with the current time, calls [`Engine::handle_timeout`] when
//! [`Engine::poll_timeout`] says so, and carries out the [`Output`]s it yields: messages to
//! send, channels to open or close, storage tasks to run, gossip to broadcast, and [`Event`]s.
//! Its state changes only inside these calls, so a simulation with a fake clock can drive
//! hundreds of engines deterministically.

mod channels;
mod download;
mod push;
mod serve;
#[cfg(test)]
mod testing;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::{Duration, Instant},
};

use bytes::Bytes;

use super::{
    PeerId,
    fetch::{FetchConfig, FetchQueue},
    gossip::{GOSSIP_MAX_MESSAGE, GossipOp},
    wire::{Message, SyncInfo},
};
use crate::{
    core::{RunApplied, RunItem},
    crypto::{CoreKey, DiscoveryKey, discovery_key},
    tree::{Proof, ProofRequest},
};

/// Identifies a channel (one stream, one core) within the engine. Ids of channels the engine
/// opens are even; the driver gives odd ids to channels a peer opens.
pub type ChannelId = u64;

/// Identifies a storage task.
pub type TaskId = u64;

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

/// Tuning of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The fetch queue's tuning.
    pub fetch: FetchConfig,
    /// Time an upgrade request may take before it is asked of another peer.
    pub upgrade_timeout: Duration,
    /// Storage tasks run at once for one peer's requests.
    pub serve_concurrency: usize,
    /// Requests from one peer waiting to be served; more are answered with `NoData`.
    pub serve_queue: usize,
    /// Bytes queued towards one peer (not yet taken by QUIC) beyond which its requests wait:
    /// a peer that does not read cannot make us hold more than this (plus the parts of runs
    /// being read for it).
    pub max_backlog_bytes: u64,
    /// Block bytes read for one part of a run answer: a run of large blocks is read and sent
    /// in parts of this size, each when the peer's backlog has room.
    pub serve_run_bytes: u64,
    /// Refused requests after which a peer's channels are closed.
    pub max_refused: u64,
    /// Shortest time between two gossip announcements of one core.
    pub announce_interval: Duration,
    /// Gossip message size limit (iroh-gossip's `max_message_size`).
    pub gossip_max_message: usize,
    /// Time a peer has to prove it knows a core's key on a channel we opened (its `Accept`),
    /// and time a channel it opened for a core we do not replicate waits to be adopted.
    pub handshake_timeout: Duration,
    /// Channels one peer may keep waiting for cores we do not replicate.
    pub max_parked_per_peer: usize,
    /// Channels all peers together may keep waiting for cores we do not replicate.
    pub max_parked: usize,
    /// Dials that gossip announcements may cause per second (an announcement names its
    /// origin, and anyone on a topic can announce).
    pub gossip_dials_per_second: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            fetch: FetchConfig::default(),
            upgrade_timeout: Duration::from_secs(5),
            serve_concurrency: 4,
            serve_queue: 256,
            max_backlog_bytes: 8 * 1024 * 1024,
            serve_run_bytes: 1024 * 1024,
            max_refused: 4096,
            announce_interval: Duration::from_millis(50),
            gossip_max_message: GOSSIP_MAX_MESSAGE,
            handshake_timeout: Duration::from_secs(10),
            max_parked_per_peer: 64,
            max_parked: 4096,
            gossip_dials_per_second: 8,
        }
    }
}

/// Something the driver tells the engine.
#[derive(Debug)]
pub enum Input {
    /// A connection to `peer` is up.
    PeerConnected(PeerId),
    /// The connection to `peer` is gone.
    PeerDisconnected(PeerId),
    /// A message arrived on a channel; the first message of a channel the peer opened is
    /// `Open`, on a new odd channel id.
    Message(PeerId, ChannelId, Message),
    /// A channel's stream ended or failed.
    ChannelClosed(PeerId, ChannelId),
    /// A storage task finished.
    TaskDone(TaskId, TaskResult),
    /// A gossip message arrived on a core's topic.
    Gossip(CoreKey, Bytes),
    /// The gossip subscription of a core lagged (messages were lost).
    GossipLagged(CoreKey),
    /// The core changed outside the engine (a local append or truncate).
    LocalChanged(CoreKey, LocalInfo),
    /// The application wants blocks `start..end` (sparse cores).
    Want(CoreKey, u64, u64),
    /// Bytes queued towards `peer` that QUIC has not taken yet (reported by the driver when
    /// it changes). Requests wait while it is over `max_backlog_bytes`.
    Backlog(PeerId, u64),
}

/// A storage task for the driver to run against a core.
#[derive(Debug)]
pub enum Task {
    /// `Hypercore::create_proof`.
    CreateProof(ProofRequest),
    /// `Hypercore::create_run_proofs_within(fork, start, end, length, max_bytes)`: a prefix
    /// of the run holding about `max_bytes` of blocks; the engine asks for the rest later.
    CreateRun {
        /// Requester's fork.
        fork: u64,
        /// First block.
        start: u64,
        /// End of the run.
        end: u64,
        /// Requester's length.
        length: u64,
        /// Block bytes read for this part of the run.
        max_bytes: u64,
    },
    /// `Hypercore::verify_and_apply_proof`.
    ApplyProof(Proof),
    /// `Hypercore::apply_block_proofs`.
    ApplyRun(Vec<Proof>),
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

/// The result of a [`Task`], with the core's state after it.
#[derive(Debug)]
pub enum TaskResult {
    /// Answer to [`Task::CreateProof`].
    Proof(Result<Proof, String>),
    /// Answer to [`Task::CreateRun`].
    Run(Result<Vec<RunItem>, String>),
    /// Answer to [`Task::ApplyProof`].
    Applied(ApplyOutcome<()>, LocalInfo),
    /// Answer to [`Task::ApplyRun`].
    RunApplied(ApplyOutcome<RunApplied>, LocalInfo),
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
    Task(TaskId, CoreKey, Task),
    /// Subscribe to the gossip topic of a core.
    JoinGossip(CoreKey, [u8; 32]),
    /// Broadcast an encoded [`GossipOp`] on the topic of a core.
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
    /// `peer` failed after its last back-off and no longer serves the fetch queue.
    PeerDropped(PeerId),
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
    /// Bytes queued towards the peer and not yet taken by QUIC.
    pub backlog_bytes: u64,
    /// Bytes of unfinished frames from the peer held in memory.
    pub buffered_bytes: u64,
}

/// What a request we sent was for: an answer must answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// A signed upgrade from `start` by `length` blocks (to the length the peer claimed), with
    /// block `block` if one was asked for.
    Upgrade {
        start: u64,
        length: u64,
        block: Option<u64>,
    },
    Run,
}

#[derive(Debug)]
struct Channel {
    peer: PeerId,
    core: CoreKey,
    opened_by_me: bool,
    /// Both sides proved the key. A channel we opened is not until the peer's valid `Accept`
    /// arrives before `handshake_deadline`; until then it carries nothing but our `Open`.
    authenticated: bool,
    handshake_deadline: Option<Instant>,
    /// The remote's last `Sync`, once the channel is open.
    remote: Option<SyncInfo>,
    /// Blocks past `remote.contiguous` the remote said it has: sorted, disjoint.
    remote_ranges: Vec<(u64, u64)>,
    /// Blocks `0..sourced` of the remote's contiguous ones were recorded in the fetch queue.
    sourced: u64,
    requests: BTreeMap<u64, Sent>,
    /// A push to this channel is being prepared; our `Sync` waits for it.
    pushing: bool,
}

#[derive(Debug, Default)]
struct Peer {
    channels: BTreeMap<CoreKey, ChannelId>,
    serve_queue: VecDeque<(ChannelId, Message)>,
    stats: PeerStats,
    /// Failed after its last back-off: asked for nothing more while this connection lasts.
    dropped: bool,
    /// Its parked channels.
    parked: BTreeSet<ChannelId>,
}

#[derive(Debug)]
struct Upgrading {
    peer: PeerId,
    channel: ChannelId,
    id: u64,
    deadline: Instant,
}

#[derive(Debug)]
struct Replica {
    discovery_key: DiscoveryKey,
    local: LocalInfo,
    mode: Mode,
    /// Sparse mode: blocks the application is waiting for.
    wanted: BTreeSet<u64>,
    /// Full mode: blocks below this were queued (or held).
    queued_to: u64,
    upgrading: Option<Upgrading>,
    /// The upgrade request a push took the place of while the push is applied.
    asked_meanwhile: Option<Upgrading>,
    /// An upgrade proof waiting for the core's writer slot.
    upgrade_proof: Option<(PeerId, Proof)>,
    /// Block proofs received and not yet applied, in arrival order, with the run request
    /// each answers.
    pending: Vec<(PeerId, u64, Proof)>,
    /// Run requests one of whose proofs was not stored (cut from a batch by another's
    /// failure, or dropped over the held cap): their later proofs rely on its nodes, so they
    /// are queued again rather than applied, and nobody is blamed for them.
    broken_runs: BTreeSet<u64>,
    /// A storage task applying data to this core is running.
    applying: bool,
    announce_due: bool,
    last_announce: Option<Instant>,
}

#[derive(Debug)]
enum TaskCtx {
    Serve {
        peer: PeerId,
        channel: ChannelId,
        id: u64,
    },
    ServeRun {
        peer: PeerId,
        channel: ChannelId,
        /// The request, with `start` where this part of it begins.
        request: Message,
    },
    /// Preparing a push of new blocks (see the `push` module).
    Push { peer: PeerId, channel: ChannelId },
    ApplyUpgrade {
        core: CoreKey,
        peer: PeerId,
        /// The block that came with the upgrade: index and size.
        block: Option<(u64, u64)>,
    },
    ApplyRun {
        core: CoreKey,
        /// Each proof's block index, peer and run request.
        proofs: Vec<(u64, PeerId, u64)>,
    },
}

/// The replication engine; see the module docs.
#[derive(Debug)]
pub struct Engine {
    me: PeerId,
    cfg: EngineConfig,
    cores: BTreeMap<CoreKey, Replica>,
    by_discovery_key: BTreeMap<DiscoveryKey, CoreKey>,
    /// Channels peers opened for cores we do not replicate (yet): adopted if we add the core
    /// before their handshake deadline. Each carries nothing but its `Open`.
    parked: BTreeMap<ChannelId, Parked>,
    /// The parked channels of each discovery key.
    parked_by_dk: BTreeMap<DiscoveryKey, BTreeSet<ChannelId>>,
    /// Handshake deadlines: channels we opened waiting for `Accept`, and parked channels.
    handshakes: BTreeSet<(Instant, ChannelId)>,
    peers: BTreeMap<PeerId, Peer>,
    channels: BTreeMap<ChannelId, Channel>,
    fetch: FetchQueue,
    tasks: BTreeMap<TaskId, TaskCtx>,
    outputs: VecDeque<Output>,
    next_channel: ChannelId,
    next_task: TaskId,
    next_upgrade_id: u64,
    /// Cores whose upgrade peer went away: asked of another peer at the end of this turn.
    retry_upgrade: BTreeSet<CoreKey>,
    /// Cores with a peer ahead that is backed off: asked again when a back-off ends.
    upgrade_after_backoff: BTreeSet<CoreKey>,
    /// When the dials that gossip caused in the last second started.
    gossip_dials: VecDeque<Instant>,
    /// Gossip-caused dials skipped by the rate limit.
    gossip_dials_skipped: u64,
}

/// A channel a peer opened for a core we do not replicate (yet).
#[derive(Debug)]
struct Parked {
    peer: PeerId,
    discovery_key: DiscoveryKey,
    capability: [u8; 32],
    deadline: Instant,
}

/// Ids of upgrade requests have the top bit set; run requests use the fetch queue's ids.
const UPGRADE_ID_BIT: u64 = 1 << 63;

impl Engine {
    /// An engine for the endpoint `me`.
    pub fn new(me: PeerId, cfg: EngineConfig) -> Self {
        Self {
            me,
            fetch: FetchQueue::new(cfg.fetch.clone()),
            cfg,
            cores: BTreeMap::new(),
            by_discovery_key: BTreeMap::new(),
            parked: BTreeMap::new(),
            parked_by_dk: BTreeMap::new(),
            handshakes: BTreeSet::new(),
            peers: BTreeMap::new(),
            channels: BTreeMap::new(),
            tasks: BTreeMap::new(),
            outputs: VecDeque::new(),
            next_channel: 0,
            next_task: 0,
            next_upgrade_id: 0,
            retry_upgrade: BTreeSet::new(),
            upgrade_after_backoff: BTreeSet::new(),
            gossip_dials: VecDeque::new(),
            gossip_dials_skipped: 0,
        }
    }

    /// This endpoint's id.
    pub fn me(&self) -> PeerId {
        self.me
    }

    /// The engine's tuning.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Starts replicating a core: joins its gossip topic and opens a channel on every
    /// connection. Adding a core twice only updates its mode.
    pub fn add_core(&mut self, key: CoreKey, local: LocalInfo, mode: Mode, now: Instant) {
        if let Some(r) = self.cores.get_mut(&key) {
            r.mode = mode;
            self.schedule(now);
            return;
        }
        let dk = discovery_key(&key);
        self.by_discovery_key.insert(dk, key);
        self.cores.insert(
            key,
            Replica {
                discovery_key: dk,
                local,
                mode,
                wanted: BTreeSet::new(),
                queued_to: local.contiguous,
                upgrading: None,
                asked_meanwhile: None,
                upgrade_proof: None,
                pending: Vec::new(),
                broken_runs: BTreeSet::new(),
                applying: false,
                announce_due: false,
                last_announce: None,
            },
        );
        self.outputs
            .push_back(Output::JoinGossip(key, super::gossip::topic(&dk)));
        for ch in self.parked_by_dk.remove(&dk).unwrap_or_default() {
            if let Some(p) = self.unpark(ch) {
                self.on_open(p.peer, ch, dk, p.capability, now);
            }
        }
        let mut peers: Vec<PeerId> = self.peers.keys().copied().collect();
        peers.sort();
        for peer in peers {
            self.open_channel(peer, key, now);
        }
        self.enqueue_missing(key);
        self.announce(key, now);
    }

    /// Whether `key` is replicated.
    pub fn has_core(&self, key: &CoreKey) -> bool {
        self.cores.contains_key(key)
    }

    /// The local state the engine knows of a core.
    pub fn local(&self, key: &CoreKey) -> Option<LocalInfo> {
        self.cores.get(key).map(|r| r.local)
    }

    /// Connected peers.
    pub fn peers(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self.peers.keys().copied().collect();
        v.sort();
        v
    }

    /// Peers with an open channel for `core`.
    pub fn core_peers(&self, core: &CoreKey) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self
            .open_channels(core)
            .into_iter()
            .map(|(peer, _)| peer)
            .collect();
        v.sort();
        v
    }

    /// The channels of `core` whose remote has synced, with their peers.
    fn open_channels(&self, core: &CoreKey) -> Vec<(PeerId, ChannelId)> {
        self.channels
            .iter()
            .filter(|(_, c)| c.core == *core && c.remote.is_some())
            .map(|(id, c)| (c.peer, *id))
            .collect()
    }

    /// Counters of every connected peer.
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        let mut v: Vec<PeerStats> = self
            .peers
            .iter()
            .map(|(id, p)| PeerStats {
                peer: *id,
                channels: p.channels.len(),
                ..p.stats.clone()
            })
            .collect();
        v.sort_by_key(|s| s.peer);
        v
    }

    /// Dials that gossip announcements asked for and the rate limit skipped.
    pub fn gossip_dials_skipped(&self) -> u64 {
        self.gossip_dials_skipped
    }

    /// Channels peers opened for cores we do not replicate, waiting to be adopted.
    pub fn parked_channels(&self) -> usize {
        self.parked.len()
    }

    /// Blocks waiting in the fetch queue.
    pub fn queued_blocks(&self) -> usize {
        self.fetch.len()
    }

    /// Feeds one input at time `now`.
    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::PeerConnected(peer) => self.on_connected(peer, now),
            Input::PeerDisconnected(peer) => self.on_disconnected(peer),
            Input::Message(peer, channel, msg) => self.on_message(peer, channel, msg, now),
            Input::ChannelClosed(peer, channel) => self.on_channel_closed(peer, channel),
            Input::TaskDone(id, result) => self.on_task_done(id, result, now),
            Input::Gossip(core, bytes) => self.on_gossip(core, &bytes, now),
            Input::GossipLagged(core) => self.resync(core),
            Input::LocalChanged(core, local) => self.update_local(core, local, now),
            Input::Want(core, start, end) => self.on_want(core, start, end),
            Input::Backlog(peer, bytes) => self.on_backlog(peer, bytes),
        }
        self.schedule(now);
    }

    /// The next output to carry out.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let upgrades = self
            .cores
            .values()
            .filter_map(|r| r.upgrading.as_ref().map(|u| u.deadline));
        let announces = self.cores.values().filter_map(|r| {
            r.announce_due
                .then(|| r.last_announce.map(|t| t + self.cfg.announce_interval))
                .flatten()
        });
        let handshakes = self.handshakes.first().map(|(t, _)| *t);
        upgrades
            .chain(announces)
            .chain(handshakes)
            .chain(self.fetch.next_deadline())
            .min()
    }

    /// Handles every timer due at `now`: handshakes, request timeouts, back-offs,
    /// announcements.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_handshakes(now);
        for (id, peer) in self.fetch.poll_timeouts(now) {
            let channels: Vec<ChannelId> = self.peer_channels(&peer);
            for ch in channels {
                if let Some(c) = self.channels.get_mut(&ch)
                    && c.requests.remove(&id).is_some()
                {
                    self.outputs
                        .push_back(Output::Send(peer, ch, Message::Cancel { id }));
                }
            }
        }
        let late: Vec<CoreKey> = self
            .cores
            .iter()
            .filter(|(_, r)| r.upgrading.as_ref().is_some_and(|u| u.deadline <= now))
            .map(|(k, _)| *k)
            .collect();
        for core in late {
            if let Some(u) = self.cores.get(&core).and_then(|r| r.upgrading.as_ref()) {
                let (peer, channel, id) = (u.peer, u.channel, u.id);
                if let Some(c) = self.channels.get_mut(&channel) {
                    c.requests.remove(&id);
                }
                // Not believed until it syncs again, like a peer that says it cannot prove.
                self.upgrade_failed(core, channel);
                if self.peers.contains_key(&peer) {
                    self.fetch.penalize(peer, now);
                }
                self.maybe_upgrade(core, now);
            }
        }
        for core in std::mem::take(&mut self.upgrade_after_backoff) {
            self.maybe_upgrade(core, now);
        }
        let due: Vec<CoreKey> = self
            .cores
            .iter()
            .filter(|(_, r)| {
                r.announce_due
                    && r.last_announce
                        .is_none_or(|t| t + self.cfg.announce_interval <= now)
            })
            .map(|(k, _)| *k)
            .collect();
        for core in due {
            self.announce(core, now);
        }
        self.schedule(now);
    }

    fn peer_channels(&self, peer: &PeerId) -> Vec<ChannelId> {
        self.peers
            .get(peer)
            .map(|p| p.channels.values().copied().collect())
            .unwrap_or_default()
    }

    fn new_task(&mut self, core: CoreKey, task: Task, ctx: TaskCtx) {
        let id = self.next_task;
        self.next_task += 1;
        self.tasks.insert(id, ctx);
        self.outputs.push_back(Output::Task(id, core, task));
    }

    fn emit(&mut self, ev: Event) {
        self.outputs.push_back(Output::Event(ev));
    }

    /// Queues a message. Nothing but the handshake leaves on a channel whose peer has not
    /// proven the key: this is the one place that guarantees it.
    fn send(&mut self, peer: PeerId, channel: ChannelId, msg: Message) {
        let handshake = matches!(msg, Message::Accept { .. } | Message::Close { .. });
        if !handshake && !self.is_authenticated(channel) {
            debug_assert!(false, "{msg:?} on an unauthenticated channel");
            return;
        }
        self.outputs.push_back(Output::Send(peer, channel, msg));
    }

    fn sync_info(&self, core: &CoreKey, ask: bool) -> Option<SyncInfo> {
        self.cores.get(core).map(|r| SyncInfo {
            fork: r.local.fork,
            length: r.local.length,
            contiguous: r.local.contiguous,
            ask,
            downloading: r.mode == Mode::Full && !r.local.writable,
        })
    }

    /// Sends our state on every open channel of `core`, but those with a push being prepared:
    /// their `Sync` follows the push.
    fn broadcast_sync(&mut self, core: CoreKey, ask: bool) {
        let Some(info) = self.sync_info(&core, ask) else {
            return;
        };
        for (peer, ch) in self.open_channels(&core) {
            if self.channels.get(&ch).is_some_and(|c| !c.pushing) {
                self.send(peer, ch, Message::Sync(info));
            }
        }
    }

    /// Tells the swarm our length, at most once per `announce_interval`.
    fn announce(&mut self, core: CoreKey, now: Instant) {
        let interval = self.cfg.announce_interval;
        let max = self.cfg.gossip_max_message;
        let me = self.me;
        let Some(r) = self.cores.get_mut(&core) else {
            return;
        };
        if r.local.length == 0 {
            // Nothing to announce: an announcement that was due is dropped (a due one left
            // set would be a timer in the past, handled again on every turn).
            r.announce_due = false;
            return;
        }
        if r.last_announce.is_some_and(|t| t + interval > now) {
            r.announce_due = true;
            return;
        }
        r.announce_due = false;
        r.last_announce = Some(now);
        let op = GossipOp::Announce {
            origin: me,
            fork: r.local.fork,
            length: r.local.length,
            contiguous: r.local.contiguous,
        };
        match op.encode(max) {
            Ok(bytes) => self
                .outputs
                .push_back(Output::Broadcast(core, Bytes::from(bytes))),
            Err(e) => tracing::warn!("gossip op not sent: {e}"),
        }
    }

    /// A gossip announcement: a hint to connect to the announcer if it is ahead of us.
    fn on_gossip(&mut self, core: CoreKey, bytes: &[u8], now: Instant) {
        let Ok(GossipOp::Announce {
            origin,
            fork,
            length,
            ..
        }) = GossipOp::decode(bytes)
        else {
            tracing::debug!("malformed gossip op ignored");
            return;
        };
        let Some(r) = self.cores.get(&core) else {
            return;
        };
        let ahead = fork > r.local.fork || (fork == r.local.fork && length > r.local.length);
        if origin == self.me || !ahead {
            return;
        }
        if !self.peers.contains_key(&origin) {
            // Anyone on the topic can name any origin: dials are rate limited here, and the
            // driver bounds those in flight and times them out.
            while self
                .gossip_dials
                .front()
                .is_some_and(|t| *t + Duration::from_secs(1) <= now)
            {
                self.gossip_dials.pop_front();
            }
            if self.gossip_dials.len() >= self.cfg.gossip_dials_per_second {
                tracing::debug!("gossip dial skipped: rate limit");
                self.gossip_dials_skipped += 1;
                return;
            }
            self.gossip_dials.push_back(now);
            self.outputs.push_back(Output::Connect(origin));
        } else if let Some(ch) = self.peers[&origin].channels.get(&core).copied() {
            // Connected already: ask for its state rather than trusting the announcement.
            if self.is_authenticated(ch)
                && let Some(info) = self.sync_info(&core, true)
            {
                self.send(origin, ch, Message::Sync(info));
            }
        } else {
            self.open_channel(origin, core, now);
        }
    }

    /// After lost gossip: ask every channel of the core for its state again.
    fn resync(&mut self, core: CoreKey) {
        self.broadcast_sync(core, true);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Engine, EngineConfig, Input, LocalInfo, Mode};

    /// A core truncated to nothing while an announcement waited for its interval leaves no
    /// timer behind: the driver would otherwise be woken at a past instant on every turn.
    #[test]
    fn a_core_truncated_to_nothing_drops_its_due_announcement() {
        let t0 = Instant::now();
        let mut engine = Engine::new([1; 32], EngineConfig::default());
        let core = [2; 32];
        let at = |length, fork| LocalInfo {
            fork,
            length,
            byte_length: length,
            contiguous: length,
            writable: true,
        };
        engine.add_core(core, at(1, 0), Mode::Full, t0);
        engine.handle(
            Input::LocalChanged(core, at(2, 0)),
            t0 + Duration::from_millis(10),
        );
        assert!(
            engine.poll_timeout().is_some(),
            "the second announcement waits"
        );
        engine.handle(
            Input::LocalChanged(core, at(0, 1)),
            t0 + Duration::from_millis(20),
        );
        engine.handle_timeout(t0 + Duration::from_millis(100));
        assert_eq!(engine.poll_timeout(), None, "no timer left");
    }
}

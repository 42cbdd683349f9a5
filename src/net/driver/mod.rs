//! The iroh driver: one task that owns the engine and moves bytes between it and iroh.
//!
//! Every connection, stream read, stream write, dial and storage task is a future in one of
//! two `FuturesUnordered` sets polled by this task, so there is no task per peer and no state
//! shared between peers, and no task per core: the cores replicated push their changes,
//! wanted ranges and update requests into one signal queue. Forwarding tasks exist only per
//! gossip topic joined, and one for the store's created cores when the whole store is followed.
//!
//! This file holds the driver's state, its loop and the dispatch of commands, engine outputs
//! and finished IO; each job is in its own file:
//! - `connections`: dialing, accepting and keeping one connection per peer;
//! - `streams`: channels' streams, framing, read budgets and the send backlog;
//! - `gossip`: gossip topics, their bootstrap nodes and broadcasts;
//! - `cores`: the cores replicated, their signals and their storage tasks, and leaving them;
//! - `store`: serving the whole store (cores peers ask for, `replicate_store`);
//! - `blobs`: fetching the blobs of cores replicated in full, under the blob policy.

mod blobs;
mod connections;
mod cores;
mod gossip;
mod store;
mod streams;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Instant,
};

use bytes::Bytes;
use iroh::{
    Endpoint, EndpointAddr, EndpointId,
    address_lookup::memory::MemoryLookup,
    endpoint::{Connection, RecvStream, SendStream},
};
use iroh_gossip::{Gossip, api::GossipSender};
use n0_future::{FuturesUnordered, StreamExt, boxed::BoxFuture};
use tokio::{
    sync::{broadcast, mpsc, oneshot},
    task::{AbortHandle, JoinSet},
};

use super::frames::{Budget, FrameReader, MAX_BUFFERED_TOTAL, ReadError};
use crate::{
    core::{Hypercore, SignalQueue},
    crypto::{CoreKey, DiscoveryKey},
    replication::{
        Engine, Event, Input, Mode, Output, PeerId,
        engine::{ChannelId, ExtensionTarget, PeerStats},
        wire::Message,
    },
    store::Corestore,
};

use connections::Conn;
pub use connections::{DIAL_TIMEOUT, MAX_CONNECTIONS, MAX_DIALS, MAX_JOIN_NODES};
use cores::{Replicated, Why};
use streams::ChannelIo;

/// What a node holds and refused over all its peers: the resources peers can make it spend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Open connections (at most [`MAX_CONNECTIONS`]).
    pub connections: usize,
    /// Dials in flight (at most [`MAX_DIALS`]).
    pub dials_in_flight: usize,
    /// Dials that gossip announcements asked for and the rate limit skipped.
    pub gossip_dials_skipped: u64,
    /// Channels peers opened for cores this node does not replicate, waiting.
    pub parked_channels: usize,
    /// Bytes of unfinished frames held, over all connections.
    pub buffered_bytes: u64,
    /// Bytes queued towards peers that QUIC has not taken yet.
    pub backlog_bytes: u64,
    /// Cores replicated: named by the application, followed for the store, or served to a
    /// peer that asked.
    pub cores: usize,
    /// Blobs being fetched or waiting for a fetch under the blob policy.
    pub blob_fetches: usize,
}

/// Requests from [`HypercoreProtocol`](super::HypercoreProtocol) handles.
pub(crate) enum Command {
    Accept(Connection),
    /// Replicate a core; `None` keeps the mode of a core already replicated (else full).
    Replicate(Hypercore, Option<Mode>, oneshot::Sender<()>),
    Join(CoreKey, Vec<EndpointAddr>, oneshot::Sender<()>),
    /// Stop replicating a core; answers whether it was replicated.
    Leave(CoreKey, oneshot::Sender<bool>),
    /// Follow every core of the store in a mode.
    ReplicateStore(Mode, oneshot::Sender<()>),
    /// Deliver extension messages of a name.
    RegisterExtension(String, oneshot::Sender<()>),
    /// Send an extension message; answers on how many channels it was queued.
    SendExtension(ExtensionTarget, String, Bytes, oneshot::Sender<usize>),
    PeerStats(oneshot::Sender<Vec<PeerStats>>),
    CorePeers(CoreKey, oneshot::Sender<Vec<PeerId>>),
    /// The peers that may hold a core's blobs: those with an open channel for it, then the
    /// nodes it was joined with.
    BlobProviders(CoreKey, oneshot::Sender<Vec<EndpointId>>),
    /// A blob provider sent bytes that failed verification.
    BlobInvalid(CoreKey, EndpointId, String),
    NodeStats(oneshot::Sender<NodeStats>),
    Shutdown(oneshot::Sender<()>),
}

/// Sent by the per-topic gossip tasks and the store's created-cores task.
enum Forward {
    GossipReady(CoreKey, GossipSender),
    Gossip(CoreKey, Bytes),
    GossipLagged(CoreKey),
    /// A core was created in the store.
    CoreCreated(CoreKey),
    /// News of created cores was lost: list the store again.
    CreatedLagged,
}

enum Io {
    Dialed(PeerId, Result<Connection, String>),
    Accepted(PeerId, usize, Result<(SendStream, RecvStream), String>),
    Opened(
        PeerId,
        usize,
        ChannelId,
        Result<(SendStream, RecvStream), String>,
    ),
    Frames(
        PeerId,
        usize,
        ChannelId,
        FrameReader,
        Result<Option<Vec<Message>>, ReadError>,
    ),
    /// A channel's stream sent no complete handshake frame within the handshake timeout.
    HandshakeTimedOut(PeerId, usize, ChannelId),
    /// A write finished: the channel, its stream, and how many bytes it took.
    Written(ChannelId, SendStream, Result<(), String>, u64),
    Closed(PeerId, usize),
    /// A lookup of a core a peer asked for by discovery key ended.
    Found(DiscoveryKey, Option<Hypercore>),
    /// A blob fetch under the blob policy ended (`None`: nothing to fetch).
    BlobFetched(
        CoreKey,
        u64,
        crate::Result<Option<(crate::blobs::BlobRef, Option<EndpointId>)>>,
    ),
    /// Cores of the store to follow in the store's mode.
    StoreCores(Vec<Hypercore>),
    Done,
}

pub(crate) struct Driver {
    engine: Engine,
    endpoint: Endpoint,
    gossip: Option<Gossip>,
    lookup: MemoryLookup,
    /// The store whose cores are served.
    store: Corestore,
    /// Whether a core of the store a peer asks for is served without the application
    /// replicating it.
    serve_store: bool,
    /// The mode every core of the store is followed in, once `replicate_store` was called.
    store_mode: Option<Mode>,
    /// Discovery keys being looked up in the store, or waiting for a lookup.
    finding: HashSet<DiscoveryKey>,
    /// Discovery keys waiting for a lookup (at most [`MAX_LOOKUPS`] run at once).
    to_find: std::collections::VecDeque<DiscoveryKey>,
    /// Lookups running.
    lookups: usize,
    /// Cores the application left: not served on demand until replicated again.
    left: HashSet<CoreKey>,
    cores: HashMap<CoreKey, Replicated>,
    /// The latest `update()` the application asked of each core, until the engine answers.
    update_asked: HashMap<CoreKey, u64>,
    conns: HashMap<PeerId, Conn>,
    dialing: HashSet<PeerId>,
    addrs: HashMap<PeerId, EndpointAddr>,
    channels: HashMap<ChannelId, ChannelIo>,
    /// Channels with frames queued since the last flush.
    unflushed: Vec<ChannelId>,
    next_incoming: ChannelId,
    gossip_senders: HashMap<CoreKey, GossipSender>,
    gossip_bootstrap: HashMap<CoreKey, Vec<EndpointId>>,
    /// The nodes each core was joined with (at most `MAX_JOIN_NODES`): its blob providers
    /// beside its channel peers.
    join_nodes: HashMap<CoreKey, Vec<EndpointId>>,
    /// The subscription task of each joined topic.
    gossip_tasks: HashMap<CoreKey, AbortHandle>,
    io: FuturesUnordered<BoxFuture<Io>>,
    tasks: FuturesUnordered<BoxFuture<Input>>,
    forwarders: JoinSet<()>,
    /// What happens to the cores replicated (each pushes into it; see `cores`).
    signals: Arc<SignalQueue>,
    fwd_tx: mpsc::Sender<Forward>,
    fwd_rx: mpsc::Receiver<Forward>,
    events: broadcast::Sender<Event>,
    /// Where extension messages go (apart from `events`).
    extension_events: broadcast::Sender<Event>,
    /// What unfinished frames on all connections may hold.
    budget: Budget,
    /// Which blobs of cores replicated in full are fetched with their blocks.
    blob_policy: crate::blobs::BlobPolicy,
    /// Blob fetches under the policy running, and the blob blocks waiting for one.
    blob_fetching: usize,
    blob_queue: std::collections::VecDeque<(CoreKey, u64)>,
    /// Peers whose backlog grew this turn (checked against the limit after it).
    backlog_grew: Vec<PeerId>,
}

/// What a driver serves beyond the cores it is told to replicate.
pub(crate) struct Serving {
    /// Cores of the store that peers ask for (see `store`).
    pub serve_store: bool,
    /// Blobs fetched with the blocks of cores replicated in full (see `blobs`).
    pub blob_policy: crate::blobs::BlobPolicy,
}

impl Driver {
    pub(crate) fn new(
        engine: Engine,
        endpoint: Endpoint,
        gossip: Option<Gossip>,
        store: Corestore,
        serving: Serving,
        events: broadcast::Sender<Event>,
        extension_events: broadcast::Sender<Event>,
    ) -> Self {
        let Serving {
            serve_store,
            blob_policy,
        } = serving;
        let lookup = MemoryLookup::new();
        if let Ok(services) = endpoint.address_lookup() {
            services.add(lookup.clone());
        }
        let (fwd_tx, fwd_rx) = mpsc::channel(1024);
        Self {
            engine,
            endpoint,
            gossip,
            lookup,
            store,
            serve_store,
            store_mode: None,
            finding: HashSet::new(),
            to_find: Default::default(),
            lookups: 0,
            left: HashSet::new(),
            cores: HashMap::new(),
            update_asked: HashMap::new(),
            conns: HashMap::new(),
            dialing: HashSet::new(),
            addrs: HashMap::new(),
            channels: HashMap::new(),
            unflushed: Vec::new(),
            next_incoming: 1,
            gossip_senders: HashMap::new(),
            gossip_bootstrap: HashMap::new(),
            join_nodes: HashMap::new(),
            gossip_tasks: HashMap::new(),
            io: FuturesUnordered::new(),
            tasks: FuturesUnordered::new(),
            forwarders: JoinSet::new(),
            signals: SignalQueue::new(),
            fwd_tx,
            fwd_rx,
            events,
            extension_events,
            budget: Budget::new(MAX_BUFFERED_TOTAL),
            blob_policy,
            blob_fetching: 0,
            blob_queue: Default::default(),
            backlog_grew: Vec::new(),
        }
    }

    /// Runs until shutdown or until every handle is gone.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut shutdown_reply = None;
        loop {
            self.carry_out();
            let deadline = self.engine.poll_timeout();
            let signals = self.signals.clone();
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Shutdown(reply)) => { shutdown_reply = Some(reply); break; }
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                Some(io) = self.io.next(), if !self.io.is_empty() => self.on_io(io),
                Some(done) = self.tasks.next(), if !self.tasks.is_empty() => {
                    self.engine.handle(done, Instant::now());
                }
                Some(fwd) = self.fwd_rx.recv() => self.on_forward(fwd),
                batch = signals.next() => self.on_signals(batch),
                _ = sleep => self.engine.handle_timeout(Instant::now()),
            }
        }
        for (_, c) in self.conns.drain() {
            c.conn.close(0u32.into(), b"shutdown");
        }
        self.forwarders.abort_all();
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Accept(conn) => self.add_conn(conn, false),
            Command::Replicate(core, mode, reply) => {
                self.replicate(core, mode, Why::Named, now);
                let _ = reply.send(());
            }
            Command::Leave(key, reply) => {
                let _ = reply.send(self.leave(key, now));
            }
            Command::ReplicateStore(mode, reply) => {
                self.replicate_store(mode);
                let _ = reply.send(());
            }
            Command::RegisterExtension(name, reply) => {
                self.engine.register_extension(&name);
                let _ = reply.send(());
            }
            Command::SendExtension(target, name, payload, reply) => {
                let _ = reply.send(self.engine.send_extension(target, &name, payload, now));
            }
            Command::Join(key, nodes, reply) => {
                self.join(key, nodes);
                let _ = reply.send(());
            }
            Command::PeerStats(reply) => {
                let mut stats = self.engine.peer_stats();
                for s in &mut stats {
                    if let Some(c) = self.conns.get(&s.peer) {
                        s.backlog_bytes = c.backlog;
                        s.buffered_bytes = c.budget.used();
                    }
                }
                let _ = reply.send(stats);
            }
            Command::NodeStats(reply) => {
                let _ = reply.send(NodeStats {
                    connections: self.conns.len(),
                    dials_in_flight: self.dialing.len(),
                    gossip_dials_skipped: self.engine.gossip_dials_skipped(),
                    parked_channels: self.engine.parked_channels(),
                    buffered_bytes: self.budget.used(),
                    backlog_bytes: self.conns.values().map(|c| c.backlog).sum(),
                    cores: self.cores.len(),
                    blob_fetches: self.blob_fetching + self.blob_queue.len(),
                });
            }
            Command::CorePeers(key, reply) => {
                let _ = reply.send(self.engine.core_peers(&key));
            }
            Command::BlobInvalid(key, peer, reason) => {
                let peer = *peer.as_bytes();
                self.engine.handle(Input::Invalid(key, peer, reason), now);
            }
            Command::BlobProviders(key, reply) => {
                let mut ids: Vec<EndpointId> = self
                    .engine
                    .core_peers(&key)
                    .iter()
                    .filter_map(|b| EndpointId::from_bytes(b).ok())
                    .collect();
                for id in self.join_nodes.get(&key).into_iter().flatten() {
                    if !ids.contains(id) {
                        ids.push(*id);
                    }
                }
                let _ = reply.send(ids);
            }
            Command::Shutdown(_) => {}
        }
    }

    /// Carries out everything the engine asked for.
    fn carry_out(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Connect(peer) => self.dial(peer),
                Output::OpenChannel(peer, ch, first) => self.open_channel(peer, ch, first),
                Output::Send(_, ch, msg) => self.send(ch, &msg),
                Output::CloseChannel(_, ch) => self.close_channel(ch),
                Output::Task(key, task) => self.run_task(key, task),
                Output::JoinGossip(key, topic) => self.on_join_gossip(key, topic),
                Output::LeaveGossip(key) => self.leave_gossip(key),
                Output::FindCore(dk) => self.find_core(dk),
                Output::Broadcast(key, bytes) => self.broadcast(key, bytes),
                Output::Event(ev @ Event::Extension { .. }) => {
                    let _ = self.extension_events.send(ev);
                }
                Output::Event(ev) => {
                    match &ev {
                        Event::Updated { core, .. } => self.on_updated(*core),
                        Event::Download {
                            core, index, bytes, ..
                        } => self.on_block_downloaded(*core, *index, *bytes),
                        _ => {}
                    }
                    let _ = self.events.send(ev);
                }
            }
        }
        for ch in std::mem::take(&mut self.unflushed) {
            self.flush(ch);
        }
        for peer in std::mem::take(&mut self.backlog_grew) {
            self.report_backlog(&peer);
        }
    }

    fn on_forward(&mut self, fwd: Forward) {
        let now = Instant::now();
        match fwd {
            Forward::GossipReady(key, sender) => self.on_gossip_ready(key, sender),
            Forward::Gossip(key, bytes) => self.engine.handle(Input::Gossip(key, bytes), now),
            Forward::GossipLagged(key) => self.engine.handle(Input::GossipLagged(key), now),
            Forward::CoreCreated(key) => self.on_core_created(key),
            Forward::CreatedLagged => self.load_store(),
        }
    }

    fn on_io(&mut self, io: Io) {
        match io {
            Io::Dialed(peer, result) => self.on_dialed(peer, result),
            Io::Accepted(peer, conn_id, result) => self.on_accepted(peer, conn_id, result),
            Io::Opened(peer, conn_id, ch, result) => self.on_opened(peer, conn_id, ch, result),
            Io::Frames(peer, conn_id, ch, reader, result) => {
                self.on_frames(peer, conn_id, ch, reader, result)
            }
            Io::HandshakeTimedOut(peer, conn_id, ch) => {
                self.on_handshake_timed_out(peer, conn_id, ch)
            }
            Io::Written(ch, send, result, bytes) => self.on_written(ch, send, result, bytes),
            Io::Closed(peer, conn_id) => {
                if self.current(&peer, conn_id) {
                    self.remove_conn(&peer);
                }
            }
            Io::Found(dk, core) => self.on_found(dk, core, Instant::now()),
            Io::StoreCores(cores) => self.on_store_cores(cores, Instant::now()),
            Io::BlobFetched(core, index, result) => self.on_blob_fetched(core, index, result),
            Io::Done => {}
        }
    }
}

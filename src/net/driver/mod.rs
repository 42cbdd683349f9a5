//! The iroh driver: one task that owns the engine and moves bytes between it and iroh.
//!
//! It routes between the engine and parts that each own their state and the futures of their
//! IO, so there is no task per peer, no state shared between peers, and no task per core:
//!
//! - `connections`: dialing, accepting and keeping one connection per peer, and the budgets
//!   of unfinished frames;
//! - `streams`: channels' streams, framing, reads within the budgets and the send backlog;
//! - `gossip`: gossip topics, their bootstrap nodes and broadcasts (a forwarding task per
//!   topic joined);
//! - `cores`: the cores replicated, their signals (one queue for all) and their storage tasks;
//! - `store`: serving the whole store (cores peers ask for, `replicate_store`);
//! - `blobs`: fetching the blobs of cores replicated in full, under the blob policy.
//!
//! `impl Driver` is this file: the loop, the commands of [`HypercoreProtocol`](super::HypercoreProtocol)
//! handles, the engine's outputs, and what each part's IO means to the engine.

mod blobs;
mod connections;
mod cores;
mod gossip;
mod peer_book;
mod replicated;
mod store;
mod streams;
mod trace;
mod wire;

use std::time::Instant;

use bytes::Bytes;
use iroh::{
    Endpoint, EndpointAddr, EndpointId,
    endpoint::{Connection, RecvStream, SendStream},
};
use iroh_gossip::Gossip;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::frames::{Exceeded, FrameReader, ReadError};
use crate::{
    core::{Hypercore, Signal},
    crypto::{CoreKey, DiscoveryKey},
    hyperwire::connection::WireInput,
    replication::{
        Engine, Event, Input, Mode, Output, PeerId,
        engine::{ChannelId, ExtensionTarget, PeerStats},
        storage,
        wire::{MAX_HANDSHAKE_FRAME, Message, SyncInfo},
    },
    store::Corestore,
};

use blobs::BlobFetches;
use connections::{Added, ConnEvent, Connections};
pub use connections::{DIAL_TIMEOUT, MAX_CONNECTIONS, MAX_DIALS, MAX_JOIN_NODES};
use cores::Cores;
use gossip::{GossipTopics, Heard};
use peer_book::{BookEvent, PeerBook};
use replicated::Why;
use store::{SERVED_MODE, StoreEvent, StoreServing};
use streams::{ReadLimit, StreamEvent, Streams};
pub use wire::WireLink;
use wire::{Heard as WireHeard, WireLinks};
pub use wire::{
    MAX_WIRE_CONNECTIONS, MAX_WIRE_HANDSHAKES, WIRE_HANDSHAKE_TIMEOUT, WIRE_IDLE_TIMEOUT,
};
pub(crate) use wire::{WireEvent, run_link};

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
    /// The counters of [`PeerStats`] summed over every peer since the start, those that left
    /// included (`peer` is zeros, `channels` the channels open now).
    pub peer_totals: PeerStats,
    /// The store's database writes.
    pub storage: crate::storage::StorageStats,
}

/// Requests from [`HypercoreProtocol`](super::HypercoreProtocol) handles.
pub(crate) enum Command {
    Accept(Connection),
    /// Replicate a core; `None` keeps the mode of a core already replicated (else full).
    Replicate(Hypercore, Option<Mode>, oneshot::Sender<()>),
    /// Replicate a core (keeping the mode of one already replicated, else full) and join
    /// nodes for it, in one turn of the driver.
    Join(Hypercore, Vec<EndpointAddr>, oneshot::Sender<()>),
    /// Stop replicating a core; answers whether it was replicated.
    Leave(CoreKey, oneshot::Sender<bool>),
    /// Follow every core of the store in a mode.
    ReplicateStore(Mode, oneshot::Sender<()>),
    /// Connect to peers for the whole store: each gets every core replicated.
    JoinStore(Vec<EndpointAddr>, oneshot::Sender<()>),
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
    /// Whose blobs are served now, and the blob store they are in (none if the store has
    /// none).
    BlobScope(oneshot::Sender<Option<(crate::blobs::BlobStore, crate::blobs::BlobScope)>>),
    /// A connection on Hypercore's own wire (its tasks report here).
    Wire(WireEvent),
    Shutdown(oneshot::Sender<()>),
}

/// What a driver serves beyond the cores it is told to replicate.
pub(crate) struct Serving {
    /// Cores of the store that peers ask for (see `store`).
    pub serve_store: bool,
    /// Blobs fetched with the blocks of cores replicated in full (see `blobs`).
    pub blob_policy: crate::blobs::BlobPolicy,
}

/// The driver; see the module docs.
pub(crate) struct Driver {
    engine: Engine,
    conns: Connections,
    streams: Streams,
    wire: WireLinks,
    gossip: GossipTopics,
    cores: Cores,
    store: StoreServing,
    blobs: BlobFetches,
    book: PeerBook,
    /// Where the engine's events go.
    events: broadcast::Sender<Event>,
    /// Where extension messages go (apart from `events`).
    extension_events: broadcast::Sender<Event>,
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
        let me = endpoint.id();
        Self {
            engine,
            conns: Connections::new(endpoint),
            streams: Streams::default(),
            wire: WireLinks::default(),
            gossip: GossipTopics::new(gossip, me),
            cores: Cores::new(serving.serve_store),
            store: StoreServing::new(store, serving.serve_store),
            blobs: BlobFetches::new(serving.blob_policy),
            book: PeerBook::default(),
            events,
            extension_events,
        }
    }

    /// Runs until shutdown or until every handle is gone.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut shutdown_reply = None;
        loop {
            self.carry_out();
            let deadline = self.engine.poll_timeout();
            let signals = self.cores.signal_queue();
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
                ev = self.conns.next() => self.on_conn_event(ev),
                ev = self.streams.next() => self.on_stream_event(ev),
                done = self.cores.next_done() => self.engine.handle(done, Instant::now()),
                batch = signals.next() => self.on_signals(batch),
                heard = self.gossip.next() => self.on_gossip(heard),
                ev = self.store.next() => self.on_store_event(ev),
                fetched = self.blobs.next() => self.on_blob_fetched(fetched),
                ev = self.book.next() => self.on_book_event(ev),
                _ = sleep => self.engine.handle_timeout(Instant::now()),
            }
        }
        self.conns.close_all();
        self.wire = WireLinks::default();
        self.gossip.shutdown();
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
                self.store.left(key);
                let _ = reply.send(self.stop(key, now));
            }
            Command::ReplicateStore(mode, reply) => {
                self.store.follow(mode);
                // The peers joined before are store peers too: they get every core.
                let peers: Vec<PeerId> = self
                    .cores
                    .all_join_nodes()
                    .iter()
                    .map(|id| *id.as_bytes())
                    .collect();
                if !peers.is_empty() {
                    self.engine.handle(Input::StorePeers(peers), now);
                }
                let _ = reply.send(());
            }
            Command::JoinStore(nodes, reply) => {
                self.join_store(nodes, now);
                let _ = reply.send(());
            }
            Command::RegisterExtension(name, reply) => {
                self.engine.register_extension(&name);
                let _ = reply.send(());
            }
            Command::SendExtension(target, name, payload, reply) => {
                let _ = reply.send(self.engine.send_extension(target, &name, payload, now));
            }
            Command::Join(core, nodes, reply) => {
                let key = core.key();
                self.replicate(core, None, Why::Named, now);
                self.join(key, nodes);
                let _ = reply.send(());
            }
            Command::PeerStats(reply) => {
                let mut stats = self.engine.peer_stats();
                for s in &mut stats {
                    if self.wire.has(&s.peer) {
                        s.backlog_bytes = self.wire.backlog(Some(&s.peer));
                    } else if self.conns.get(&s.peer).is_some() {
                        s.backlog_bytes = self.streams.backlog(Some(&s.peer));
                        s.buffered_bytes = self.conns.buffered(Some(&s.peer));
                    }
                }
                let _ = reply.send(stats);
            }
            Command::NodeStats(reply) => {
                let (connections, dials_in_flight) = self.conns.counts();
                let _ = reply.send(NodeStats {
                    connections,
                    dials_in_flight,
                    gossip_dials_skipped: self.engine.gossip_dials_skipped(),
                    parked_channels: self.engine.parked_channels(),
                    buffered_bytes: self.conns.buffered(None),
                    backlog_bytes: self.streams.backlog(None) + self.wire.backlog(None),
                    cores: self.cores.len(),
                    blob_fetches: self.blobs.pending(),
                    peer_totals: self.engine.peer_totals(),
                    storage: self.store.corestore().stats(),
                });
            }
            Command::BlobScope(reply) => {
                let scope = if self.store.serves_store() {
                    crate::blobs::BlobScope::Every {
                        except: self.store.left_cores().into_iter().collect(),
                    }
                } else {
                    crate::blobs::BlobScope::Only(self.cores.keys().into_iter().collect())
                };
                let store = crate::store::shared_blobs_of(self.store.corestore())
                    .store()
                    .cloned();
                let _ = reply.send(store.map(|s| (s, scope)));
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
                for id in self.cores.join_nodes(&key) {
                    if !ids.contains(id) {
                        ids.push(*id);
                    }
                }
                let _ = reply.send(ids);
            }
            Command::Wire(ev) => self.on_wire_event(ev, now),
            Command::Shutdown(_) => {}
        }
    }

    /// What a connection on Hypercore's own wire did.
    fn on_wire_event(&mut self, ev: WireEvent, now: Instant) {
        match ev {
            WireEvent::Up {
                link,
                peer,
                binding,
                frames,
                shared,
                stop,
                taken,
            } => {
                // One connection per peer, whichever the transport: a peer connected over
                // iroh is refused; a new wire connection of the same peer replaces the old
                // (the peer redialed after losing it).
                if self.conns.get(&peer).is_some() || peer == *self.conns.me().as_bytes() {
                    let _ = taken.send(false);
                    return;
                }
                self.wire_gone(&peer, now);
                let limit = self.engine.config().max_backlog_bytes;
                let added = self.wire.add(link, peer, frames, shared, stop, limit);
                let _ = taken.send(added);
                if added {
                    tracing::info!(peer = %trace::Short(peer), "hypercore wire peer connected");
                    self.engine
                        .handle(Input::WirePeerConnected(peer, binding), now);
                }
            }
            WireEvent::Frames(link, frames, bytes) => {
                let Some(peer) = self.wire.peer_of(link) else {
                    return;
                };
                let result = self.wire.on_frames(&peer, &frames);
                self.wire.taken_in(&peer, bytes);
                if let Err(e) = result {
                    tracing::info!(peer = %trace::Short(peer), "hypercore wire peer dropped: {e}");
                    self.wire_gone(&peer, now);
                }
            }
            WireEvent::Drained(link) => {
                if let Some(WireHeard::Backlog(peer, bytes, over)) = self.wire.drained(link) {
                    self.engine
                        .handle(Input::Backlog { peer, bytes, over }, now);
                }
            }
            WireEvent::Down(link, reason) => {
                if let Some(peer) = self.wire.peer_of(link) {
                    tracing::info!(peer = %trace::Short(peer), "hypercore wire peer gone: {reason}");
                    self.wire_gone(&peer, now);
                }
            }
        }
    }

    /// A wire peer's connection ended: the engine forgets the peer.
    fn wire_gone(&mut self, peer: &PeerId, now: Instant) {
        if self.wire.remove(peer) {
            self.engine.handle(Input::PeerDisconnected(*peer), now);
        }
    }

    /// Hands the wire connections' queued frames to their writers and tells the engine what
    /// their peers said; returns whether there was something to tell.
    fn flush_wire(&mut self) -> bool {
        if self.wire.is_empty() {
            return false;
        }
        let heard = self.wire.flush();
        let now = Instant::now();
        let any = !heard.is_empty();
        for h in heard {
            let input = match h {
                WireHeard::Input(peer, WireInput::Message(ch, msg)) => {
                    Input::Message(peer, ch, msg)
                }
                WireHeard::Input(peer, WireInput::Closed(ch)) => Input::ChannelClosed(peer, ch),
                WireHeard::Backlog(peer, bytes, over) => Input::Backlog { peer, bytes, over },
                WireHeard::Close(peer) => {
                    tracing::warn!(peer = %trace::Short(peer), "hypercore wire peer does not read: closing its connection");
                    self.wire_gone(&peer, now);
                    continue;
                }
            };
            self.engine.handle(input, now);
        }
        any
    }

    /// Carries out everything the engine asked for, then writes what it queued and tells it
    /// of the backlogs that crossed their limit (until that asks for nothing more).
    fn carry_out(&mut self) {
        loop {
            self.carry_out_outputs();
            self.streams.flush_all();
            let heard = self.flush_wire();
            if !self.report_backlogs() && !heard {
                break;
            }
        }
    }

    /// Carries out the engine's outputs.
    fn carry_out_outputs(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                // A wire peer is connected by whoever gave its stream.
                Output::Connect(peer) if self.wire.has(&peer) => {}
                Output::Connect(peer) => self.conns.dial(peer),
                Output::OpenChannel(peer, ch, first) if self.wire.has(&peer) => {
                    self.wire.open(&peer, ch, &first)
                }
                Output::OpenChannel(peer, ch, first) => self.open_channel(peer, ch, &first),
                Output::Send(peer, ch, msg) if self.wire.has(&peer) => {
                    self.wire.send(&peer, ch, msg)
                }
                Output::Send(_, ch, msg) => self.streams.send(ch, &msg),
                Output::CloseChannel(peer, ch) if self.wire.has(&peer) => {
                    self.wire.close(&peer, ch)
                }
                Output::CloseChannel(_, ch) => self.streams.close(ch),
                Output::Task(key, task) => self.run_task(key, task),
                Output::JoinGossip(key, topic) => {
                    if let Some(topic) = self.cores.set_topic(&key, topic) {
                        self.gossip.join(key, topic);
                    }
                }
                Output::LeaveGossip(key) => self.gossip.leave(&key),
                Output::FindCore(dk) => {
                    let engine = &self.engine;
                    self.store.find(dk, |dk| engine.is_parked(dk));
                }
                Output::Broadcast(key, bytes) => self.gossip.broadcast(&key, bytes),
                Output::Event(ev @ Event::Extension { .. }) => {
                    trace::log_event(&ev);
                    let _ = self.extension_events.send(ev);
                }
                Output::Event(ev) => {
                    trace::log_event(&ev);
                    match &ev {
                        // As JS Hypercore does: a peer on its wire that shows a wrong
                        // capability loses its connection, not only the channel.
                        Event::ChannelRefused { peer, reason }
                            if reason.starts_with("invalid capability") && self.wire.has(peer) =>
                        {
                            tracing::info!(peer = %trace::Short(*peer), "hypercore wire peer dropped: {reason}");
                            let peer = *peer;
                            self.wire_gone(&peer, Instant::now());
                        }
                        Event::Updated { core, .. } => self.cores.updated(core),
                        Event::ChannelOpen { core, peer } => self.channel_opened(*core, *peer),
                        Event::Download {
                            core, index, bytes, ..
                        } => {
                            let full = self.engine.mode(core) == Some(Mode::Full);
                            if self.blobs.block_downloaded(*core, *index, *bytes, full) {
                                self.blobs.start(|k| self.cores.core(k));
                            }
                        }
                        _ => {}
                    }
                    let _ = self.events.send(ev);
                }
            }
        }
    }

    /// Tells the engine of the peers that went over their backlog limit or back under it;
    /// returns whether there was one.
    fn report_backlogs(&mut self) -> bool {
        let cfg = self.engine.config();
        let (max, max_total) = (cfg.max_backlog_bytes, cfg.max_backlog_total);
        let crossed = self.streams.backlog_crossings(max, max_total);
        for &(peer, bytes, over) in &crossed {
            let input = Input::Backlog { peer, bytes, over };
            self.engine.handle(input, Instant::now());
        }
        // Past twice the budget (peers held to their share still added to it): the peer
        // holding the most, which does not read, loses its connection and what was queued.
        let mut evicted = false;
        while self.streams.backlog(None) > max_total.saturating_mul(2)
            && let Some(peer) = self.streams.largest_backlog()
        {
            tracing::warn!(
                peer = %trace::Short(peer),
                "backlog budget spent: closing the connection of the largest holder"
            );
            if let Some(conn) = self.remove_conn(&peer) {
                conn.close(1u32.into(), b"does not read");
            } else {
                self.streams.remove_peer(&peer);
            }
            evicted = true;
        }
        !crossed.is_empty() || evicted
    }

    // Connections.

    /// Dials the nodes a ticket (or `join`) names, at most [`MAX_JOIN_NODES`], and adds them
    /// to the core's gossip topic; they stay the core's blob providers beside its channel
    /// peers.
    /// Dials `nodes` and makes them store peers: each gets a channel for every core
    /// replicated (all of the store's under `replicate_store`).
    fn join_store(&mut self, nodes: Vec<EndpointAddr>, now: Instant) {
        let me = self.conns.me();
        let mut peers = Vec::new();
        for addr in nodes
            .into_iter()
            .filter(|a| a.id != me)
            .take(crate::replication::engine::MAX_STORE_PEERS)
        {
            let peer = *addr.id.as_bytes();
            peers.push(peer);
            self.conns.remember(addr);
            self.conns.dial(peer);
        }
        self.engine.handle(Input::StorePeers(peers), now);
    }

    fn join(&mut self, key: CoreKey, nodes: Vec<EndpointAddr>) {
        let me = self.conns.me();
        let nodes: Vec<EndpointAddr> = nodes
            .into_iter()
            .filter(|a| a.id != me)
            .take(MAX_JOIN_NODES)
            .collect();
        let ids: Vec<EndpointId> = nodes.iter().map(|a| a.id).collect();
        self.cores.joined(key, &ids, me);
        if let Some(core) = self.cores.core(&key) {
            self.book.add(&core, &nodes);
        }
        for addr in nodes {
            let peer = *addr.id.as_bytes();
            self.conns.remember(addr);
            self.conns.dial(peer);
        }
        let peers: Vec<PeerId> = ids.iter().map(|id| *id.as_bytes()).collect();
        if self.store.mode().is_some() {
            // Joined while the whole store is replicated: they get every core.
            self.engine
                .handle(Input::StorePeers(peers.clone()), Instant::now());
        }
        self.engine.handle(Input::Peers(key, peers), Instant::now());
        self.gossip.add_nodes(key, ids);
    }

    /// A channel of `core` with `peer` opened: the peer goes first in the core's book.
    fn channel_opened(&mut self, core: CoreKey, peer: PeerId) {
        if let (Some(c), Some(addr)) = (self.cores.core(&core), self.conns.addr_of(&peer)) {
            self.book.useful(&c, addr);
        }
    }

    /// A core's record of peers was read, or written.
    fn on_book_event(&mut self, ev: BookEvent) {
        match ev {
            BookEvent::Loaded(key, record) => {
                let Some(book) = self.book.loaded(key, record, self.cores.core(&key)) else {
                    return;
                };
                let ids = |addrs: &[iroh::EndpointAddr]| -> Vec<PeerId> {
                    addrs.iter().map(|a| *a.id.as_bytes()).collect()
                };
                let (named, useful) = (ids(&book.named), ids(&book.useful));
                // They bootstrap the core's gossip topic too.
                let gossip_ids = book
                    .named
                    .iter()
                    .chain(&book.useful)
                    .map(|a| a.id)
                    .collect();
                self.gossip.add_nodes(key, gossip_ids);
                for addr in book.named.into_iter().chain(book.useful) {
                    self.conns.remember(addr);
                }
                let now = Instant::now();
                self.engine.handle(Input::Peers(key, named), now);
                self.engine.handle(Input::PeersSeen(key, useful), now);
            }
            BookEvent::Saved(key) => {
                let core = self.cores.core(&key);
                self.book.saved(key, core);
            }
        }
    }

    /// Registers a connection, keeping one per peer (the one dialed by the lower id).
    fn add_conn(&mut self, conn: Connection, dialed_by_me: bool) {
        if self.wire.has(conn.remote_id().as_bytes()) {
            conn.close(0u32.into(), b"connected on the hypercore wire");
            return;
        }
        let Added::Kept(peer, replaced) = self.conns.add(conn, dialed_by_me) else {
            return;
        };
        if let Some(old) = replaced {
            self.peer_gone(&peer);
            old.conn.close(0u32.into(), b"duplicate connection");
        }
        self.engine
            .handle(Input::PeerConnected(peer), Instant::now());
    }

    /// Forgets `peer`'s connection (the caller closes it): its streams go, and the engine
    /// forgets the peer.
    fn remove_conn(&mut self, peer: &PeerId) -> Option<Connection> {
        let c = self.conns.remove(peer)?;
        self.peer_gone(peer);
        Some(c.conn)
    }

    /// `peer`'s connection was removed: its streams go, and the engine forgets the peer.
    fn peer_gone(&mut self, peer: &PeerId) {
        self.streams.remove_peer(peer);
        self.engine
            .handle(Input::PeerDisconnected(*peer), Instant::now());
    }

    fn on_conn_event(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Dialed(peer, result) => {
                self.conns.dialed(&peer);
                match result {
                    Ok(conn) => self.add_conn(conn, true),
                    Err(e) => tracing::info!(peer = %trace::Short(peer), "dial failed: {e}"),
                }
            }
            ConnEvent::Accepted(peer, conn_id, Ok((send, recv))) => {
                self.on_accepted(peer, conn_id, send, recv)
            }
            ConnEvent::Accepted(..) => {}
            ConnEvent::Closed(peer, conn_id) => {
                if self.conns.is_current(&peer, conn_id) {
                    self.remove_conn(&peer);
                }
            }
        }
    }

    // Streams.

    /// The peer opened a stream: a new channel, read from at once; the next stream is awaited.
    fn on_accepted(&mut self, peer: PeerId, conn_id: usize, send: SendStream, recv: RecvStream) {
        if !self.conns.is_current(&peer, conn_id) {
            return;
        }
        let budgets = self.conns.budgets(&peer);
        let (ch, reader) = self.streams.accept(peer, conn_id, send, recv, budgets);
        self.read_next(peer, conn_id, ch, reader);
        self.conns.accept_next(peer, conn_id);
    }

    /// Opens a stream for the engine's channel `ch` to `peer`, starting with `first`.
    fn open_channel(&mut self, peer: PeerId, ch: ChannelId, first: &Message) {
        let Some(c) = self.conns.get(&peer) else {
            self.engine
                .handle(Input::ChannelClosed(peer, ch), Instant::now());
            return;
        };
        let (conn, conn_id) = (c.conn.clone(), c.id);
        self.streams.open(peer, conn, conn_id, ch, first);
    }

    /// Reads the next frames of a channel: only handshake-sized ones until both sides proved
    /// the key. A stream the peer opened must complete a frame within the handshake timeout
    /// (and a second more, so that the engine's own expiry of a parked channel, which says
    /// why, comes first): one whose first frame never completes is not kept open. Channels we
    /// opened are timed by the engine.
    fn read_next(&mut self, peer: PeerId, conn_id: usize, ch: ChannelId, reader: FrameReader) {
        let theirs = !ch.is_multiple_of(2);
        let limit = if self.engine.is_authenticated(ch) || !theirs {
            ReadLimit::Frames(self.engine.max_frame(ch))
        } else {
            let within = self.engine.config().handshake_timeout + std::time::Duration::from_secs(1);
            ReadLimit::Handshake(MAX_HANDSHAKE_FRAME, within)
        };
        self.streams.read(peer, conn_id, ch, reader, limit);
    }

    /// A channel's stream is gone: the engine is told.
    fn channel_closed(&mut self, peer: PeerId, ch: ChannelId) {
        self.streams.remove(ch);
        self.engine
            .handle(Input::ChannelClosed(peer, ch), Instant::now());
    }

    fn on_stream_event(&mut self, ev: StreamEvent) {
        // Whatever is logged while a channel's frames are handled says whose and which core.
        let (peer, ch) = match &ev {
            StreamEvent::Opened(peer, _, ch, _)
            | StreamEvent::Frames(peer, _, ch, ..)
            | StreamEvent::HandshakeTimedOut(peer, _, ch) => (Some(*peer), *ch),
            StreamEvent::Written(ch, ..) => (None, *ch),
        };
        // Checked first: the fields (a hash) are not computed for a span nobody records.
        let span = if trace::enabled(tracing::Level::DEBUG) {
            tracing::debug_span!(
                "channel",
                ch,
                peer = peer.map(|p| trace::Short(p).to_string()),
                dk = self
                    .engine
                    .channel_core(ch)
                    .map(|core| trace::dk(&core).to_string()),
            )
        } else {
            tracing::Span::none()
        };
        let _entered = span.entered();
        match ev {
            StreamEvent::Opened(peer, conn_id, ch, result) => {
                let budgets = self.conns.budgets(&peer);
                let reader = match result {
                    Ok((send, recv)) => self.streams.opened(ch, conn_id, send, recv, budgets),
                    Err(_) => None,
                };
                match reader {
                    Some(reader) => self.read_next(peer, conn_id, ch, reader),
                    None if self.streams.has(ch) => self.channel_closed(peer, ch),
                    None => {}
                }
            }
            StreamEvent::Frames(peer, conn_id, ch, reader, result) => {
                self.on_frames(peer, conn_id, ch, reader, result)
            }
            StreamEvent::HandshakeTimedOut(peer, conn_id, ch) => {
                if self.conns.is_current(&peer, conn_id) && self.streams.has(ch) {
                    tracing::debug!("no handshake frame in time: channel closed");
                    self.channel_closed(peer, ch);
                }
            }
            StreamEvent::Written(ch, send, result, bytes) => {
                if let Some((peer, true)) = self.streams.written(ch, send, result, bytes) {
                    self.engine
                        .handle(Input::ChannelClosed(peer, ch), Instant::now());
                }
            }
        }
    }

    /// Frames arrived on a channel (or its stream ended or broke the framing).
    fn on_frames(
        &mut self,
        peer: PeerId,
        conn_id: usize,
        ch: ChannelId,
        reader: FrameReader,
        result: Result<Option<Vec<Message>>, ReadError>,
    ) {
        let now = Instant::now();
        // A channel we closed, or a connection that was replaced: stop reading it.
        if !self.conns.is_current(&peer, conn_id) || !self.streams.has(ch) {
            return;
        }
        match result {
            Ok(Some(msgs)) => {
                // The engine learns of local appends a hop after they commit: an `update()`
                // that starts after an acknowledged append must hear of it. Every frame of the
                // batch was read after such an append committed, so its state now will do.
                if msgs
                    .iter()
                    .any(|m| matches!(m, Message::Sync(SyncInfo { ask: true, .. })))
                    && let Some(core) = self.engine.channel_core(ch)
                {
                    self.local_changed(core, now);
                }
                self.engine.handle_messages(peer, ch, msgs, now);
                self.read_next(peer, conn_id, ch, reader);
            }
            Err(ReadError::OverBudget(Exceeded::Total)) => {
                // The node's budget is spent: the connection holding the most gives way
                // (whoever asked), and this read is tried again.
                match self.conns.largest_holder().filter(|l| *l != peer) {
                    Some(evicted) => {
                        tracing::warn!(
                            peer = %trace::Short(evicted),
                            "frame budget spent: closing the largest holder"
                        );
                        if let Some(conn) = self.remove_conn(&evicted) {
                            conn.close(1u32.into(), b"too much buffered");
                        }
                        self.read_next(peer, conn_id, ch, reader);
                    }
                    None => {
                        if let Some(conn) = self.remove_conn(&peer) {
                            conn.close(1u32.into(), b"too much buffered");
                        }
                    }
                }
            }
            Err(e @ (ReadError::Wire(_) | ReadError::OverBudget(Exceeded::Connection))) => {
                tracing::warn!(
                    peer = %trace::Short(peer),
                    "closing connection to a peer that broke framing: {e}"
                );
                if let Some(conn) = self.remove_conn(&peer) {
                    conn.close(1u32.into(), b"protocol violation");
                }
            }
            Ok(None) | Err(_) => {
                if let Err(e) = result {
                    tracing::debug!("channel read failed: {e}");
                }
                self.channel_closed(peer, ch);
            }
        }
    }

    // Cores.

    /// Replicates `core` in `mode` (`None` keeps the mode of a core already replicated, else
    /// full), for the reason `why`: a core the application names joins its gossip topic.
    fn replicate(&mut self, core: Hypercore, mode: Option<Mode>, why: Why, now: Instant) {
        let key = core.key();
        if core.is_closed() {
            return;
        }
        if why == Why::Named {
            self.store.named(&key);
        }
        self.forget_closed(&key, now);
        if self.cores.contains(&key) {
            let (promoted, topic) = self.cores.promote(&core, why);
            if let Some(topic) = topic {
                self.gossip.join(key, topic);
            }
            if !promoted && mode.is_none() {
                return;
            }
        } else {
            self.cores.track(core.clone(), why);
        }
        let local = storage::local_info(&core);
        self.engine
            .add_core(key, local, mode.unwrap_or_default(), now);
        if why == Why::Named {
            // The peers it remembers from before are dialed while it has none.
            self.book.load(core);
        }
    }

    /// Serves `core` (found in the store for a peer) to the peers whose parked channels prove
    /// its key; if none does, it is not kept.
    fn serve(&mut self, core: Hypercore, mode: Mode, now: Instant) {
        let key = core.key();
        self.forget_closed(&key, now);
        if self.cores.contains(&key) {
            return;
        }
        self.cores.track(core.clone(), Why::Served);
        let local = storage::local_info(&core);
        if !self.engine.serve_core(key, local, mode, now) {
            // Nobody proved the key: the core is not kept, and the application's reads on it
            // (if it has some) are none of this.
            self.cores.untrack(&key);
        }
    }

    /// Drops the replication of `key` if its handle was closed, deleted or dropped (a core of
    /// the same key opened since is another one).
    fn forget_closed(&mut self, key: &CoreKey, now: Instant) {
        if self.cores.is_gone(key) {
            self.stop(*key, now);
        }
    }

    /// Stops replicating `key`: the engine closes its channels, its gossip topic is left, its
    /// signals are no longer followed and the reads waiting on it fail. Returns whether it was
    /// replicated.
    fn stop(&mut self, key: CoreKey, now: Instant) -> bool {
        let replicated = self.engine.remove_core(key, now);
        self.gossip.leave(&key);
        self.book.forget(&key);
        self.cores.remove(&key);
        replicated
    }

    /// Takes the signals of the cores replicated.
    fn on_signals(&mut self, batch: Vec<(CoreKey, Signal)>) {
        let now = Instant::now();
        for (key, signal) in batch {
            match signal {
                Signal::Changed => self.local_changed(key, now),
                Signal::Want(s, e) => self.engine.handle(Input::Want(key, s, e), now),
                Signal::Unwant(s, e) => self.engine.handle(Input::Unwant(key, s, e), now),
                Signal::Update(asked) => {
                    if self.cores.update_asked(key, asked) {
                        self.engine.handle(Input::Update(key), now);
                    }
                }
                // Stops if the handle replicated is the one closed, deleted or dropped.
                Signal::Closed => self.forget_closed(&key, now),
                Signal::Dropped => {
                    let was_replicated = self.cores.contains(&key);
                    self.forget_closed(&key, now);
                    if was_replicated && !self.cores.contains(&key) {
                        // Still a core of the store: followed again if the store is.
                        self.on_core_created(key);
                    }
                }
            }
        }
    }

    /// Tells the engine the state of `key` if it changed since the engine last heard of it. A
    /// commit of the engine's own storage task reaches the engine with the task's result: its
    /// change signal then finds nothing new, and the engine hears of the commit once.
    fn local_changed(&mut self, key: CoreKey, now: Instant) {
        if let Some(core) = self.cores.core(&key) {
            let info = storage::local_info(&core);
            if self.engine.local(&key) != Some(info) {
                self.engine.handle(Input::LocalChanged(key, info), now);
            }
        }
    }

    /// Runs a storage task of the engine on its core; its result goes back to the engine
    /// (failed at once if the core is no longer replicated: every task is answered).
    fn run_task(&mut self, key: CoreKey, task: crate::replication::Task) {
        if self.cores.is_dropped(&key) {
            // Its last handle went and the signal is still queued: stop it first, so that
            // the engine takes the task's failure for a core it no longer has rather than
            // for an empty log.
            self.stop(key, Instant::now());
        }
        self.cores.run(key, task);
    }

    // Gossip.

    fn on_gossip(&mut self, heard: Heard) {
        let now = Instant::now();
        match heard {
            Heard::Message(key, bytes) => self.engine.handle(Input::Gossip(key, bytes), now),
            Heard::Lagged(key) => self.engine.handle(Input::GossipLagged(key), now),
            Heard::Neighbor(key, id) => {
                if id != self.conns.me() {
                    self.engine
                        .handle(Input::PeersSeen(key, vec![*id.as_bytes()]), now);
                }
            }
        }
    }

    // The whole store.

    fn on_store_event(&mut self, ev: StoreEvent) {
        let now = Instant::now();
        match ev {
            StoreEvent::Found(found) => self.on_found(found, now),
            StoreEvent::Cores(cores) => self.on_store_cores(cores, now),
            StoreEvent::Created(key) => self.on_core_created(key),
        }
    }

    /// A read of lookups ended: each core found (and not left by the application) is served
    /// to the peers that proved its key; otherwise their channels wait out their handshake
    /// timeout.
    fn on_found(&mut self, found: Vec<(DiscoveryKey, Option<Hypercore>)>, now: Instant) {
        let engine = &self.engine;
        self.store
            .found(found.iter().map(|(dk, _)| dk), |dk| engine.is_parked(dk));
        for (_, core) in found {
            match core {
                Some(core) if !self.store.is_left(&core.key()) && !core.is_closed() => {
                    match self.store.mode() {
                        Some(mode) => self.replicate(core, Some(mode), Why::Store, now),
                        None => self.serve(core, SERVED_MODE, now),
                    }
                }
                _ => {}
            }
        }
    }

    /// Cores of the store to follow in the store's mode: each not replicated yet (and not
    /// left) is added, and each only served so far is followed in that mode.
    fn on_store_cores(&mut self, cores: Vec<Hypercore>, now: Instant) {
        let Some(mode) = self.store.mode() else {
            return;
        };
        for core in cores {
            let key = core.key();
            // A core deleted and created again: the closed instance tracked goes first.
            self.forget_closed(&key, now);
            let why = self.cores.why(&key);
            if self.store.is_left(&key) || why.is_some_and(|w| w != Why::Served) {
                continue;
            }
            self.replicate(core, Some(mode), Why::Store, now);
        }
    }

    /// A core was created in the store: followed if the whole store is.
    fn on_core_created(&mut self, key: CoreKey) {
        // Its closed predecessor may still be tracked (its Closed signal not taken yet).
        self.forget_closed(&key, Instant::now());
        let followed = self.cores.why(&key).is_some_and(|w| w != Why::Served);
        if self.store.mode().is_some() && !followed {
            self.store.open(key);
        }
    }

    // Blobs.

    /// A policy fetch ended: a blob fetched is reported, and the next fetch starts.
    fn on_blob_fetched(&mut self, (core, index, result): blobs::Fetched) {
        self.blobs.start(|k| self.cores.core(k));
        match result {
            Ok(Some((blob, peer))) => {
                let _ = self.events.send(Event::BlobDownloaded {
                    core,
                    index,
                    hash: *blob.hash.as_bytes(),
                    size: blob.size,
                    peer: peer.map(|p| *p.as_bytes()).unwrap_or_default(),
                });
            }
            Ok(None) => {}
            Err(e) => tracing::debug!("fetching the blob of block {index}: {e}"),
        }
    }
}

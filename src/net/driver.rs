//! The iroh driver: one task that owns the engine and moves bytes between it and iroh.
//!
//! Every connection, stream read, stream write, dial and storage task is a future in one of
//! two `FuturesUnordered` sets polled by this task, so there is no task per peer and no state
//! shared between peers. Forwarding tasks exist only per core (its events and wanted ranges)
//! and per gossip topic.

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use bytes::Bytes;
use iroh::{
    Endpoint, EndpointAddr, EndpointId,
    address_lookup::memory::MemoryLookup,
    endpoint::{Connection, RecvStream, SendStream},
};
use iroh_gossip::{
    Gossip, TopicId,
    api::{Event as GossipEvent, GossipSender},
};
use n0_future::{FuturesUnordered, StreamExt, boxed::BoxFuture};
use tokio::{
    sync::{broadcast, mpsc, oneshot},
    task::JoinSet,
};

use super::{
    ALPN,
    frames::{
        Budget, Budgets, Exceeded, FrameReader, MAX_BUFFERED_PER_CONNECTION, MAX_BUFFERED_TOTAL,
        ReadError,
    },
    tasks,
};
use crate::{
    CoreEvent, Hypercore,
    crypto::CoreKey,
    replication::{
        Engine, Event, Input, Mode, Output, PeerId, TaskResult,
        engine::{ChannelId, PeerStats, TaskId},
        wire::{MAX_FRAME, MAX_HANDSHAKE_FRAME, Message, encode_frame_into},
    },
};

/// Frames queued for one stream are handed to QUIC in chunks of about this size: one chunk
/// per frame cost an allocation each and many small pieces in QUIC's send buffer.
const CHUNK_BYTES: usize = 64 * 1024;

/// Connections kept at once; more are closed as they come.
pub const MAX_CONNECTIONS: usize = 1024;

/// Dials in flight at once (gossip announcements and tickets name whom to dial).
pub const MAX_DIALS: usize = 16;

/// Nodes of one ticket (or `join`) that are dialed.
pub const MAX_JOIN_NODES: usize = 8;

/// Time a dial may take.
pub const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
}

/// Requests from [`HypercoreProtocol`](super::HypercoreProtocol) handles.
pub(crate) enum Command {
    Accept(Connection),
    /// Replicate a core; `None` keeps the mode of a core already replicated (else full).
    Replicate(Hypercore, Option<Mode>, oneshot::Sender<()>),
    Join(CoreKey, Vec<EndpointAddr>, oneshot::Sender<()>),
    PeerStats(oneshot::Sender<Vec<PeerStats>>),
    CorePeers(CoreKey, oneshot::Sender<Vec<PeerId>>),
    NodeStats(oneshot::Sender<NodeStats>),
    Shutdown(oneshot::Sender<()>),
}

/// Sent by the per-core and per-topic forwarding tasks.
enum Forward {
    CoreChanged(CoreKey),
    Want(CoreKey, u64, u64),
    GossipReady(CoreKey, GossipSender),
    Gossip(CoreKey, Bytes),
    GossipLagged(CoreKey),
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
    Done,
}

struct Conn {
    conn: Connection,
    id: usize,
    dialed_by_me: bool,
    /// What unfinished frames on this connection may hold.
    budget: Budget,
    /// Bytes queued on its channels that QUIC has not taken yet.
    backlog: u64,
    /// Whether the engine was last told the backlog is over its limit.
    over: bool,
}

struct ChannelIo {
    peer: PeerId,
    conn_id: usize,
    send: Option<SendStream>,
    /// Frames waiting to be written, gathered into chunks.
    queue: Vec<Bytes>,
    /// The chunk being filled, frames back to back.
    open: Vec<u8>,
    writing: bool,
    closing: bool,
    /// Bytes queued on this channel (in `queue`, `open` and the write under way).
    pending: u64,
}

pub(crate) struct Driver {
    engine: Engine,
    endpoint: Endpoint,
    gossip: Option<Gossip>,
    lookup: MemoryLookup,
    cores: HashMap<CoreKey, Hypercore>,
    conns: HashMap<PeerId, Conn>,
    dialing: HashSet<PeerId>,
    addrs: HashMap<PeerId, EndpointAddr>,
    channels: HashMap<ChannelId, ChannelIo>,
    /// Channels with frames queued since the last flush.
    unflushed: Vec<ChannelId>,
    next_incoming: ChannelId,
    gossip_senders: HashMap<CoreKey, GossipSender>,
    gossip_bootstrap: HashMap<CoreKey, Vec<EndpointId>>,
    io: FuturesUnordered<BoxFuture<Io>>,
    tasks: FuturesUnordered<BoxFuture<(TaskId, TaskResult)>>,
    forwarders: JoinSet<()>,
    fwd_tx: mpsc::Sender<Forward>,
    fwd_rx: mpsc::Receiver<Forward>,
    events: broadcast::Sender<Event>,
    /// What unfinished frames on all connections may hold.
    budget: Budget,
    /// Peers whose backlog grew this turn (checked against the limit after it).
    backlog_grew: Vec<PeerId>,
}

impl Driver {
    pub(crate) fn new(
        engine: Engine,
        endpoint: Endpoint,
        gossip: Option<Gossip>,
        events: broadcast::Sender<Event>,
    ) -> Self {
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
            cores: HashMap::new(),
            conns: HashMap::new(),
            dialing: HashSet::new(),
            addrs: HashMap::new(),
            channels: HashMap::new(),
            unflushed: Vec::new(),
            next_incoming: 1,
            gossip_senders: HashMap::new(),
            gossip_bootstrap: HashMap::new(),
            io: FuturesUnordered::new(),
            tasks: FuturesUnordered::new(),
            forwarders: JoinSet::new(),
            fwd_tx,
            fwd_rx,
            events,
            budget: Budget::new(MAX_BUFFERED_TOTAL),
            backlog_grew: Vec::new(),
        }
    }

    /// Runs until shutdown or until every handle is gone.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut shutdown_reply = None;
        loop {
            self.carry_out();
            let deadline = self.engine.poll_timeout();
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
                Some((id, result)) = self.tasks.next(), if !self.tasks.is_empty() => {
                    self.engine.handle(Input::TaskDone(id, result), Instant::now());
                }
                Some(fwd) = self.fwd_rx.recv() => self.on_forward(fwd),
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
                self.replicate(core, mode, now);
                let _ = reply.send(());
            }
            Command::Join(key, nodes, reply) => {
                let nodes: Vec<EndpointAddr> = nodes.into_iter().take(MAX_JOIN_NODES).collect();
                let ids: Vec<EndpointId> = nodes.iter().map(|a| a.id).collect();
                for addr in nodes {
                    if addr.id == self.endpoint.id() {
                        continue;
                    }
                    self.lookup.add_endpoint_info(addr.clone());
                    let peer = *addr.id.as_bytes();
                    self.addrs.insert(peer, addr);
                    self.dial(peer);
                }
                let ids: Vec<EndpointId> = ids
                    .into_iter()
                    .filter(|i| *i != self.endpoint.id())
                    .collect();
                match self.gossip_senders.get(&key) {
                    Some(sender) => {
                        let sender = sender.clone();
                        self.io.push(Box::pin(async move {
                            let _ = sender.join_peers(ids).await;
                            Io::Done
                        }));
                    }
                    None => self.gossip_bootstrap.entry(key).or_default().extend(ids),
                }
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
                });
            }
            Command::CorePeers(key, reply) => {
                let _ = reply.send(self.engine.core_peers(&key));
            }
            Command::Shutdown(_) => {}
        }
    }

    fn replicate(&mut self, core: Hypercore, mode: Option<Mode>, now: Instant) {
        let key = core.key();
        if mode.is_none() && self.cores.contains_key(&key) {
            return;
        }
        let mode = mode.unwrap_or_default();
        if !self.cores.contains_key(&key) {
            let mut events = core.subscribe();
            let mut wants = core.subscribe_wants();
            let tx = self.fwd_tx.clone();
            self.forwarders.spawn(async move {
                loop {
                    tokio::select! {
                        ev = events.next() => match ev {
                            Some(CoreEvent::Append { .. } | CoreEvent::Truncate { .. }
                                | CoreEvent::Clear { .. } | CoreEvent::Lagged(_)) => {
                                if tx.send(Forward::CoreChanged(key)).await.is_err() { break; }
                            }
                            Some(_) => {}
                            None => break,
                        },
                        want = wants.recv() => match want {
                            Ok((s, e)) => {
                                if tx.send(Forward::Want(key, s, e)).await.is_err() { break; }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(_) => break,
                        },
                    }
                }
            });
            self.cores.insert(key, core.clone());
        }
        self.engine
            .add_core(key, tasks::local_info(&core), mode, now);
    }

    fn on_forward(&mut self, fwd: Forward) {
        let now = Instant::now();
        match fwd {
            Forward::CoreChanged(key) => {
                if let Some(core) = self.cores.get(&key) {
                    let info = tasks::local_info(core);
                    self.engine.handle(Input::LocalChanged(key, info), now);
                }
            }
            Forward::Want(key, s, e) => self.engine.handle(Input::Want(key, s, e), now),
            Forward::GossipReady(key, sender) => {
                if let Some(ids) = self.gossip_bootstrap.remove(&key) {
                    let s = sender.clone();
                    self.io.push(Box::pin(async move {
                        let _ = s.join_peers(ids).await;
                        Io::Done
                    }));
                }
                self.gossip_senders.insert(key, sender);
            }
            Forward::Gossip(key, bytes) => self.engine.handle(Input::Gossip(key, bytes), now),
            Forward::GossipLagged(key) => self.engine.handle(Input::GossipLagged(key), now),
        }
    }

    /// Carries out everything the engine asked for.
    fn carry_out(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Connect(peer) => self.dial(peer),
                Output::OpenChannel(peer, ch, first) => self.open_channel(peer, ch, first),
                Output::Send(_, ch, msg) => self.send(ch, &msg),
                Output::CloseChannel(_, ch) => {
                    if let Some(c) = self.channels.get_mut(&ch) {
                        c.closing = true;
                        if c.send.is_none() && !c.writing {
                            // Not opened yet: the peer never sees it.
                            self.remove_channel(ch);
                        }
                    }
                    self.flush(ch);
                }
                Output::Task(id, key, task) => {
                    if let Some(core) = self.cores.get(&key).cloned() {
                        self.tasks.push(Box::pin(async move {
                            (id, tasks::run_caught(core, task).await)
                        }));
                    }
                }
                Output::JoinGossip(key, topic) => self.join_gossip(key, topic),
                Output::Broadcast(key, bytes) => {
                    if let Some(sender) = self.gossip_senders.get(&key).cloned() {
                        self.io.push(Box::pin(async move {
                            if let Err(e) = sender.broadcast(bytes).await {
                                tracing::debug!("gossip broadcast failed: {e}");
                            }
                            Io::Done
                        }));
                    }
                }
                Output::Event(ev) => {
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

    fn join_gossip(&mut self, key: CoreKey, topic: [u8; 32]) {
        let Some(gossip) = self.gossip.clone() else {
            return;
        };
        let tx = self.fwd_tx.clone();
        let bootstrap = self.gossip_bootstrap.remove(&key).unwrap_or_default();
        self.forwarders.spawn(async move {
            let mut bootstrap = bootstrap;
            loop {
                let topic = match gossip
                    .subscribe(TopicId::from_bytes(topic), std::mem::take(&mut bootstrap))
                    .await
                {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!("gossip subscribe failed: {e}");
                        return;
                    }
                };
                let (sender, mut receiver) = topic.split();
                if tx.send(Forward::GossipReady(key, sender)).await.is_err() {
                    return;
                }
                loop {
                    match receiver.next().await {
                        Some(Ok(GossipEvent::Received(m))) => {
                            if tx.send(Forward::Gossip(key, m.content)).await.is_err() {
                                return;
                            }
                        }
                        Some(Ok(GossipEvent::Lagged)) => {
                            if tx.send(Forward::GossipLagged(key)).await.is_err() {
                                return;
                            }
                            // A lagged subscription is closed: subscribe again.
                            break;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return,
                    }
                }
            }
        });
    }

    fn dial(&mut self, peer: PeerId) {
        if self.conns.contains_key(&peer) || self.dialing.contains(&peer) {
            return;
        }
        if self.dialing.len() >= MAX_DIALS {
            tracing::debug!("dial skipped: {MAX_DIALS} dials in flight");
            return;
        }
        let addr = match self.addrs.get(&peer) {
            Some(a) => a.clone(),
            None => match EndpointId::from_bytes(&peer) {
                Ok(id) => EndpointAddr::new(id),
                Err(_) => return,
            },
        };
        if addr.id == self.endpoint.id() {
            return;
        }
        self.dialing.insert(peer);
        let ep = self.endpoint.clone();
        self.io.push(Box::pin(async move {
            let r = match tokio::time::timeout(DIAL_TIMEOUT, ep.connect(addr, ALPN)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("dial timed out".to_string()),
            };
            Io::Dialed(peer, r)
        }));
    }

    /// Registers a connection, keeping one per peer: the one dialed by the lower endpoint id.
    fn add_conn(&mut self, conn: Connection, dialed_by_me: bool) {
        let peer = *conn.remote_id().as_bytes();
        let me = *self.endpoint.id().as_bytes();
        let preferred = |dialed_by_me: bool| dialed_by_me == (me < peer);
        if let Some(existing) = self.conns.get(&peer) {
            let existing_alive = existing.conn.close_reason().is_none();
            if existing_alive && (preferred(existing.dialed_by_me) || !preferred(dialed_by_me)) {
                conn.close(0u32.into(), b"duplicate connection");
                return;
            }
            let old = self.remove_conn(&peer);
            if let Some(old) = old {
                old.conn.close(0u32.into(), b"duplicate connection");
            }
        } else if self.conns.len() >= MAX_CONNECTIONS {
            conn.close(0u32.into(), b"too many connections");
            return;
        }
        let id = conn.stable_id();
        let c1 = conn.clone();
        self.io.push(Box::pin(async move {
            c1.closed().await;
            Io::Closed(peer, id)
        }));
        self.accept_next(peer, id, conn.clone());
        self.conns.insert(
            peer,
            Conn {
                conn,
                id,
                dialed_by_me,
                budget: Budget::new(MAX_BUFFERED_PER_CONNECTION),
                backlog: 0,
                over: false,
            },
        );
        self.engine
            .handle(Input::PeerConnected(peer), Instant::now());
    }

    fn remove_conn(&mut self, peer: &PeerId) -> Option<Conn> {
        let c = self.conns.remove(peer)?;
        // Its readers may be dropped only later: its bytes leave the node's budget now.
        c.budget.release_from(&self.budget);
        self.channels.retain(|_, ch| ch.peer != *peer);
        self.engine
            .handle(Input::PeerDisconnected(*peer), Instant::now());
        Some(c)
    }

    fn accept_next(&mut self, peer: PeerId, id: usize, conn: Connection) {
        self.io.push(Box::pin(async move {
            let r = conn.accept_bi().await.map_err(|e| e.to_string());
            Io::Accepted(peer, id, r)
        }));
    }

    fn current(&self, peer: &PeerId, conn_id: usize) -> bool {
        self.conns.get(peer).is_some_and(|c| c.id == conn_id)
    }

    fn on_io(&mut self, io: Io) {
        let now = Instant::now();
        match io {
            Io::Dialed(peer, result) => {
                self.dialing.remove(&peer);
                match result {
                    Ok(conn) => self.add_conn(conn, true),
                    Err(e) => tracing::debug!("dial failed: {e}"),
                }
            }
            Io::Accepted(peer, conn_id, result) => {
                let Ok((send, recv)) = result else { return };
                if !self.current(&peer, conn_id) {
                    return;
                }
                let ch = self.next_incoming;
                self.next_incoming += 2;
                self.channels.insert(
                    ch,
                    ChannelIo {
                        peer,
                        conn_id,
                        send: Some(send),
                        queue: Vec::new(),
                        open: Vec::new(),
                        writing: false,
                        closing: false,
                        pending: 0,
                    },
                );
                let reader = FrameReader::new(recv, self.budgets(&peer));
                self.read_next(peer, conn_id, ch, reader);
                if let Some(c) = self.conns.get(&peer) {
                    let conn = c.conn.clone();
                    self.accept_next(peer, conn_id, conn);
                }
            }
            Io::Opened(peer, conn_id, ch, result) => {
                let Some(c) = self.channels.get_mut(&ch) else {
                    return;
                };
                match result {
                    Ok((send, recv)) if c.conn_id == conn_id => {
                        c.send = Some(send);
                        let reader = FrameReader::new(recv, self.budgets(&peer));
                        self.read_next(peer, conn_id, ch, reader);
                        self.flush(ch);
                    }
                    _ => {
                        self.remove_channel(ch);
                        self.engine.handle(Input::ChannelClosed(peer, ch), now);
                    }
                }
            }
            Io::Frames(peer, conn_id, ch, reader, result) => {
                // A channel we closed, or a connection that was replaced: stop reading it.
                if !self.current(&peer, conn_id) || !self.channels.contains_key(&ch) {
                    return;
                }
                match result {
                    Ok(Some(msgs)) => {
                        for msg in msgs {
                            self.engine.handle(Input::Message(peer, ch, msg), now);
                        }
                        self.read_next(peer, conn_id, ch, reader);
                    }
                    Err(ReadError::OverBudget(Exceeded::Total)) => {
                        // The node's budget is spent: the connection holding the most gives
                        // way (whoever asked), and this read is tried again.
                        let largest = self
                            .conns
                            .iter()
                            .filter(|(_, c)| c.budget.used() > 0)
                            .max_by_key(|(p, c)| (c.budget.used(), **p))
                            .map(|(p, _)| *p);
                        if let Some(evicted) = largest.filter(|l| *l != peer) {
                            tracing::warn!("frame budget spent: closing the largest holder");
                            if let Some(c) = self.remove_conn(&evicted) {
                                c.conn.close(1u32.into(), b"too much buffered");
                            }
                            self.read_next(peer, conn_id, ch, reader);
                        } else if let Some(c) = self.remove_conn(&peer) {
                            c.conn.close(1u32.into(), b"too much buffered");
                        }
                    }
                    Err(e @ (ReadError::Wire(_) | ReadError::OverBudget(Exceeded::Connection))) => {
                        tracing::warn!("closing connection to a peer that broke framing: {e}");
                        if let Some(c) = self.remove_conn(&peer) {
                            c.conn.close(1u32.into(), b"protocol violation");
                        }
                    }
                    Ok(None) | Err(_) => {
                        if let Err(e) = result {
                            tracing::debug!("channel read failed: {e}");
                        }
                        self.remove_channel(ch);
                        self.engine.handle(Input::ChannelClosed(peer, ch), now);
                    }
                }
            }
            Io::HandshakeTimedOut(peer, conn_id, ch) => {
                if self.current(&peer, conn_id) && self.channels.contains_key(&ch) {
                    tracing::debug!("no handshake frame in time: channel closed");
                    self.remove_channel(ch);
                    self.engine.handle(Input::ChannelClosed(peer, ch), now);
                }
            }
            Io::Written(ch, send, result, bytes) => {
                let Some(c) = self.channels.get_mut(&ch) else {
                    return;
                };
                c.writing = false;
                c.pending = c.pending.saturating_sub(bytes);
                let peer = c.peer;
                self.add_backlog(&peer, bytes, false);
                match result {
                    Ok(()) => {
                        if let Some(c) = self.channels.get_mut(&ch) {
                            c.send = Some(send);
                        }
                        self.flush(ch);
                    }
                    Err(_) => {
                        self.remove_channel(ch);
                        self.engine.handle(Input::ChannelClosed(peer, ch), now);
                    }
                }
                self.report_backlog(&peer);
            }
            Io::Closed(peer, conn_id) => {
                if self.current(&peer, conn_id) {
                    self.remove_conn(&peer);
                }
            }
            Io::Done => {}
        }
    }

    /// Reads the next frames of a channel: only handshake-sized ones until both sides proved
    /// the key. A stream the peer opened must complete a frame within the handshake timeout
    /// (and a second more, so that the engine's own expiry of a parked channel, which says
    /// why, comes first): one whose first frame never completes is not kept open. Channels we
    /// opened are timed by the engine.
    fn read_next(&mut self, peer: PeerId, conn_id: usize, ch: ChannelId, reader: FrameReader) {
        let theirs = !ch.is_multiple_of(2);
        if self.engine.is_authenticated(ch) || !theirs {
            let max_frame = if self.engine.is_authenticated(ch) {
                MAX_FRAME
            } else {
                MAX_HANDSHAKE_FRAME
            };
            self.io.push(Box::pin(async move {
                let (reader, result) = reader.next_batch(max_frame).await;
                Io::Frames(peer, conn_id, ch, reader, result)
            }));
            return;
        }
        let limit = self.engine.config().handshake_timeout + std::time::Duration::from_secs(1);
        self.io.push(Box::pin(async move {
            match tokio::time::timeout(limit, reader.next_batch(MAX_HANDSHAKE_FRAME)).await {
                Ok((reader, result)) => Io::Frames(peer, conn_id, ch, reader, result),
                Err(_) => Io::HandshakeTimedOut(peer, conn_id, ch),
            }
        }));
    }

    /// The budgets unfinished frames from `peer` count against.
    fn budgets(&self, peer: &PeerId) -> Budgets {
        Budgets {
            connection: self
                .conns
                .get(peer)
                .map_or_else(|| Budget::new(0), |c| c.budget.clone()),
            total: self.budget.clone(),
        }
    }

    /// Adds (or, with `add` false, takes away) bytes queued towards `peer`.
    fn add_backlog(&mut self, peer: &PeerId, bytes: u64, add: bool) {
        if let Some(c) = self.conns.get_mut(peer) {
            c.backlog = if add {
                c.backlog.saturating_add(bytes)
            } else {
                c.backlog.saturating_sub(bytes)
            };
        }
    }

    /// Tells the engine when a peer's backlog crosses its limit, either way.
    fn report_backlog(&mut self, peer: &PeerId) {
        let max = self.engine.config().max_backlog_bytes;
        let Some(c) = self.conns.get_mut(peer) else {
            return;
        };
        let over = c.backlog >= max;
        if over != c.over {
            c.over = over;
            let backlog = c.backlog;
            self.engine
                .handle(Input::Backlog(*peer, backlog), Instant::now());
        }
    }

    /// Forgets a channel's stream; what was queued on it no longer counts as backlog.
    fn remove_channel(&mut self, ch: ChannelId) {
        if let Some(c) = self.channels.remove(&ch) {
            self.add_backlog(&c.peer, c.pending, false);
            self.report_backlog(&c.peer);
        }
    }

    fn open_channel(&mut self, peer: PeerId, ch: ChannelId, first: Message) {
        let Some(c) = self.conns.get(&peer) else {
            self.engine
                .handle(Input::ChannelClosed(peer, ch), Instant::now());
            return;
        };
        let (conn, conn_id) = (c.conn.clone(), c.id);
        self.channels.insert(
            ch,
            ChannelIo {
                peer,
                conn_id,
                send: None,
                queue: Vec::new(),
                open: Vec::new(),
                writing: false,
                closing: false,
                pending: 0,
            },
        );
        self.send(ch, &first);
        self.io.push(Box::pin(async move {
            let r = conn.open_bi().await.map_err(|e| e.to_string());
            Io::Opened(peer, conn_id, ch, r)
        }));
    }

    fn send(&mut self, ch: ChannelId, msg: &Message) {
        let Some(c) = self.channels.get_mut(&ch) else {
            return;
        };
        let idle = c.queue.is_empty() && c.open.is_empty();
        if c.open.is_empty() && c.writing {
            // A burst: room for many frames without regrowing.
            c.open.reserve(CHUNK_BYTES);
        }
        let before = c.open.len();
        if let Err(e) = encode_frame_into(msg, &mut c.open) {
            tracing::error!("message not sent: {e}");
            return;
        }
        let added = (c.open.len() - before) as u64;
        c.pending += added;
        let peer = c.peer;
        if c.open.len() >= CHUNK_BYTES {
            c.queue.push(Bytes::from(std::mem::take(&mut c.open)));
        }
        // Written once the engine's outputs of this turn are all queued.
        if idle {
            self.unflushed.push(ch);
        }
        self.add_backlog(&peer, added, true);
        // Checked against the limit once this turn's outputs are queued (also while a write
        // is blocked: a peer that does not read is exactly the one to stop serving).
        if self.backlog_grew.last() != Some(&peer) {
            self.backlog_grew.push(peer);
        }
    }

    /// Starts writing what is queued on a channel, or finishes it once drained if closing.
    fn flush(&mut self, ch: ChannelId) {
        let Some(c) = self.channels.get_mut(&ch) else {
            return;
        };
        if c.writing || c.send.is_none() {
            return;
        }
        if !c.open.is_empty() {
            c.queue.push(Bytes::from(std::mem::take(&mut c.open)));
        }
        if c.queue.is_empty() {
            if c.closing {
                if let Some(mut send) = c.send.take() {
                    let _ = send.finish();
                }
                self.remove_channel(ch);
            }
            return;
        }
        let Some(mut send) = c.send.take() else {
            return;
        };
        let mut chunks = std::mem::take(&mut c.queue);
        let bytes: u64 = chunks.iter().map(|b| b.len() as u64).sum();
        c.writing = true;
        self.io.push(Box::pin(async move {
            let r = send
                .write_all_chunks(&mut chunks)
                .await
                .map_err(|e| e.to_string());
            Io::Written(ch, send, r, bytes)
        }));
    }
}

//! [`HypercoreProtocol`]: the iroh protocol handler and the handle applications use.

use std::sync::Arc;

use iroh::{
    Endpoint, EndpointAddr, EndpointId,
    endpoint::Connection,
    protocol::{AcceptError, ProtocolHandler},
};
use iroh_gossip::Gossip;
use iroh_hypercore_tickets::CoreTicket;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    driver::{Command, Driver, NodeStats, Serving},
    events::{Events, ReplicaEvents},
    extension::Extension,
};
use crate::{
    core::Hypercore,
    error::{Error, Result},
    replication::{
        Engine, EngineConfig, Event, Mode,
        engine::{ExtensionTarget, PeerStats},
    },
    store::Corestore,
};

/// Capacity of the protocol's event channel.
const EVENT_CAPACITY: usize = 4096;

/// Capacity of the channel of extension messages (each at most 64 KiB): a subscriber that
/// does not read holds at most this many, and misses the rest.
const EXTENSION_CAPACITY: usize = 256;

/// Replicates the cores of a [`Corestore`] with peers over iroh.
///
/// Register it on an iroh `Router` under [`ALPN`](super::ALPN), next to iroh-gossip. It is a
/// cheap handle; the engine runs on one task spawned by [`Builder::spawn`] and stops with
/// [`shutdown`](Self::shutdown) (which the router calls) or when every handle is dropped.
///
/// ```no_run
/// # async fn run() -> anyhow::Result<()> {
/// use iroh::{Endpoint, endpoint::presets, protocol::Router};
/// use iroh_gossip::Gossip;
/// use iroh_hypercore::{Corestore, net::{ALPN, HypercoreProtocol}};
///
/// let endpoint = Endpoint::builder(presets::Minimal).bind().await?;
/// let gossip = Gossip::builder().spawn(endpoint.clone());
/// let store = Corestore::memory().await?;
/// let log = store.get_named("chat").await?;
/// log.append(b"hello".to_vec()).await?;
///
/// let proto = HypercoreProtocol::builder(store.clone()).spawn(endpoint.clone(), gossip.clone());
/// let router = Router::builder(endpoint)
///     .accept(ALPN, proto.clone())
///     .accept(iroh_gossip::ALPN, gossip)
///     .spawn();
/// proto.replicate(&log).await?;
/// let ticket = proto.ticket(&log);
/// println!("share this: {ticket}");
/// # router.shutdown().await?; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct HypercoreProtocol {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Corestore,
    endpoint: Endpoint,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    /// Extension messages, apart from `events`: a peer sending them cannot make subscribers
    /// of replication events miss any, nor make them hold its payloads.
    extension_events: broadcast::Sender<Event>,
    metrics: super::metrics::Metrics,
    /// Decides which blob requests are served.
    blob_events: iroh_blobs::provider::events::EventSender,
    /// Handshakes on Hypercore's wire under way.
    wire_handshakes: Arc<tokio::sync::Semaphore>,
}

/// How often the metrics groups are set from the node's figures.
pub const METRICS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Builds a [`HypercoreProtocol`].
#[derive(Debug)]
pub struct Builder {
    store: Corestore,
    config: EngineConfig,
    serve_store: bool,
    blob_policy: crate::blobs::BlobPolicy,
}

impl Builder {
    /// Whether a peer that proves it knows the key of any core in the store gets a channel
    /// for it, opened on demand, whether or not the application replicates that core
    /// (Corestore's `store.replicate`). Default `true`. With `false`, only the cores given
    /// to [`replicate`](HypercoreProtocol::replicate) and its kin are served.
    ///
    /// A core served on demand is replicated sparsely (nothing is fetched but what the
    /// application reads; its length is followed) and joins no gossip topic.
    ///
    /// It also decides what dropping the last handle of a replicated core does: a served
    /// store keeps replicating it (its peers still get it); with `false`, its replication
    /// ends: its channels close and its gossip topic is left, as with
    /// [`leave`](HypercoreProtocol::leave).
    pub fn serve_store(mut self, serve: bool) -> Self {
        self.serve_store = serve;
        self
    }

    /// Which blobs a core replicated in full fetches along with its blocks (default
    /// [`BlobPolicy::None`](crate::blobs::BlobPolicy::None): only when the application asks).
    pub fn blob_policy(mut self, policy: crate::blobs::BlobPolicy) -> Self {
        self.blob_policy = policy;
        self
    }

    /// Sets the engine's tuning.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts the engine on a task of the current runtime. `gossip` announces new lengths; pass
    /// the same `Gossip` that is registered on the router.
    pub fn spawn(self, endpoint: Endpoint, gossip: Gossip) -> HypercoreProtocol {
        self.spawn_inner(endpoint, Some(gossip))
    }

    /// Starts the engine without gossip: peers learn of new lengths only over open channels.
    pub fn spawn_without_gossip(self, endpoint: Endpoint) -> HypercoreProtocol {
        self.spawn_inner(endpoint, None)
    }

    fn spawn_inner(self, endpoint: Endpoint, gossip: Option<Gossip>) -> HypercoreProtocol {
        let me = *endpoint.id().as_bytes();
        let engine = Engine::new(me, self.config);
        let (commands, rx) = mpsc::channel(256);
        let events = broadcast::channel(EVENT_CAPACITY).0;
        let extension_events = broadcast::channel(EXTENSION_CAPACITY).0;
        let driver = Driver::new(
            engine,
            endpoint.clone(),
            gossip,
            self.store.clone(),
            Serving {
                serve_store: self.serve_store,
                blob_policy: self.blob_policy,
            },
            events.clone(),
            extension_events.clone(),
        );
        tokio::spawn(driver.run(rx));
        // The peers the store was joined with before: connected again.
        let (store, to_driver) = (self.store.clone(), commands.downgrade());
        tokio::spawn(async move {
            let peers = store.store_peers().await.unwrap_or_default();
            if let (false, Some(commands)) = (peers.is_empty(), to_driver.upgrade()) {
                let (tx, _rx) = oneshot::channel();
                let _ = commands.send(Command::JoinStore(peers, tx)).await;
            }
        });
        let weak = commands.downgrade();
        let providers: crate::blobs::Providers = Arc::new(move |key| {
            let weak = weak.clone();
            Box::pin(async move {
                let Some(commands) = weak.upgrade() else {
                    return Vec::new();
                };
                let (tx, rx) = oneshot::channel();
                if commands
                    .send(Command::BlobProviders(key, tx))
                    .await
                    .is_err()
                {
                    return Vec::new();
                }
                rx.await.unwrap_or_default()
            })
        });
        let weak = commands.downgrade();
        let blame: crate::blobs::BlameProvider = Arc::new(move |key, peer, reason| {
            if let Some(commands) = weak.upgrade() {
                // Best effort: a full command queue loses one count, not the fetch.
                let _ = commands.try_send(Command::BlobInvalid(key, peer, reason));
            }
        });
        let fetcher =
            crate::blobs::BlobFetcher::new(self.store.blobs(), endpoint.clone(), providers, blame);
        crate::store::shared_blobs_of(&self.store).set_fetcher(Arc::new(fetcher));
        let blob_events = super::blob_access::event_sender(commands.downgrade());
        let metrics = super::metrics::Metrics::default();
        // Holds no store: a protocol dropped releases its database at once.
        let (to_driver, shown) = (commands.downgrade(), metrics.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(METRICS_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(commands) = to_driver.upgrade() else {
                    return;
                };
                let (tx, rx) = oneshot::channel();
                if commands.send(Command::NodeStats(tx)).await.is_err() {
                    return;
                }
                drop(commands);
                match rx.await {
                    Ok(node) => shown.record(&node),
                    Err(_) => return,
                }
            }
        });
        HypercoreProtocol {
            inner: Arc::new(Inner {
                store: self.store,
                endpoint,
                commands,
                events,
                extension_events,
                metrics,
                blob_events,
                wire_handshakes: Arc::new(tokio::sync::Semaphore::new(super::MAX_WIRE_HANDSHAKES)),
            }),
        }
    }
}

impl HypercoreProtocol {
    /// A builder for a protocol replicating the cores of `store`.
    pub fn builder(store: Corestore) -> Builder {
        Builder {
            store,
            config: EngineConfig::default(),
            serve_store: true,
            blob_policy: Default::default(),
        }
    }

    /// The store whose cores are replicated.
    pub fn store(&self) -> &Corestore {
        &self.inner.store
    }

    /// The endpoint the protocol runs on.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The iroh-blobs protocol serving the store's blobs: register it on the router under
    /// [`iroh_blobs::ALPN`] next to this protocol, so that peers fetch the blobs the store's
    /// logs name from this node. It serves only blobs that a block of a core this node serves
    /// names (with [`serve_store`](Builder::serve_store), of any core of the store but those
    /// left; else of the cores replicated): any other hash is refused, whether the request
    /// fetches it or asks how much of it is held, and pushes are refused. Shutting the router
    /// down shuts the blob store down.
    pub fn blobs_protocol(&self) -> iroh_blobs::BlobsProtocol {
        iroh_blobs::BlobsProtocol::new(
            &self.inner.store.blobs(),
            Some(self.inner.blob_events.clone()),
        )
    }

    async fn command<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Replicates over `stream` with a peer speaking JS Hypercore's own wire: what
    /// `core.replicate(stream)` and `store.replicate(stream)` speak in JS Hypercore 11 and
    /// Corestore 7 (the Noise handshake of `@hyperswarm/secret-stream`, protomux channels,
    /// hypercore's messages). `initiator` is this side's Noise role: the side that dialed
    /// (JS `replicate(true)`) is the initiator.
    ///
    /// The engine is the same as for iroh peers: every core replicated here gets a channel
    /// with the peer (as Corestore's `replicate(stream)`), the peer's channels for cores of
    /// the store are served under [`serve_store`](Builder::serve_store), everything it sends
    /// is verified before it is stored, and the same bounds hold. This side's key on the wire
    /// is the endpoint's; the peer's key ([`WireLink::peer`](super::WireLink::peer)) is known
    /// once the handshake ends
    /// (within [`WIRE_HANDSHAKE_TIMEOUT`](super::WIRE_HANDSHAKE_TIMEOUT)). The stream closes
    /// when the peer ends it, sends what does not decode, or the protocol shuts down. At most
    /// [`MAX_WIRE_CONNECTIONS`](super::MAX_WIRE_CONNECTIONS) such peers are connected at once
    /// (and [`MAX_WIRE_HANDSHAKES`](super::MAX_WIRE_HANDSHAKES) handshakes); a peer connected
    /// over iroh is refused, and a second connection of a wire peer replaces its first. One
    /// silent for [`WIRE_IDLE_TIMEOUT`](super::WIRE_IDLE_TIMEOUT) is closed.
    ///
    /// On TCP, set `TCP_NODELAY` (`TcpStream::set_nodelay(true)`) on the stream first: the
    /// requests go out a few at a time as answers come back (at most 64 unanswered per
    /// connection), and Nagle's algorithm holds such small writes back (`bench_js` measured
    /// a reader 6x slower without it). `hyper` does it.
    ///
    /// As with Corestore, the peer sees the discovery key of every core replicated here (the
    /// channels' opens name them); it gets no block of one without proving it knows the key.
    pub async fn replicate_stream<S>(&self, stream: S, initiator: bool) -> Result<super::WireLink>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        static NEXT_LINK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let Ok(permit) = self.inner.wire_handshakes.clone().try_acquire_owned() else {
            return Err(Error::Wire("too many handshakes at once".into()));
        };
        let link = NEXT_LINK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let seed = self.inner.endpoint.secret_key().to_bytes();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(super::driver::run_link(
            stream,
            initiator,
            seed,
            link,
            self.inner.commands.downgrade(),
            tx,
            permit,
        ));
        match rx.await {
            Ok(Ok((peer, ended))) => Ok(super::WireLink::new(peer, ended)),
            Ok(Err(e)) => Err(Error::Wire(e)),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Replicates `core` fully and live: every block is fetched and new blocks follow.
    pub async fn replicate(&self, core: &Hypercore) -> Result<()> {
        self.replicate_with(core, Mode::Full).await
    }

    /// Replicates `core` in the given mode. In [`Mode::Sparse`] only blocks asked for with
    /// `get(i).wait(..)` or `download(range)` are fetched.
    pub async fn replicate_with(&self, core: &Hypercore, mode: Mode) -> Result<()> {
        let core = core.clone();
        self.command(|tx| Command::Replicate(core, Some(mode), tx))
            .await
    }

    /// Follows every core of the store in `mode` with every connected peer that holds them,
    /// the cores created later too (Corestore's `store.replicate`). Cores served this way
    /// join no gossip topic unless replicated by name ([`replicate`](Self::replicate),
    /// [`join`](Self::join)).
    pub async fn replicate_store(&self, mode: Mode) -> Result<()> {
        self.command(|tx| Command::ReplicateStore(mode, tx)).await
    }

    /// Connects to `nodes` for the whole store, as Corestore's `store.replicate(stream)`
    /// does: each gets a channel for every core this node replicates (with
    /// [`replicate_store`](Self::replicate_store), every core of the store, the ones created
    /// later too). No core is forced to full mode and no gossip topic is joined. The nodes are
    /// remembered in the store's database (the 64 most recent): a protocol started on the
    /// store later connects to them again.
    ///
    /// ```no_run
    /// # async fn run(proto: iroh_hypercore::HypercoreProtocol, peer: iroh::EndpointAddr) -> iroh_hypercore::Result<()> {
    /// proto.replicate_store(iroh_hypercore::Mode::Full).await?;
    /// proto.join_store(&[peer]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn join_store(&self, nodes: &[EndpointAddr]) -> Result<()> {
        let me = self.inner.endpoint.id();
        let nodes: Vec<EndpointAddr> = nodes.iter().filter(|n| n.id != me).cloned().collect();
        self.inner.store.remember_store_peers(&nodes).await?;
        self.command(|tx| Command::JoinStore(nodes, tx)).await
    }

    /// Opens the core a ticket names, like [`open_ticket`](Self::open_ticket), and returns
    /// the stream of its events subscribed before its first peer is dialled: no `PeerAdd`
    /// or `Download` is missed.
    pub async fn open_ticket_with_events(
        &self,
        ticket: &CoreTicket,
    ) -> Result<(Hypercore, ReplicaEvents)> {
        let core = self.inner.store.get_remote(ticket.key()).await?;
        let events = self.events(&core);
        self.join(&core, ticket.nodes()).await?;
        Ok((core, events))
    }

    /// The extension `name` (at most 64 bytes): registers it, so that peers' messages of this
    /// name are delivered, and returns its handle to send and subscribe.
    pub async fn extension(&self, name: &str) -> Result<Extension> {
        let ext = Extension::new(name.to_string(), self.clone())?;
        let name = name.to_string();
        self.command(|tx| Command::RegisterExtension(name, tx))
            .await?;
        Ok(ext)
    }

    /// The extension messages from now on.
    pub(super) fn subscribe_extensions(&self) -> broadcast::Receiver<Event> {
        self.inner.extension_events.subscribe()
    }

    pub(super) async fn send_extension(
        &self,
        target: ExtensionTarget,
        name: String,
        payload: bytes::Bytes,
    ) -> Result<usize> {
        self.command(|tx| Command::SendExtension(target, name, payload, tx))
            .await
    }

    /// Stops replicating `core`: its channels close (each peer is told), its gossip topic is
    /// left, its queued fetches are dropped, and pending `get(..).wait(..)` and
    /// `download(..).done(..)` fail with [`Error::Left`]. The store no longer serves it on
    /// demand; [`replicate`](Self::replicate) starts again. Returns whether it was
    /// replicated.
    pub async fn leave(&self, core: &Hypercore) -> Result<bool> {
        let key = core.key();
        self.command(|tx| Command::Leave(key, tx)).await
    }

    /// Replicates `core` (fully, unless it already is replicated) and connects to `nodes`,
    /// which also bootstrap its gossip topic.
    pub async fn join(&self, core: &Hypercore, nodes: &[EndpointAddr]) -> Result<()> {
        let (core, nodes) = (core.clone(), nodes.to_vec());
        self.command(|tx| Command::Join(core, nodes, tx)).await
    }

    /// Opens the core a ticket names (read-only unless this store has its key pair) and joins
    /// the ticket's nodes.
    pub async fn open_ticket(&self, ticket: &CoreTicket) -> Result<Hypercore> {
        let core = self.inner.store.get_remote(ticket.key()).await?;
        self.join(&core, ticket.nodes()).await?;
        Ok(core)
    }

    /// A ticket for `core`: its key and this endpoint's address.
    pub fn ticket(&self, core: &Hypercore) -> CoreTicket {
        CoreTicket::new(core.key(), vec![self.inner.endpoint.addr()])
    }

    /// Every event, as a `Stream`: peers coming and going, channels, appends, truncates,
    /// downloads and uploads. A subscriber that falls behind gets
    /// [`Event::Lagged`](crate::replication::Event::Lagged) and goes on.
    pub fn subscribe(&self) -> Events {
        Events::new(self.inner.events.subscribe())
    }

    /// The events of one core, as a `Stream`: peers added and removed (a channel for the core
    /// opened or closed), appends, truncates, downloads and uploads.
    pub fn events(&self, core: &Hypercore) -> ReplicaEvents {
        ReplicaEvents::new(core, self.inner.events.subscribe())
    }

    /// Counters of every connected peer.
    pub async fn peer_stats(&self) -> Result<Vec<PeerStats>> {
        self.command(Command::PeerStats).await
    }

    /// What this node holds and refused over all peers: connections, dials, parked channels,
    /// buffered and queued bytes.
    pub async fn node_stats(&self) -> Result<NodeStats> {
        self.command(Command::NodeStats).await
    }

    /// The protocol's [`iroh_metrics`] groups (node, peers summed, storage), set from the
    /// node's figures every [`METRICS_INTERVAL`] and on
    /// [`update_metrics`](Self::update_metrics). Register them beside iroh's own:
    ///
    /// ```no_run
    /// # async fn run(proto: iroh_hypercore::HypercoreProtocol) -> iroh_hypercore::Result<()> {
    /// use iroh_metrics::{MetricsSource, Registry};
    ///
    /// let mut registry = Registry::default();
    /// registry.register_all(proto.endpoint().metrics());
    /// registry.register_all(proto.metrics());
    /// proto.update_metrics().await?;
    /// let text = registry.encode_openmetrics_to_string().expect("encodes");
    /// assert!(text.contains("hypercore_peers_blocks_down_total"));
    /// # Ok(()) }
    /// ```
    pub fn metrics(&self) -> &super::metrics::Metrics {
        &self.inner.metrics
    }

    /// Sets the metrics groups from the node's figures now.
    pub async fn update_metrics(&self) -> Result<()> {
        let node = self.node_stats().await?;
        self.inner.metrics.record(&node);
        Ok(())
    }

    /// Peers with an open channel for `core`.
    pub async fn peers(&self, core: &Hypercore) -> Result<Vec<EndpointId>> {
        let key = core.key();
        let ids = self.command(|tx| Command::CorePeers(key, tx)).await?;
        Ok(ids
            .into_iter()
            .filter_map(|b| EndpointId::from_bytes(&b).ok())
            .collect())
    }

    /// Stops the engine and closes its connections.
    pub async fn shutdown(&self) {
        let _ = self.command(Command::Shutdown).await;
    }
}

impl ProtocolHandler for HypercoreProtocol {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        self.inner
            .commands
            .send(Command::Accept(conn))
            .await
            .map_err(|_| AcceptError::from_err(Error::Closed))?;
        Ok(())
    }

    async fn shutdown(&self) {
        HypercoreProtocol::shutdown(self).await;
    }
}

//! Test networks: an in-process iroh relay and nodes (endpoint, gossip, store, protocol and
//! router) on loopback, with no internet access. Enabled by the `test-utils` feature.

use std::{path::Path, sync::Arc};

use iroh::{
    Endpoint, EndpointAddr, RelayMap, RelayMode, RelayUrl,
    address_lookup::memory::MemoryLookup,
    endpoint::{PortmapperConfig, presets},
    protocol::Router,
    tls::CaTlsConfig,
};
use iroh_gossip::Gossip;

type Result<T> = std::result::Result<T, TestNetError>;

use crate::{
    net::{ALPN, Builder, HypercoreProtocol},
    replication::EngineConfig,
    store::{Corestore, StoreOptions},
};

/// Longest wait for a node's router to shut down.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// How a node reaches others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Loopback IP and the relay (iroh picks the direct path).
    Direct,
    /// The relay only: no IP sockets at all.
    RelayOnly,
}

/// An in-process relay that nodes of one test network share.
pub struct TestNet {
    relay_map: RelayMap,
    relay_url: RelayUrl,
    lookup: MemoryLookup,
    _server: Box<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for TestNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNet")
            .field("relay_url", &self.relay_url)
            .finish_non_exhaustive()
    }
}

/// One node of a [`TestNet`].
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's endpoint.
    pub endpoint: Endpoint,
    /// Its gossip.
    pub gossip: Gossip,
    /// Its store.
    pub store: Corestore,
    /// Its replication protocol.
    pub proto: HypercoreProtocol,
    /// The router serving both protocols.
    pub router: Arc<Router>,
}

impl TestNet {
    /// Starts the relay.
    pub async fn new() -> Result<Self> {
        let (relay_map, relay_url, server) =
            iroh::test_utils::run_relay_server().await.map_err(setup)?;
        Ok(Self {
            relay_map,
            relay_url,
            lookup: MemoryLookup::new(),
            _server: Box::new(server),
        })
    }

    /// The relay's URL.
    pub fn relay_url(&self) -> &RelayUrl {
        &self.relay_url
    }

    /// An endpoint on this network whose address every other endpoint can look up.
    pub async fn endpoint(&self, transport: Transport) -> Result<Endpoint> {
        self.endpoint_with_key(transport, None).await
    }

    /// Like [`endpoint`](Self::endpoint), with the secret key `key` (a new one if `None`).
    pub async fn endpoint_with_key(
        &self,
        transport: Transport,
        key: Option<iroh::SecretKey>,
    ) -> Result<Endpoint> {
        let ep = self.bind(transport, key).await?;
        self.list(&ep);
        Ok(ep)
    }

    /// Puts `ep`'s address in the network's address book, and has it look others up there.
    fn list(&self, ep: &Endpoint) {
        self.lookup.add_endpoint_info(ep.addr());
        if let Ok(services) = ep.address_lookup() {
            services.add(self.lookup.clone());
        }
    }

    /// An endpoint that is not in the network's address book and does not use it: it reaches
    /// only the addresses it is given.
    pub async fn unlisted_endpoint(&self, transport: Transport) -> Result<Endpoint> {
        self.bind(transport, None).await
    }

    async fn bind(&self, transport: Transport, key: Option<iroh::SecretKey>) -> Result<Endpoint> {
        self.bind_at(transport, key, "127.0.0.1:0").await
    }

    async fn bind_at(
        &self,
        transport: Transport,
        key: Option<iroh::SecretKey>,
        at: &str,
    ) -> Result<Endpoint> {
        let mut builder = Endpoint::builder(presets::Minimal);
        if let Some(key) = key {
            builder = builder.secret_key(key);
        }
        let builder = builder
            .relay_mode(RelayMode::Custom(self.relay_map.clone()))
            .ca_tls_config(CaTlsConfig::insecure_skip_verify())
            .portmapper_config(PortmapperConfig::Disabled)
            .transport_config(crate::net::transport_config());
        let builder = match transport {
            // Without IP sockets only the default net report finds the relay.
            Transport::RelayOnly => builder.clear_ip_transports(),
            Transport::Direct => builder
                .clear_ip_transports()
                .bind_addr(at)
                .map_err(setup)?
                .net_report_config(iroh::NetReportConfig::minimal()),
        };
        let ep = builder.bind().await.map_err(setup)?;
        ep.online().await;
        Ok(ep)
    }

    /// A node with a memory store.
    pub async fn node(&self, transport: Transport) -> Result<Node> {
        let store = Corestore::memory().await?;
        self.node_with(transport, store, EngineConfig::default())
            .await
    }

    /// A node with a store in `dir`.
    pub async fn node_in(
        &self,
        transport: Transport,
        dir: &Path,
        opts: StoreOptions,
    ) -> Result<Node> {
        let store = Corestore::persistent_with(dir, opts).await?;
        self.node_with(transport, store, EngineConfig::default())
            .await
    }

    /// A node with the given store and engine tuning, on an endpoint with the store's
    /// persisted identity ([`Corestore::endpoint_secret_key`]): a node restarted from its
    /// directory has the same endpoint id.
    pub async fn node_with(
        &self,
        transport: Transport,
        store: Corestore,
        config: EngineConfig,
    ) -> Result<Node> {
        let endpoint = self
            .endpoint_with_key(transport, Some(store.endpoint_secret_key()))
            .await?;
        Ok(Node::spawn(endpoint, store, config))
    }

    /// A direct node like [`node_with`](Self::node_with) whose endpoint binds `at` (for example
    /// the address of a node that ran before on the same directory: it restarts on the same
    /// port).
    pub async fn node_at(
        &self,
        at: std::net::SocketAddr,
        store: Corestore,
        config: EngineConfig,
    ) -> Result<Node> {
        let endpoint = self
            .bind_at(
                Transport::Direct,
                Some(store.endpoint_secret_key()),
                &at.to_string(),
            )
            .await?;
        self.list(&endpoint);
        Ok(Node::spawn(endpoint, store, config))
    }

    /// A node like [`node_with`](Self::node_with) whose protocol `build` configures (for
    /// example `|b| b.serve_store(false)`).
    pub async fn node_built(
        &self,
        transport: Transport,
        store: Corestore,
        build: impl FnOnce(Builder) -> Builder,
    ) -> Result<Node> {
        let endpoint = self
            .endpoint_with_key(transport, Some(store.endpoint_secret_key()))
            .await?;
        Ok(Node::spawn_built(endpoint, store, build, true))
    }

    /// A node on an [unlisted](Self::unlisted_endpoint) endpoint, with a memory store and
    /// without gossip (which would tell it other addresses): it talks only to the nodes it
    /// joins.
    pub async fn unlisted_node(&self, transport: Transport) -> Result<Node> {
        let endpoint = self.unlisted_endpoint(transport).await?;
        let store = Corestore::memory().await?;
        Ok(Node::spawn_with(
            endpoint,
            store,
            EngineConfig::default(),
            false,
        ))
    }
}

impl Node {
    /// Starts gossip, the protocol and a router on `endpoint`.
    pub fn spawn(endpoint: Endpoint, store: Corestore, config: EngineConfig) -> Self {
        Self::spawn_with(endpoint, store, config, true)
    }

    /// Like [`spawn`](Self::spawn); `announce` false runs the protocol without gossip.
    pub fn spawn_with(
        endpoint: Endpoint,
        store: Corestore,
        config: EngineConfig,
        announce: bool,
    ) -> Self {
        Self::spawn_built(endpoint, store, |b| b.config(config), announce)
    }

    /// Like [`spawn_with`](Self::spawn_with), with the protocol configured by `build`.
    pub fn spawn_built(
        endpoint: Endpoint,
        store: Corestore,
        build: impl FnOnce(Builder) -> Builder,
        announce: bool,
    ) -> Self {
        let gossip = Gossip::builder().spawn(endpoint.clone());
        let builder = build(HypercoreProtocol::builder(store.clone()));
        let proto = if announce {
            builder.spawn(endpoint.clone(), gossip.clone())
        } else {
            builder.spawn_without_gossip(endpoint.clone())
        };
        let router = Router::builder(endpoint.clone())
            .accept(ALPN, proto.clone())
            .accept(iroh_gossip::ALPN, gossip.clone())
            .accept(iroh_blobs::ALPN, proto.blobs_protocol())
            .spawn();
        Node {
            endpoint,
            gossip,
            store,
            proto,
            router: Arc::new(router),
        }
    }

    /// This node's address.
    pub fn addr(&self) -> EndpointAddr {
        self.endpoint.addr()
    }

    /// Stops the router (and with it the protocol and the endpoint), then closes the store.
    pub async fn shutdown(&self) {
        self.proto.shutdown().await;
        // iroh-gossip's shutdown sends a goodbye on every topic and can wait forever on a
        // neighbour that is gone (seen with hundreds of topics): bound it, then close.
        let bounded = tokio::time::timeout(SHUTDOWN_WAIT, self.router.shutdown()).await;
        if bounded.is_err() {
            tracing::warn!("router shutdown timed out; closing the endpoint");
            self.endpoint.close().await;
        }
        let _ = self.store.close().await;
    }
}

/// Why a test network or node could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TestNetError {
    /// The relay or an endpoint failed to start.
    #[error("test network setup failed: {0}")]
    Setup(String),
    /// The store failed.
    #[error(transparent)]
    Core(#[from] crate::error::Error),
}

fn setup(e: impl std::fmt::Display) -> TestNetError {
    TestNetError::Setup(e.to_string())
}

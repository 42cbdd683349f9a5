//! The node of the network commands: an iroh endpoint with the store's persisted identity,
//! serving the replication protocol, gossip and the store's blobs on one router.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use iroh::{
    Endpoint, EndpointAddr, EndpointId, RelayMap, RelayMode, RelayUrl, Watcher,
    endpoint::{PortmapperConfig, presets},
    protocol::Router,
};
use iroh_gossip::Gossip;
use iroh_hypercore::{
    ALPN, CoreTicket, Corestore, Hypercore, HypercoreProtocol,
    net::{ReplicaEvent, ReplicaEvents, transport_config},
};
use n0_future::StreamExt;

/// Which relays the endpoint uses (`--relay`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relay {
    /// iroh's public relays, with address lookup by endpoint id: works across networks.
    Default,
    /// No relay and no lookup: peers are dialled at the IP addresses in tickets.
    Disabled,
    /// One relay of your own.
    Url(RelayUrl),
}

impl FromStr for Relay {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(Self::Default),
            "disabled" => Ok(Self::Disabled),
            url => url.parse().map(Self::Url).map_err(|e| {
                format!("{url:?} is not \"default\", \"disabled\" or a relay URL: {e}")
            }),
        }
    }
}

impl fmt::Display for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Disabled => f.write_str("disabled"),
            Self::Url(url) => write!(f, "{url}"),
        }
    }
}

/// The global network options.
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// `--relay`.
    pub relay: Relay,
    /// `--bind`: the one local address to listen on (else every interface, a free port).
    pub bind: Option<SocketAddr>,
    /// Whether progress bars are drawn (on a terminal; not with `-v`).
    pub bars: bool,
    /// `--metrics`: where to serve the node's metrics.
    pub metrics: Option<SocketAddr>,
}

impl NetOptions {
    /// Where progress bars go: stderr (drawn only on a terminal), or nowhere.
    pub fn bar_target(&self) -> indicatif::ProgressDrawTarget {
        if self.bars {
            indicatif::ProgressDrawTarget::stderr()
        } else {
            indicatif::ProgressDrawTarget::hidden()
        }
    }
}

/// How long a node waits for its home relay before it prints a ticket without it.
const RELAY_WAIT: Duration = Duration::from_secs(10);
/// How long a node waits for its first direct address.
const ADDRESS_WAIT: Duration = Duration::from_secs(5);
/// How long the router may take to say goodbye to peers before the endpoint is closed.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// A running node: the endpoint and the protocols on its router.
#[derive(Debug)]
pub struct Node {
    /// The endpoint (its id is the store's persisted one).
    pub endpoint: Endpoint,
    /// The replication protocol.
    pub proto: HypercoreProtocol,
    router: Router,
    _metrics: Option<crate::metrics_http::MetricsServer>,
}

impl Node {
    /// Binds the endpoint with the store's secret key and starts the protocols. With
    /// `serve_store`, every log of the store is served to a peer that knows its key; else only
    /// the logs the command replicates.
    pub async fn start(
        store: &Corestore,
        options: &NetOptions,
        serve_store: bool,
    ) -> Result<Self, String> {
        let builder = match &options.relay {
            Relay::Default => Endpoint::builder(presets::N0),
            Relay::Disabled => Endpoint::builder(presets::Minimal)
                .relay_mode(RelayMode::Disabled)
                .portmapper_config(PortmapperConfig::Disabled),
            Relay::Url(url) => Endpoint::builder(presets::Minimal)
                .relay_mode(RelayMode::Custom(RelayMap::from(url.clone()))),
        };
        let mut builder = builder
            .secret_key(store.endpoint_secret_key())
            .transport_config(transport_config());
        if let Some(addr) = options.bind {
            builder = builder
                .clear_ip_transports()
                .bind_addr(addr)
                .map_err(|e| format!("--bind {addr}: {e}"))?;
        }
        let endpoint = builder
            .bind()
            .await
            .map_err(|e| format!("cannot start the network endpoint: {e}"))?;
        let gossip = Gossip::builder().spawn(endpoint.clone());
        let proto = HypercoreProtocol::builder(store.clone())
            .serve_store(serve_store)
            .spawn(endpoint.clone(), gossip.clone());
        let router = Router::builder(endpoint.clone())
            .accept(ALPN, proto.clone())
            .accept(iroh_gossip::ALPN, gossip)
            .accept(iroh_blobs::ALPN, proto.blobs_protocol())
            .spawn();
        let mut node = Self {
            endpoint,
            proto,
            router,
            _metrics: None,
        };
        if let Some(addr) = options.metrics {
            node._metrics = Some(crate::metrics_http::MetricsServer::start(addr, &node).await?);
        }
        Ok(node)
    }

    /// Waits until the endpoint's address can go in a ticket: its home relay is connected
    /// (at most 10 s; then the ticket goes out without it, with a warning) or, without a
    /// relay, it has a direct address.
    pub async fn ready(&self, relay: &Relay) {
        if *relay != Relay::Disabled {
            if tokio::time::timeout(RELAY_WAIT, self.endpoint.online())
                .await
                .is_err()
            {
                eprintln!(
                    "warning: no relay answered in {} s; the ticket holds direct addresses only",
                    RELAY_WAIT.as_secs()
                );
            }
            return;
        }
        let mut addr = self.endpoint.watch_addr();
        let _ = tokio::time::timeout(ADDRESS_WAIT, async {
            while addr.get().ip_addrs().next().is_none() {
                if addr.updated().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }

    /// Replicates the core `ticket` names (fully, or only what is read when `sparse`) and
    /// dials the ticket's nodes.
    pub async fn open_ticket(
        &self,
        ticket: &CoreTicket,
        sparse: bool,
    ) -> Result<Hypercore, String> {
        let fail = |e: iroh_hypercore::Error| format!("opening the ticket's log: {e}");
        if !sparse {
            return self.proto.open_ticket(ticket).await.map_err(fail);
        }
        let core = self
            .proto
            .store()
            .get_remote(ticket.key())
            .await
            .map_err(fail)?;
        self.proto
            .replicate_with(&core, iroh_hypercore::Mode::Sparse)
            .await
            .map_err(fail)?;
        self.proto.join(&core, ticket.nodes()).await.map_err(fail)?;
        Ok(core)
    }

    /// Stops the engine and the router (each peer is told), then the endpoint; each step
    /// bounded, so that a peer that is gone cannot hold the exit.
    pub async fn shutdown(self) {
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, self.proto.shutdown()).await;
        // iroh-gossip's goodbye can wait on a peer that is gone.
        if tokio::time::timeout(SHUTDOWN_WAIT, self.router.shutdown())
            .await
            .is_err()
        {
            let _ = tokio::time::timeout(SHUTDOWN_WAIT, self.endpoint.close()).await;
        }
    }
}

/// Parses a ticket, saying which part is wrong.
pub fn parse_ticket(text: &str) -> Result<CoreTicket, String> {
    text.trim()
        .parse::<CoreTicket>()
        .map_err(|e| format!("bad ticket: {e}"))
}

/// Waits at most `timeout` for a peer with an open channel for `core`; the error lists the
/// addresses the ticket gave.
pub async fn wait_for_peer(
    proto: &HypercoreProtocol,
    core: &Hypercore,
    events: &mut ReplicaEvents,
    ticket: &CoreTicket,
    timeout: Duration,
) -> Result<EndpointId, String> {
    let found = tokio::time::timeout(timeout, async {
        if let Some(peer) = proto.peers(core).await.ok()?.first() {
            return Some(*peer);
        }
        while let Some(event) = events.next().await {
            if let ReplicaEvent::PeerAdd(peer) = event {
                return Some(peer);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(peer)) => Ok(peer),
        Ok(None) => Err("the node stopped before a peer answered".into()),
        Err(_) => Err(format!(
            "no peer answered within {} s; tried {}",
            timeout.as_secs(),
            describe_nodes(ticket.nodes())
        )),
    }
}

/// `<id> at <addr>, <addr> and relay <url>` for each node.
fn describe_nodes(nodes: &[EndpointAddr]) -> String {
    if nodes.is_empty() {
        return "no address: the ticket names no node".into();
    }
    nodes
        .iter()
        .map(|node| {
            let addrs: Vec<String> = node
                .ip_addrs()
                .map(|a| a.to_string())
                .chain(node.relay_urls().map(|u| format!("relay {u}")))
                .collect();
            if addrs.is_empty() {
                format!("{} (no address; found by id only)", node.id)
            } else {
                format!("{} at {}", node.id, addrs.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Resolves, with the error to report, once `core` has had no peer for `timeout`: every
/// peer went away and none came back. Pending forever while one is connected.
pub async fn no_peer_for(proto: &HypercoreProtocol, core: &Hypercore, timeout: Duration) -> String {
    let mut events = proto.events(core);
    loop {
        let connected = proto.peers(core).await.is_ok_and(|p| !p.is_empty());
        if connected {
            // Until one goes (or events were missed): then look again.
            loop {
                match events.next().await {
                    Some(ReplicaEvent::PeerRemove(_) | ReplicaEvent::Lagged(_)) => break,
                    Some(_) => {}
                    None => std::future::pending::<()>().await,
                }
            }
            continue;
        }
        let came_back = tokio::time::timeout(timeout, async {
            loop {
                match events.next().await {
                    Some(ReplicaEvent::PeerAdd(_) | ReplicaEvent::Lagged(_)) => return,
                    Some(_) => {}
                    None => std::future::pending::<()>().await,
                }
            }
        })
        .await;
        if came_back.is_err() {
            return format!(
                "every peer went away and none answered within {} s",
                timeout.as_secs()
            );
        }
    }
}

/// Says on stderr when `core` has lost every peer and dials the ones it knows again ("no
/// peers, retrying in N s"), and which peer it found again. Before the first peer it says
/// nothing (waiting for one has its own timeout and error). Runs until dropped.
pub async fn say_reconnects(proto: HypercoreProtocol, core: Hypercore) {
    let mut events = proto.events(&core);
    // Looked at after subscribing: a peer added since is an event.
    let mut had_peer = proto.peers(&core).await.is_ok_and(|p| !p.is_empty());
    let mut searching = false;
    while let Some(event) = events.next().await {
        match event {
            ReplicaEvent::Reconnecting { next_in, .. } if had_peer => {
                searching = true;
                eprintln!(
                    "no peers, retrying in {} s",
                    next_in.as_millis().div_ceil(1000)
                );
            }
            ReplicaEvent::PeerAdd(peer) => {
                had_peer = true;
                if searching {
                    searching = false;
                    eprintln!("connected to {peer} again");
                }
            }
            _ => {}
        }
    }
}

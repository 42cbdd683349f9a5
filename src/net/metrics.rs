//! The protocol's figures as [`iroh_metrics`] groups, so that they sit beside iroh's own in
//! one [`Registry`](iroh_metrics::Registry) and export to Prometheus with them: the node
//! (connections, parked channels, buffered and queued bytes), every peer summed (blocks and
//! bytes each way, invalid proofs, refused and dropped input) and the storage (commits).
//! Counters only grow: a peer that leaves keeps its part of the totals.

use std::sync::Arc;

use iroh_metrics::{Counter, Gauge, MetricsGroup, MetricsGroupSet};

use super::NodeStats;

/// What this node holds now.
#[derive(Debug, Default, MetricsGroup)]
#[metrics(name = "hypercore_node")]
#[non_exhaustive]
pub struct NodeMetrics {
    /// Open connections.
    pub connections: Gauge,
    /// Dials in flight.
    pub dials_in_flight: Gauge,
    /// Dials that gossip announcements asked for and the rate limit skipped.
    pub gossip_dials_skipped: Counter,
    /// Channels peers opened for cores this node does not replicate, waiting.
    pub parked_channels: Gauge,
    /// Bytes of unfinished frames held, over all connections.
    pub buffered_bytes: Gauge,
    /// Bytes queued towards peers that QUIC has not taken yet.
    pub backlog_bytes: Gauge,
    /// Cores replicated.
    pub cores: Gauge,
    /// Blobs being fetched or waiting for a fetch.
    pub blob_fetches: Gauge,
}

/// Every peer's counters, summed since the start (those of peers that left included).
#[derive(Debug, Default, MetricsGroup)]
#[metrics(name = "hypercore_peers")]
#[non_exhaustive]
pub struct PeerMetrics {
    /// Channels open now, over all peers.
    pub channels: Gauge,
    /// Verified blocks received.
    pub blocks_down: Counter,
    /// Bytes of verified blocks received.
    pub bytes_down: Counter,
    /// Blocks sent.
    pub blocks_up: Counter,
    /// Bytes of blocks sent.
    pub bytes_up: Counter,
    /// Blocks pushed to followers unasked.
    pub pushes_sent: Counter,
    /// Pushes from peers taken to be verified.
    pub pushes_taken: Counter,
    /// Proofs from peers that did not verify.
    pub invalid: Counter,
    /// Requests and channels refused because a peer asked for too much.
    pub refused: Counter,
    /// Messages and channels dropped because they broke the protocol.
    pub dropped: Counter,
    /// Extension messages delivered to the application.
    pub extensions_received: Counter,
    /// Extension messages dropped.
    pub extensions_dropped: Counter,
}

/// The store's database writes.
#[derive(Debug, Default, MetricsGroup)]
#[metrics(name = "hypercore_storage")]
#[non_exhaustive]
pub struct StorageMetrics {
    /// Write transactions committed.
    pub commits: Counter,
    /// Of those, durable (fsynced) commits.
    pub durable_commits: Counter,
    /// Writes applied.
    pub writes: Counter,
    /// Commits made on the writer's own thread.
    pub inline_commits: Counter,
}

/// The protocol's metrics groups:
/// [`HypercoreProtocol::metrics`](super::HypercoreProtocol::metrics). Register them with
/// `registry.register_all(proto.metrics())`, beside `endpoint.metrics()`.
#[derive(Debug, Default, Clone, MetricsGroupSet)]
#[metrics(name = "hypercore")]
pub struct Metrics {
    /// The node.
    pub node: Arc<NodeMetrics>,
    /// Every peer, summed.
    pub peers: Arc<PeerMetrics>,
    /// The store's database.
    pub storage: Arc<StorageMetrics>,
}

impl Metrics {
    /// Sets every metric from the node's figures. Counters only grow: of two snapshots
    /// recorded out of order, the older one cannot lower them (records take turns).
    pub(crate) fn record(&self, node: &NodeStats) {
        static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        let storage = &node.storage;
        let gauge = |g: &Gauge, v: usize| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        let gauge64 = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        let grow = |c: &Counter, v: u64| {
            if v > c.get() {
                c.set(v);
            }
        };
        let n = &self.node;
        gauge(&n.connections, node.connections);
        gauge(&n.dials_in_flight, node.dials_in_flight);
        grow(&n.gossip_dials_skipped, node.gossip_dials_skipped);
        gauge(&n.parked_channels, node.parked_channels);
        gauge64(&n.buffered_bytes, node.buffered_bytes);
        gauge64(&n.backlog_bytes, node.backlog_bytes);
        gauge(&n.cores, node.cores);
        gauge(&n.blob_fetches, node.blob_fetches);
        let (p, t) = (&self.peers, &node.peer_totals);
        gauge(&p.channels, t.channels);
        grow(&p.blocks_down, t.blocks_down);
        grow(&p.bytes_down, t.bytes_down);
        grow(&p.blocks_up, t.blocks_up);
        grow(&p.bytes_up, t.bytes_up);
        grow(&p.pushes_sent, t.pushes_sent);
        grow(&p.pushes_taken, t.pushes_taken);
        grow(&p.invalid, t.invalid);
        grow(&p.refused, t.refused);
        grow(&p.dropped, t.dropped);
        grow(&p.extensions_received, t.extensions_received);
        grow(&p.extensions_dropped, t.extensions_dropped);
        let s = &self.storage;
        grow(&s.commits, storage.commits);
        grow(&s.durable_commits, storage.durable_commits);
        grow(&s.writes, storage.writes);
        grow(&s.inline_commits, storage.inline_commits);
    }
}

//! Tuning of the engine.

use std::time::Duration;

use crate::replication::{fetch::FetchConfig, gossip::GOSSIP_MAX_MESSAGE};

/// Tuning of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The fetch queue's tuning.
    pub fetch: FetchConfig,
    /// Time an upgrade request may take before it is asked of another peer, and how long an
    /// `update()` waits for a peer that does not answer it.
    pub upgrade_timeout: Duration,
    /// Storage tasks run at once for one peer's requests.
    pub serve_concurrency: usize,
    /// Requests from one peer waiting to be served; more are answered with `NoData`.
    pub serve_queue: usize,
    /// Bytes queued towards one peer (not yet taken by QUIC) beyond which its requests wait:
    /// a peer that does not read cannot make us hold more than this (plus the parts of runs
    /// being read for it).
    pub max_backlog_bytes: u64,
    /// Bytes queued towards all peers together past which each peer is held to its fair
    /// share of it (this over the peers with a backlog), and past twice which the peer holding
    /// the most loses its connection: peers that do not read cannot make the node queue
    /// `max_backlog_bytes` for each of them.
    pub max_backlog_total: u64,
    /// Storage tasks reading answers for all peers together at once (`serve_concurrency` is
    /// one peer's share); peers waiting for one are served in turn.
    pub serve_concurrency_total: usize,
    /// Block bytes read for one part of a run answer: a run of large blocks is read and sent
    /// in parts of this size, each when the peer's backlog has room.
    pub serve_run_bytes: u64,
    /// Refused requests after which a peer's channels are closed.
    pub max_refused: u64,
    /// Shortest time between two gossip announcements of one core.
    pub announce_interval: Duration,
    /// Gossip message size limit (iroh-gossip's `max_message_size`).
    pub gossip_max_message: usize,
    /// How long an `update` asked while a core has no peer (but looks for the ones it knows,
    /// after `open_ticket` or `join`) waits for the first one.
    pub first_peer_timeout: Duration,
    /// Time a peer has to prove it knows a core's key on a channel we opened (its `Accept`),
    /// and time a channel it opened for a core we do not replicate waits to be adopted.
    pub handshake_timeout: Duration,
    /// Time the higher endpoint id of a connection waits before it opens channels for the
    /// cores the other side has not opened (the lower id opens its channels at once). Zero
    /// (the default): both open at once, and a core both opened in the same moment keeps the
    /// lower id's channel; as each side has at most `max_opening_per_peer` handshakes in
    /// flight, at most that many channels are opened twice, while a delay would hold back
    /// every core only the higher id replicates (and the other serves from its store).
    pub open_delay: Duration,
    /// Channels we opened to one peer that may wait for its `Accept` at once; more wait their
    /// turn. Keep it under the peer's `max_parked_per_peer`: a peer parks a channel for a core
    /// until it has looked it up in its store.
    pub max_opening_per_peer: usize,
    /// Channels with one peer open at once (either side opened them): under QUIC's limit of
    /// concurrent streams (`net::MAX_CHANNELS` each way). While cores wait for room, idle
    /// channels close and reopen when they have something new.
    pub max_channels_per_peer: usize,
    /// Channels one peer may keep waiting for cores we do not replicate.
    pub max_parked_per_peer: usize,
    /// Channels all peers together may keep waiting for cores we do not replicate.
    pub max_parked: usize,
    /// Extension messages one peer may send us per second (and at most as many at once);
    /// more are dropped and counted.
    pub extension_messages_per_second: u64,
    /// `Cancel` and `Unwant` messages taken from one peer a second (a second's worth at
    /// once): past it they are dropped (counted in its `dropped`), and each second's worth
    /// dropped closes the channel it came on. Honest peers send a few, on timeouts and clears.
    pub control_messages_per_second: u64,
    /// Dials that gossip announcements may cause per second (an announcement names its
    /// origin, and anyone on a topic can announce).
    pub gossip_dials_per_second: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            fetch: FetchConfig::default(),
            upgrade_timeout: Duration::from_secs(5),
            first_peer_timeout: Duration::from_secs(30),
            serve_concurrency: 4,
            serve_queue: 256,
            max_backlog_bytes: 8 * 1024 * 1024,
            max_backlog_total: 64 * 1024 * 1024,
            serve_concurrency_total: 32,
            serve_run_bytes: 1024 * 1024,
            max_refused: 4096,
            announce_interval: Duration::from_millis(50),
            gossip_max_message: GOSSIP_MAX_MESSAGE,
            handshake_timeout: Duration::from_secs(10),
            open_delay: Duration::ZERO,
            max_opening_per_peer: 32,
            max_channels_per_peer: 2048,
            max_parked_per_peer: 64,
            max_parked: 4096,
            gossip_dials_per_second: 8,
            extension_messages_per_second: 256,
            control_messages_per_second: 1024,
        }
    }
}

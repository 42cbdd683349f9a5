//! The iroh driver: [`HypercoreProtocol`], an iroh `ProtocolHandler` that runs the replication
//! engine over QUIC streams and announces new lengths over iroh-gossip.

mod blob_access;
mod driver;
mod events;
mod extension;
mod frames;
pub mod metrics;
mod peer_ids;
mod protocol;

pub use driver::{
    DIAL_TIMEOUT, MAX_CONNECTIONS, MAX_DIALS, MAX_JOIN_NODES, MAX_WIRE_CONNECTIONS,
    MAX_WIRE_HANDSHAKES, NodeStats, WIRE_HANDSHAKE_TIMEOUT, WIRE_IDLE_TIMEOUT, WireLink,
};
pub use events::{Events, ReplicaEvent, ReplicaEvents};
pub use extension::{Extension, ExtensionMessage, ExtensionMessages};
pub use frames::{MAX_BUFFERED_PER_CONNECTION, MAX_BUFFERED_TOTAL, ReadError};
pub use iroh_hypercore_tickets::{CoreTicket, TicketError};
pub use protocol::{Builder, HypercoreProtocol};

/// ALPN of the hypercore replication protocol.
pub const ALPN: &[u8] = b"/iroh-hypercore/2";

/// Streams a peer may open at once on a connection, in [`transport_config`].
pub const MAX_CHANNELS: u32 = 4096;

/// Bytes a peer may have in flight on one connection that we have not read yet: QUIC's
/// connection receive window, which is unlimited by default.
pub const RECEIVE_WINDOW: u32 = 16 * 1024 * 1024;

/// A QUIC transport config for endpoints that replicate: every core is a stream, and QUIC's
/// default of 100 concurrent bidirectional streams would cap a connection at 100 cores; and
/// the connection receive window is bounded ([`RECEIVE_WINDOW`]) instead of unlimited. Pass it
/// to `Endpoint::builder(..).transport_config(..)`.
pub fn transport_config() -> iroh::endpoint::QuicTransportConfig {
    iroh::endpoint::QuicTransportConfig::builder()
        .max_concurrent_bidi_streams(MAX_CHANNELS.into())
        .receive_window(RECEIVE_WINDOW.into())
        .build()
}

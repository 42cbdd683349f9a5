//! The iroh driver: [`HypercoreProtocol`], an iroh `ProtocolHandler` that runs the replication
//! engine over QUIC streams and announces new lengths over iroh-gossip.

mod driver;
mod frames;
mod protocol;
mod tasks;

pub use frames::ReadError;
pub use iroh_hypercore_tickets::{CoreTicket, TicketError};
pub use protocol::{Builder, HypercoreProtocol};
pub use tasks::{local_info, run as run_task};

/// ALPN of the hypercore replication protocol.
pub const ALPN: &[u8] = b"/iroh-hypercore/2";

/// Streams a peer may open at once on a connection, in [`transport_config`].
pub const MAX_CHANNELS: u32 = 4096;

/// A QUIC transport config for endpoints that replicate many cores: every core is a stream,
/// and QUIC's default of 100 concurrent bidirectional streams would cap a connection at 100
/// cores. Pass it to `Endpoint::builder(..).transport_config(..)`.
pub fn transport_config() -> iroh::endpoint::QuicTransportConfig {
    iroh::endpoint::QuicTransportConfig::builder()
        .max_concurrent_bidi_streams(MAX_CHANNELS.into())
        .build()
}

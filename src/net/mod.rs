//! The iroh driver: [`HypercoreProtocol`], an iroh `ProtocolHandler` that runs the replication
//! engine over QUIC streams and announces new lengths over iroh-gossip.

mod driver;
mod frames;
mod protocol;
mod tasks;

pub use frames::ReadError;
pub use iroh_hypercore_tickets::{CoreTicket, TicketError};
pub use protocol::{Builder, HypercoreProtocol};

/// ALPN of the hypercore replication protocol.
pub const ALPN: &[u8] = b"/iroh-hypercore/1";

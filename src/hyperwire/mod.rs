//! Hypercore's own wire, as JS Hypercore 11 and Corestore 7 speak it on a byte stream: the
//! Noise handshake and encryption of `@hyperswarm/secret-stream`, protomux channels, and
//! hypercore's messages in compact-encoding.

pub mod compact;
pub mod connection;
pub mod messages;
pub mod mux;
pub mod noise;
pub mod secretstream;
pub mod transport;

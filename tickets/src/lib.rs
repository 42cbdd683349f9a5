//! `CoreTicket`: a shareable string naming a hypercore and how to reach peers that have it.
//!
//! A ticket is `core` followed by the lowercase, unpadded base32 of the postcard encoding of
//! [`CoreTicket`]. It grants read access only: it holds the core's public key, never a secret.
//!
//! ```
//! use iroh_hypercore_tickets::CoreTicket;
//!
//! let ticket = CoreTicket::new([7u8; 32], vec![]);
//! let text = ticket.to_string();
//! assert!(text.starts_with("core"));
//! assert_eq!(text.parse::<CoreTicket>().unwrap(), ticket);
//! ```

use std::{fmt, str::FromStr};

pub use iroh_base::{EndpointAddr, EndpointId};
use serde::{Deserialize, Serialize};

/// The prefix of every ticket string.
pub const PREFIX: &str = "core";

/// Longest ticket string accepted by [`FromStr`]; longer input is refused before decoding.
pub const MAX_TICKET_LEN: usize = 8192;

/// Most bytes [`CoreTicket::from_bytes`] accepts: what a string of [`MAX_TICKET_LEN`]
/// characters can encode, so both forms have the same limit.
pub const MAX_TICKET_BYTES: usize = (MAX_TICKET_LEN - PREFIX.len()) * 5 / 8;

/// A hypercore's key and the addresses of endpoints that replicate it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreTicket {
    key: [u8; 32],
    nodes: Vec<EndpointAddr>,
}

/// Why a string is not a valid ticket.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    /// The string does not start with `core`.
    #[error("not a core ticket: it must start with \"{PREFIX}\"")]
    Prefix,
    /// The string is longer than [`MAX_TICKET_LEN`].
    #[error("ticket is {0} characters long, the limit is {MAX_TICKET_LEN}")]
    TooLong(usize),
    /// The part after the prefix is not lowercase unpadded base32.
    #[error("ticket is not valid base32: {0}")]
    Base32(String),
    /// The decoded bytes are not a ticket.
    #[error("ticket bytes do not decode: {0}")]
    Decode(String),
    /// The bytes are more than [`MAX_TICKET_BYTES`].
    #[error("ticket is {0} bytes long, the limit is {MAX_TICKET_BYTES}")]
    TooLarge(usize),
    /// The decoded ticket has bytes left over.
    #[error("ticket has {0} trailing bytes")]
    Trailing(usize),
}

impl CoreTicket {
    /// A ticket for the core `key`, reachable at `nodes`.
    pub fn new(key: [u8; 32], nodes: Vec<EndpointAddr>) -> Self {
        Self { key, nodes }
    }

    /// The core key (its public identity; read access only).
    pub fn key(&self) -> [u8; 32] {
        self.key
    }

    /// Endpoints that replicate the core.
    pub fn nodes(&self) -> &[EndpointAddr] {
        &self.nodes
    }

    /// The postcard bytes the string form encodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serializing into a Vec cannot fail")
    }

    /// Decodes the postcard bytes of a ticket, refusing more than [`MAX_TICKET_BYTES`] and
    /// trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TicketError> {
        if bytes.len() > MAX_TICKET_BYTES {
            return Err(TicketError::TooLarge(bytes.len()));
        }
        let (ticket, rest) = postcard::take_from_bytes::<Self>(bytes)
            .map_err(|e| TicketError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(TicketError::Trailing(rest.len()));
        }
        // Addresses are normalised as they decode (a relay URL gains its trailing `/`): a
        // ticket at the limit could grow past it, and then not print as a ticket that parses.
        let len = ticket.to_bytes().len();
        if len > MAX_TICKET_BYTES {
            return Err(TicketError::TooLarge(len));
        }
        Ok(ticket)
    }
}

impl fmt::Display for CoreTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = PREFIX.to_string();
        data_encoding::BASE32_NOPAD.encode_append(&self.to_bytes(), &mut out);
        out[PREFIX.len()..].make_ascii_lowercase();
        f.write_str(&out)
    }
}

impl FromStr for CoreTicket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, TicketError> {
        if s.len() > MAX_TICKET_LEN {
            return Err(TicketError::TooLong(s.len()));
        }
        let rest = s.strip_prefix(PREFIX).ok_or(TicketError::Prefix)?;
        if rest.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(TicketError::Base32("uppercase characters".into()));
        }
        let bytes = data_encoding::BASE32_NOPAD
            .decode(rest.to_ascii_uppercase().as_bytes())
            .map_err(|e| TicketError::Base32(e.to_string()))?;
        Self::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use iroh_base::{SecretKey, TransportAddr};
    use proptest::prelude::*;

    use super::*;

    fn addr(seed: u8, port: u16, with_ip: bool) -> EndpointAddr {
        let id = SecretKey::from_bytes(&[seed; 32]).public();
        let mut addr = EndpointAddr::new(id);
        if with_ip {
            addr.addrs.insert(TransportAddr::Ip(SocketAddr::from((
                Ipv4Addr::new(127, 0, 0, seed),
                port,
            ))));
        }
        addr
    }

    proptest! {
        #[test]
        fn round_trips(key in any::<[u8; 32]>(), peers in proptest::collection::vec((any::<u8>(), any::<u16>(), any::<bool>()), 0..4)) {
            let nodes = peers.into_iter().map(|(s, p, ip)| addr(s, p, ip)).collect();
            let ticket = CoreTicket::new(key, nodes);
            let text = ticket.to_string();
            prop_assert!(text.starts_with(PREFIX));
            prop_assert_eq!(&text, &text.to_lowercase());
            prop_assert_eq!(text.parse::<CoreTicket>().unwrap(), ticket.clone());
            prop_assert_eq!(CoreTicket::from_bytes(&ticket.to_bytes()).unwrap(), ticket);
        }

        #[test]
        fn never_panics_on_garbage(s in "core[a-z2-7]{0,200}") {
            let _ = s.parse::<CoreTicket>();
        }
    }

    #[test]
    fn each_bad_input_has_its_own_error() {
        let good = CoreTicket::new([1; 32], vec![addr(3, 4000, true)]).to_string();
        assert_eq!("blob".parse::<CoreTicket>(), Err(TicketError::Prefix));
        assert_eq!(
            good.replacen("core", "CORE", 1).parse::<CoreTicket>(),
            Err(TicketError::Prefix)
        );
        assert!(matches!(
            "core!!!!".parse::<CoreTicket>(),
            Err(TicketError::Base32(_))
        ));
        assert!(matches!(
            good.to_uppercase()
                .replacen("CORE", "core", 1)
                .parse::<CoreTicket>(),
            Err(TicketError::Base32(_))
        ));
        // Valid base32 of too few bytes for a key.
        assert!(matches!(
            "coreaaaa".parse::<CoreTicket>(),
            Err(TicketError::Decode(_))
        ));
        let mut bytes = CoreTicket::new([1; 32], vec![]).to_bytes();
        bytes.push(0);
        let mut text = PREFIX.to_string();
        text.push_str(&data_encoding::BASE32_NOPAD.encode(&bytes).to_lowercase());
        assert_eq!(text.parse::<CoreTicket>(), Err(TicketError::Trailing(1)));
        let long = format!("core{}", "a".repeat(MAX_TICKET_LEN));
        assert!(matches!(
            long.parse::<CoreTicket>(),
            Err(TicketError::TooLong(_))
        ));
        // The byte form has the same limit: a ticket with many nodes that the string form
        // could not carry is refused before it is decoded.
        let many: Vec<EndpointAddr> = (0..=255).map(|i| addr(i, 1, true)).collect();
        let bytes = CoreTicket::new([1; 32], many).to_bytes();
        assert!(bytes.len() > MAX_TICKET_BYTES);
        assert_eq!(
            CoreTicket::from_bytes(&bytes),
            Err(TicketError::TooLarge(bytes.len()))
        );
        let fits = CoreTicket::new([1; 32], vec![addr(1, 1, true)]);
        assert!(fits.to_string().len() <= MAX_TICKET_LEN);
        assert_eq!(CoreTicket::from_bytes(&fits.to_bytes()), Ok(fits));
    }
}

//! `CoreTicket`: a shareable string naming a hypercore and how to reach peers that have it.
//!
//! A ticket is `core` followed by the lowercase, unpadded base32 of its bytes. The bytes are
//! versioned: the postcard encoding of a private enum whose variant index (a postcard varint,
//! so one byte) is the format version, followed by that version's fields. Version 0 holds the
//! core's 32-byte key and the [`EndpointAddr`]s of endpoints that replicate it. A later
//! version can add fields as a new variant; a ticket of a version this release does not know
//! is refused with [`TicketError::UnknownVersion`]. A ticket grants read access only: it holds
//! the core's public key, never a secret.
//!
//! [`CoreTicket`] implements iroh's [`Ticket`] trait (re-exported here with its
//! [`ParseError`]) with the kind `core`: [`Ticket::encode_string`] and
//! [`Ticket::decode_string`] print and accept exactly the strings that [`Display`] and
//! [`FromStr`] do, and [`Ticket::decode_bytes`] enforces the same limits as
//! [`CoreTicket::from_bytes`].
//!
//! ```
//! use iroh_hypercore_tickets::{CoreTicket, Ticket};
//!
//! let ticket = CoreTicket::new([7u8; 32], vec![]);
//! let text = ticket.to_string();
//! assert!(text.starts_with("core"));
//! assert_eq!(text.parse::<CoreTicket>().unwrap(), ticket);
//! assert_eq!(ticket.encode_string(), text);
//! assert_eq!(CoreTicket::decode_string(&text).unwrap(), ticket);
//! ```
//!
//! [`Display`]: fmt::Display

use std::{borrow::Cow, fmt, str::FromStr};

pub use iroh_base::{EndpointAddr, EndpointId};
pub use iroh_tickets::{ParseError, Ticket};
use serde::{Deserialize, Serialize};

/// The prefix of every ticket string (the [`Ticket::KIND`] of [`CoreTicket`]).
pub const PREFIX: &str = "core";

/// Longest ticket string accepted by [`FromStr`]; longer input is refused before decoding.
pub const MAX_TICKET_LEN: usize = 8192;

/// Most bytes [`CoreTicket::from_bytes`] accepts: what a string of [`MAX_TICKET_LEN`]
/// characters can encode, so both forms have the same limit.
pub const MAX_TICKET_BYTES: usize = (MAX_TICKET_LEN - PREFIX.len()) * 5 / 8;

/// A hypercore's key and the addresses of endpoints that replicate it.
///
/// Its serde form (the derived `Serialize`/`Deserialize`) is the bare struct, unversioned;
/// [`to_bytes`](Self::to_bytes) and [`Display`](fmt::Display) give the versioned ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreTicket {
    key: [u8; 32],
    nodes: Vec<EndpointAddr>,
}

/// The bytes of a ticket: postcard writes the variant index, the format version, first.
///
/// Variants are only ever added, at the end, so that the index of each stays the same.
#[derive(Serialize, Deserialize)]
enum WireFormat<'a> {
    V0 {
        key: [u8; 32],
        nodes: Cow<'a, [EndpointAddr]>,
    },
}

/// The highest format version this release reads and the one it writes.
const VERSION: u32 = 0;

/// Why a string or bytes are not a valid ticket.
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
    /// The bytes are of a format version this release does not know (a newer one, or not a
    /// ticket).
    #[error("ticket format version {0} is unknown: this release reads version {VERSION}")]
    UnknownVersion(u32),
    /// The bytes are more than [`MAX_TICKET_BYTES`].
    #[error("ticket is {0} bytes long, the limit is {MAX_TICKET_BYTES}")]
    TooLarge(usize),
    /// The decoded ticket has bytes left over.
    #[error("ticket has {0} trailing bytes")]
    Trailing(usize),
}

/// Why input is not a ticket, keeping the decoders' own errors, so that it converts into both
/// [`TicketError`] and iroh's [`ParseError`].
enum Invalid {
    Prefix,
    TooLong(usize),
    Uppercase,
    Base32(data_encoding::DecodeError),
    Postcard(postcard::Error),
    UnknownVersion(u32),
    TooLarge(usize),
    Trailing(usize),
}

impl From<Invalid> for TicketError {
    fn from(e: Invalid) -> Self {
        match e {
            Invalid::Prefix => Self::Prefix,
            Invalid::TooLong(n) => Self::TooLong(n),
            Invalid::Uppercase => Self::Base32("uppercase characters".into()),
            Invalid::Base32(e) => Self::Base32(e.to_string()),
            Invalid::Postcard(e) => Self::Decode(e.to_string()),
            Invalid::UnknownVersion(v) => Self::UnknownVersion(v),
            Invalid::TooLarge(n) => Self::TooLarge(n),
            Invalid::Trailing(n) => Self::Trailing(n),
        }
    }
}

impl From<Invalid> for ParseError {
    fn from(e: Invalid) -> Self {
        match e {
            Invalid::Prefix => ParseError::wrong_prefix(PREFIX),
            Invalid::TooLong(_) => {
                ParseError::verification_failed("ticket string is longer than MAX_TICKET_LEN")
            }
            Invalid::Uppercase => ParseError::verification_failed(
                "ticket has uppercase characters: it must be lowercase base32",
            ),
            Invalid::Base32(e) => e.into(),
            Invalid::Postcard(e) => e.into(),
            Invalid::UnknownVersion(_) => {
                ParseError::verification_failed("ticket format version is unknown")
            }
            Invalid::TooLarge(_) => {
                ParseError::verification_failed("ticket is larger than MAX_TICKET_BYTES")
            }
            Invalid::Trailing(_) => ParseError::verification_failed("ticket has trailing bytes"),
        }
    }
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

    /// The versioned bytes the string form encodes (see the crate docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = WireFormat::V0 {
            key: self.key,
            nodes: Cow::Borrowed(&self.nodes),
        };
        postcard::to_stdvec(&wire).expect("serializing into a Vec cannot fail")
    }

    /// Decodes the bytes of a ticket, refusing more than [`MAX_TICKET_BYTES`], a format
    /// version it does not know and trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TicketError> {
        Self::parse_bytes(bytes).map_err(Into::into)
    }

    fn parse_bytes(bytes: &[u8]) -> Result<Self, Invalid> {
        if bytes.len() > MAX_TICKET_BYTES {
            return Err(Invalid::TooLarge(bytes.len()));
        }
        // The version first, so that a newer ticket gets its own error rather than whatever
        // its fields happen to fail with.
        let (version, _) = postcard::take_from_bytes::<u32>(bytes).map_err(Invalid::Postcard)?;
        if version > VERSION {
            return Err(Invalid::UnknownVersion(version));
        }
        let (wire, rest) =
            postcard::take_from_bytes::<WireFormat>(bytes).map_err(Invalid::Postcard)?;
        if !rest.is_empty() {
            return Err(Invalid::Trailing(rest.len()));
        }
        let ticket = match wire {
            WireFormat::V0 { key, nodes } => Self::new(key, nodes.into_owned()),
        };
        // Addresses are normalised as they decode (a relay URL gains its trailing `/`): a
        // ticket at the limit could grow past it, and then not print as a ticket that parses.
        let len = ticket.to_bytes().len();
        if len > MAX_TICKET_BYTES {
            return Err(Invalid::TooLarge(len));
        }
        Ok(ticket)
    }

    fn parse_str(s: &str) -> Result<Self, Invalid> {
        if s.len() > MAX_TICKET_LEN {
            return Err(Invalid::TooLong(s.len()));
        }
        let rest = s.strip_prefix(PREFIX).ok_or(Invalid::Prefix)?;
        if rest.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(Invalid::Uppercase);
        }
        let bytes = data_encoding::BASE32_NOPAD
            .decode(rest.to_ascii_uppercase().as_bytes())
            .map_err(Invalid::Base32)?;
        Self::parse_bytes(&bytes)
    }
}

impl Ticket for CoreTicket {
    const KIND: &'static str = PREFIX;

    fn encode_bytes(&self) -> Vec<u8> {
        self.to_bytes()
    }

    /// As [`CoreTicket::from_bytes`], with its errors as [`ParseError`]s: a postcard error as
    /// [`ParseError::Postcard`], the others as [`ParseError::Verify`].
    fn decode_bytes(bytes: &[u8]) -> Result<Self, ParseError> {
        Self::parse_bytes(bytes).map_err(Into::into)
    }

    // `encode_string` keeps the default (the lowercase prefix and base32 of the bytes), which
    // `Display` prints.

    /// As [`FromStr`]: unlike the default, it refuses uppercase and strings longer than
    /// [`MAX_TICKET_LEN`], so that both accept the same strings.
    fn decode_string(s: &str) -> Result<Self, ParseError> {
        Self::parse_str(s).map_err(Into::into)
    }
}

impl fmt::Display for CoreTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode_string())
    }
}

impl FromStr for CoreTicket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, TicketError> {
        Self::parse_str(s).map_err(Into::into)
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

    /// `core` and the lowercase base32 of `bytes`, whatever they are.
    fn text_of(bytes: &[u8]) -> String {
        let mut text = PREFIX.to_string();
        text.push_str(&data_encoding::BASE32_NOPAD.encode(bytes).to_lowercase());
        text
    }

    /// `FromStr` and `Ticket::decode_string` agree on `s`: the same ticket, or both refuse it.
    fn parsers_agree(s: &str) -> Result<(), TestCaseError> {
        let ours = s.parse::<CoreTicket>();
        let theirs = CoreTicket::decode_string(s);
        prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{:?} vs {:?}", ours, theirs);
        if let (Ok(a), Ok(b)) = (ours, theirs) {
            prop_assert_eq!(a, b);
        }
        Ok(())
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
            prop_assert_eq!(CoreTicket::from_bytes(&ticket.to_bytes()).unwrap(), ticket.clone());
            // iroh's `Ticket` trait prints the same string and reads it back, both ways.
            let encoded = ticket.encode_string();
            prop_assert_eq!(&encoded, &text);
            prop_assert_eq!(CoreTicket::decode_string(&text).unwrap(), ticket.clone());
            prop_assert_eq!(encoded.parse::<CoreTicket>().unwrap(), ticket.clone());
            prop_assert_eq!(ticket.encode_bytes(), ticket.to_bytes());
            prop_assert_eq!(CoreTicket::decode_bytes(&ticket.to_bytes()).unwrap(), ticket);
        }

        #[test]
        fn never_panics_on_garbage(s in "core[a-z2-7]{0,200}") {
            parsers_agree(&s)?;
        }

        #[test]
        fn never_panics_on_garbage_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let ours = CoreTicket::from_bytes(&bytes);
            let theirs = CoreTicket::decode_bytes(&bytes);
            prop_assert_eq!(ours.is_ok(), theirs.is_ok());
            parsers_agree(&text_of(&bytes))?;
            // Version 0 followed by anything.
            let mut v0 = vec![0];
            v0.extend(&bytes);
            let _ = CoreTicket::from_bytes(&v0);
            parsers_agree(&text_of(&v0))?;
        }
    }

    #[test]
    fn the_bytes_are_version_0_then_key_then_nodes() {
        let bytes = CoreTicket::new([7; 32], vec![]).to_bytes();
        let mut expected = vec![0];
        expected.extend([7; 32]);
        expected.push(0);
        assert_eq!(bytes, expected);
        let one = CoreTicket::new([7; 32], vec![addr(3, 4000, true)]).to_bytes();
        expected.pop();
        expected.push(1);
        assert_eq!(one[..34], expected[..]);
        assert_eq!(&one[34..66], addr(3, 4000, true).id.as_bytes());
    }

    #[test]
    fn the_iroh_ticket_trait_reads_and_prints_the_same_strings() {
        let ticket = CoreTicket::new([9; 32], vec![addr(1, 1, true), addr(2, 2, false)]);
        let text = ticket.to_string();
        assert_eq!(ticket.encode_string(), text);
        let back = <CoreTicket as Ticket>::decode_string(&ticket.encode_string()).unwrap();
        assert_eq!(back, ticket);
        assert_eq!(back.to_string(), text);
        assert_eq!(CoreTicket::KIND, PREFIX);
        // The default `decode_string` would take these; ours refuses them as `FromStr` does.
        let upper = format!("{PREFIX}{}", text[PREFIX.len()..].to_uppercase());
        assert!(upper.parse::<CoreTicket>().is_err());
        let e = CoreTicket::decode_string(&upper).unwrap_err();
        assert!(matches!(e, ParseError::Verify { .. }), "{e:?}");
        let long = format!("core{}", "a".repeat(MAX_TICKET_LEN));
        let e = CoreTicket::decode_string(&long).unwrap_err();
        assert!(matches!(e, ParseError::Verify { .. }), "{e:?}");
        // The other errors keep their iroh kinds.
        let e = CoreTicket::decode_string("blob").unwrap_err();
        assert!(
            matches!(
                e,
                ParseError::Kind {
                    expected: "core",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = CoreTicket::decode_string("core!!!!").unwrap_err();
        assert!(matches!(e, ParseError::Encoding { .. }), "{e:?}");
        let e = CoreTicket::decode_string("coreaaaa").unwrap_err();
        assert!(matches!(e, ParseError::Postcard { .. }), "{e:?}");
    }

    #[test]
    fn an_unknown_version_has_its_own_error() {
        let mut bytes = CoreTicket::new([1; 32], vec![addr(3, 4000, true)]).to_bytes();
        bytes[0] = 1;
        assert_eq!(
            CoreTicket::from_bytes(&bytes),
            Err(TicketError::UnknownVersion(1))
        );
        let text = text_of(&bytes);
        assert_eq!(
            text.parse::<CoreTicket>(),
            Err(TicketError::UnknownVersion(1))
        );
        assert_eq!(
            TicketError::UnknownVersion(1).to_string(),
            "ticket format version 1 is unknown: this release reads version 0"
        );
        let e = CoreTicket::decode_string(&text).unwrap_err();
        assert!(
            e.to_string().contains("ticket format version is unknown"),
            "{e}"
        );
        let e = CoreTicket::decode_bytes(&bytes).unwrap_err();
        assert!(matches!(e, ParseError::Verify { .. }), "{e:?}");
        // A version of several varint bytes, and one of an unversioned ticket (before the
        // format had a version, the key came first).
        let big = [0x80, 0x01, 0, 0];
        assert_eq!(
            CoreTicket::from_bytes(&big),
            Err(TicketError::UnknownVersion(128))
        );
        let mut old = vec![42];
        old.extend([1; 31]);
        old.push(0);
        assert_eq!(
            CoreTicket::from_bytes(&old),
            Err(TicketError::UnknownVersion(42))
        );
        // Not even a version.
        assert!(matches!(
            CoreTicket::from_bytes(&[]),
            Err(TicketError::Decode(_))
        ));
        assert!(matches!(
            CoreTicket::from_bytes(&[0xff; 6]),
            Err(TicketError::Decode(_))
        ));
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
        // Valid base32 of version 0 and too few bytes for a key.
        assert!(matches!(
            "coreaaaa".parse::<CoreTicket>(),
            Err(TicketError::Decode(_))
        ));
        let mut bytes = CoreTicket::new([1; 32], vec![]).to_bytes();
        bytes[0] = 2;
        assert_eq!(
            text_of(&bytes).parse::<CoreTicket>(),
            Err(TicketError::UnknownVersion(2))
        );
        let mut bytes = CoreTicket::new([1; 32], vec![]).to_bytes();
        bytes.push(0);
        assert_eq!(
            text_of(&bytes).parse::<CoreTicket>(),
            Err(TicketError::Trailing(1))
        );
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
        let e = CoreTicket::decode_bytes(&bytes).unwrap_err();
        assert!(matches!(e, ParseError::Verify { .. }), "{e:?}");
        let fits = CoreTicket::new([1; 32], vec![addr(1, 1, true)]);
        assert!(fits.to_string().len() <= MAX_TICKET_LEN);
        assert_eq!(CoreTicket::from_bytes(&fits.to_bytes()), Ok(fits));
    }
}

//! compact-encoding, the byte format of every message on Hypercore's own wire: a decoder that
//! never panics and refuses truncated input, and an encoder into a `Vec`.
//!
//! - `uint`: one byte below `0xfd`; else `0xfd` + u16, `0xfe` + u32 or `0xff` + u64, all
//!   little-endian. The decoder takes any of these forms (JS does), the encoder the shortest.
//! - `buffer`: a `uint` length, then the bytes (an absent buffer is length 0).
//! - `string`: a `buffer` of UTF-8.
//! - `fixed32` / `fixed64`: the bytes as they are.
//! - arrays: a `uint` count, then the items.

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a value.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A value is out of its range (a count over its limit, invalid UTF-8, a bad flag).
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Reads values from a byte slice, front to back.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.bytes(1, what)?[0])
    }

    /// A `uint`.
    pub fn uint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(match self.u8(what)? {
            0xfd => u16::from_le_bytes(self.array(what)?).into(),
            0xfe => u32::from_le_bytes(self.array(what)?).into(),
            0xff => u64::from_le_bytes(self.array(what)?),
            b => b.into(),
        })
    }

    /// A `uint` that must fit a `usize` and be at most `max` (counts and lengths).
    pub fn len(&mut self, max: usize, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.uint(what)?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= max)
            .ok_or(DecodeError::Invalid(what))
    }

    /// A `buffer` of at most `max` bytes.
    pub fn buffer(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.len(max, what)?;
        self.bytes(n, what)
    }

    /// A `string` of at most `max` bytes.
    pub fn string(&mut self, max: usize, what: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.buffer(max, what)?).map_err(|_| DecodeError::Invalid(what))
    }
}

/// Appends values to a `Vec`.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// A writer appending to `buf`.
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Self { buf }
    }

    /// Raw bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// One byte.
    pub fn u8(&mut self, b: u8) {
        self.buf.push(b);
    }

    /// A `uint`, in its shortest form.
    pub fn uint(&mut self, n: u64) {
        if n < 0xfd {
            self.buf.push(n as u8);
        } else if let Ok(n) = u16::try_from(n) {
            self.buf.push(0xfd);
            self.buf.extend_from_slice(&n.to_le_bytes());
        } else if let Ok(n) = u32::try_from(n) {
            self.buf.push(0xfe);
            self.buf.extend_from_slice(&n.to_le_bytes());
        } else {
            self.buf.push(0xff);
            self.buf.extend_from_slice(&n.to_le_bytes());
        }
    }

    /// A `buffer`.
    pub fn buffer(&mut self, b: &[u8]) {
        self.uint(b.len() as u64);
        self.bytes(b);
    }

    /// A `string`.
    pub fn string(&mut self, s: &str) {
        self.buffer(s.as_bytes());
    }
}

/// Bytes a `uint` takes.
pub fn uint_len(n: u64) -> usize {
    if n < 0xfd {
        1
    } else if n <= 0xffff {
        3
    } else if n <= 0xffff_ffff {
        5
    } else {
        9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uints_round_trip_in_their_shortest_form() {
        for (n, len) in [
            (0, 1),
            (0xfc, 1),
            (0xfd, 3),
            (0xffff, 3),
            (0x1_0000, 5),
            (0xffff_ffff, 5),
            (0x1_0000_0000, 9),
            (u64::MAX, 9),
        ] {
            let mut buf = Vec::new();
            Writer::new(&mut buf).uint(n);
            assert_eq!(buf.len(), len, "{n}");
            assert_eq!(uint_len(n), len);
            let mut r = Reader::new(&buf);
            assert_eq!(r.uint("n"), Ok(n));
            assert!(r.is_empty());
        }
        // A longer form than needed still decodes, as in JS.
        assert_eq!(Reader::new(&[0xfd, 5, 0]).uint("n"), Ok(5));
    }

    #[test]
    fn truncated_and_oversized_input_is_an_error() {
        assert_eq!(
            Reader::new(&[0xfe, 1, 2]).uint("n"),
            Err(DecodeError::Truncated("n"))
        );
        assert_eq!(
            Reader::new(&[5, 1, 2]).buffer(10, "b"),
            Err(DecodeError::Truncated("b"))
        );
        assert_eq!(
            Reader::new(&[11]).buffer(10, "b"),
            Err(DecodeError::Invalid("b"))
        );
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            Reader::new(&huge).len(usize::MAX, "b"),
            if usize::BITS == 64 {
                Ok(usize::MAX)
            } else {
                Err(DecodeError::Invalid("b"))
            }
        );
        assert_eq!(
            Reader::new(&[2, 0xff, 0xfe]).string(8, "s"),
            Err(DecodeError::Invalid("s"))
        );
    }
}

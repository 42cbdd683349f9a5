//! Reading frames off a QUIC stream in batches, and why a stream failed.

use bytes::{Buf, BytesMut};
use iroh::endpoint::RecvStream;

use crate::replication::wire::{HEADER_LEN, Message, WireError, decode_body, frame_len};

/// Largest chunk read from a stream at once.
const CHUNK: usize = 256 * 1024;

/// Why reading a channel failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer broke the framing rules (oversized or malformed frame).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The QUIC stream failed.
    #[error("stream failed: {0}")]
    Stream(String),
}

/// Reads the frames of one stream; owned so that a pending read can live in a future.
#[derive(Debug)]
pub struct FrameReader {
    recv: RecvStream,
    buf: BytesMut,
}

impl FrameReader {
    /// Reads `recv`.
    pub fn new(recv: RecvStream) -> Self {
        Self {
            recv,
            buf: BytesMut::new(),
        }
    }

    /// The frames that are complete after the next read: `Ok(None)` when the stream ended
    /// cleanly between frames.
    pub async fn next_batch(mut self) -> (Self, Result<Option<Vec<Message>>, ReadError>) {
        let result = self.read_batch().await;
        (self, result)
    }

    async fn read_batch(&mut self) -> Result<Option<Vec<Message>>, ReadError> {
        let mut frames = Vec::new();
        loop {
            let used = decode_frames(&self.buf, &mut frames)?;
            self.buf.advance(used);
            if !frames.is_empty() {
                return Ok(Some(frames));
            }
            match self
                .recv
                .read_chunk(CHUNK)
                .await
                .map_err(|e| ReadError::Stream(e.to_string()))?
            {
                // Whole frames are decoded straight from the chunk; only a partial one is kept.
                Some(chunk) if self.buf.is_empty() => {
                    let used = decode_frames(&chunk, &mut frames)?;
                    self.buf.extend_from_slice(&chunk[used..]);
                }
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(ReadError::Truncated),
            }
        }
    }
}

/// Decodes the complete frames at the start of `bytes` into `out`; returns the bytes they took.
fn decode_frames(bytes: &[u8], out: &mut Vec<Message>) -> Result<usize, ReadError> {
    let mut used = 0;
    while let Some(header) = bytes.get(used..used + HEADER_LEN) {
        let header: [u8; HEADER_LEN] = [header[0], header[1], header[2], header[3]];
        let len = frame_len(header)?;
        let Some(body) = bytes.get(used + HEADER_LEN..used + HEADER_LEN + len) else {
            break;
        };
        out.push(decode_body(body)?);
        used += HEADER_LEN + len;
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::wire::{MAX_FRAME, encode_frame};

    fn frames(n: u64) -> (Vec<Message>, Vec<u8>) {
        let msgs: Vec<Message> = (0..n)
            .map(|i| Message::NoData {
                id: i,
                start: i * 1000,
                end: i * 1000 + 7,
            })
            .collect();
        let bytes = msgs
            .iter()
            .flat_map(|m| encode_frame(m).expect("encodes").to_vec())
            .collect();
        (msgs, bytes)
    }

    #[test]
    fn complete_frames_decode_and_a_partial_one_waits() {
        let (msgs, bytes) = frames(3);
        for cut in 0..=bytes.len() {
            let mut out = Vec::new();
            let used = decode_frames(&bytes[..cut], &mut out).expect("valid frames");
            // Only whole frames are taken, and the rest decodes once it is complete.
            assert_eq!(out[..], msgs[..out.len()], "cut at {cut}");
            decode_frames(&bytes[used..], &mut out).expect("valid frames");
            assert_eq!(out, msgs);
        }
    }

    #[test]
    fn an_oversized_header_is_refused_before_its_body_arrives() {
        let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let err = decode_frames(&header, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(err, ReadError::Wire(WireError::TooLarge(_))),
            "{err}"
        );
    }

    #[test]
    fn a_malformed_body_is_an_error() {
        let mut bytes = 3u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
        let err = decode_frames(&bytes, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(err, ReadError::Wire(WireError::Malformed(_))),
            "{err}"
        );
    }
}

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
        loop {
            let frames = self.take_frames()?;
            if !frames.is_empty() {
                return Ok(Some(frames));
            }
            match self
                .recv
                .read_chunk(CHUNK)
                .await
                .map_err(|e| ReadError::Stream(e.to_string()))?
            {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(ReadError::Truncated),
            }
        }
    }

    /// Decodes every complete frame in the buffer.
    fn take_frames(&mut self) -> Result<Vec<Message>, ReadError> {
        let mut out = Vec::new();
        while self.buf.len() >= HEADER_LEN {
            let header: [u8; HEADER_LEN] = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
            let len = frame_len(header)?;
            if self.buf.len() < HEADER_LEN + len {
                self.buf.reserve(HEADER_LEN + len - self.buf.len());
                break;
            }
            self.buf.advance(HEADER_LEN);
            let body = self.buf.split_to(len);
            out.push(decode_body(&body)?);
        }
        Ok(out)
    }
}

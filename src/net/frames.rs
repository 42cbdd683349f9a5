//! Reading frames off a QUIC stream in batches, with the bytes of unfinished frames counted
//! against a per-connection and a global budget, and why a stream failed.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use bytes::{Buf, Bytes, BytesMut};
use iroh::endpoint::RecvStream;

use crate::replication::wire::{
    HEADER_LEN, MAX_FRAME, Message, SHARED_VALUE_BYTES, WireError, decode_frame_shared,
    frame_len_within,
};

/// Capacity past which the buffer of a finished large frame is not kept.
const CHUNK: usize = 256 * 1024;

/// Most chunks taken from a stream in one read. A chunk is data the stream received in
/// order, a datagram's or more (QUIC may merge what it buffered), within the stream's
/// receive window.
const CHUNKS_AT_ONCE: usize = 32;

/// Bytes of unfinished frames that the streams of one connection may hold together.
pub const MAX_BUFFERED_PER_CONNECTION: u64 = 32 * 1024 * 1024;

/// Bytes of unfinished frames that all streams of all connections may hold together.
pub const MAX_BUFFERED_TOTAL: u64 = 256 * 1024 * 1024;

/// A count of buffered bytes with a limit, shared by the readers it covers.
#[derive(Debug, Clone)]
pub struct Budget {
    used: Arc<AtomicU64>,
    limit: u64,
    /// Set when a connection's budget was released as a whole (its connection closed): what
    /// its readers give back later is not given back to the total a second time.
    released: Arc<AtomicBool>,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            used: Arc::new(AtomicU64::new(0)),
            limit,
            released: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Releases this (connection's) budget as a whole from `total` at once, when its
    /// connection closes: its readers may be dropped only later.
    pub fn release_from(&self, total: &Budget) {
        if !self.released.swap(true, Ordering::Relaxed) {
            total.give_back(self.used.swap(0, Ordering::Relaxed));
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(n).filter(|t| *t <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

/// The budgets a stream's unfinished frames count against: its connection's and the node's.
#[derive(Debug, Clone)]
pub struct Budgets {
    /// The connection's budget.
    pub connection: Budget,
    /// The node's budget over all connections.
    pub total: Budget,
}

/// Which budget a read would have passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// The connection's own.
    Connection,
    /// The node's, over all connections.
    Total,
}

impl Budgets {
    fn try_take(&self, n: u64) -> Result<(), Exceeded> {
        if self.connection.released.load(Ordering::Relaxed) {
            return Err(Exceeded::Connection);
        }
        if !self.connection.try_take(n) {
            return Err(Exceeded::Connection);
        }
        if !self.total.try_take(n) {
            self.connection.give_back(n);
            return Err(Exceeded::Total);
        }
        Ok(())
    }

    fn give_back(&self, n: u64) {
        self.connection.give_back(n);
        if !self.connection.released.load(Ordering::Relaxed) {
            self.total.give_back(n);
        }
    }
}

/// Why reading a channel failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer broke the framing rules (oversized or malformed frame).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// Unfinished frames on this connection, or on all of them, would hold more than their
    /// budget. The reader keeps its bytes (the whole frames before them were handed over by
    /// the read before): the read may be tried again once there is room.
    #[error("unfinished frames over the memory budget ({0:?})")]
    OverBudget(Exceeded),
    /// The QUIC stream failed.
    #[error("stream failed: {0}")]
    Stream(String),
}

/// Reads the frames of one stream; owned so that a pending read can live in a future.
///
/// Bytes it keeps between reads (an unfinished frame) count against its [`Budgets`]; a read
/// that would take more fails with [`ReadError::OverBudget`].
#[derive(Debug)]
pub struct FrameReader {
    recv: RecvStream,
    buf: Unfinished,
    budgets: Budgets,
    /// Bytes of `buf` taken from the budgets.
    held: u64,
    /// Where a read puts the chunks it takes ([`CHUNKS_AT_ONCE`] slots, on the heap so
    /// that a reader stays small to move); empty between reads.
    chunks: Box<[Bytes]>,
}

impl FrameReader {
    /// Reads `recv`, holding unfinished frames within `budgets`.
    pub fn new(recv: RecvStream, budgets: Budgets) -> Self {
        Self {
            recv,
            buf: Unfinished::default(),
            budgets,
            held: 0,
            chunks: vec![Bytes::new(); CHUNKS_AT_ONCE].into_boxed_slice(),
        }
    }

    /// The frames that are complete after the next read, each of at most `max_frame` bytes:
    /// `Ok(None)` when the stream ended cleanly between frames. Below [`MAX_FRAME`] (before a
    /// channel's handshake) a batch holds one frame, so that the limit can change after it.
    pub async fn next_batch(
        mut self,
        max_frame: usize,
    ) -> (Self, Result<Option<Vec<Message>>, ReadError>) {
        let result = self.read_batch(max_frame).await;
        (self, result)
    }

    async fn read_batch(&mut self, max_frame: usize) -> Result<Option<Vec<Message>>, ReadError> {
        let one = max_frame < MAX_FRAME;
        let mut frames = Vec::new();
        loop {
            self.buf.decode(max_frame, one, &mut frames)?;
            if let Err(e) = self.account() {
                // The whole frames go first: they are no longer in the buffer, and the next
                // read finds the budget still short (or room again).
                return if frames.is_empty() {
                    Err(e)
                } else {
                    Ok(Some(frames))
                };
            }
            if !frames.is_empty() {
                return Ok(Some(frames));
            }
            let stream = |e: iroh::endpoint::ReadError| ReadError::Stream(e.to_string());
            if one {
                match self
                    .recv
                    .read_chunk(max_frame + HEADER_LEN)
                    .await
                    .map_err(stream)?
                {
                    Some(chunk) => self.buf.take(chunk, max_frame, one, &mut frames)?,
                    None => return self.ended(),
                }
            } else {
                // Every chunk received so far, up to [`CHUNKS_AT_ONCE`], in one read: a batch
                // carries what arrived since the last one, not one datagram's frames.
                match self
                    .recv
                    .read_many_chunks(&mut self.chunks)
                    .await
                    .map_err(stream)?
                {
                    Some(n) => {
                        for i in 0..n.min(self.chunks.len()) {
                            let chunk = std::mem::take(&mut self.chunks[i]);
                            self.buf.take(chunk, max_frame, one, &mut frames)?;
                        }
                    }
                    None => return self.ended(),
                }
            }
        }
    }

    /// The stream ended: cleanly between frames, or inside one.
    fn ended(&self) -> Result<Option<Vec<Message>>, ReadError> {
        if self.buf.is_empty() {
            Ok(None)
        } else {
            Err(ReadError::Truncated)
        }
    }

    /// Brings the bytes taken from the budgets in line with what the buffer holds.
    fn account(&mut self) -> Result<(), ReadError> {
        let now = self.buf.len() as u64;
        if now > self.held {
            self.budgets
                .try_take(now - self.held)
                .map_err(ReadError::OverBudget)?;
        } else {
            self.budgets.give_back(self.held - now);
            self.buf.release_if_empty();
        }
        self.held = now;
        Ok(())
    }
}

/// The bytes of a stream read but not decoded yet: between chunks, at most one unfinished
/// frame.
#[derive(Debug, Default)]
struct Unfinished {
    buf: BytesMut,
    /// Whether frames were decoded out of the buffer since it was made: its allocation may
    /// then hold their bytes before its start, which its capacity does not show.
    consumed: bool,
}

impl Unfinished {
    fn len(&self) -> usize {
        self.buf.len()
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Decodes the whole frames the buffer holds into `frames` (only the first if `one`).
    fn decode(
        &mut self,
        max_frame: usize,
        one: bool,
        frames: &mut Vec<Message>,
    ) -> Result<(), ReadError> {
        let used = decode_frames(&self.buf, max_frame, one, frames)?;
        self.buf.advance(used);
        self.consumed |= used > 0;
        Ok(())
    }

    /// Decodes the whole frames of `chunk` after what the buffer holds; keeps the rest. The
    /// buffer's unfinished frame takes only the bytes it lacks (its header first, then the
    /// body the header announces, refused if over `max_frame` before the body comes), so the
    /// frames after it are decoded straight from the chunk. Before the handshake (`one`) the
    /// chunk is kept whole: a batch holds one frame then.
    fn take(
        &mut self,
        mut chunk: Bytes,
        max_frame: usize,
        one: bool,
        frames: &mut Vec<Message>,
    ) -> Result<(), ReadError> {
        while !one && !self.buf.is_empty() && !chunk.is_empty() {
            let header = self.buf.first_chunk::<HEADER_LEN>().copied();
            let want = match header {
                None => HEADER_LEN,
                Some(header) => HEADER_LEN + frame_len_within(header, max_frame)?,
            };
            let n = want.saturating_sub(self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk.split_to(n));
            if header.is_some() && self.buf.len() >= want {
                // A large frame held whole in a buffer of its own, at most twice its size,
                // shares its block value rather than copying it out: the value keeps alive no
                // more than twice its frame. A buffer frames were decoded out of may hold
                // their bytes before its start (its capacity does not show them): a large
                // frame begins a new buffer (below), and is copied out of an old one.
                let large = want - HEADER_LEN >= SHARED_VALUE_BYTES;
                if large && !self.consumed && self.buf.capacity() <= 2 * want {
                    let mut buf = std::mem::take(&mut self.buf);
                    let frame = buf.split_to(want).freeze();
                    if !buf.is_empty() {
                        // Never so: the buffer takes only what its frame lacks.
                        self.buf = buf;
                        self.consumed = true;
                    }
                    frames.push(decode_frame_shared(&frame.slice(HEADER_LEN..))?);
                } else {
                    // At least one whole frame: whatever the buffer held, this makes progress.
                    self.decode(max_frame, one, frames)?;
                }
                if large && self.buf.is_empty() {
                    // Its allocation goes now: what capacity the buffer shows after it is no
                    // measure of it (`release_if_empty` would keep it).
                    self.renew();
                }
                self.release_if_empty();
            }
        }
        if self.buf.is_empty() {
            let used = decode_frames(&chunk, max_frame, one, frames)?;
            let rest = &chunk[used..];
            let large = rest
                .first_chunk::<HEADER_LEN>()
                .and_then(|h| frame_len_within(*h, max_frame).ok())
                .is_some_and(|len| len >= SHARED_VALUE_BYTES);
            if large && self.consumed {
                // A large frame begins a buffer of its own (see above).
                self.renew();
            }
            self.buf.extend_from_slice(rest);
        } else {
            self.buf.extend_from_slice(&chunk);
        }
        Ok(())
    }

    /// Drops the capacity of a large frame that is done.
    fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > CHUNK {
            self.renew();
        }
    }

    /// A new, empty buffer in place of the one held.
    fn renew(&mut self) {
        self.buf = BytesMut::new();
        self.consumed = false;
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        self.budgets.give_back(self.held);
    }
}

/// [`wire::decode_frames`](crate::replication::wire::decode_frames), with the reader's error.
fn decode_frames(
    bytes: &[u8],
    max_frame: usize,
    one: bool,
    out: &mut Vec<Message>,
) -> Result<usize, ReadError> {
    Ok(crate::replication::wire::decode_frames(
        bytes, max_frame, one, out,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::wire::{MAX_HANDSHAKE_FRAME, encode_frame};

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
            let used =
                decode_frames(&bytes[..cut], MAX_FRAME, false, &mut out).expect("valid frames");
            // Only whole frames are taken, and the rest decodes once it is complete.
            assert_eq!(out[..], msgs[..out.len()], "cut at {cut}");
            decode_frames(&bytes[used..], MAX_FRAME, false, &mut out).expect("valid frames");
            assert_eq!(out, msgs);
        }
    }

    #[test]
    fn an_oversized_header_is_refused_before_its_body_arrives() {
        let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let err = decode_frames(&header, MAX_FRAME, false, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(err, ReadError::Wire(WireError::TooLarge(_))),
            "{err}"
        );
    }

    #[test]
    fn before_the_handshake_frames_are_small_and_taken_one_at_a_time() {
        let (msgs, bytes) = frames(2);
        let mut out = Vec::new();
        let used = decode_frames(&bytes, MAX_HANDSHAKE_FRAME, true, &mut out).unwrap();
        assert_eq!(out, msgs[..1]);
        assert!(used < bytes.len());
        let big = ((MAX_HANDSHAKE_FRAME + 1) as u32).to_be_bytes();
        let err = decode_frames(&big, MAX_HANDSHAKE_FRAME, true, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(err, ReadError::Wire(WireError::TooLarge(_))),
            "{err}"
        );
    }

    #[test]
    fn budgets_refuse_past_their_limit_and_take_back_what_was_given() {
        let budgets = Budgets {
            connection: Budget::new(100),
            total: Budget::new(150),
        };
        let other = Budgets {
            connection: Budget::new(100),
            total: budgets.total.clone(),
        };
        assert_eq!(budgets.try_take(100), Ok(()));
        assert_eq!(budgets.try_take(1), Err(Exceeded::Connection));
        assert_eq!(
            other.try_take(51),
            Err(Exceeded::Total),
            "the total is shared"
        );
        assert_eq!(other.connection.used(), 0, "a refused take leaves nothing");
        assert_eq!(other.try_take(50), Ok(()));
        budgets.give_back(100);
        assert_eq!(budgets.total.used(), 50);
        // A closed connection's bytes leave the total at once, and only once.
        other.connection.release_from(&other.total);
        assert_eq!(other.total.used(), 0);
        other.give_back(50);
        assert_eq!(other.total.used(), 0);
        assert_eq!(
            other.try_take(1),
            Err(Exceeded::Connection),
            "nothing more for it"
        );
    }

    #[test]
    fn a_malformed_body_is_an_error() {
        let mut bytes = 3u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
        let err = decode_frames(&bytes, MAX_FRAME, false, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(err, ReadError::Wire(WireError::Malformed(_))),
            "{err}"
        );
    }

    /// `chunks` one after another into a buffer, as a read takes them: the frames decoded
    /// after each, and the bytes left over.
    fn take_all(chunks: &[&[u8]]) -> (Vec<Vec<Message>>, usize) {
        let mut buf = Unfinished::default();
        let mut out = Vec::new();
        for chunk in chunks {
            let mut frames = Vec::new();
            buf.take(Bytes::copy_from_slice(chunk), MAX_FRAME, false, &mut frames)
                .expect("valid frames");
            out.push(frames);
        }
        (out, buf.len())
    }

    /// A `Data` frame whose value is shared rather than copied.
    fn large_data() -> (Message, Bytes) {
        use crate::replication::wire::{SHARED_VALUE_BYTES, data_with_block};
        let data = data_with_block(SHARED_VALUE_BYTES, 2);
        let frame = encode_frame(&data).unwrap();
        (data, frame)
    }

    /// An `Extension` frame with a payload of `bytes`.
    fn extension_frame(bytes: usize) -> Bytes {
        encode_frame(&Message::Extension {
            name: "x".into(),
            payload: vec![1; bytes],
        })
        .unwrap()
    }

    /// An empty buffer allocated for `capacity` bytes.
    fn sized(capacity: usize) -> Unfinished {
        Unfinished {
            buf: BytesMut::with_capacity(capacity),
            consumed: false,
        }
    }

    /// Where the value of a decoded `Data` lies.
    fn value_at(msg: &Message) -> usize {
        let Message::Data { proof, .. } = msg else {
            panic!("not a Data: {msg:?}")
        };
        proof.block.as_ref().unwrap().value.as_ptr() as usize
    }

    /// Takes a large `Data` frame in two chunks after a large frame: it must begin in a small
    /// new buffer, not the one before it, and come out whole.
    fn take_large_data_after(buf: &mut Unfinished, frames: &mut Vec<Message>) {
        let (data, frame) = large_data();
        buf.take(frame.slice(..1000), MAX_FRAME, false, frames)
            .unwrap();
        assert!(buf.buf.capacity() < 64 * 1024, "{}", buf.buf.capacity());
        buf.take(frame.slice(1000..), MAX_FRAME, false, frames)
            .unwrap();
        assert_eq!(frames.last(), Some(&data));
        assert!(buf.is_empty());
    }

    /// A large frame's buffer is not kept for the frames after it: the next large frame is
    /// not assembled in it, where a shared value would keep the whole buffer alive while the
    /// fetch queue counts only the value.
    #[test]
    fn a_large_frames_buffer_is_not_kept_for_the_next() {
        let mut buf = Unfinished::default();
        let mut frames = Vec::new();
        let big = extension_frame(4 << 20);
        buf.take(big.slice(..1000), MAX_FRAME, false, &mut frames)
            .unwrap();
        buf.take(big.slice(1000..), MAX_FRAME, false, &mut frames)
            .unwrap();
        assert_eq!(frames.len(), 1);
        take_large_data_after(&mut buf, &mut frames);
    }

    /// The same for a large frame decoded from a buffer much larger than itself (its value
    /// copied out): the buffer goes with it, whatever is left of its capacity, and not even a
    /// small frame after it grows into it.
    #[test]
    fn a_large_copied_frames_buffer_is_not_kept_either() {
        let big = extension_frame(100 * 1024);
        let mut buf = sized(3 * big.len());
        buf.buf.extend_from_slice(&big[..1000]);
        let mut frames = Vec::new();
        buf.take(big.slice(1000..), MAX_FRAME, false, &mut frames)
            .unwrap();
        assert_eq!(frames.len(), 1);
        let small = encode_frame(&Message::Cancel { id: 7 }).unwrap();
        buf.take(small.slice(..2), MAX_FRAME, false, &mut frames)
            .unwrap();
        assert!(buf.buf.capacity() < 64 * 1024, "{}", buf.buf.capacity());
        buf.take(small.slice(2..), MAX_FRAME, false, &mut frames)
            .unwrap();
        assert_eq!(frames.last(), Some(&Message::Cancel { id: 7 }));
        take_large_data_after(&mut buf, &mut frames);
    }

    /// A large frame is shared only from a buffer of its own. One that begins in a buffer
    /// small frames were decoded out of (its header cut by a chunk's end, so the buffer is
    /// not replaced) is copied out: that buffer may hold their bytes before its start, which
    /// its capacity does not show. One whose header the chunk holds begins a new buffer.
    #[test]
    fn a_large_frame_is_shared_only_from_a_buffer_of_its_own() {
        let small = extension_frame(60 * 1024);
        let (data, frame) = large_data();
        for header_in_chunk in [false, true] {
            let mut buf = sized(4 * frame.len());
            let cut = if header_in_chunk { 1000 } else { 2 };
            // The small frame over two chunks, assembled in the buffer; the second chunk ends
            // with the start of the large one.
            let mut second = small[1000..].to_vec();
            second.extend_from_slice(&frame[..cut]);
            let mut frames = Vec::new();
            buf.take(small.slice(..1000), MAX_FRAME, false, &mut frames)
                .unwrap();
            buf.take(Bytes::from(second), MAX_FRAME, false, &mut frames)
                .unwrap();
            assert_eq!(frames.len(), 1);
            assert_eq!(buf.consumed, !header_in_chunk, "{header_in_chunk}");
            buf.take(frame.slice(cut..), MAX_FRAME, false, &mut frames)
                .unwrap();
            assert_eq!(frames[1], data);
        }
        // Frames decoded out of a buffer are not seen by its capacity, and a large frame is
        // copied out of such a buffer however it is sized.
        let mut buf = Unfinished {
            buf: BytesMut::with_capacity(frame.len()),
            consumed: true,
        };
        buf.buf.extend_from_slice(&frame[..1000]);
        let base = buf.buf.as_ptr() as usize;
        let mut frames = Vec::new();
        buf.take(frame.slice(1000..), MAX_FRAME, false, &mut frames)
            .unwrap();
        assert_eq!(frames, [data]);
        let at = value_at(&frames[0]);
        assert!(!(base..base + frame.len()).contains(&at), "copied out");
    }

    /// A frame held whole in a buffer of about its size shares its value with it; in a buffer
    /// more than twice its size the value is copied out.
    #[test]
    fn a_value_is_shared_only_with_a_buffer_about_its_frames_size() {
        let (data, frame) = large_data();
        for (capacity, shared) in [(frame.len(), true), (4 * frame.len(), false)] {
            let mut buf = sized(capacity);
            buf.buf.extend_from_slice(&frame[..1000]);
            let base = buf.buf.as_ptr() as usize;
            let mut frames = Vec::new();
            buf.take(frame.slice(1000..), MAX_FRAME, false, &mut frames)
                .unwrap();
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0], data);
            let at = value_at(&frames[0]);
            assert_eq!((base..base + capacity).contains(&at), shared, "{capacity}");
        }
    }

    /// A frame cut inside its header (after 1, 2 or 3 bytes) or its body is finished by the
    /// next chunk, and the whole frames after it in that chunk come out too; the buffer then
    /// holds only the next unfinished frame.
    #[test]
    fn an_unfinished_frame_takes_what_it_lacks_and_the_rest_is_decoded() {
        let (msgs, bytes) = frames(101);
        let first = encode_frame(&msgs[0]).expect("encodes").len();
        for cut in [1, 2, 3, HEADER_LEN, first - 1] {
            // The first frame cut at `cut`, the rest of it with 100 frames and 2 bytes more.
            let (out, left) = take_all(&[&bytes[..cut], &bytes[cut..], &[0, 0]]);
            assert!(out[0].is_empty(), "cut at {cut}");
            assert_eq!(out[1], msgs, "cut at {cut}");
            assert_eq!(left, 2, "only the next unfinished frame is kept");
        }
        // A frame spread over many chunks of one byte.
        let one_byte: Vec<&[u8]> = bytes[..first].chunks(1).collect();
        let (out, left) = take_all(&one_byte);
        assert_eq!(out.concat(), msgs[..1]);
        assert_eq!(left, 0);
    }

    /// A header over the limit is refused when it is complete, however it was cut, before its
    /// body is buffered; a zero-length body is malformed.
    #[test]
    fn an_oversized_header_split_over_chunks_is_refused_before_its_body() {
        let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let mut buf = Unfinished::default();
        let mut frames = Vec::new();
        buf.take(
            Bytes::copy_from_slice(&header[..2]),
            MAX_FRAME,
            false,
            &mut frames,
        )
        .expect("half a header");
        let mut rest = header[2..].to_vec();
        rest.extend_from_slice(&[7; 4096]);
        let err = buf
            .take(Bytes::from(rest), MAX_FRAME, false, &mut frames)
            .unwrap_err();
        assert!(
            matches!(err, ReadError::Wire(WireError::TooLarge(_))),
            "{err}"
        );
        assert!(buf.len() <= HEADER_LEN, "the body was not buffered");

        let mut buf = Unfinished::default();
        buf.take(
            Bytes::copy_from_slice(&[0, 0]),
            MAX_FRAME,
            false,
            &mut frames,
        )
        .expect("half a header");
        let err = buf
            .take(
                Bytes::copy_from_slice(&[0, 0, 1]),
                MAX_FRAME,
                false,
                &mut frames,
            )
            .unwrap_err();
        assert!(
            matches!(err, ReadError::Wire(WireError::Malformed(_))),
            "{err}"
        );
    }

    /// Hands the receiving side of the first stream of each connection to the test.
    #[derive(Debug, Clone)]
    struct HandOver(tokio::sync::mpsc::UnboundedSender<(iroh::endpoint::Connection, RecvStream)>);

    impl iroh::protocol::ProtocolHandler for HandOver {
        async fn accept(
            &self,
            conn: iroh::endpoint::Connection,
        ) -> Result<(), iroh::protocol::AcceptError> {
            let (_send, recv) = conn.accept_bi().await?;
            let _ = self.0.send((conn.clone(), recv));
            conn.closed().await;
            Ok(())
        }
    }

    const ALPN: &[u8] = b"/frames-test/1";

    /// `bytes` written in pieces of `piece` bytes on a real iroh stream, then finished: what a
    /// [`FrameReader`] makes of it, batch by batch, until it ends or fails.
    async fn read_back(bytes: Vec<u8>, piece: usize) -> (Vec<Vec<Message>>, Option<ReadError>) {
        let budgets = Budgets {
            connection: Budget::new(MAX_BUFFERED_PER_CONNECTION),
            total: Budget::new(MAX_BUFFERED_TOTAL),
        };
        read_back_within(bytes, piece, budgets).await
    }

    /// [`read_back`] with unfinished frames held within `budgets`.
    async fn read_back_within(
        bytes: Vec<u8>,
        piece: usize,
        budgets: Budgets,
    ) -> (Vec<Vec<Message>>, Option<ReadError>) {
        use crate::testnet::{TestNet, Transport};
        let net = TestNet::new().await.expect("test network");
        let server = net.endpoint(Transport::Direct).await.expect("endpoint");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let router = iroh::protocol::Router::builder(server.clone())
            .accept(ALPN, HandOver(tx))
            .spawn();
        let client = net.endpoint(Transport::Direct).await.expect("endpoint");
        let conn = client.connect(server.addr(), ALPN).await.expect("connects");
        let (mut send, _recv) = conn.open_bi().await.expect("stream");
        for p in bytes.chunks(piece) {
            send.write_all(p).await.expect("written");
        }
        send.finish().expect("finished");
        let (_conn, recv) = rx.recv().await.expect("stream accepted");
        let mut reader = FrameReader::new(recv, budgets);
        let mut batches = Vec::new();
        let failed = loop {
            let (r, batch) = reader.next_batch(MAX_FRAME).await;
            reader = r;
            match batch {
                Ok(Some(b)) => batches.push(b),
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        drop(reader);
        conn.close(0u32.into(), b"done");
        client.close().await;
        router.shutdown().await.expect("router stops");
        (batches, failed)
    }

    /// A frame of 3,000 bytes and more, to cut short.
    fn big_frame() -> Vec<u8> {
        encode_frame(&Message::Extension {
            name: "x".into(),
            payload: vec![1; 3000],
        })
        .expect("encodes")
        .to_vec()
    }

    /// `read` within a minute.
    async fn in_time<T>(read: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(60), read)
            .await
            .expect("in time")
    }

    /// Frames of many sizes, cut into datagrams anywhere (some frames span several), come out
    /// whole, in order, once each, and the finished stream ends cleanly: every chunk a read
    /// takes at once is decoded, the ones after the first included.
    #[tokio::test]
    async fn frames_spread_over_many_chunks_arrive_whole_and_in_order() {
        let msgs: Vec<Message> = (0..400u32)
            .map(|i| Message::Extension {
                name: "x".into(),
                payload: vec![i as u8; (i as usize * 997) % 6000],
            })
            .collect();
        let bytes: Vec<u8> = msgs
            .iter()
            .flat_map(|m| encode_frame(m).expect("encodes").to_vec())
            .collect();
        let (batches, failed) = in_time(read_back(bytes, 777)).await;
        assert!(failed.is_none(), "{failed:?}");
        assert!(batches.iter().all(|b| !b.is_empty()));
        assert_eq!(batches.concat(), msgs);
    }

    /// A stream that ends inside a frame is an error, after the whole frames before it.
    #[tokio::test]
    async fn a_stream_that_ends_inside_a_frame_is_truncated() {
        let (msgs, mut bytes) = frames(50);
        let last = big_frame();
        bytes.extend_from_slice(&last[..last.len() - 1]);
        let (batches, failed) = in_time(read_back(bytes, 500)).await;
        assert!(matches!(failed, Some(ReadError::Truncated)), "{failed:?}");
        assert_eq!(batches.concat(), msgs);
    }

    /// A read whose unfinished frame is over the node's budget still hands over the whole
    /// frames before it (they are no longer buffered), then fails; nothing is lost.
    #[tokio::test]
    async fn whole_frames_come_before_a_budget_error() {
        let (msgs, mut bytes) = frames(10);
        bytes.extend_from_slice(&big_frame()[..50]);
        // Room for an unfinished small frame, not for 50 bytes of the big one.
        let budgets = Budgets {
            connection: Budget::new(MAX_BUFFERED_PER_CONNECTION),
            total: Budget::new(20),
        };
        let (batches, failed) = in_time(read_back_within(bytes, 500, budgets)).await;
        assert!(
            matches!(failed, Some(ReadError::OverBudget(Exceeded::Total))),
            "{failed:?}"
        );
        assert_eq!(batches.concat(), msgs);
    }
}

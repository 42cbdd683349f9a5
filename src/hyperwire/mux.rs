//! protomux frames: what one decrypted message of a secret stream carries.
//!
//! A frame is `uint channel, uint type, body`. Channel 0 carries control messages: a batch
//! (type 0), `open` (1), `reject` (2) and `close` (3); other types are ignored. On any other
//! channel, the channel id is the sender's own id for it and the type indexes the channel's
//! messages. A batch is `uint first channel`, then entries `uint len, bytes` (a length of 0
//! switches the channel: `0, uint channel`), each entry a frame without its channel id.
//!
//! Decoding is strict where JS destroys the stream (a truncated number, an `open` with id 0)
//! and lenient where it is (an entry length past the frame is cut at the frame's end,
//! trailing bytes are ignored).

use super::compact::{DecodeError, Reader, Writer};

/// Control message types on channel 0.
const BATCH: u64 = 0;
const OPEN: u64 = 1;
const REJECT: u64 = 2;
const CLOSE: u64 = 3;

/// Batches nested deeper than this are refused (JS peers never nest them).
const MAX_BATCH_DEPTH: usize = 2;

/// Longest protocol name taken.
pub const MAX_PROTOCOL: usize = 256;
/// Longest channel id taken.
pub const MAX_CHANNEL_ID: usize = 64;

/// One message out of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxMessage<'a> {
    /// The peer opened its channel `id` (its own id, at least 1).
    Open {
        /// The peer's id of the channel.
        channel: u64,
        /// The protocol name.
        protocol: &'a str,
        /// The channel's id within the protocol (empty for none).
        id: &'a [u8],
        /// The protocol's handshake, to the end of the message.
        handshake: &'a [u8],
    },
    /// The peer refused the channel we opened as `channel` (our id).
    Reject {
        /// Our id of the channel.
        channel: u64,
    },
    /// The peer closed its channel `channel` (its id).
    Close {
        /// The peer's id of the channel.
        channel: u64,
    },
    /// A message of type `kind` on the peer's channel `channel`.
    Message {
        /// The peer's id of the channel.
        channel: u64,
        /// The message's index in the channel's list.
        kind: u64,
        /// Its body, to the end of the message.
        body: &'a [u8],
    },
}

/// Decodes one frame, handing each message in it to `each` in order. Messages before an
/// error were handed on; after an error the stream is to end.
pub fn decode_frame<'a, E: From<DecodeError>>(
    frame: &'a [u8],
    each: &mut impl FnMut(MuxMessage<'a>) -> Result<(), E>,
) -> Result<(), E> {
    if frame.is_empty() {
        return Ok(());
    }
    let mut r = Reader::new(frame);
    let channel = r.uint("channel")?;
    decode_entry(channel, r.remaining(), 0, each)
}

fn decode_entry<'a, E: From<DecodeError>>(
    channel: u64,
    entry: &'a [u8],
    depth: usize,
    each: &mut impl FnMut(MuxMessage<'a>) -> Result<(), E>,
) -> Result<(), E> {
    let mut r = Reader::new(entry);
    let kind = r.uint("message type")?;
    if channel != 0 {
        return each(MuxMessage::Message {
            channel,
            kind,
            body: r.remaining(),
        });
    }
    match kind {
        BATCH => {
            if depth >= MAX_BATCH_DEPTH {
                return Err(DecodeError::Invalid("nested batch").into());
            }
            let mut current = r.uint("batch channel")?;
            while !r.is_empty() {
                let len = r.uint("batch entry")?;
                if len == 0 {
                    current = r.uint("batch channel")?;
                    continue;
                }
                let len = usize::try_from(len)
                    .unwrap_or(usize::MAX)
                    .min(r.remaining().len());
                let entry = r.bytes(len, "batch entry")?;
                decode_entry(current, entry, depth + 1, each)?;
            }
            Ok(())
        }
        OPEN => {
            let channel = r.uint("open")?;
            if channel == 0 {
                return Err(DecodeError::Invalid("open of channel 0").into());
            }
            let protocol = r.string(MAX_PROTOCOL, "protocol")?;
            let id = r.buffer(MAX_CHANNEL_ID, "channel id")?;
            each(MuxMessage::Open {
                channel,
                protocol,
                id,
                handshake: r.remaining(),
            })
        }
        REJECT => each(MuxMessage::Reject {
            channel: r.uint("reject")?,
        }),
        CLOSE => each(MuxMessage::Close {
            channel: r.uint("close")?,
        }),
        _ => Ok(()),
    }
}

/// Gathers outgoing messages into frames: one message alone, several as a batch.
#[derive(Debug, Default)]
pub struct FrameBuilder {
    /// Entries: (channel, bytes of `uint type, body`).
    entries: Vec<(u64, Vec<u8>)>,
    bytes: usize,
}

impl FrameBuilder {
    /// Queues an `open` of our channel `channel`.
    pub fn open(&mut self, channel: u64, protocol: &str, id: &[u8], handshake: &[u8]) {
        let mut b = Vec::with_capacity(8 + protocol.len() + id.len() + handshake.len());
        let mut w = Writer::new(&mut b);
        w.uint(OPEN);
        w.uint(channel);
        w.string(protocol);
        w.buffer(id);
        w.bytes(handshake);
        self.push(0, b);
    }

    /// Queues a `reject` of the peer's channel `channel`.
    pub fn reject(&mut self, channel: u64) {
        let mut b = Vec::new();
        let mut w = Writer::new(&mut b);
        w.uint(REJECT);
        w.uint(channel);
        self.push(0, b);
    }

    /// Queues a `close` of our channel `channel`.
    pub fn close(&mut self, channel: u64) {
        let mut b = Vec::new();
        let mut w = Writer::new(&mut b);
        w.uint(CLOSE);
        w.uint(channel);
        self.push(0, b);
    }

    /// Queues a message of type `kind` on our channel `channel`, its body written by `body`.
    pub fn message(&mut self, channel: u64, kind: u64, body: impl FnOnce(&mut Writer<'_>)) {
        let mut b = Vec::new();
        let mut w = Writer::new(&mut b);
        w.uint(kind);
        body(&mut w);
        self.push(channel, b);
    }

    fn push(&mut self, channel: u64, entry: Vec<u8>) {
        self.bytes += entry.len();
        self.entries.push((channel, entry));
    }

    /// Bytes queued.
    pub fn queued(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The frames of everything queued, each at most about `max` bytes unless one message is
    /// larger alone.
    pub fn frames(&mut self, max: usize) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut entries = std::mem::take(&mut self.entries).into_iter().peekable();
        self.bytes = 0;
        while let Some((channel, entry)) = entries.next() {
            let alone = entries
                .peek()
                .is_none_or(|(_, next)| entry.len() + next.len() + 16 > max);
            if alone {
                let mut f = Vec::with_capacity(entry.len() + 9);
                Writer::new(&mut f).uint(channel);
                f.extend_from_slice(&entry);
                frames.push(f);
                continue;
            }
            let mut f = Vec::with_capacity(max.min(1 << 20));
            let mut w = Writer::new(&mut f);
            w.uint(0);
            w.uint(BATCH);
            w.uint(channel);
            w.uint(entry.len() as u64);
            w.bytes(&entry);
            let mut current = channel;
            while let Some((next_channel, next)) = entries.peek() {
                if f.len() + next.len() + 20 > max {
                    break;
                }
                let mut w = Writer::new(&mut f);
                if *next_channel != current {
                    w.uint(0);
                    w.uint(*next_channel);
                    current = *next_channel;
                }
                w.uint(next.len() as u64);
                w.bytes(next);
                entries.next();
            }
            frames.push(f);
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        data_encoding::HEXLOWER.decode(s.as_bytes()).unwrap()
    }

    fn decode(frame: &[u8]) -> Result<Vec<MuxMessage<'_>>, DecodeError> {
        let mut out = Vec::new();
        decode_frame(frame, &mut |m| {
            out.push(m);
            Ok::<_, DecodeError>(())
        })?;
        Ok(out)
    }

    /// protomux 3.12.1's bytes: an open of `hypercore/alpha` (id aa×32, handshake flags 1
    /// and capability bb×32), a batch of two messages, a close, a reject inside a batch.
    #[test]
    fn protomux_vectors() {
        let open = hex(
            "0001010f6879706572636f72652f616c70686120aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa01bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        );
        let mut handshake = vec![1];
        handshake.extend_from_slice(&[0xbb; 32]);
        assert_eq!(
            decode(&open).unwrap(),
            vec![MuxMessage::Open {
                channel: 1,
                protocol: "hypercore/alpha",
                id: &[0xaa; 32],
                handshake: &handshake,
            }]
        );
        let mut b = FrameBuilder::default();
        b.open(1, "hypercore/alpha", &[0xaa; 32], &handshake);
        assert_eq!(b.frames(1 << 20), vec![open]);

        let batch = hex("00000105000700050009030101000002686900");
        assert_eq!(
            decode(&batch).unwrap(),
            vec![
                MuxMessage::Message {
                    channel: 1,
                    kind: 0,
                    body: &hex("07000500")
                },
                MuxMessage::Message {
                    channel: 1,
                    kind: 3,
                    body: &hex("0101000002686900")
                },
            ]
        );
        let mut b = FrameBuilder::default();
        b.message(1, 0, |w| w.bytes(&hex("07000500")));
        b.message(1, 3, |w| w.bytes(&hex("0101000002686900")));
        assert_eq!(b.frames(1 << 20), vec![batch]);

        assert_eq!(
            decode(&hex("000301")).unwrap(),
            vec![MuxMessage::Close { channel: 1 }]
        );
        assert_eq!(
            decode(&hex("000000020202")).unwrap(),
            vec![MuxMessage::Reject { channel: 2 }]
        );
        // A batch mixing channels, an entry for channel 0 among them.
        assert_eq!(
            decode(&hex("00000102000a000702000b000102000c")).unwrap(),
            vec![
                MuxMessage::Message {
                    channel: 1,
                    kind: 0,
                    body: &[0x0a]
                },
                MuxMessage::Message {
                    channel: 7,
                    kind: 0,
                    body: &[0x0b]
                },
                MuxMessage::Message {
                    channel: 1,
                    kind: 0,
                    body: &[0x0c]
                },
            ]
        );
        let mut b = FrameBuilder::default();
        b.open(2, "p", &[1], &[]);
        b.message(1, 5, |w| w.bytes(&[0]));
        b.close(2);
        let frames = b.frames(1 << 20);
        assert_eq!(frames.len(), 1);
        assert_eq!(
            decode(&frames[0]).unwrap(),
            vec![
                MuxMessage::Open {
                    channel: 2,
                    protocol: "p",
                    id: &[1],
                    handshake: &[]
                },
                MuxMessage::Message {
                    channel: 1,
                    kind: 5,
                    body: &[0]
                },
                MuxMessage::Close { channel: 2 },
            ]
        );
    }

    #[test]
    fn broken_frames_are_errors_and_lenient_ones_are_not() {
        assert!(decode(&[1]).is_err());
        assert!(decode(&hex("000100")).is_err(), "open of channel 0");
        // A batch in a batch is taken; one level deeper is not.
        let inner = hex("00010100");
        let mut once = hex("000000");
        once.push(inner.len() as u8);
        once.extend_from_slice(&inner);
        assert_eq!(
            decode(&once).unwrap(),
            vec![MuxMessage::Message {
                channel: 1,
                kind: 0,
                body: &[]
            }]
        );
        let mut middle = hex("0000");
        middle.push(inner.len() as u8);
        middle.extend_from_slice(&inner);
        let mut twice = hex("000000");
        twice.push(middle.len() as u8);
        twice.extend_from_slice(&middle);
        assert_eq!(decode(&twice), Err(DecodeError::Invalid("nested batch")));
        // Unknown control types are ignored; an entry length past the end is cut there.
        assert_eq!(decode(&hex("0009")).unwrap(), vec![]);
        assert_eq!(
            decode(&hex("000001090005")).unwrap(),
            vec![MuxMessage::Message {
                channel: 1,
                kind: 0,
                body: &[5]
            }]
        );
        assert_eq!(decode(&[]).unwrap(), vec![]);
    }

    #[test]
    fn large_queues_split_into_frames_under_the_bound() {
        let mut b = FrameBuilder::default();
        for i in 0..100u8 {
            b.message(1, 3, |w| w.bytes(&[i; 1000]));
        }
        let frames = b.frames(16 * 1024);
        assert!(frames.len() >= 7 && frames.iter().all(|f| f.len() <= 16 * 1024));
        let mut seen = 0u8;
        for f in &frames {
            for m in decode(f).unwrap() {
                let MuxMessage::Message { body, .. } = m else {
                    panic!()
                };
                assert_eq!(body, &[seen; 1000][..]);
                seen += 1;
            }
        }
        assert_eq!(seen, 100);
    }
}

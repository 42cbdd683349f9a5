//! The streams part: one stream per channel. Frames out are gathered into chunks and written
//! when the engine's turn is done, counted as the peer's backlog until QUIC takes them; frames
//! in are read within the connection's and the node's budgets, handshake-sized until both
//! sides proved the key. It owns its futures: streams being opened, reads and writes.

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use n0_future::{FuturesUnordered, StreamExt, boxed::BoxFuture};

use super::super::frames::{Budgets, FrameReader, ReadError};
use crate::replication::{
    PeerId,
    engine::ChannelId,
    wire::{Message, SHARED_VALUE_BYTES, encode_frame_into, encode_frame_parts},
};

/// Frames queued for one stream are handed to QUIC in chunks of about this size: one chunk
/// per frame cost an allocation each and many small pieces in QUIC's send buffer.
const CHUNK_BYTES: usize = 64 * 1024;

/// Room made for a frame beyond the value it carries (its proof's nodes, its fields), so that
/// the frame which fills a chunk does not regrow it.
const FRAME_SLACK: usize = 4 * 1024;

/// Bytes a frame takes beyond its value as a rule (a data frame's fields and a few proof
/// nodes): a chunk with this much room left past the value is not grown for the frame. One
/// that needs more grows the chunk as it is encoded.
const FRAME_FIELDS: usize = 256;

/// Bytes gathered in one turn beyond which a channel is in a burst and its chunk is made
/// whole at once.
const BURST_BYTES: usize = 4 * 1024;

/// The bytes to reserve in the chunk being filled (`len` bytes long, room for `capacity`)
/// before a frame whose value is `value` bytes is added, if it lacks room for it. In a burst
/// (a write in progress, or some frames gathered already) room is made for a whole chunk, so
/// that the chunk is not regrown and copied as frames are added; a channel sending one small
/// message reserves little.
///
/// Room is made only when the frame may not fit: asking for the full slack every time
/// regrew (and copied) every chunk at the frame that filled it.
fn room_to_make(len: usize, capacity: usize, value: usize, writing: bool) -> Option<usize> {
    if len + value + FRAME_FIELDS <= capacity {
        return None;
    }
    let mut room = len + value + FRAME_SLACK;
    if (len == 0 && writing) || len >= BURST_BYTES {
        room = room.max(CHUNK_BYTES + FRAME_SLACK);
    }
    Some(room - len)
}

/// One channel's stream.
struct ChannelIo {
    peer: PeerId,
    conn_id: usize,
    send: Option<SendStream>,
    /// Frames waiting to be written, gathered into chunks.
    queue: Vec<Bytes>,
    /// The chunk being filled, frames back to back.
    open: Vec<u8>,
    writing: bool,
    closing: bool,
    /// Bytes queued on this channel (in `queue`, `open` and the write under way).
    pending: u64,
}

impl ChannelIo {
    fn new(peer: PeerId, conn_id: usize, send: Option<SendStream>) -> Self {
        Self {
            peer,
            conn_id,
            send,
            queue: Vec::new(),
            open: Vec::new(),
            writing: false,
            closing: false,
            pending: 0,
        }
    }
}

/// The bytes queued towards one peer that QUIC has not taken yet.
#[derive(Debug, Default)]
struct Backlog {
    bytes: u64,
    /// Whether the engine was last told it is over its limit.
    over: bool,
}

/// How much of a channel to read next.
#[derive(Debug, Clone, Copy)]
pub(super) enum ReadLimit {
    /// Frames of at most this size.
    Frames(usize),
    /// One handshake frame of at most this size, which must complete within the time given
    /// (a stream the peer opened must prove the key soon).
    Handshake(usize, Duration),
}

/// What happened on a stream.
pub(super) enum StreamEvent {
    /// A stream we opened for a channel is ready (or failed).
    Opened(
        PeerId,
        usize,
        ChannelId,
        Result<(SendStream, RecvStream), String>,
    ),
    /// Frames arrived on a channel (or its stream ended or broke the framing).
    Frames(
        PeerId,
        usize,
        ChannelId,
        FrameReader,
        Result<Option<Vec<Message>>, ReadError>,
    ),
    /// A stream the peer opened sent no complete handshake frame in time.
    HandshakeTimedOut(PeerId, usize, ChannelId),
    /// A write finished: the channel, its stream, and how many bytes it took.
    Written(ChannelId, SendStream, Result<(), String>, u64),
}

/// The streams part; see the module docs.
pub(super) struct Streams {
    channels: BTreeMap<ChannelId, ChannelIo>,
    /// Channels with frames queued since the last flush.
    unflushed: Vec<ChannelId>,
    /// The id of the next stream a peer opens (odd).
    next_incoming: ChannelId,
    backlogs: BTreeMap<PeerId, Backlog>,
    /// Peers whose backlog grew this turn (checked against the limit after it).
    backlog_grew: Vec<PeerId>,
    /// The backlog of all peers together.
    total_backlog: u64,
    /// Whether it was over its budget when last looked at.
    over_budget: bool,
    io: FuturesUnordered<BoxFuture<StreamEvent>>,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            channels: BTreeMap::new(),
            unflushed: Vec::new(),
            next_incoming: 1,
            backlogs: BTreeMap::new(),
            backlog_grew: Vec::new(),
            total_backlog: 0,
            over_budget: false,
            io: FuturesUnordered::new(),
        }
    }
}

impl Streams {
    /// The peer of connection `conn_id` opened a stream: a new channel, with a new odd id.
    pub(super) fn accept(
        &mut self,
        peer: PeerId,
        conn_id: usize,
        send: SendStream,
        recv: RecvStream,
        budgets: Budgets,
    ) -> (ChannelId, FrameReader) {
        let ch = self.next_incoming;
        self.next_incoming += 2;
        self.channels
            .insert(ch, ChannelIo::new(peer, conn_id, Some(send)));
        (ch, FrameReader::new(recv, budgets))
    }

    /// Opens a stream on `conn` for our channel `ch`, with `first` queued on it.
    pub(super) fn open(
        &mut self,
        peer: PeerId,
        conn: Connection,
        conn_id: usize,
        ch: ChannelId,
        first: &Message,
    ) {
        self.channels
            .insert(ch, ChannelIo::new(peer, conn_id, None));
        self.send(ch, first);
        self.io.push(Box::pin(async move {
            let r = conn.open_bi().await.map_err(|e| e.to_string());
            StreamEvent::Opened(peer, conn_id, ch, r)
        }));
    }

    /// A stream we opened is ready: what was queued goes out, and the reader is returned. `None`
    /// if the channel went, or belongs to another connection.
    pub(super) fn opened(
        &mut self,
        ch: ChannelId,
        conn_id: usize,
        send: SendStream,
        recv: RecvStream,
        budgets: Budgets,
    ) -> Option<FrameReader> {
        let c = self.channels.get_mut(&ch)?;
        if c.conn_id != conn_id {
            return None;
        }
        c.send = Some(send);
        self.flush(ch);
        Some(FrameReader::new(recv, budgets))
    }

    /// Reads the next frames of channel `ch`, as far as `limit` says.
    pub(super) fn read(
        &mut self,
        peer: PeerId,
        conn_id: usize,
        ch: ChannelId,
        reader: FrameReader,
        limit: ReadLimit,
    ) {
        self.io.push(Box::pin(async move {
            match limit {
                ReadLimit::Frames(max) => {
                    let (reader, result) = reader.next_batch(max).await;
                    StreamEvent::Frames(peer, conn_id, ch, reader, result)
                }
                ReadLimit::Handshake(max, within) => {
                    match tokio::time::timeout(within, reader.next_batch(max)).await {
                        Ok((reader, result)) => {
                            StreamEvent::Frames(peer, conn_id, ch, reader, result)
                        }
                        Err(_) => StreamEvent::HandshakeTimedOut(peer, conn_id, ch),
                    }
                }
            }
        }));
    }

    /// Whether channel `ch` has a stream.
    pub(super) fn has(&self, ch: ChannelId) -> bool {
        self.channels.contains_key(&ch)
    }

    /// Queues `msg` on channel `ch`; it is written at [`flush_all`](Self::flush_all).
    pub(super) fn send(&mut self, ch: ChannelId, msg: &Message) {
        let Some(c) = self.channels.get_mut(&ch) else {
            return;
        };
        let idle = c.queue.is_empty() && c.open.is_empty();
        let added = if msg.size_hint() >= SHARED_VALUE_BYTES
            && let Some(parts) = encode_frame_parts(msg)
        {
            // A large block goes out as its own bytes, not copied into the frame.
            let parts = match parts {
                Ok(parts) => parts,
                Err(e) => {
                    tracing::error!("message not sent: {e}");
                    return;
                }
            };
            let len = parts.frame_len() as u64;
            c.open.extend_from_slice(&parts.head);
            c.queue.push(Bytes::from(std::mem::take(&mut c.open)));
            c.queue.push(parts.value);
            c.open = parts.tail;
            len
        } else {
            let (len, capacity) = (c.open.len(), c.open.capacity());
            if let Some(more) = room_to_make(len, capacity, msg.size_hint(), c.writing) {
                c.open.reserve(more);
            }
            let before = c.open.len();
            if let Err(e) = encode_frame_into(msg, &mut c.open) {
                tracing::error!("message not sent: {e}");
                return;
            }
            (c.open.len() - before) as u64
        };
        c.pending += added;
        let peer = c.peer;
        if c.open.len() >= CHUNK_BYTES {
            c.queue.push(Bytes::from(std::mem::take(&mut c.open)));
        }
        // Written once the engine's outputs of this turn are all queued.
        if idle {
            self.unflushed.push(ch);
        }
        let backlog = self.backlogs.entry(peer).or_default();
        backlog.bytes = backlog.bytes.saturating_add(added);
        self.total_backlog = self.total_backlog.saturating_add(added);
        // Checked against the limit once this turn's outputs are queued (also while a write
        // is blocked: a peer that does not read is exactly the one to stop serving).
        if self.backlog_grew.last() != Some(&peer) {
            self.backlog_grew.push(peer);
        }
    }

    /// Starts writing what this turn queued.
    pub(super) fn flush_all(&mut self) {
        for ch in std::mem::take(&mut self.unflushed) {
            self.flush(ch);
        }
    }

    /// Starts writing what is queued on a channel, or finishes it once drained if closing.
    fn flush(&mut self, ch: ChannelId) {
        let Some(c) = self.channels.get_mut(&ch) else {
            return;
        };
        if c.writing || c.send.is_none() {
            return;
        }
        if !c.open.is_empty() {
            c.queue.push(Bytes::from(std::mem::take(&mut c.open)));
        }
        if c.queue.is_empty() {
            if c.closing {
                if let Some(mut send) = c.send.take() {
                    let _ = send.finish();
                }
                self.remove(ch);
            }
            return;
        }
        let Some(mut send) = c.send.take() else {
            return;
        };
        let mut chunks = std::mem::take(&mut c.queue);
        let bytes: u64 = chunks.iter().map(|b| b.len() as u64).sum();
        c.writing = true;
        self.io.push(Box::pin(async move {
            let r = send
                .write_all_chunks(&mut chunks)
                .await
                .map_err(|e| e.to_string());
            StreamEvent::Written(ch, send, r, bytes)
        }));
    }

    /// A write finished: the stream goes back to its channel and the backlog shrinks.
    /// Returns the channel's peer, and whether the write failed (the channel is then gone).
    pub(super) fn written(
        &mut self,
        ch: ChannelId,
        send: SendStream,
        result: Result<(), String>,
        bytes: u64,
    ) -> Option<(PeerId, bool)> {
        let c = self.channels.get_mut(&ch)?;
        c.writing = false;
        c.pending = c.pending.saturating_sub(bytes);
        let peer = c.peer;
        if let Some(b) = self.backlogs.get_mut(&peer) {
            let taken = b.bytes.min(bytes);
            b.bytes -= taken;
            self.total_backlog = self.total_backlog.saturating_sub(taken);
        }
        if !self.backlog_grew.contains(&peer) {
            self.backlog_grew.push(peer);
        }
        let failed = result.is_err();
        if failed {
            self.remove(ch);
        } else {
            c.send = Some(send);
            self.flush(ch);
        }
        Some((peer, failed))
    }

    /// Closes a channel once what is queued on it is written.
    pub(super) fn close(&mut self, ch: ChannelId) {
        if let Some(c) = self.channels.get_mut(&ch) {
            c.closing = true;
            if c.send.is_none() && !c.writing {
                // Not opened yet: the peer never sees it.
                self.remove(ch);
            }
        }
        self.flush(ch);
    }

    /// Forgets a channel's stream; what was queued on it no longer counts as backlog.
    pub(super) fn remove(&mut self, ch: ChannelId) {
        if let Some(c) = self.channels.remove(&ch) {
            if let Some(b) = self.backlogs.get_mut(&c.peer) {
                let taken = b.bytes.min(c.pending);
                b.bytes -= taken;
                self.total_backlog = self.total_backlog.saturating_sub(taken);
            }
            if !self.backlog_grew.contains(&c.peer) {
                self.backlog_grew.push(c.peer);
            }
        }
    }

    /// Forgets every stream of `peer`'s connection, and its backlog.
    pub(super) fn remove_peer(&mut self, peer: &PeerId) {
        self.channels.retain(|_, ch| ch.peer != *peer);
        if let Some(b) = self.backlogs.remove(peer) {
            self.total_backlog = self.total_backlog.saturating_sub(b.bytes);
        }
    }

    /// The peers that went over their backlog limit or back under it since they were last
    /// reported, with their backlog now and whether they are over. A peer is over at `max`, or,
    /// while the backlog of all peers together is at `max_total`, at its fair share of it (the
    /// total over the peers with a backlog). Only the peers whose backlog changed are looked at,
    /// but while the total is over its budget (and once more when it is back under), when every
    /// peer's share may have changed.
    pub(super) fn backlog_crossings(
        &mut self,
        max: u64,
        max_total: u64,
    ) -> Vec<(PeerId, u64, bool)> {
        let changed = std::mem::take(&mut self.backlog_grew);
        let over_budget = self.total_backlog >= max_total;
        let share = if over_budget {
            let holders = self.backlogs.values().filter(|b| b.bytes > 0).count() as u64;
            max_total / holders.max(1)
        } else {
            u64::MAX
        };
        let everyone = over_budget || self.over_budget;
        self.over_budget = over_budget;
        let mut crossed = Vec::new();
        let mut check = |peer: PeerId, b: &mut Backlog| {
            let over = b.bytes >= max || b.bytes >= share;
            if over != b.over {
                b.over = over;
                crossed.push((peer, b.bytes, over));
            }
        };
        if everyone {
            for (peer, b) in self.backlogs.iter_mut() {
                check(*peer, b);
            }
        } else {
            for peer in changed {
                if let Some(b) = self.backlogs.get_mut(&peer) {
                    check(peer, b);
                }
            }
        }
        crossed
    }

    /// The peer with the largest backlog, if any has one.
    pub(super) fn largest_backlog(&self) -> Option<PeerId> {
        self.backlogs
            .iter()
            .filter(|(_, b)| b.bytes > 0)
            .max_by_key(|(peer, b)| (b.bytes, std::cmp::Reverse(**peer)))
            .map(|(peer, _)| *peer)
    }

    /// Bytes queued towards `peer` (or all peers) that QUIC has not taken yet.
    pub(super) fn backlog(&self, peer: Option<&PeerId>) -> u64 {
        match peer {
            Some(p) => self.backlogs.get(p).map_or(0, |b| b.bytes),
            None => self.total_backlog,
        }
    }

    /// The next stream opened, read or write; pending forever while none is in flight.
    pub(super) async fn next(&mut self) -> StreamEvent {
        match self.io.next().await {
            Some(ev) => ev,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Filling chunks with 1 KiB data frames, as `send` does: room is made at most twice per
    /// chunk (once small, once for the whole chunk when the burst shows), never by the frame
    /// that fills the chunk, and only the first growth copies anything (a few frames).
    #[test]
    fn a_chunk_is_grown_at_most_twice_and_not_by_the_frame_that_fills_it() {
        let frame = 1024 + 60;
        for writing in [false, true] {
            let mut open: Vec<u8> = Vec::new();
            let (mut grown, mut copied) = (0, 0);
            let mut chunks = 0;
            while chunks < 3 {
                let before = open.capacity();
                if let Some(more) = room_to_make(open.len(), open.capacity(), 1024, writing) {
                    open.reserve(more);
                }
                if open.capacity() != before {
                    grown += 1;
                    copied += open.len();
                }
                open.extend(std::iter::repeat_n(0u8, frame));
                assert!(open.len() <= open.capacity());
                if open.len() >= CHUNK_BYTES {
                    assert!(grown <= 2, "grown {grown} times in one chunk");
                    assert!(copied <= BURST_BYTES + frame, "copied {copied} bytes");
                    open = Vec::new();
                    (grown, copied, chunks) = (0, 0, chunks + 1);
                }
            }
        }
    }

    /// A lone small message reserves little, not a chunk.
    #[test]
    fn a_lone_message_reserves_little() {
        let more = room_to_make(0, 0, 10, false).expect("an empty chunk has no room");
        assert!(more < 2 * FRAME_SLACK, "{more}");
        assert_eq!(
            room_to_make(0, 0, 10, true),
            Some(CHUNK_BYTES + FRAME_SLACK)
        );
    }
}

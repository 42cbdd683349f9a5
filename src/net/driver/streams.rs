//! Streams: one per channel. Frames out are gathered into chunks and written when the
//! engine's turn is done, counted as the peer's backlog until QUIC takes them; frames in are
//! read within the connection's and the node's budgets, handshake-sized until both sides
//! proved the key.

use std::time::Instant;

use bytes::Bytes;
use iroh::endpoint::{RecvStream, SendStream};

use super::{
    super::frames::{Budget, Budgets, Exceeded, FrameReader, ReadError},
    Driver, Io,
};
use crate::replication::{
    Input, PeerId,
    engine::ChannelId,
    wire::{MAX_HANDSHAKE_FRAME, Message, SyncInfo, encode_frame_into},
};

/// Frames queued for one stream are handed to QUIC in chunks of about this size: one chunk
/// per frame cost an allocation each and many small pieces in QUIC's send buffer.
const CHUNK_BYTES: usize = 64 * 1024;

pub(super) struct ChannelIo {
    pub(super) peer: PeerId,
    pub(super) conn_id: usize,
    pub(super) send: Option<SendStream>,
    /// Frames waiting to be written, gathered into chunks.
    pub(super) queue: Vec<Bytes>,
    /// The chunk being filled, frames back to back.
    pub(super) open: Vec<u8>,
    pub(super) writing: bool,
    pub(super) closing: bool,
    /// Bytes queued on this channel (in `queue`, `open` and the write under way).
    pub(super) pending: u64,
}

impl Driver {
    /// The peer opened a stream: a new channel, read from at once; the next stream is awaited.
    pub(super) fn on_accepted(
        &mut self,
        peer: PeerId,
        conn_id: usize,
        result: Result<(SendStream, RecvStream), String>,
    ) {
        let Ok((send, recv)) = result else { return };
        if !self.current(&peer, conn_id) {
            return;
        }
        let ch = self.next_incoming;
        self.next_incoming += 2;
        self.channels.insert(
            ch,
            ChannelIo {
                peer,
                conn_id,
                send: Some(send),
                queue: Vec::new(),
                open: Vec::new(),
                writing: false,
                closing: false,
                pending: 0,
            },
        );
        let reader = FrameReader::new(recv, self.budgets(&peer));
        self.read_next(peer, conn_id, ch, reader);
        if let Some(c) = self.conns.get(&peer) {
            let conn = c.conn.clone();
            self.accept_next(peer, conn_id, conn);
        }
    }

    /// A stream we opened is ready (or failed): queued frames go out.
    pub(super) fn on_opened(
        &mut self,
        peer: PeerId,
        conn_id: usize,
        ch: ChannelId,
        result: Result<(SendStream, RecvStream), String>,
    ) {
        let now = Instant::now();
        let Some(c) = self.channels.get_mut(&ch) else {
            return;
        };
        match result {
            Ok((send, recv)) if c.conn_id == conn_id => {
                c.send = Some(send);
                let reader = FrameReader::new(recv, self.budgets(&peer));
                self.read_next(peer, conn_id, ch, reader);
                self.flush(ch);
            }
            _ => {
                self.remove_channel(ch);
                self.engine.handle(Input::ChannelClosed(peer, ch), now);
            }
        }
    }

    /// Tells the engine the current state of channel `ch`'s core before a peer's question
    /// about it is answered: the engine learns of local appends a hop after they commit, and
    /// an `update()` that starts after an acknowledged append must hear of it.
    fn refresh_local(&mut self, ch: ChannelId, now: Instant) {
        if let Some(core) = self.engine.channel_core(ch) {
            self.local_changed(core, now);
        }
    }

    /// Frames arrived on a channel (or its stream ended or broke the framing).
    pub(super) fn on_frames(
        &mut self,
        peer: PeerId,
        conn_id: usize,
        ch: ChannelId,
        reader: FrameReader,
        result: Result<Option<Vec<Message>>, ReadError>,
    ) {
        let now = Instant::now();
        // A channel we closed, or a connection that was replaced: stop reading it.
        if !self.current(&peer, conn_id) || !self.channels.contains_key(&ch) {
            return;
        }
        match result {
            Ok(Some(msgs)) => {
                for msg in msgs {
                    if matches!(msg, Message::Sync(SyncInfo { ask: true, .. })) {
                        self.refresh_local(ch, now);
                    }
                    self.engine.handle(Input::Message(peer, ch, msg), now);
                }
                self.read_next(peer, conn_id, ch, reader);
            }
            Err(ReadError::OverBudget(Exceeded::Total)) => {
                // The node's budget is spent: the connection holding the most gives
                // way (whoever asked), and this read is tried again.
                let largest = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.budget.used() > 0)
                    .max_by_key(|(p, c)| (c.budget.used(), **p))
                    .map(|(p, _)| *p);
                if let Some(evicted) = largest.filter(|l| *l != peer) {
                    tracing::warn!("frame budget spent: closing the largest holder");
                    if let Some(c) = self.remove_conn(&evicted) {
                        c.conn.close(1u32.into(), b"too much buffered");
                    }
                    self.read_next(peer, conn_id, ch, reader);
                } else if let Some(c) = self.remove_conn(&peer) {
                    c.conn.close(1u32.into(), b"too much buffered");
                }
            }
            Err(e @ (ReadError::Wire(_) | ReadError::OverBudget(Exceeded::Connection))) => {
                tracing::warn!("closing connection to a peer that broke framing: {e}");
                if let Some(c) = self.remove_conn(&peer) {
                    c.conn.close(1u32.into(), b"protocol violation");
                }
            }
            Ok(None) | Err(_) => {
                if let Err(e) = result {
                    tracing::debug!("channel read failed: {e}");
                }
                self.remove_channel(ch);
                self.engine.handle(Input::ChannelClosed(peer, ch), now);
            }
        }
    }

    /// A stream the peer opened sent no complete handshake frame in time.
    pub(super) fn on_handshake_timed_out(&mut self, peer: PeerId, conn_id: usize, ch: ChannelId) {
        let now = Instant::now();
        if self.current(&peer, conn_id) && self.channels.contains_key(&ch) {
            tracing::debug!("no handshake frame in time: channel closed");
            self.remove_channel(ch);
            self.engine.handle(Input::ChannelClosed(peer, ch), now);
        }
    }

    /// A write finished: the stream goes back to its channel and the backlog shrinks.
    pub(super) fn on_written(
        &mut self,
        ch: ChannelId,
        send: SendStream,
        result: Result<(), String>,
        bytes: u64,
    ) {
        let now = Instant::now();
        let Some(c) = self.channels.get_mut(&ch) else {
            return;
        };
        c.writing = false;
        c.pending = c.pending.saturating_sub(bytes);
        let peer = c.peer;
        self.add_backlog(&peer, bytes, false);
        match result {
            Ok(()) => {
                if let Some(c) = self.channels.get_mut(&ch) {
                    c.send = Some(send);
                }
                self.flush(ch);
            }
            Err(_) => {
                self.remove_channel(ch);
                self.engine.handle(Input::ChannelClosed(peer, ch), now);
            }
        }
        self.report_backlog(&peer);
    }

    /// Reads the next frames of a channel: only handshake-sized ones until both sides proved
    /// the key. A stream the peer opened must complete a frame within the handshake timeout
    /// (and a second more, so that the engine's own expiry of a parked channel, which says
    /// why, comes first): one whose first frame never completes is not kept open. Channels we
    /// opened are timed by the engine.
    pub(super) fn read_next(
        &mut self,
        peer: PeerId,
        conn_id: usize,
        ch: ChannelId,
        reader: FrameReader,
    ) {
        let theirs = !ch.is_multiple_of(2);
        if self.engine.is_authenticated(ch) || !theirs {
            let max_frame = self.engine.max_frame(ch);
            self.io.push(Box::pin(async move {
                let (reader, result) = reader.next_batch(max_frame).await;
                Io::Frames(peer, conn_id, ch, reader, result)
            }));
            return;
        }
        let limit = self.engine.config().handshake_timeout + std::time::Duration::from_secs(1);
        self.io.push(Box::pin(async move {
            match tokio::time::timeout(limit, reader.next_batch(MAX_HANDSHAKE_FRAME)).await {
                Ok((reader, result)) => Io::Frames(peer, conn_id, ch, reader, result),
                Err(_) => Io::HandshakeTimedOut(peer, conn_id, ch),
            }
        }));
    }

    /// The budgets unfinished frames from `peer` count against.
    pub(super) fn budgets(&self, peer: &PeerId) -> Budgets {
        Budgets {
            connection: self
                .conns
                .get(peer)
                .map_or_else(|| Budget::new(0), |c| c.budget.clone()),
            total: self.budget.clone(),
        }
    }

    /// Adds (or, with `add` false, takes away) bytes queued towards `peer`.
    pub(super) fn add_backlog(&mut self, peer: &PeerId, bytes: u64, add: bool) {
        if let Some(c) = self.conns.get_mut(peer) {
            c.backlog = if add {
                c.backlog.saturating_add(bytes)
            } else {
                c.backlog.saturating_sub(bytes)
            };
        }
    }

    /// Tells the engine when a peer's backlog crosses its limit, either way.
    pub(super) fn report_backlog(&mut self, peer: &PeerId) {
        let max = self.engine.config().max_backlog_bytes;
        let Some(c) = self.conns.get_mut(peer) else {
            return;
        };
        let over = c.backlog >= max;
        if over != c.over {
            c.over = over;
            let backlog = c.backlog;
            self.engine
                .handle(Input::Backlog(*peer, backlog), Instant::now());
        }
    }

    /// Forgets a channel's stream; what was queued on it no longer counts as backlog.
    pub(super) fn remove_channel(&mut self, ch: ChannelId) {
        if let Some(c) = self.channels.remove(&ch) {
            self.add_backlog(&c.peer, c.pending, false);
            self.report_backlog(&c.peer);
        }
    }

    pub(super) fn open_channel(&mut self, peer: PeerId, ch: ChannelId, first: Message) {
        let Some(c) = self.conns.get(&peer) else {
            self.engine
                .handle(Input::ChannelClosed(peer, ch), Instant::now());
            return;
        };
        let (conn, conn_id) = (c.conn.clone(), c.id);
        self.channels.insert(
            ch,
            ChannelIo {
                peer,
                conn_id,
                send: None,
                queue: Vec::new(),
                open: Vec::new(),
                writing: false,
                closing: false,
                pending: 0,
            },
        );
        self.send(ch, &first);
        self.io.push(Box::pin(async move {
            let r = conn.open_bi().await.map_err(|e| e.to_string());
            Io::Opened(peer, conn_id, ch, r)
        }));
    }

    pub(super) fn send(&mut self, ch: ChannelId, msg: &Message) {
        let Some(c) = self.channels.get_mut(&ch) else {
            return;
        };
        let idle = c.queue.is_empty() && c.open.is_empty();
        if c.open.is_empty() && c.writing {
            // A burst: room for many frames without regrowing.
            c.open.reserve(CHUNK_BYTES);
        }
        let before = c.open.len();
        if let Err(e) = encode_frame_into(msg, &mut c.open) {
            tracing::error!("message not sent: {e}");
            return;
        }
        let added = (c.open.len() - before) as u64;
        c.pending += added;
        let peer = c.peer;
        if c.open.len() >= CHUNK_BYTES {
            c.queue.push(Bytes::from(std::mem::take(&mut c.open)));
        }
        // Written once the engine's outputs of this turn are all queued.
        if idle {
            self.unflushed.push(ch);
        }
        self.add_backlog(&peer, added, true);
        // Checked against the limit once this turn's outputs are queued (also while a write
        // is blocked: a peer that does not read is exactly the one to stop serving).
        if self.backlog_grew.last() != Some(&peer) {
            self.backlog_grew.push(peer);
        }
    }

    /// Starts writing what is queued on a channel, or finishes it once drained if closing.
    pub(super) fn flush(&mut self, ch: ChannelId) {
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
                self.remove_channel(ch);
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
            Io::Written(ch, send, r, bytes)
        }));
    }

    /// Closes a channel once what is queued on it is written.
    pub(super) fn close_channel(&mut self, ch: ChannelId) {
        if let Some(c) = self.channels.get_mut(&ch) {
            c.closing = true;
            if c.send.is_none() && !c.writing {
                // Not opened yet: the peer never sees it.
                self.remove_channel(ch);
            }
        }
        self.flush(ch);
    }
}

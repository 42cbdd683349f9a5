//! The wire part: connections on Hypercore's own wire (JS Hypercore peers over TCP or any
//! byte stream), beside the iroh connections.
//!
//! Each connection has a reader task (decrypts frames and hands them to the driver) and a
//! writer task (encrypts what the driver queued and writes it), so the crypto runs off the
//! driver. The driver keeps each connection's [`WireConnection`]: the engine's outputs for
//! the peer go through it, and what the peer says comes out of it as engine inputs. The
//! bytes queued towards a peer are its backlog, reported to the engine as for iroh peers.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{mpsc, oneshot},
};

use super::Command;
use crate::{
    crypto::capability::NoiseBinding,
    hyperwire::{
        connection::{ConnectionError, WireConnection, WireInput},
        transport::{Sender, Transport},
    },
    replication::{PeerId, engine::ChannelId, wire::MAX_FRAME},
};

/// Connections on Hypercore's wire at once.
pub const MAX_WIRE_CONNECTIONS: usize = 32;
/// Handshakes on Hypercore's wire at once; more are refused until one ends.
pub const MAX_WIRE_HANDSHAKES: usize = 64;
/// Time the Noise handshake of a connection may take.
pub const WIRE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest frame taken from a peer: the largest message of ours, with room for a batch of
/// JS's around it (JS starts a new batch past 8 MiB).
const MAX_WIRE_FRAME: usize = 2 * MAX_FRAME;
/// Engine channel ids of channels wire peers open start here (odd; iroh streams count up
/// from 1).
const FIRST_CHANNEL: ChannelId = (1 << 62) | 1;
/// Engine channel ids given to each connection.
const CHANNELS_PER_LINK: ChannelId = 1 << 40;
/// A connection whose backlog passes this many times the engine's limit is closed: the
/// engine holds back what it sends a peer over its limit, but answers to protocol
/// violations (rejects) are queued regardless.
const HARD_BACKLOG_FACTOR: u64 = 4;
/// Bytes serve tasks started before the engine saw a peer over its limit may still add: a
/// few of the largest frames.
const SERVE_ROOM: u64 = 8 * MAX_FRAME as u64;
/// Bytes of decrypted frames of one connection handed to the driver and not yet taken in:
/// the reader waits past it.
const MAX_INFLIGHT: usize = 32 * 1024 * 1024;
/// A connection silent this long is closed (hypercore sends a keep-alive after 5 s of
/// silence).
pub const WIRE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// An empty message goes out after this long without one, as hypercore's keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// What the reader and writer tasks tell the driver.
pub(crate) enum WireEvent {
    /// The handshake ended: the peer's key and the session capabilities are bound to.
    Up {
        link: u64,
        peer: PeerId,
        binding: NoiseBinding,
        frames: mpsc::UnboundedSender<Vec<Vec<u8>>>,
        shared: Arc<Shared>,
        /// Dropped when the driver forgets the connection: its reader then stops.
        stop: oneshot::Sender<()>,
        /// Whether the driver took it (a peer already connected over iroh is refused).
        taken: oneshot::Sender<bool>,
    },
    /// Decrypted frames, in order, and the bytes to give back to the reader's budget.
    Frames(u64, Vec<Vec<u8>>, usize),
    /// The backlog went back under half its limit.
    Drained(u64),
    /// The connection ended.
    Down(u64, String),
}

/// What a connection's writer and the driver share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Bytes queued and not yet written.
    backlog: AtomicU64,
    /// Whether the engine was told the peer is over its limit.
    over: AtomicBool,
    /// The limit.
    limit: AtomicU64,
    /// Bytes the reader may still hand the driver ([`MAX_INFLIGHT`] at most).
    inflight: tokio::sync::Semaphore,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            backlog: AtomicU64::new(0),
            over: AtomicBool::new(false),
            limit: AtomicU64::new(u64::MAX),
            inflight: tokio::sync::Semaphore::new(MAX_INFLIGHT),
        }
    }
}

/// One connection: the writer ends when `frames` goes, the reader when `_stop` does (it may
/// wait on a peer that sends nothing).
struct Link {
    id: u64,
    /// Which block of engine channel ids it uses.
    slot: u64,
    conn: WireConnection,
    frames: mpsc::UnboundedSender<Vec<Vec<u8>>>,
    shared: Arc<Shared>,
    _stop: oneshot::Sender<()>,
}

/// What the engine is to hear from the wire, backlog crossings, and connections to close.
#[allow(clippy::large_enum_variant)] // Handed on at once.
pub(super) enum Heard {
    Input(PeerId, WireInput),
    Backlog(PeerId, u64, bool),
    /// Its backlog passed the hard limit.
    Close(PeerId),
}

/// The wire part; see the module docs.
#[derive(Default)]
pub(super) struct WireLinks {
    links: HashMap<PeerId, Link>,
}

impl WireLinks {
    /// Whether no peer is connected on this wire.
    pub(super) fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Whether `peer` is connected on this wire.
    pub(super) fn has(&self, peer: &PeerId) -> bool {
        self.links.contains_key(peer)
    }

    /// A connection's handshake ended: kept unless the peer is connected already (or there
    /// are too many); returns whether it was.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add(
        &mut self,
        link: u64,
        peer: PeerId,
        frames: mpsc::UnboundedSender<Vec<Vec<u8>>>,
        shared: Arc<Shared>,
        stop: oneshot::Sender<()>,
        backlog_limit: u64,
    ) -> bool {
        if self.links.contains_key(&peer) || self.links.len() >= MAX_WIRE_CONNECTIONS {
            return false;
        }
        shared.limit.store(backlog_limit, Ordering::Relaxed);
        // A block of channel ids no live connection uses (ids of a connection that went may
        // still be closing in the engine, so the lowest free block is not reused at once
        // unless it must be: there are MAX_WIRE_CONNECTIONS + 1 blocks).
        let used: std::collections::BTreeSet<u64> = self.links.values().map(|l| l.slot).collect();
        let slot = (0..=MAX_WIRE_CONNECTIONS as u64)
            .find(|s| !used.contains(s))
            .unwrap_or(0);
        let base = FIRST_CHANNEL + slot * CHANNELS_PER_LINK;
        self.links.insert(
            peer,
            Link {
                id: link,
                slot,
                conn: WireConnection::new(base),
                frames,
                shared,
                _stop: stop,
            },
        );
        true
    }

    /// The peer of connection `link`, if it is current.
    pub(super) fn peer_of(&self, link: u64) -> Option<PeerId> {
        self.links
            .iter()
            .find(|(_, l)| l.id == link)
            .map(|(p, _)| *p)
    }

    /// Forgets `peer`'s connection (its tasks end).
    pub(super) fn remove(&mut self, peer: &PeerId) -> bool {
        self.links.remove(peer).is_some()
    }

    /// The reader of `peer`'s connection may hand on `bytes` more.
    pub(super) fn taken_in(&self, peer: &PeerId, bytes: usize) {
        if let Some(l) = self.links.get(peer) {
            l.shared.inflight.add_permits(bytes);
        }
    }

    /// Frames from `peer`; an error ends its connection (the caller forgets the peer).
    pub(super) fn on_frames(
        &mut self,
        peer: &PeerId,
        frames: &[Vec<u8>],
    ) -> Result<(), ConnectionError> {
        let Some(link) = self.links.get_mut(peer) else {
            return Ok(());
        };
        for f in frames {
            link.conn.on_frame(f)?;
        }
        Ok(())
    }

    /// The engine opens a channel to `peer`.
    pub(super) fn open(
        &mut self,
        peer: &PeerId,
        ch: ChannelId,
        first: &crate::replication::Message,
    ) {
        if let Some(l) = self.links.get_mut(peer) {
            l.conn.open(ch, first);
        }
    }

    /// The engine sends on a channel of `peer`.
    pub(super) fn send(&mut self, peer: &PeerId, ch: ChannelId, msg: crate::replication::Message) {
        if let Some(l) = self.links.get_mut(peer) {
            l.conn.send(ch, msg);
        }
    }

    /// The engine closes a channel of `peer`.
    pub(super) fn close(&mut self, peer: &PeerId, ch: ChannelId) {
        if let Some(l) = self.links.get_mut(peer) {
            l.conn.close(ch);
        }
    }

    /// Hands the writers what was queued, and collects what the engine is to hear.
    pub(super) fn flush(&mut self) -> Vec<Heard> {
        let mut heard = Vec::new();
        for (peer, l) in &mut self.links {
            while let Some(input) = l.conn.next_input() {
                heard.push(Heard::Input(*peer, input));
            }
            let frames = l.conn.frames();
            if frames.is_empty() {
                continue;
            }
            let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
            let backlog = l.shared.backlog.fetch_add(bytes, Ordering::Relaxed) + bytes;
            let _ = l.frames.send(frames);
            let limit = l.shared.limit.load(Ordering::Relaxed);
            // Room for the serve tasks under way, each up to a frame, past the factor.
            let hard = limit
                .saturating_mul(HARD_BACKLOG_FACTOR)
                .saturating_add(SERVE_ROOM);
            if backlog > hard {
                heard.push(Heard::Close(*peer));
            } else if backlog > limit && !l.shared.over.swap(true, Ordering::Relaxed) {
                heard.push(Heard::Backlog(*peer, backlog, true));
            }
        }
        heard
    }

    /// The backlog of connection `link` went back under its limit.
    pub(super) fn drained(&self, link: u64) -> Option<Heard> {
        let (peer, l) = self.links.iter().find(|(_, l)| l.id == link)?;
        Some(Heard::Backlog(
            *peer,
            l.shared.backlog.load(Ordering::Relaxed),
            false,
        ))
    }

    /// Bytes queued towards `peer` (or every wire peer).
    pub(super) fn backlog(&self, peer: Option<&PeerId>) -> u64 {
        self.links
            .iter()
            .filter(|(p, _)| peer.is_none_or(|x| x == *p))
            .map(|(_, l)| l.shared.backlog.load(Ordering::Relaxed))
            .sum()
    }
}

/// A connection on Hypercore's own wire, from
/// [`HypercoreProtocol::replicate_stream`](crate::HypercoreProtocol::replicate_stream).
#[derive(Debug)]
pub struct WireLink {
    peer: PeerId,
    ended: oneshot::Receiver<()>,
}

impl WireLink {
    /// The peer's key on the wire (its Noise static key, an Ed25519 public key): its id in
    /// events and peer stats.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Resolves once the connection ended: the peer closed it or went silent, it broke the
    /// protocol, a newer connection of the same peer replaced it, or the protocol shut down.
    pub async fn closed(&mut self) {
        let _ = (&mut self.ended).await;
    }

    pub(crate) fn new(peer: PeerId, ended: oneshot::Receiver<()>) -> Self {
        Self { peer, ended }
    }
}

/// Runs a connection on Hypercore's wire over `stream`: the handshake (answered on `ready`
/// with the peer's key), then a reader (this task) and a writer task, reporting to the
/// driver through `to_driver`.
pub(crate) async fn run_link<S>(
    stream: S,
    initiator: bool,
    seed: [u8; 32],
    link: u64,
    to_driver: mpsc::WeakSender<Command>,
    ready: oneshot::Sender<Result<(PeerId, oneshot::Receiver<()>), String>>,
    handshake_permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut transport = Transport::new(initiator, &seed, MAX_WIRE_FRAME);
    let mut buf = vec![0u8; 64 * 1024];
    let handshake = async {
        loop {
            let out = std::mem::take(transport.outgoing());
            if !out.is_empty() {
                wr.write_all(&out).await.map_err(|e| e.to_string())?;
            }
            if transport.session().is_some() {
                return Ok::<_, String>(());
            }
            let n = rd.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the stream ended during the handshake".into());
            }
            transport.recv(&buf[..n]).map_err(|e| e.to_string())?;
        }
    };
    let result = match tokio::time::timeout(WIRE_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(r) => r,
        Err(_) => Err("the handshake timed out".into()),
    };
    let (session, sender) = match result {
        Ok(()) => match (transport.session().cloned(), transport.take_sender()) {
            (Some(s), Some(tx)) => (s, tx),
            _ => {
                let _ = ready.send(Err("the handshake did not end".into()));
                return;
            }
        },
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    drop(handshake_permit);
    let peer = session.remote_static;
    let (frames_tx, frames_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = oneshot::channel();
    let (taken_tx, taken_rx) = oneshot::channel();
    tokio::spawn(write_loop(
        wr,
        sender,
        frames_rx,
        shared.clone(),
        link,
        to_driver.clone(),
    ));
    let up = WireEvent::Up {
        link,
        peer,
        binding: NoiseBinding {
            hash: session.hash,
            we_initiated: initiator,
        },
        frames: frames_tx,
        shared: shared.clone(),
        stop: stop_tx,
        taken: taken_tx,
    };
    // The driver knows the connection before the reader reports a frame of it.
    let sent = match to_driver.upgrade() {
        Some(tx) => tx.send(Command::Wire(up)).await.is_ok(),
        None => false,
    };
    match (sent, taken_rx.await) {
        (true, Ok(true)) => {}
        (true, _) => {
            let _ = ready.send(Err("there are too many hypercore wire peers".into()));
            return;
        }
        (false, _) => {
            let _ = ready.send(Err("the protocol is shut down".into()));
            return;
        }
    }
    // Dropped when this returns: the connection's end, for whoever holds its `WireLink`.
    let (_ended, ended_rx) = oneshot::channel::<()>();
    let _ = ready.send(Ok((peer, ended_rx)));
    read_loop(rd, transport, buf, link, shared, to_driver, stop_rx).await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    rd: R,
    transport: Transport,
    buf: Vec<u8>,
    link: u64,
    shared: Arc<Shared>,
    to_driver: mpsc::WeakSender<Command>,
    stop: oneshot::Receiver<()>,
) {
    tokio::select! {
        _ = stop => {}
        _ = read_frames(rd, transport, buf, link, shared, to_driver) => {}
    }
}

async fn read_frames<R: AsyncRead + Unpin>(
    mut rd: R,
    mut transport: Transport,
    mut buf: Vec<u8>,
    link: u64,
    shared: Arc<Shared>,
    to_driver: mpsc::WeakSender<Command>,
) {
    let reason = loop {
        // Messages that came with the handshake's last bytes go first.
        let mut frames = Vec::new();
        let mut bytes = 0;
        while let Some(m) = transport.next_message() {
            bytes += m.len();
            frames.push(m);
        }
        if !frames.is_empty() {
            // Within the bytes the driver has not taken in yet.
            let bytes = bytes.min(MAX_INFLIGHT);
            let Ok(permit) = shared
                .inflight
                .acquire_many(u32::try_from(bytes).unwrap_or(u32::MAX))
                .await
            else {
                return;
            };
            permit.forget();
            let Some(tx) = to_driver.upgrade() else {
                return;
            };
            let event = WireEvent::Frames(link, frames, bytes);
            if tx.send(Command::Wire(event)).await.is_err() {
                return;
            }
        }
        let n = match tokio::time::timeout(WIRE_IDLE_TIMEOUT, rd.read(&mut buf)).await {
            Err(_) => break format!("silent for {WIRE_IDLE_TIMEOUT:?}"),
            Ok(Ok(0)) => break "the peer closed the stream".to_string(),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => break e.to_string(),
        };
        if let Err(e) = transport.recv(&buf[..n]) {
            break e.to_string();
        }
    };
    if let Some(tx) = to_driver.upgrade() {
        let _ = tx.send(Command::Wire(WireEvent::Down(link, reason))).await;
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut sender: Sender,
    mut frames: mpsc::UnboundedReceiver<Vec<Vec<u8>>>,
    shared: Arc<Shared>,
    link: u64,
    to_driver: mpsc::WeakSender<Command>,
) {
    let mut out = Vec::new();
    let reason = loop {
        let batch = match tokio::time::timeout(KEEP_ALIVE, frames.recv()).await {
            Ok(Some(batch)) => batch,
            // The driver forgot the connection.
            Ok(None) => {
                let _ = wr.shutdown().await;
                return;
            }
            // Nothing to say for a while: an empty message, as hypercore's keep-alive.
            Err(_) => vec![Vec::new()],
        };
        let bytes: u64 = batch.iter().map(|f| f.len() as u64).sum();
        out.clear();
        if let Some(e) = batch.iter().find_map(|f| sender.send(f, &mut out).err()) {
            break e.to_string();
        }
        if let Err(e) = wr.write_all(&out).await {
            break e.to_string();
        }
        let left = shared.backlog.fetch_sub(bytes, Ordering::Relaxed) - bytes;
        let limit = shared.limit.load(Ordering::Relaxed);
        if left <= limit / 2 && shared.over.swap(false, Ordering::Relaxed) {
            let Some(tx) = to_driver.upgrade() else {
                return;
            };
            let _ = tx.send(Command::Wire(WireEvent::Drained(link))).await;
        }
    };
    if let Some(tx) = to_driver.upgrade() {
        let _ = tx.send(Command::Wire(WireEvent::Down(link, reason))).await;
    }
}

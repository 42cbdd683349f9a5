//! A hostile peer for the attack tests: a raw iroh endpoint that speaks hand-made frames on
//! `/iroh-hypercore/2`, with whatever it knows (the key, only the discovery key, or nothing).

#![allow(dead_code)]

use std::time::Duration;

use iroh::{
    Endpoint,
    endpoint::{Connection, RecvStream, SendStream},
    protocol::{AcceptError, ProtocolHandler, Router},
};
use iroh_hypercore::{
    CoreKey, Hypercore,
    crypto::capability::{Role, capability},
    replication::wire::{Message, decode_body, encode_frame, frame_len},
    testnet::{Node, TestNet, Transport},
};
use tokio::sync::mpsc;

/// Reads one frame; `None` when the stream ends or breaks.
pub async fn read_msg(recv: &mut RecvStream) -> Option<Message> {
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.ok()?;
    let mut body = vec![0; frame_len(header).ok()?];
    recv.read_exact(&mut body).await.ok()?;
    decode_body(&body).ok()
}

/// Reads frames until the stream ends or `quiet` passes without one; returns them all.
pub async fn read_all(recv: &mut RecvStream, quiet: Duration) -> Vec<Message> {
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(quiet, read_msg(recv)).await {
        out.push(m);
    }
    out
}

/// Writes one frame, ignoring a closed stream.
pub async fn send(tx: &mut SendStream, msg: &Message) {
    let _ = tx.write_all(&encode_frame(msg).expect("encodes")).await;
}

/// An endpoint on `net` whose id sorts after `than` (so that the node with id `than` opens
/// channels towards it) or before it, as `after` says.
pub async fn endpoint_ordered(net: &TestNet, than: [u8; 32], after: bool) -> Endpoint {
    loop {
        let ep = net.endpoint(Transport::Direct).await.unwrap();
        if (*ep.id().as_bytes() > than) == after {
            return ep;
        }
        ep.close().await;
    }
}

/// Opens a channel for core `key` on `conn` the honest way (the key is public to anyone with
/// a ticket) and waits for the node's `Accept`. `None` if the node refused or kept its own
/// channel instead.
pub async fn open_channel(
    conn: &Connection,
    me: [u8; 32],
    key: CoreKey,
) -> Option<(SendStream, RecvStream)> {
    let them = *conn.remote_id().as_bytes();
    let (mut tx, mut rx) = conn.open_bi().await.ok()?;
    let open = Message::Open {
        discovery_key: iroh_hypercore::crypto::discovery_key(&key),
        capability: capability(&key, Role::Opener, &me, &them),
    };
    send(&mut tx, &open).await;
    match read_msg(&mut rx).await {
        Some(Message::Accept { .. }) => Some((tx, rx)),
        _ => None,
    }
}

/// The `Accept` a peer that knows `key` answers an `Open` from `opener` with.
pub fn accept_for(key: &CoreKey, opener: [u8; 32], me: [u8; 32]) -> Message {
    Message::Accept {
        capability: capability(key, Role::Acceptor, &opener, &me),
    }
}

/// An endpoint whose id sorts below `target`'s, connected to it. The target then opens no
/// channel of its own towards it, so a channel the attacker opens is the one kept.
pub async fn connect_below(
    net: &TestNet,
    target: &iroh_hypercore::testnet::Node,
) -> (Endpoint, Connection) {
    let ep = endpoint_ordered(net, *target.endpoint.id().as_bytes(), false).await;
    let conn = ep
        .connect(target.addr(), iroh_hypercore::ALPN)
        .await
        .expect("connects");
    (ep, conn)
}

/// A raw endpoint connected below a node ([`connect_below`]).
pub struct Intruder {
    pub ep: Endpoint,
    pub conn: Connection,
    /// `ep`'s id, as bytes.
    pub me: [u8; 32],
}

impl Intruder {
    /// Closes its connection, then its endpoint.
    pub async fn hang_up(&self) {
        hang_up(&self.ep, &self.conn).await;
    }
}

/// An [`Intruder`] on `target` and the channel for core `key` it opened there
/// ([`open_channel`]); panics if `target` refuses the channel.
pub async fn intrude(
    net: &TestNet,
    target: &Node,
    key: CoreKey,
) -> (Intruder, SendStream, RecvStream) {
    let (ep, conn) = connect_below(net, target).await;
    let me = *ep.id().as_bytes();
    let (tx, rx) = open_channel(&conn, me, key)
        .await
        .expect("the node accepts a channel with a valid capability");
    (Intruder { ep, conn, me }, tx, rx)
}

/// Closes `conn`, then `ep`.
pub async fn hang_up(ep: &Endpoint, conn: &Connection) {
    conn.close(0u32.into(), b"done");
    ep.close().await;
}

/// Writes a frame header announcing `header` bytes, then `body` bytes of zeros (in pieces), and
/// never finishes the frame: the stream is held open until the connection closes.
pub fn unfinished_frame(
    conn: &Connection,
    mut tx: SendStream,
    rx: RecvStream,
    header: u32,
    body: u64,
) {
    let conn = conn.clone();
    tokio::spawn(async move {
        let piece = vec![0u8; 64 * 1024];
        let mut sent = 0;
        let mut ok = tx.write_all(&header.to_be_bytes()).await.is_ok();
        while ok && sent < body {
            let n = (body - sent).min(piece.len() as u64) as usize;
            ok = tx.write_all(&piece[..n]).await.is_ok();
            sent += n as u64;
        }
        // Dropping the stream would finish it: hold it until the node closes the connection.
        conn.closed().await;
        drop((tx, rx));
    });
}

/// Reads until the node asks a `Request`; returns its id.
pub async fn next_request(rx: &mut RecvStream) -> u64 {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), read_msg(rx))
            .await
            .unwrap()
        {
            Some(Message::Request { id, .. }) => return id,
            Some(_) => {}
            None => panic!("the channel closed before the node asked"),
        }
    }
}

/// The names of the messages a stream carried, for assertions and printing.
pub fn kinds(msgs: &[Message]) -> Vec<&'static str> {
    msgs.iter()
        .map(|m| match m {
            Message::Open { .. } => "Open",
            Message::Accept { .. } => "Accept",
            Message::Close { .. } => "Close",
            Message::Sync(_) => "Sync",
            Message::Data { .. } => "Data",
            Message::NoData { .. } => "NoData",
            Message::Request { .. } => "Request",
            Message::RequestRun { .. } => "RequestRun",
            Message::Push { .. } => "Push",
            _ => "other",
        })
        .collect()
}

/// A raw endpoint that hands every connection it accepts on the hypercore ALPN to the test.
#[derive(Debug)]
pub struct Catch(mpsc::UnboundedSender<Connection>);

impl ProtocolHandler for Catch {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let _ = self.0.send(conn);
        Ok(())
    }
}

/// Gossip on `ep` and a router that serves it and hands hypercore connections to the test.
pub fn catch_connections(
    ep: &Endpoint,
) -> (
    iroh_gossip::Gossip,
    Router,
    mpsc::UnboundedReceiver<Connection>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let gossip = iroh_gossip::Gossip::builder().spawn(ep.clone());
    let router = Router::builder(ep.clone())
        .accept(iroh_hypercore::ALPN, Catch(tx))
        .accept(iroh_gossip::ALPN, gossip.clone())
        .spawn();
    (gossip, router, rx)
}

/// Connects `ep` to `reader` and plays `answer` on a channel of `log` it opens (with a valid
/// capability: the key is public) once the reader accepted it, and on every channel the reader
/// opens to it, after the reader's `Open` and our `Accept`: the reader may keep its own channel
/// rather than ours.
pub async fn play_on_core<F, Fut>(
    ep: &Endpoint,
    reader: &Node,
    log: &Hypercore,
    answer: F,
) -> Connection
where
    F: Fn(SendStream, RecvStream) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let conn = ep
        .connect(reader.addr(), iroh_hypercore::ALPN)
        .await
        .unwrap();
    let accepted = conn.clone();
    let (key, me, them) = (
        log.key(),
        *ep.id().as_bytes(),
        *reader.endpoint.id().as_bytes(),
    );
    tokio::spawn(async move {
        while let Ok((mut tx, mut rx)) = accepted.accept_bi().await {
            let _ = read_msg(&mut rx).await;
            send(&mut tx, &accept_for(&key, them, me)).await;
            tokio::spawn(answer(tx, rx));
        }
    });
    let ours = conn.clone();
    tokio::spawn(async move {
        // The reader proves the key (or keeps its own channel and closes ours).
        if let Some((tx, rx)) = open_channel(&ours, me, key).await {
            answer(tx, rx).await;
        }
    });
    conn
}

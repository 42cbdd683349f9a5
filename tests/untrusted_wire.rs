//! Hostile peers on Hypercore's own wire, played from Rust with the crate's own codec (a real
//! node on the other end, real TCP on loopback): a handshake of garbage, a frame over the
//! limit before the handshake, a forged capability, and a writer whose proofs are right but
//! whose blocks are not. Each gets a clear error or loses its connection, and nothing it sent
//! is stored.

#[path = "common/net.rs"]
mod net;

use iroh_hypercore::{
    Hypercore,
    crypto::{capability::noise_capability, discovery_key},
    hyperwire::{
        compact::Writer,
        messages::{ChannelHandshake, HyperMessage, PROTOCOL, Sync},
        mux::{FrameBuilder, MuxMessage, decode_frame},
        transport::{MAX_FRAME, Transport},
    },
    replication::Event,
    testnet::Transport as NetTransport,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A node's listener: every connection goes to `replicate_stream` as the responder, and the
/// result of each comes back on the channel.
async fn listen(
    proto: &iroh_hypercore::HypercoreProtocol,
) -> (
    u16,
    tokio::sync::mpsc::UnboundedReceiver<iroh_hypercore::Result<[u8; 32]>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let proto = proto.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tx.send(proto.replicate_stream(tcp, false).await.map(|l| l.peer()));
        }
    });
    (port, rx)
}

/// A peer on the wire played by the test: handshake done, frames in and out.
struct Attacker {
    tcp: TcpStream,
    transport: Transport,
    buf: Vec<u8>,
}

impl Attacker {
    async fn connect(port: u16, seed: [u8; 32]) -> Self {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut transport = Transport::new(true, &seed, MAX_FRAME);
        let mut buf = vec![0u8; 1 << 16];
        while !transport.is_open() {
            let out = std::mem::take(transport.outgoing());
            tcp.write_all(&out).await.unwrap();
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "the node closed during the handshake");
            transport.recv(&buf[..n]).unwrap();
        }
        let out = std::mem::take(transport.outgoing());
        tcp.write_all(&out).await.unwrap();
        Self {
            tcp,
            transport,
            buf,
        }
    }

    fn hash(&self) -> [u8; 64] {
        self.transport.session().unwrap().hash
    }

    async fn send(&mut self, mut frames: FrameBuilder) {
        for f in frames.frames(1 << 16) {
            self.transport.send(&f).unwrap();
        }
        let out = std::mem::take(self.transport.outgoing());
        self.tcp.write_all(&out).await.unwrap();
    }

    /// The next decrypted frames, or `None` once the node closed the connection.
    async fn frames(&mut self) -> Option<Vec<Vec<u8>>> {
        loop {
            let mut frames = Vec::new();
            while let Some(m) = self.transport.next_message() {
                frames.push(m);
            }
            if !frames.is_empty() {
                return Some(frames);
            }
            let n = self.tcp.read(&mut self.buf).await.ok()?;
            if n == 0 {
                return None;
            }
            self.transport.recv(&self.buf[..n]).ok()?;
        }
    }
}

fn open_channel(frames: &mut FrameBuilder, key: &[u8; 32], capability: [u8; 32]) {
    let mut hs = Vec::new();
    ChannelHandshake {
        seeks: true,
        capability,
    }
    .encode(&mut hs);
    frames.open(1, PROTOCOL, &discovery_key(key), &hs);
}

fn message(frames: &mut FrameBuilder, m: HyperMessage) {
    frames.message(1, m.kind(), |w: &mut Writer<'_>| m.encode(w));
}

#[tokio::test]
async fn a_garbage_handshake_and_an_oversized_first_frame_are_refused_at_once() {
    let net = net::test_net().await;
    let node = net.node(NetTransport::Direct).await.unwrap();
    let (port, mut results) = listen(&node.proto).await;

    // The identity point as the first Noise message.
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut garbage = vec![32, 0, 0, 1];
    garbage.extend_from_slice(&[0; 31]);
    tcp.write_all(&garbage).await.unwrap();
    let err = results.recv().await.unwrap().unwrap_err();
    assert!(err.to_string().contains("noise handshake failed"), "{err}");
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "nothing is sent to a broken handshake");

    // A first frame that claims 16 MiB: refused by its length, nothing buffered.
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(&[0xff, 0xff, 0xff, 1, 2, 3]).await.unwrap();
    let err = results.recv().await.unwrap().unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");
    assert_eq!(
        node.proto
            .node_stats()
            .await
            .unwrap()
            .peer_totals
            .blocks_down,
        0
    );
    net::shutdown(&[&node]).await;
}

#[tokio::test]
async fn a_forged_capability_loses_the_connection() {
    let net = net::test_net().await;
    let (writer, log) = net::writer_with_log(&net, "served", 10, 100).await;
    let (port, mut results) = listen(&writer.proto).await;
    let mut events = writer.proto.subscribe();

    let mut attacker = Attacker::connect(port, [9; 32]).await;
    results.recv().await.unwrap().unwrap();
    // It knows the discovery key (public), not the core key.
    let mut frames = FrameBuilder::default();
    open_channel(&mut frames, &log.key(), [0x42; 32]);
    attacker.send(frames).await;
    net::wait_event(&mut events, "the channel refused", |e| {
        matches!(e, Event::ChannelRefused { reason, .. } if reason.starts_with("invalid capability"))
    })
    .await;
    // The node closes the connection; no block went out.
    while attacker.frames().await.is_some() {}
    let stats = writer.proto.node_stats().await.unwrap();
    assert_eq!(stats.peer_totals.blocks_up, 0);
    net::shutdown(&[&writer]).await;
}

/// Answers the node's requests for `log` with the writer's real proofs, each block's first
/// byte flipped: the upgrade verifies, no block does.
async fn serve_altered_blocks(attacker: &mut Attacker, log: &Hypercore) {
    while let Some(frames) = attacker.frames().await {
        let mut requests = Vec::new();
        for f in &frames {
            decode_frame(f, &mut |m| {
                if let MuxMessage::Message { kind, body, .. } = m
                    && let Ok(Some(HyperMessage::Request { id, request, .. })) =
                        HyperMessage::decode(kind, body)
                {
                    requests.push((id, request));
                }
                Ok::<_, iroh_hypercore::hyperwire::compact::DecodeError>(())
            })
            .unwrap();
        }
        let mut out = FrameBuilder::default();
        for (id, request) in requests {
            let mut proof = log.create_proof(request).await.unwrap();
            if let Some(b) = &mut proof.block {
                let mut value = b.value.to_vec();
                value[0] ^= 1;
                b.value = value.into();
            }
            message(&mut out, HyperMessage::Data { request: id, proof });
        }
        if !out.is_empty() {
            attacker.send(out).await;
        }
    }
}

#[tokio::test]
async fn a_writer_whose_blocks_do_not_verify_gets_nothing_stored_and_is_blamed() {
    let net = net::test_net().await;
    // The attacker serves a real log (it holds it), with its blocks altered.
    let source = net.node(NetTransport::Direct).await.unwrap();
    let log = net::log_on(&source, "real", 20, 100).await;
    let reader = net.node(NetTransport::Direct).await.unwrap();
    let mut events = reader.proto.subscribe();
    let core = net::replica(&reader, log.key()).await;
    let (port, mut results) = listen(&reader.proto).await;

    let mut attacker = Attacker::connect(port, [7; 32]).await;
    let peer = results.recv().await.unwrap().unwrap();
    let mut frames = FrameBuilder::default();
    let cap = noise_capability(&log.key(), true, &attacker.hash());
    open_channel(&mut frames, &log.key(), cap);
    message(
        &mut frames,
        HyperMessage::Sync(Sync {
            fork: 0,
            length: 20,
            remote_length: 0,
            can_upgrade: true,
            uploading: true,
            downloading: true,
            has_manifest: true,
            allow_push: false,
        }),
    );
    message(
        &mut frames,
        HyperMessage::Range {
            drop: false,
            start: 0,
            length: 20,
        },
    );
    attacker.send(frames).await;
    let serving = tokio::spawn(async move { serve_altered_blocks(&mut attacker, &log).await });

    let invalid = net::wait_blamed(&mut events, peer, "an altered block").await;
    assert!(matches!(invalid, Event::Invalid { .. }), "{invalid:?}");
    // The signed length came through (its proof was true); not one block did.
    assert_eq!(core.info().length, 20);
    assert_eq!(core.stored().await.unwrap().blocks, 0);
    let stats = reader
        .proto
        .peer_stats()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.peer == peer)
        .expect("the peer is still known");
    assert!(stats.invalid >= 1);
    assert_eq!(stats.blocks_down, 0);
    serving.abort();
    net::shutdown(&[&reader, &source]).await;
}

#[tokio::test]
async fn a_peer_connected_over_iroh_is_refused_on_the_wire_with_an_error() {
    let net = net::test_net().await;
    let (writer, log) = net::writer_with_log(&net, "both", 10, 100).await;
    let (reader, copy) = net::follower(&net, &writer, &log).await;
    net::wait_full(&copy, 10).await;
    let (port, mut results) = listen(&writer.proto).await;
    // The same key over TCP: refused on both sides, with an error.
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let ours = reader.proto.replicate_stream(tcp, true).await;
    assert!(ours.is_err(), "{ours:?}");
    let theirs = results.recv().await.unwrap();
    assert!(theirs.is_err(), "{theirs:?}");
    // The iroh connection goes on.
    log.append("more").await.unwrap();
    net::wait_full(&copy, 11).await;
    net::shutdown(&[&reader, &writer]).await;
}

/// Two nodes of this crate over Hypercore's wire on an in-memory stream (no TCP): the same
/// mapping on both sides, live appends and a truncation to a new fork.
#[tokio::test]
async fn two_nodes_replicate_over_the_wire_on_any_byte_stream() {
    let net = net::test_net().await;
    let writer = net.node(NetTransport::Direct).await.unwrap();
    let reader = net.node(NetTransport::Direct).await.unwrap();
    let log = net::log_on(&writer, "wire", 500, 100).await;
    let copy = net::replica(&reader, log.key()).await;
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (w, r) = tokio::join!(
        writer.proto.replicate_stream(a, false),
        reader.proto.replicate_stream(b, true)
    );
    assert_eq!(w.unwrap().peer(), *reader.endpoint.id().as_bytes());
    let mut link = r.unwrap();
    assert_eq!(link.peer(), *writer.endpoint.id().as_bytes());
    net::wait_full_numbered(&copy, 500, 100).await;
    net::append_numbered(&log, 500, 10, 100).await;
    net::wait_full_numbered(&copy, 510, 100).await;
    log.truncate(200).await.unwrap();
    net::append_numbered(&log, 200, 5, 100).await;
    tokio::time::timeout(net::WAIT, async {
        let mut events = copy.subscribe();
        while copy.info().fork != 1 || copy.info().length != 205 {
            let _ = n0_future::StreamExt::next(&mut events).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the reader is at {:?}", copy.info()));
    net::wait_full_numbered(&copy, 205, 100).await;
    assert_eq!(
        reader.proto.node_stats().await.unwrap().connections,
        0,
        "no iroh connection"
    );
    // The link ends with the other node.
    writer.shutdown().await;
    tokio::time::timeout(net::WAIT, link.closed())
        .await
        .expect("the link ended");
    reader.shutdown().await;
}

/// An encrypted compat core (JS Hypercore 10 keys): a reader that gives the key before it
/// knows the core's kind reads the text once the kind is known.
#[tokio::test]
async fn a_reader_that_sets_the_key_before_it_knows_the_kind_reads_a_compat_core() {
    let net = net::test_net().await;
    let writer = net.node(NetTransport::Direct).await.unwrap();
    let reader = net.node(NetTransport::Direct).await.unwrap();
    let log = writer
        .store
        .create(iroh_hypercore::CoreOptions {
            key_pair: Some(iroh_hypercore::KeyPair::from_seed([1; 32])),
            kind: iroh_hypercore::CoreKind::Compat,
        })
        .await
        .unwrap();
    log.set_encryption_key([5; 32]).unwrap();
    log.append_batch(["a", "b"]).await.unwrap();
    writer.proto.replicate(&log).await.unwrap();
    let copy = net::replica(&reader, log.key()).await;
    assert_eq!(copy.info().kind, None, "the kind is not known yet");
    copy.set_encryption_key([5; 32]).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (w, r) = tokio::join!(
        writer.proto.replicate_stream(a, false),
        reader.proto.replicate_stream(b, true)
    );
    w.unwrap();
    r.unwrap();
    net::wait_full(&copy, 2).await;
    assert_eq!(copy.info().kind, Some(iroh_hypercore::CoreKind::Compat));
    assert_eq!(copy.get(0).await.unwrap().unwrap(), "a");
    assert_eq!(copy.get(1).await.unwrap().unwrap(), "b");
    net::shutdown(&[&reader, &writer]).await;
}

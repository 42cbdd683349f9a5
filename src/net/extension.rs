//! [`Extension`]: named application messages between peers (Corestore's `extensions`), on a
//! core's authenticated channel or, with no core, on the store channel of a connection.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use iroh::EndpointId;
use n0_future::{Stream, boxed::BoxStream};
use tokio::sync::broadcast::error::RecvError;

use super::{HypercoreProtocol, peer_ids::PeerIds};
use crate::{
    core::Hypercore,
    crypto::CoreKey,
    error::{Error, Result},
    replication::{
        Event,
        engine::{ExtensionTarget, MAX_EXTENSION_NAME, MAX_EXTENSION_PAYLOAD},
    },
};

/// A registered extension, from [`HypercoreProtocol::extension`]: send messages of its name
/// to peers, and [`subscribe`](Self::subscribe) to those peers send.
///
/// Messages are at most [`MAX_EXTENSION_PAYLOAD`] bytes. A peer's messages beyond
/// `EngineConfig::extension_messages_per_second`, too large or of a name we did not register
/// are dropped and counted in its `PeerStats::extensions_dropped`; they never close a channel.
///
/// ```no_run
/// # async fn run(proto: iroh_hypercore::HypercoreProtocol, core: iroh_hypercore::Hypercore)
/// # -> iroh_hypercore::Result<()> {
/// use n0_future::StreamExt;
///
/// let chat = proto.extension("chat").await?;
/// let mut incoming = chat.subscribe();
/// chat.broadcast(&core, b"hello".to_vec()).await?;      // every peer of the core
/// while let Some(msg) = incoming.next().await {
///     println!("{} says {:?}", msg.peer, msg.bytes);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Extension {
    name: String,
    proto: HypercoreProtocol,
}

/// A message of an extension from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionMessage {
    /// The core whose channel carried it; `None` if it was sent to the peer with no core
    /// ([`Extension::send_to_peer`]).
    pub core: Option<CoreKey>,
    /// The peer that sent it.
    pub peer: EndpointId,
    /// The payload.
    pub bytes: Bytes,
}

impl Extension {
    pub(super) fn new(name: String, proto: HypercoreProtocol) -> Result<Self> {
        if name.len() > MAX_EXTENSION_NAME {
            return Err(Error::InvalidArgument("extension name over 64 bytes"));
        }
        Ok(Self { name, proto })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn send_to(&self, target: ExtensionTarget, bytes: Bytes) -> Result<usize> {
        if bytes.len() > MAX_EXTENSION_PAYLOAD {
            return Err(Error::InvalidArgument("extension message over 64 KiB"));
        }
        self.proto
            .send_extension(target, self.name.clone(), bytes)
            .await
    }

    /// Sends `bytes` to `peer` on `core`'s channel. Returns whether a channel for the core
    /// with the peer is open (if not, nothing is sent).
    pub async fn send(
        &self,
        core: &Hypercore,
        peer: EndpointId,
        bytes: impl Into<Bytes>,
    ) -> Result<bool> {
        let target = ExtensionTarget::Core(core.key(), *peer.as_bytes());
        Ok(self.send_to(target, bytes.into()).await? > 0)
    }

    /// Sends `bytes` to every peer with an open channel for `core`; returns to how many.
    pub async fn broadcast(&self, core: &Hypercore, bytes: impl Into<Bytes>) -> Result<usize> {
        self.send_to(ExtensionTarget::Broadcast(core.key()), bytes.into())
            .await
    }

    /// Sends `bytes` to a connected `peer` with no core: on the connection's store channel,
    /// opened if needed (a peer can tell another of a core before they share one). Returns
    /// whether the peer is connected.
    pub async fn send_to_peer(&self, peer: EndpointId, bytes: impl Into<Bytes>) -> Result<bool> {
        let target = ExtensionTarget::Peer(*peer.as_bytes());
        Ok(self.send_to(target, bytes.into()).await? > 0)
    }

    /// The messages of this extension peers send from now on, as a `Stream`. A subscriber
    /// that falls behind (by 256 messages of all extensions) misses the oldest:
    /// [`ExtensionMessages::missed`] counts them.
    pub fn subscribe(&self) -> ExtensionMessages {
        let name = self.name.clone();
        let missed = Arc::new(AtomicU64::new(0));
        let counter = missed.clone();
        let rx = self.proto.subscribe_extensions();
        let stream =
            n0_future::stream::unfold((rx, PeerIds::default()), move |(mut rx, mut ids)| {
                let (name, counter) = (name.clone(), counter.clone());
                async move {
                    loop {
                        match rx.recv().await {
                            Ok(Event::Extension {
                                core,
                                peer,
                                name: n,
                                payload,
                            }) if n == name => {
                                let Some(peer) = ids.get(peer) else {
                                    continue;
                                };
                                let msg = ExtensionMessage {
                                    core,
                                    peer,
                                    bytes: payload,
                                };
                                return Some((msg, (rx, ids)));
                            }
                            Ok(_) => {}
                            Err(RecvError::Lagged(n)) => {
                                counter.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(RecvError::Closed) => return None,
                        }
                    }
                }
            });
        ExtensionMessages {
            stream: Box::pin(stream),
            missed,
        }
    }
}

/// The messages of one extension, from [`Extension::subscribe`].
pub struct ExtensionMessages {
    stream: BoxStream<ExtensionMessage>,
    missed: Arc<AtomicU64>,
}

impl ExtensionMessages {
    /// Messages (of any extension) this subscriber missed because it fell behind.
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for ExtensionMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtensionMessages")
            .field("missed", &self.missed())
            .finish()
    }
}

impl Stream for ExtensionMessages {
    type Item = ExtensionMessage;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

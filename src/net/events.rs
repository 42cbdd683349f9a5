//! Event streams of a [`HypercoreProtocol`](super::HypercoreProtocol): every event of the
//! engine ([`Events`]), or those of one core as its peers come and go and its blocks move
//! ([`ReplicaEvents`]). Both are `Stream`s; a subscriber that falls behind gets a `Lagged(n)`
//! item and goes on with the newest events.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use iroh::EndpointId;
use n0_future::{Stream, boxed::BoxStream};
use tokio::sync::broadcast::{self, error::RecvError};

use super::peer_ids::PeerIds;
use crate::{
    core::{CoreEvent, Hypercore},
    crypto::CoreKey,
    replication::Event,
};

/// Every event of the engine, as a `Stream`: peers coming and going, channels, appends,
/// truncates, downloads, uploads, refusals, back-offs, and [`Event::Lagged`] when this
/// subscriber fell behind.
pub struct Events(BoxStream<Event>);

impl Events {
    pub(super) fn new(rx: broadcast::Receiver<Event>) -> Self {
        Self(Box::pin(n0_future::stream::unfold(
            rx,
            |mut rx| async move {
                let ev = match rx.recv().await {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(n)) => Event::Lagged(n),
                    Err(RecvError::Closed) => return None,
                };
                Some((ev, rx))
            },
        )))
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

impl Stream for Events {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.0.as_mut().poll_next(cx)
    }
}

/// What happens to one replicated core, from [`HypercoreProtocol::events`](super::HypercoreProtocol::events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaEvent {
    /// A channel for the core with this peer opened: both proved the key and synced.
    PeerAdd(EndpointId),
    /// The channel with this peer closed.
    PeerRemove(EndpointId),
    /// The core grew to `length` (a local append or a verified upgrade).
    Append {
        /// New length.
        length: u64,
        /// Fork.
        fork: u64,
    },
    /// The core moved to a new fork at `length`.
    Truncate {
        /// Length after the truncation.
        length: u64,
        /// New fork.
        fork: u64,
    },
    /// A verified block from `peer` was stored.
    Download {
        /// Block index.
        index: u64,
        /// Block size.
        bytes: u64,
        /// The peer that sent it.
        peer: EndpointId,
    },
    /// A block was sent to `peer`.
    Upload {
        /// Block index.
        index: u64,
        /// Block size.
        bytes: u64,
        /// The peer it was sent to.
        peer: EndpointId,
    },
    /// The blob named by block `index` was fetched under the protocol's
    /// [`BlobPolicy`](crate::blobs::BlobPolicy).
    BlobDownloaded {
        /// Index of the block naming the blob.
        index: u64,
        /// The blob's hash.
        hash: iroh_blobs::Hash,
        /// The blob's size in bytes.
        size: u64,
        /// The peer asked last.
        peer: EndpointId,
    },
    /// The last peer of the core went: it has none now, and dials the peers it knows again.
    NoPeers,
    /// The core has no peer and dials the ones it knows again: `attempt` dials so far in this
    /// search (0 when it starts), the next in `next_in`.
    Reconnecting {
        /// Dials so far.
        attempt: u32,
        /// When the next ones go.
        next_in: std::time::Duration,
    },
    /// This subscriber fell behind and missed this many events (of all cores).
    Lagged(u64),
}

impl ReplicaEvent {
    /// The event of `core` that `ev` is, if it is one; peers' ids come through `ids`.
    fn of(core: &CoreKey, ev: Event, ids: &mut PeerIds) -> Option<Self> {
        let mut id = |peer: [u8; 32]| ids.get(peer);
        Some(match ev {
            Event::ChannelOpen { core: c, peer } if c == *core => Self::PeerAdd(id(peer)?),
            Event::ChannelClosed { core: c, peer } if c == *core => Self::PeerRemove(id(peer)?),
            Event::Append {
                core: c,
                length,
                fork,
            } if c == *core => Self::Append { length, fork },
            Event::Truncate {
                core: c,
                length,
                fork,
            } if c == *core => Self::Truncate { length, fork },
            Event::Download {
                core: c,
                index,
                bytes,
                peer,
            } if c == *core => Self::Download {
                index,
                bytes,
                peer: id(peer)?,
            },
            Event::Upload {
                core: c,
                index,
                bytes,
                peer,
            } if c == *core => Self::Upload {
                index,
                bytes,
                peer: id(peer)?,
            },
            Event::BlobDownloaded {
                core: c,
                index,
                hash,
                size,
                peer,
            } if c == *core => Self::BlobDownloaded {
                index,
                hash: iroh_blobs::Hash::from_bytes(hash),
                size,
                peer: id(peer)?,
            },
            Event::NoPeers { core: c } if c == *core => Self::NoPeers,
            Event::Reconnecting {
                core: c,
                attempt,
                next_in,
            } if c == *core => Self::Reconnecting { attempt, next_in },
            Event::Lagged(n) => Self::Lagged(n),
            _ => return None,
        })
    }
}

/// Blocks the core stored since a [`ReplicaEvents`] subscribed whose `Download` event has not
/// come yet, at most this many (the oldest go first: a core written by other means than this
/// protocol stores blocks it tells of no `Download` for).
const MAX_FRESH: usize = 4096;

/// The events of one core, as a `Stream` of [`ReplicaEvent`]. None describes a change older
/// than the core's state when the stream was made: the protocol hears of a stored block after
/// the core's state shows it, so a `Download` is let through only if the core's own commit
/// news, subscribed to first, told of that block since, and an `Append` or `Truncate` only if
/// it moves past the state read once both were subscribed to.
pub struct ReplicaEvents {
    core: CoreKey,
    events: Events,
    /// The core's commit news.
    stored: broadcast::Receiver<CoreEvent>,
    /// Blocks stored since the stream was made, not told of yet.
    fresh: std::collections::BTreeSet<u64>,
    /// The (fork, length) the stream last told of, or found when it was made.
    seen: (u64, u64),
    /// An event to tell right after the `Lagged` that came in its place.
    pending: Option<ReplicaEvent>,
    /// The ids of the peers told of last.
    ids: PeerIds,
}

impl ReplicaEvents {
    pub(super) fn new(core: &Hypercore, rx: broadcast::Receiver<Event>) -> Self {
        let stored = core.news_receiver();
        let events = Events::new(rx);
        let info = core.info();
        Self {
            core: core.key(),
            events,
            stored,
            fresh: Default::default(),
            seen: (info.fork, info.length),
            pending: None,
            ids: PeerIds::default(),
        }
    }

    /// `ev`, unless it describes a change older than what the stream has seen.
    fn admit(&mut self, ev: ReplicaEvent) -> Option<ReplicaEvent> {
        // The core's news of a block is sent before the protocol can hear of it. It is taken
        // in with every event, so that its other news (appends of a sparse follower) never
        // fills the channel while no block arrives.
        loop {
            match self.stored.try_recv() {
                Ok(CoreEvent::Download { index, .. }) => {
                    self.fresh.insert(index);
                    if self.fresh.len() > MAX_FRESH {
                        self.fresh.pop_first();
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    // The lag is told first and the event after it, but a block's: its news
                    // may be among what was missed.
                    if !matches!(ev, ReplicaEvent::Download { .. }) {
                        self.pending = self.admit_change(ev);
                    }
                    return Some(ReplicaEvent::Lagged(n));
                }
                Err(_) => break,
            }
        }
        match ev {
            ReplicaEvent::Download { index, .. } => self.fresh.remove(&index).then_some(ev),
            ev => self.admit_change(ev),
        }
    }

    /// `ev`, not a `Download`, unless it describes a change older than what the stream has
    /// seen.
    fn admit_change(&mut self, ev: ReplicaEvent) -> Option<ReplicaEvent> {
        match ev {
            ReplicaEvent::Append { length, fork } => {
                let newer = (fork, length) > self.seen;
                self.seen = self.seen.max((fork, length));
                newer.then_some(ev)
            }
            ReplicaEvent::Truncate { length, fork } => {
                let newer = fork > self.seen.0;
                if newer {
                    self.seen = (fork, length);
                }
                newer.then_some(ev)
            }
            ev => Some(ev),
        }
    }
}

impl std::fmt::Debug for ReplicaEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplicaEvents")
    }
}

impl Stream for ReplicaEvents {
    type Item = ReplicaEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ReplicaEvent>> {
        if let Some(ev) = self.pending.take() {
            return Poll::Ready(Some(ev));
        }
        loop {
            let ev = match Pin::new(&mut self.events).poll_next(cx) {
                Poll::Ready(Some(ev)) => ev,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            let core = self.core;
            let of = ReplicaEvent::of(&core, ev, &mut self.ids);
            if let Some(ev) = of.and_then(|ev| self.admit(ev)) {
                return Poll::Ready(Some(ev));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use n0_future::StreamExt;

    use super::*;
    use crate::store::Corestore;

    /// When the core's own news lagged, the event that found it out still comes, after the
    /// `Lagged`: only a block's `Download` (whose news may be what was missed) is dropped.
    #[tokio::test]
    async fn the_event_that_finds_a_lag_still_comes_after_it() {
        let store = Corestore::memory().await.unwrap();
        let core = store.get_named("log").await.unwrap();
        let (tx, rx) = broadcast::channel(16);
        let mut events = ReplicaEvents::new(&core, rx);
        // More news of the core than its channel holds, and no event of the protocol meanwhile.
        for i in 0..1_100u32 {
            core.append(i.to_le_bytes().to_vec()).await.unwrap();
        }
        let peer = *iroh::SecretKey::from_bytes(&[5; 32]).public().as_bytes();
        tx.send(Event::ChannelOpen {
            core: core.key(),
            peer,
        })
        .unwrap();
        let first = events.next().await.unwrap();
        assert!(matches!(first, ReplicaEvent::Lagged(_)), "{first:?}");
        let second = events.next().await.unwrap();
        assert!(
            matches!(second, ReplicaEvent::PeerAdd(p) if *p.as_bytes() == peer),
            "{second:?}"
        );
        store.close().await.unwrap();
    }
}

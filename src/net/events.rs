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

/// Endpoint ids of the peers an event stream told of last, decoded once: decoding an id's
/// bytes checks that they are a point of the curve, a square root that costs more than the
/// rest of a block's event (about 12 µs here, once per block and stream before).
#[derive(Debug, Default)]
struct PeerIds {
    /// Most recent first, at most [`PeerIds::MAX`].
    recent: Vec<([u8; 32], EndpointId)>,
}

impl PeerIds {
    /// Ids kept: a core's blocks come from a few peers at a time.
    const MAX: usize = 8;

    /// The id of `peer`, `None` if its bytes are no id.
    fn get(&mut self, peer: [u8; 32]) -> Option<EndpointId> {
        if let Some(i) = self.recent.iter().position(|(bytes, _)| *bytes == peer) {
            let found = self.recent.remove(i);
            self.recent.insert(0, found);
            return Some(found.1);
        }
        let id = EndpointId::from_bytes(&peer).ok()?;
        self.recent.truncate(Self::MAX - 1);
        self.recent.insert(0, (peer, id));
        Some(id)
    }
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

    /// Peers' ids come out right whatever the order, for more peers than are kept decoded,
    /// and bytes that are no id give none (nor are kept as one).
    #[test]
    fn peer_ids_are_decoded_once_and_right() {
        let peers: Vec<[u8; 32]> = (0..PeerIds::MAX as u8 + 3)
            .map(|i| {
                *iroh::SecretKey::from_bytes(&[i + 1; 32])
                    .public()
                    .as_bytes()
            })
            .collect();
        let mut ids = PeerIds::default();
        // Round and round, then back and forth: every lookup, cached or not, is the peer's id.
        let order = (0..3)
            .flat_map(|_| 0..peers.len())
            .chain((0..peers.len()).rev())
            .chain([0, 0, 1, 0]);
        for i in order {
            let id = ids.get(peers[i]).unwrap();
            assert_eq!(*id.as_bytes(), peers[i]);
            assert!(ids.recent.len() <= PeerIds::MAX);
            assert_eq!(ids.recent[0].0, peers[i]);
            // Every kept id is its bytes', each bytes kept once.
            assert!(ids.recent.iter().all(|(bytes, id)| id.as_bytes() == bytes));
            let mut kept: Vec<[u8; 32]> = ids.recent.iter().map(|(bytes, _)| *bytes).collect();
            kept.sort();
            kept.dedup();
            assert_eq!(kept.len(), ids.recent.len());
        }
        assert_eq!(ids.recent.len(), PeerIds::MAX);
        // A peer kept is found, not decoded and added again.
        let before = ids.recent.clone();
        assert!(ids.get(peers[1]).is_some());
        assert_eq!(ids.recent.len(), PeerIds::MAX);
        assert!(before.iter().any(|(bytes, _)| *bytes == peers[1]));
        // A y-coordinate with no point on the curve (2 is not a valid compressed point).
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        assert!(EndpointId::from_bytes(&not_a_point).is_err());
        assert!(ids.get(not_a_point).is_none());
        assert!(ids.recent.iter().all(|(bytes, _)| *bytes != not_a_point));
    }

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

//! The gossip part: a subscription per core topic (subscribed again when it lags), the nodes
//! kept to bootstrap each topic, and broadcasts. Each subscription runs on a task of its own
//! that forwards what arrives; this part owns those tasks and their channel, and the futures
//! of its broadcasts and joins.

use std::collections::HashMap;

use bytes::Bytes;
use iroh::EndpointId;
use iroh_gossip::{
    Gossip, TopicId,
    api::{Event as GossipEvent, GossipSender},
};
use n0_future::{FuturesUnordered, StreamExt, boxed::BoxFuture};
use tokio::{
    sync::mpsc,
    task::{AbortHandle, JoinSet},
};

use crate::crypto::CoreKey;

/// What a topic's task forwards.
enum Forward {
    /// Subscribed (again): broadcasts go through this sender.
    Ready(CoreKey, GossipSender),
    /// A message arrived on the topic.
    Message(CoreKey, Bytes),
    /// The subscription lagged (messages were lost).
    Lagged(CoreKey),
    /// A node joined our neighbours on the topic (it holds the key).
    Neighbor(CoreKey, EndpointId),
}

/// What arrived on a core's topic, for the engine.
pub(super) enum Heard {
    /// A message.
    Message(CoreKey, Bytes),
    /// Messages were lost.
    Lagged(CoreKey),
    /// A neighbour on the topic: only holders of the key can join it.
    Neighbor(CoreKey, EndpointId),
}

/// The gossip part; see the module docs.
pub(super) struct GossipTopics {
    gossip: Option<Gossip>,
    me: EndpointId,
    /// The sender of each topic subscribed.
    senders: HashMap<CoreKey, GossipSender>,
    /// Nodes to add to each topic once it is subscribed.
    bootstrap: HashMap<CoreKey, Vec<EndpointId>>,
    /// The task of each topic joined.
    tasks: HashMap<CoreKey, AbortHandle>,
    forwarders: JoinSet<()>,
    tx: mpsc::Sender<Forward>,
    rx: mpsc::Receiver<Forward>,
    /// Broadcasts and joins of nodes under way.
    io: FuturesUnordered<BoxFuture<()>>,
}

impl GossipTopics {
    /// No topic joined yet; `gossip` is `None` for a node without gossip.
    pub(super) fn new(gossip: Option<Gossip>, me: EndpointId) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        Self {
            gossip,
            me,
            senders: HashMap::new(),
            bootstrap: HashMap::new(),
            tasks: HashMap::new(),
            forwarders: JoinSet::new(),
            tx,
            rx,
            io: FuturesUnordered::new(),
        }
    }

    /// Subscribes to a core's topic (with the nodes kept to bootstrap it); what arrives comes
    /// out of [`next`](Self::next), and a lagged subscription is renewed.
    pub(super) fn join(&mut self, key: CoreKey, topic: [u8; 32]) {
        let Some(gossip) = self.gossip.clone() else {
            return;
        };
        let tx = self.tx.clone();
        let mut bootstrap = self.bootstrap.remove(&key).unwrap_or_default();
        let task = self.forwarders.spawn(async move {
            loop {
                let topic = match gossip
                    .subscribe(TopicId::from_bytes(topic), std::mem::take(&mut bootstrap))
                    .await
                {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!("gossip subscribe failed: {e}");
                        return;
                    }
                };
                let (sender, mut receiver) = topic.split();
                if tx.send(Forward::Ready(key, sender)).await.is_err() {
                    return;
                }
                loop {
                    let fwd = match receiver.next().await {
                        Some(Ok(GossipEvent::Received(m))) => Forward::Message(key, m.content),
                        Some(Ok(GossipEvent::Lagged)) => Forward::Lagged(key),
                        Some(Ok(GossipEvent::NeighborUp(id))) => Forward::Neighbor(key, id),
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => return,
                    };
                    let lagged = matches!(fwd, Forward::Lagged(_));
                    if tx.send(fwd).await.is_err() {
                        return;
                    }
                    if lagged {
                        // A lagged subscription is closed: subscribe again.
                        break;
                    }
                }
            }
        });
        if let Some(old) = self.tasks.insert(key, task) {
            old.abort();
        }
    }

    /// Leaves a core's topic: its subscription ends (iroh-gossip leaves a topic once its last
    /// sender and receiver are gone) and its bootstrap nodes are forgotten.
    pub(super) fn leave(&mut self, key: &CoreKey) {
        if let Some(task) = self.tasks.remove(key) {
            task.abort();
        }
        self.senders.remove(key);
        self.bootstrap.remove(key);
    }

    /// Adds nodes to a core's topic, or keeps them to bootstrap it once joined.
    pub(super) fn add_nodes(&mut self, key: CoreKey, ids: Vec<EndpointId>) {
        let ids: Vec<EndpointId> = ids.into_iter().filter(|i| *i != self.me).collect();
        match self.senders.get(&key) {
            Some(sender) => {
                let sender = sender.clone();
                self.io.push(Box::pin(async move {
                    let _ = sender.join_peers(ids).await;
                }));
            }
            None => self.bootstrap.entry(key).or_default().extend(ids),
        }
    }

    /// Broadcasts an encoded gossip op on a core's topic.
    pub(super) fn broadcast(&mut self, key: &CoreKey, bytes: Bytes) {
        if let Some(sender) = self.senders.get(key).cloned() {
            self.io.push(Box::pin(async move {
                if let Err(e) = sender.broadcast(bytes).await {
                    tracing::debug!("gossip broadcast failed: {e}");
                }
            }));
        }
    }

    /// A core's topic is subscribed: the nodes kept to bootstrap it are added.
    fn ready(&mut self, key: CoreKey, sender: GossipSender) {
        if !self.tasks.contains_key(&key) {
            return; // left meanwhile
        }
        if let Some(ids) = self.bootstrap.remove(&key) {
            let s = sender.clone();
            self.io.push(Box::pin(async move {
                let _ = s.join_peers(ids).await;
            }));
        }
        self.senders.insert(key, sender);
    }

    /// The next message or lag of a topic, driving broadcasts and joins meanwhile.
    /// Cancel-safe.
    pub(super) async fn next(&mut self) -> Heard {
        loop {
            tokio::select! {
                Some(fwd) = self.rx.recv() => match fwd {
                    Forward::Ready(key, sender) => self.ready(key, sender),
                    Forward::Message(key, bytes) => return Heard::Message(key, bytes),
                    Forward::Lagged(key) => return Heard::Lagged(key),
                    Forward::Neighbor(key, id) => return Heard::Neighbor(key, id),
                },
                Some(()) = self.io.next(), if !self.io.is_empty() => {}
                else => std::future::pending::<()>().await,
            }
        }
    }

    /// Stops every subscription (the node shuts down).
    pub(super) fn shutdown(&mut self) {
        self.forwarders.abort_all();
    }
}

//! Gossip: a subscription per core topic (subscribed again when it lags), its bootstrap
//! nodes, and broadcasts.

use bytes::Bytes;
use iroh::EndpointId;
use iroh_gossip::{
    TopicId,
    api::{Event as GossipEvent, GossipSender},
};
use n0_future::StreamExt;

use super::{Driver, Forward, Io};
use crate::crypto::CoreKey;

impl Driver {
    /// Subscribes to a core's topic (with the nodes kept to bootstrap it), and forwards
    /// what arrives to the engine; a lagged subscription is renewed.
    pub(super) fn join_gossip(&mut self, key: CoreKey, topic: [u8; 32]) {
        let Some(gossip) = self.gossip.clone() else {
            return;
        };
        let tx = self.fwd_tx.clone();
        let bootstrap = self.gossip_bootstrap.remove(&key).unwrap_or_default();
        let task = self.forwarders.spawn(async move {
            let mut bootstrap = bootstrap;
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
                if tx.send(Forward::GossipReady(key, sender)).await.is_err() {
                    return;
                }
                loop {
                    match receiver.next().await {
                        Some(Ok(GossipEvent::Received(m))) => {
                            if tx.send(Forward::Gossip(key, m.content)).await.is_err() {
                                return;
                            }
                        }
                        Some(Ok(GossipEvent::Lagged)) => {
                            if tx.send(Forward::GossipLagged(key)).await.is_err() {
                                return;
                            }
                            // A lagged subscription is closed: subscribe again.
                            break;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return,
                    }
                }
            }
        });
        if let Some(old) = self.gossip_tasks.insert(key, task) {
            old.abort();
        }
    }

    /// Leaves a core's topic: its subscription ends (iroh-gossip leaves a topic once its last
    /// sender and receiver are gone) and its bootstrap nodes are forgotten.
    pub(super) fn leave_gossip(&mut self, key: CoreKey) {
        if let Some(task) = self.gossip_tasks.remove(&key) {
            task.abort();
        }
        self.gossip_senders.remove(&key);
        self.gossip_bootstrap.remove(&key);
    }

    /// Adds nodes to a core's gossip topic, or keeps them to bootstrap it once joined.
    pub(super) fn join_gossip_peers(&mut self, key: CoreKey, ids: Vec<EndpointId>) {
        let ids: Vec<EndpointId> = ids
            .into_iter()
            .filter(|i| *i != self.endpoint.id())
            .collect();
        match self.gossip_senders.get(&key) {
            Some(sender) => {
                let sender = sender.clone();
                self.io.push(Box::pin(async move {
                    let _ = sender.join_peers(ids).await;
                    Io::Done
                }));
            }
            None => self.gossip_bootstrap.entry(key).or_default().extend(ids),
        }
    }

    /// Broadcasts an encoded gossip op on a core's topic.
    pub(super) fn broadcast(&mut self, key: CoreKey, bytes: Bytes) {
        if let Some(sender) = self.gossip_senders.get(&key).cloned() {
            self.io.push(Box::pin(async move {
                if let Err(e) = sender.broadcast(bytes).await {
                    tracing::debug!("gossip broadcast failed: {e}");
                }
                Io::Done
            }));
        }
    }

    /// A core's topic is joined: nodes kept to bootstrap it are added.
    pub(super) fn on_gossip_ready(&mut self, key: CoreKey, sender: GossipSender) {
        if !self.gossip_tasks.contains_key(&key) {
            return; // left meanwhile
        }
        if let Some(ids) = self.gossip_bootstrap.remove(&key) {
            let s = sender.clone();
            self.io.push(Box::pin(async move {
                let _ = s.join_peers(ids).await;
                Io::Done
            }));
        }
        self.gossip_senders.insert(key, sender);
    }
}

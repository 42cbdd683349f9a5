//! The extensions part (Corestore's `extensions`): named messages between peers, on a core's
//! authenticated channel or on the store channel, a channel per connection that belongs to no
//! core (a peer can tell another of cores it has before they share one).
//!
//! Only names the application registered are delivered ([`Event::Extension`]); others are
//! dropped and counted, as are payloads over [`MAX_EXTENSION_PAYLOAD`] and messages beyond a
//! peer's rate ([`EngineConfig::extension_messages_per_second`](super::EngineConfig)). None of
//! it closes a channel. Messages for a store channel that waits for the peer's `Accept` are
//! queued here, within a bound.

use std::collections::{BTreeMap, BTreeSet};

use super::allowance::Allowance;
use bytes::Bytes;

use super::{ChannelId, Event, PeerId, cx::Cx};
use crate::{
    crypto::{CoreKey, DiscoveryKey, discovery_key},
    replication::wire::Message,
};

/// Largest extension payload sent or delivered.
pub const MAX_EXTENSION_PAYLOAD: usize = 64 * 1024;

/// Longest extension name.
pub const MAX_EXTENSION_NAME: usize = 64;

/// Messages queued for a store channel that waits for the peer's `Accept`; more are dropped.
const MAX_QUEUED_ON_STORE_CHANNEL: usize = 64;

/// Payload bytes queued for a store channel that waits for the peer's `Accept`.
const MAX_QUEUED_BYTES_ON_STORE_CHANNEL: usize = 1024 * 1024;

/// Largest frame read on a store channel: one extension message of the largest payload and
/// name, with room for its encoding.
pub const MAX_STORE_CHANNEL_FRAME: usize = MAX_EXTENSION_PAYLOAD + MAX_EXTENSION_NAME + 64;

/// The key the store channel's handshake proves: public (anyone may open a store channel; the
/// capabilities still bind both endpoint ids), a hash of a domain tag, so that no core has it
/// by chance; a core with this key is not replicated.
pub static STORE_CHANNEL_KEY: std::sync::LazyLock<CoreKey> = std::sync::LazyLock::new(|| {
    crate::crypto::hash::hash_parts(&[b"iroh-hypercore store channel"])
});

/// The discovery key of the store channel.
pub fn store_channel_discovery_key() -> DiscoveryKey {
    discovery_key(&STORE_CHANNEL_KEY)
}

/// Where an extension message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionTarget {
    /// On `core`'s channel with `peer`.
    Core(CoreKey, PeerId),
    /// On every open channel of `core`.
    Broadcast(CoreKey),
    /// On the store channel with `peer` (opened if there is none).
    Peer(PeerId),
}

/// The extensions part; see the module docs.
#[derive(Debug, Default)]
pub(super) struct Extensions {
    /// Names the application registered.
    names: BTreeSet<String>,
    /// What extension messages each peer may still send us.
    allowances: BTreeMap<PeerId, Allowance>,
    /// Messages waiting for the store channel to each peer to open.
    store_queues: BTreeMap<PeerId, Vec<Message>>,
}

impl Extensions {
    /// Delivers extension messages named `name` from now on.
    pub(super) fn register(&mut self, name: &str) {
        self.names.insert(name.to_string());
    }

    /// `peer` disconnected: its allowance and queue go.
    pub(super) fn remove_peer(&mut self, peer: &PeerId) {
        self.allowances.remove(peer);
        self.store_queues.remove(peer);
    }

    /// The message to send for `name` and `payload`, if both are within their limits.
    pub(super) fn message(name: &str, payload: &Bytes) -> Option<Message> {
        (name.len() <= MAX_EXTENSION_NAME && payload.len() <= MAX_EXTENSION_PAYLOAD).then(|| {
            Message::Extension {
                name: name.to_string(),
                payload: payload.to_vec(),
            }
        })
    }

    /// Queues `msg` for the store channel to `peer`, which waits for the peer's `Accept`;
    /// false if the queue is full.
    pub(super) fn queue_for_store_channel(&mut self, peer: PeerId, msg: Message) -> bool {
        let queue = self.store_queues.entry(peer).or_default();
        let bytes: usize = queue.iter().map(extension_bytes).sum();
        if queue.len() >= MAX_QUEUED_ON_STORE_CHANNEL
            || bytes + extension_bytes(&msg) > MAX_QUEUED_BYTES_ON_STORE_CHANNEL
        {
            return false;
        }
        queue.push(msg);
        true
    }

    /// The store channel with `peer` is open: what waited for it is sent.
    pub(super) fn store_channel_open(&mut self, peer: PeerId, channel: ChannelId, cx: &mut Cx) {
        for msg in self.store_queues.remove(&peer).unwrap_or_default() {
            cx.send(peer, channel, msg);
        }
    }

    /// An extension message from `peer` (on `core`'s channel, or the store channel):
    /// delivered if its name is registered, it is within the size limit and the peer's rate.
    pub(super) fn on_message(
        &mut self,
        peer: PeerId,
        core: Option<CoreKey>,
        name: String,
        payload: Vec<u8>,
        cx: &mut Cx,
    ) {
        if !cx.peers.contains(&peer) {
            return;
        }
        let per_second = cx.cfg.extension_messages_per_second;
        let allowance = self.allowances.entry(peer).or_default();
        if !self.names.contains(&name)
            || payload.len() > MAX_EXTENSION_PAYLOAD
            || !allowance.take(per_second, cx.now)
        {
            cx.peers.count(&peer, |s| s.extensions_dropped += 1);
            return;
        }
        cx.peers.count(&peer, |s| s.extensions_received += 1);
        cx.emit(Event::Extension {
            core,
            peer,
            name,
            payload: Bytes::from(payload),
        });
    }
}

/// The payload and name bytes of a queued extension message.
fn extension_bytes(msg: &Message) -> usize {
    match msg {
        Message::Extension { name, payload } => name.len() + payload.len(),
        _ => 0,
    }
}

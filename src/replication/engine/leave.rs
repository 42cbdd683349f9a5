//! Leaving a core: the engine stops replicating it and forgets everything of it, telling the
//! peers with a `Close` on each of its channels.

use std::time::Instant;

use super::{ChannelId, Engine, PeerId};
use crate::crypto::CoreKey;

/// The reason sent in the `Close` of each channel of a core the node leaves.
pub const LEAVE_REASON: &str = "left the core";

impl Engine {
    /// Stops replicating `key` (a turn of its own): each of its channels is closed with a
    /// `Close` telling the peer, and its queued fetches, upgrade, proofs waiting to be
    /// applied and announcement are dropped; the driver is asked to leave its gossip topic
    /// ([`Output::LeaveGossip`](super::Output::LeaveGossip)). Storage tasks still running for
    /// it finish and are ignored. Adding the core again starts afresh. Returns whether the core
    /// was replicated.
    pub fn remove_core(&mut self, key: CoreKey, now: Instant) -> bool {
        let Some(replica) = self.cores.remove(&key) else {
            return false;
        };
        self.by_discovery_key.remove(&replica.discovery_key);
        let channels: Vec<(ChannelId, PeerId)> = self
            .channels
            .of_core(&key)
            .map(|(id, c)| (id, c.peer))
            .collect();
        for (id, peer) in channels {
            self.close_channel(peer, id, LEAVE_REASON);
        }
        self.fetch.remove_core(&key);
        self.upgrades.forget(&key);
        self.announcer.forget(&key);
        self.outputs.push_back(super::Output::LeaveGossip(key));
        self.schedule(now);
        true
    }
}

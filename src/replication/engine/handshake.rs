//! The handshake in which both sides of a channel prove they know the core's key: `Open` with
//! the opener's capability, `Accept` with the acceptor's, each before a deadline. Channels
//! for cores we do not replicate are parked (see the `parked` module) until we add the core
//! or their deadline passes; simultaneous opens keep the channel of the lower endpoint id.

use std::time::Instant;

use super::{ChannelId, Engine, Event, Output, PeerId, parked::Parked};
use crate::{
    crypto::{
        DiscoveryKey,
        capability::{Role, capability, check_capability},
    },
    replication::wire::Message,
};

impl Engine {
    /// A peer opened a channel: it is accepted (with our `Accept`, then our `Sync`) if the
    /// opener's capability checks out, parked if we do not know the core, refused otherwise.
    pub(super) fn on_open(
        &mut self,
        peer: PeerId,
        id: ChannelId,
        dk: DiscoveryKey,
        cap: [u8; 32],
        now: Instant,
    ) {
        if dk == super::store_channel_discovery_key() {
            self.on_store_open(peer, id, cap);
            return;
        }
        let Some(core) = self.by_discovery_key.get(&dk).copied() else {
            // Perhaps we are about to replicate it: keep the channel waiting (refusing it
            // would race with our own open of the same core).
            self.park(peer, id, dk, cap, now);
            return;
        };
        if !check_capability(&core, Role::Opener, &peer, &self.me, &cap) {
            self.count_dropped(peer);
            self.refuse(peer, id, "invalid capability");
            return;
        }
        if let Some(existing) = self.peers[&peer].channels.get(&core).copied() {
            // Both opened a channel: keep the one opened by the lower endpoint id.
            let ours = self.channels.get(&existing).is_some_and(|c| c.opened_by_me);
            if ours && peer < self.me {
                self.outputs.push_back(Output::CloseChannel(peer, existing));
                self.drop_channel(existing);
            } else {
                self.outputs.push_back(Output::Send(
                    peer,
                    id,
                    Message::Close {
                        reason: "duplicate channel".into(),
                    },
                ));
                self.outputs.push_back(Output::CloseChannel(peer, id));
                return;
            }
        }
        self.add_channel(id, peer, core, false, None);
        let accept = Message::Accept {
            capability: capability(&core, Role::Acceptor, &peer, &self.me),
        };
        self.send(peer, id, accept);
        if let Some(info) = self.sync_info(&core, false) {
            self.send(peer, id, Message::Sync(info));
        }
    }

    /// The peer accepted a channel we opened: if its capability checks out, the channel is
    /// authenticated and our state follows.
    pub(super) fn on_accept(&mut self, peer: PeerId, id: ChannelId, cap: [u8; 32]) {
        let Some(c) = self.channels.get_mut(&id) else {
            return;
        };
        let core = c.core;
        if !check_capability(&core, Role::Acceptor, &self.me, &peer, &cap) {
            self.count_dropped(peer);
            self.emit(Event::ChannelRefused {
                peer,
                reason: "invalid capability in Accept".into(),
            });
            self.close_channel(peer, id, "invalid capability");
            return;
        }
        c.authenticated = true;
        if let Some(t) = c.handshake_deadline.take() {
            self.handshakes.remove(t, id);
        }
        self.handshake_ended(peer);
        if core == *super::STORE_CHANNEL_KEY {
            self.flush_store_queue(peer, id);
            return;
        }
        if let Some(info) = self.sync_info(&core, false) {
            self.send(peer, id, Message::Sync(info));
        }
    }

    /// Keeps a channel for a core we do not know waiting, within the per-peer and total caps.
    fn park(&mut self, peer: PeerId, id: ChannelId, dk: DiscoveryKey, cap: [u8; 32], now: Instant) {
        let room = self.parked.has_room(
            &peer,
            &dk,
            self.cfg.max_parked_per_peer,
            self.cfg.max_parked,
        );
        if !room {
            self.count_refused(peer);
            self.refuse(peer, id, "unknown core");
            return;
        }
        let deadline = now + self.cfg.handshake_timeout;
        let first_for_core = self.parked.of_core(&dk).is_empty();
        self.parked.insert(
            id,
            Parked {
                peer,
                discovery_key: dk,
                capability: cap,
                deadline,
            },
        );
        self.handshakes.insert(deadline, id);
        if first_for_core {
            self.outputs.push_back(Output::FindCore(dk));
        }
    }

    /// Takes channel `id` out of the parked ones, with its deadline, if it is one.
    pub(super) fn unpark(&mut self, id: ChannelId) -> Option<Parked> {
        let p = self.parked.remove(id)?;
        self.handshakes.remove(p.deadline, id);
        Some(p)
    }

    /// Closes the channels whose handshake did not finish in time: ours without the peer's
    /// `Accept`, and parked ones for a core we did not add.
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        while let Some((_, id)) = self.handshakes.pop_due(now) {
            if let Some(p) = self.parked.remove(id) {
                self.refuse(p.peer, id, "unknown core");
            } else if let Some(peer) = self.channels.get(&id).map(|c| c.peer) {
                self.count_dropped(peer);
                self.close_channel(peer, id, "no proof of the key in time");
            }
        }
    }

    /// Refuses a channel: tells the peer why and closes the stream.
    pub(super) fn refuse(&mut self, peer: PeerId, id: ChannelId, reason: &str) {
        self.emit(Event::ChannelRefused {
            peer,
            reason: reason.to_string(),
        });
        self.outputs.push_back(Output::Send(
            peer,
            id,
            Message::Close {
                reason: reason.to_string(),
            },
        ));
        self.outputs.push_back(Output::CloseChannel(peer, id));
    }
}

//! Peers: the connections the driver reports, each with its channels (one per core) and its
//! counters. Connecting opens channels for our cores; disconnecting forgets every channel,
//! parked channel, serve queue, fetch-queue state and upgrade of the peer.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use super::{ChannelId, Engine, Event, PeerId, PeerStats};
use crate::crypto::CoreKey;

/// A connected peer.
#[derive(Debug, Default)]
pub(super) struct Peer {
    /// Its channel of each core.
    pub(super) channels: BTreeMap<CoreKey, ChannelId>,
    /// Its counters (but `channels` and `backlog_bytes`, filled in when asked).
    pub(super) stats: PeerStats,
    /// Failed after its last back-off: asked for nothing more while this connection lasts.
    pub(super) dropped: bool,
    /// When we open channels for the cores it has not opened (we are the higher id).
    pub(super) open_rest_at: Option<Instant>,
    /// Channels we opened to it that wait for its `Accept`.
    pub(super) opening: usize,
    /// Cores waiting for room among `opening` to open a channel to it.
    pub(super) to_open: BTreeSet<CoreKey>,
    /// Extension messages waiting for our store channel to it to open.
    pub(super) store_queue: Vec<crate::replication::wire::Message>,
    /// Cores whose channel with it closed idle: opened again when they have something new.
    pub(super) idle_closed: BTreeSet<CoreKey>,
    /// Where the next scan for an idle channel starts.
    pub(super) idle_cursor: CoreKey,
    /// What extension messages it may still send us.
    pub(super) extension_allowance: super::extensions::ExtensionAllowance,
}

impl Engine {
    pub(super) fn on_connected(&mut self, peer: PeerId, now: Instant) {
        if self.peers.contains_key(&peer) {
            return;
        }
        self.peers.insert(
            peer,
            Peer {
                stats: PeerStats {
                    peer,
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        self.server.add_peer(peer);
        self.emit(Event::PeerAdd(peer));
        // Only the lower id opens channels for everything it has; the other side adopts the
        // ones it replicates (see `parked`) and opens channels only for cores it adds later.
        // This avoids opening every channel twice.
        if self.me < peer || self.cfg.open_delay.is_zero() {
            self.open_all_channels(peer, now);
        } else {
            // The lower id opens its cores now; ours that it has not opened (perhaps it does
            // not replicate them but its store holds them) are opened a little later.
            let at = now + self.cfg.open_delay;
            if let Some(p) = self.peers.get_mut(&peer) {
                p.open_rest_at = Some(at);
            }
            self.open_rest.insert(at, peer);
        }
    }

    /// Opens a channel to `peer` for every core we replicate that has none with it (not for
    /// cores only served to the peers that asked).
    fn open_all_channels(&mut self, peer: PeerId, now: Instant) {
        let cores: Vec<CoreKey> = self
            .cores
            .iter()
            .filter(|(_, r)| !r.served_only)
            .map(|(k, _)| *k)
            .collect();
        for core in cores {
            self.open_channel(peer, core, now);
        }
    }

    /// Opens the channels the lower id of each connection due at `now` did not open.
    pub(super) fn open_rest_due(&mut self, now: Instant) {
        while let Some((_, peer)) = self.open_rest.pop_due(now) {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.open_rest_at = None;
                self.open_all_channels(peer, now);
            }
        }
    }

    pub(super) fn on_disconnected(&mut self, peer: PeerId) {
        let Some(p) = self.peers.remove(&peer) else {
            return;
        };
        self.server.remove_peer(&peer);
        self.open_next.remove(&peer);
        self.room_wanted.remove(&peer);
        if let Some(at) = p.open_rest_at {
            self.open_rest.remove(at, peer);
        }
        for ch in p.channels.values() {
            let Some(c) = self.channels.remove(ch) else {
                continue;
            };
            if let Some(t) = c.handshake_deadline {
                self.handshakes.remove(t, *ch);
            }
            self.update_answered(&c.core, *ch);
            if c.remote.is_some() {
                self.emit(Event::ChannelClosed { core: c.core, peer });
            }
        }
        for ch in self.parked.of_peer(&peer) {
            self.unpark(ch);
        }
        self.fetch.remove_peer(&peer);
        for core in self.upgrades.of_peer(&peer) {
            self.upgrades.take(&core);
            self.upgrades.retry(core);
        }
        self.emit(Event::PeerRemove(peer));
    }

    /// Counters of every connected peer, in id order.
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        self.peers
            .iter()
            .map(|(id, p)| PeerStats {
                peer: *id,
                channels: p.channels.len(),
                backlog_bytes: self.server.backlog(id),
                ..p.stats.clone()
            })
            .collect()
    }

    /// Whether `peer` may be asked for data at `now`: not backed off, not dropped.
    pub(super) fn may_ask(&self, peer: &PeerId, now: Instant) -> bool {
        !self.fetch.is_backed_off(peer, now) && self.peers.get(peer).is_some_and(|p| !p.dropped)
    }

    /// Counts input from `peer` that broke the protocol and was dropped.
    pub(super) fn count_dropped(&mut self, peer: PeerId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.dropped += 1;
        }
    }

    /// Counts a request or channel of `peer` refused because it asked for too much; returns
    /// the peer's count so far.
    pub(super) fn count_refused(&mut self, peer: PeerId) -> u64 {
        self.peers.get_mut(&peer).map_or(0, |p| {
            p.stats.refused += 1;
            p.stats.refused
        })
    }

    /// A block was sent to `peer`: counted and reported.
    pub(super) fn count_upload(&mut self, core: CoreKey, peer: PeerId, index: u64, bytes: u64) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.blocks_up += 1;
            p.stats.bytes_up += bytes;
        }
        self.emit(Event::Upload {
            core,
            index,
            bytes,
            peer,
        });
    }

    /// A verified block from `peer` was stored: counted, and the peer's failures forgiven.
    /// A back-off that ends so has no timer left to fire: the upgrades that waited for a
    /// back-off's end are asked at the end of this turn.
    pub(super) fn count_download(&mut self, core: CoreKey, peer: PeerId, index: u64, bytes: u64) {
        if self.fetch.on_verified(&peer) {
            self.upgrades.backoff_ended();
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.blocks_down += 1;
            p.stats.bytes_down += bytes;
        }
        self.emit(Event::Download {
            core,
            index,
            bytes,
            peer,
        });
    }

    /// Records bad data from `peer` and backs it off.
    /// A peer that left is not penalized: the fetch queue keeps state only for connected ones.
    pub(super) fn blame(&mut self, core: CoreKey, peer: PeerId, reason: String, now: Instant) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.invalid += 1;
            self.fetch.penalize(peer, now);
        }
        self.emit(Event::Invalid { core, peer, reason });
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{
        super::{
            EngineConfig, Input, Mode, Output,
            testing::{CORE, local, outputs},
        },
        *,
    };

    /// With an open delay, the higher id opens the channels the lower did not once it passes
    /// (a deadline of its own); with none, both open at once.
    #[test]
    fn the_higher_id_opens_the_rest_after_the_open_delay() {
        let now = Instant::now();
        let delay = Duration::from_millis(100);
        let cfg = EngineConfig {
            open_delay: delay,
            ..Default::default()
        };
        let (me, lower) = ([9; 32], [1; 32]);
        let mut engine = Engine::new(me, cfg);
        engine.add_core(CORE, local(1, true), Mode::Full, now);
        outputs(&mut engine);
        engine.handle(Input::PeerConnected(lower), now);
        let opened = |out: &[Output]| out.iter().any(|o| matches!(o, Output::OpenChannel(..)));
        assert!(!opened(&outputs(&mut engine)));
        assert_eq!(engine.poll_timeout(), Some(now + delay));
        engine.check_timers().unwrap();
        engine.handle_timeout(now + delay);
        assert!(opened(&outputs(&mut engine)));
        assert_eq!(engine.poll_timeout().filter(|t| *t <= now + delay), None);
        engine.check_timers().unwrap();

        let mut engine = Engine::new(me, EngineConfig::default());
        engine.add_core(CORE, local(1, true), Mode::Full, now);
        engine.handle(Input::PeerConnected(lower), now);
        assert!(opened(&outputs(&mut engine)), "no delay by default");
    }
}

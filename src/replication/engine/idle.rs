//! Channels under pressure: each peer's channels are capped
//! ([`EngineConfig::max_channels_per_peer`](super::EngineConfig), under QUIC's stream limit).
//! While cores wait for room with a peer at the cap, its idle channels (both sides hold the
//! same whole log, nothing is asked or queued) close with a `Close` saying so, a few per turn;
//! a core whose channel closed idle reopens it when either side has something new.

use std::time::Instant;

use super::{ChannelId, Engine, Mode, PeerId};
use crate::crypto::CoreKey;

/// The reason in the `Close` of a channel closed because it was idle.
pub const IDLE_REASON: &str = "idle";

/// Channels of one peer looked at per turn for one to close.
const IDLE_SCAN: usize = 64;

/// While cores wait for room, the time after which idle channels are looked for again when no
/// message came meanwhile.
pub(super) const ROOM_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

impl Engine {
    /// Whether channel `id` carries nothing and would carry nothing if kept: both sides hold
    /// the same whole log (or a sparse one with nothing wanted), nothing is asked either way.
    pub(super) fn is_idle(&self, id: ChannelId) -> bool {
        let Some(c) = self.channels.get(&id) else {
            return false;
        };
        let (Some(remote), Some(r)) = (c.remote, self.cores.get(&c.core)) else {
            return false;
        };
        let local = r.local;
        let ours_complete =
            local.contiguous >= local.length || (r.mode == Mode::Sparse && r.wanted.is_empty());
        let theirs_complete = remote.contiguous >= remote.length || !remote.downloading;
        c.authenticated
            && c.requests.is_empty()
            && !c.pushing
            && remote.fork == local.fork
            && remote.length == local.length
            && ours_complete
            && theirs_complete
            && !self.server.has_queued(&c.peer, id)
            && self.upgrades.get(&c.core).is_none_or(|u| u.channel != id)
            && !self
                .updates
                .get(&c.core)
                .is_some_and(|u| u.waiting.contains(&id))
            && !self.serving_on(id)
    }

    /// Whether a storage task is reading an answer for channel `id`.
    fn serving_on(&self, id: ChannelId) -> bool {
        self.tasks.values().any(|t| match t {
            super::TaskCtx::Serve { channel, .. }
            | super::TaskCtx::ServeRun { channel, .. }
            | super::TaskCtx::Push { channel, .. } => *channel == id,
            _ => false,
        })
    }

    /// Closes idle channels of the peers whose cores wait for room, a few per turn each.
    pub(super) fn make_room(&mut self) {
        let waiting: Vec<PeerId> = self.room_wanted.iter().copied().collect();
        for peer in waiting {
            let Some(p) = self.peers.get(&peer) else {
                self.room_wanted.remove(&peer);
                continue;
            };
            if p.to_open.is_empty() {
                self.room_wanted.remove(&peer);
                continue;
            }
            if p.channels.len() < self.cfg.max_channels_per_peer {
                self.open_next.insert(peer);
                continue;
            }
            // From where the last scan stopped, round the peer's cores.
            let from = p.idle_cursor;
            let candidates: Vec<(CoreKey, ChannelId)> = p
                .channels
                .range(from..)
                .chain(p.channels.range(..from))
                .take(IDLE_SCAN)
                .map(|(k, ch)| (*k, *ch))
                .collect();
            let mut closed = None;
            let mut last = from;
            for (core, ch) in candidates {
                last = core;
                if self.is_idle(ch) {
                    closed = Some((core, ch));
                    break;
                }
            }
            if let Some(p) = self.peers.get_mut(&peer) {
                p.idle_cursor = next_key(last);
            }
            if let Some((core, ch)) = closed {
                self.close_channel(peer, ch, IDLE_REASON);
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.idle_closed.insert(core);
                }
                self.open_next.insert(peer);
            }
        }
    }

    /// `core` has something new (a local change, a wanted block): its channels that closed
    /// idle open again.
    pub(super) fn reopen_idle(&mut self, core: CoreKey, now: Instant) {
        let peers: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.idle_closed.contains(&core))
            .map(|(id, _)| *id)
            .collect();
        for peer in peers {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.idle_closed.remove(&core);
            }
            self.open_channel(peer, core, now);
        }
    }
}

/// The key after `key` in byte order (wrapping to zero after the last).
fn next_key(mut key: CoreKey) -> CoreKey {
    for b in key.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            break;
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::{
        super::{
            EngineConfig, Input, LocalInfo, Output,
            testing::{PEER, local, outputs, sync},
        },
        *,
    };
    use crate::{
        crypto::capability::{Role, capability},
        replication::wire::Message,
    };

    fn opened(out: &[Output]) -> Vec<(ChannelId, CoreKey)> {
        out.iter()
            .filter_map(|o| match o {
                Output::OpenChannel(_, ch, Message::Open { discovery_key, .. }) => {
                    Some((*ch, *discovery_key))
                }
                _ => None,
            })
            .map(|(ch, dk)| {
                let core = [[3; 32], [4; 32], [5; 32]]
                    .into_iter()
                    .find(|k| crate::crypto::discovery_key(k) == dk)
                    .unwrap();
                (ch, core)
            })
            .collect()
    }

    /// At the channel cap, a core waits; once an open channel is idle it closes (telling
    /// the peer why) and the waiting core gets its channel; the core closed idle opens
    /// again when it has something new.
    #[test]
    fn idle_channels_make_room_and_reopen_on_change() {
        let now = Instant::now();
        let me = [1; 32];
        let cfg = EngineConfig {
            max_channels_per_peer: 2,
            ..Default::default()
        };
        let mut engine = Engine::new(me, cfg);
        let cores = [[3; 32], [4; 32], [5; 32]];
        for core in cores {
            engine.add_core(core, local(5, true), Mode::Full, now);
        }
        outputs(&mut engine);
        engine.handle(Input::PeerConnected(PEER), now);
        let first = opened(&outputs(&mut engine));
        assert_eq!(first.len(), 2, "two channels at the cap");
        // Both open and idle: the peer holds the same whole log.
        for (ch, core) in &first {
            let accept = Message::Accept {
                capability: capability(core, Role::Acceptor, &me, &PEER),
            };
            engine.handle(Input::Message(PEER, *ch, accept), now);
        }
        for (ch, _) in &first {
            engine.handle(Input::Message(PEER, *ch, sync(5, true)), now);
        }
        let out = outputs(&mut engine);
        let closed: Vec<ChannelId> = out
            .iter()
            .filter_map(|o| match o {
                Output::Send(_, ch, Message::Close { reason }) if reason == IDLE_REASON => {
                    Some(*ch)
                }
                _ => None,
            })
            .collect();
        assert_eq!(closed.len(), 1, "{out:?}");
        let third = opened(&out);
        assert_eq!(third.len(), 1);
        let waiting = cores
            .into_iter()
            .find(|c| !first.iter().any(|(_, k)| k == c))
            .unwrap();
        assert_eq!(third[0].1, waiting, "the waiting core got the room");
        let idle_core = first.iter().find(|(ch, _)| *ch == closed[0]).unwrap().1;
        assert!(engine.peers[&PEER].idle_closed.contains(&idle_core));

        // The idle-closed core grows: its channel is wanted again (opened, or queued for
        // room, which the next idle channel makes).
        let grown = LocalInfo {
            length: 6,
            byte_length: 6,
            contiguous: 6,
            ..local(5, true)
        };
        engine.handle(Input::LocalChanged(idle_core, grown), now);
        let p = &engine.peers[&PEER];
        assert!(!p.idle_closed.contains(&idle_core));
        assert!(
            p.to_open.contains(&idle_core)
                || opened(&outputs(&mut engine))
                    .iter()
                    .any(|(_, k)| *k == idle_core)
        );
        engine.check_timers().unwrap();
    }

    /// The peer closes a channel as idle while we have news for it (they crossed): it opens
    /// again at once, not at the core's next change. Cores waiting for room get a timer.
    #[test]
    fn an_idle_close_that_crosses_news_reopens_at_once() {
        let now = Instant::now();
        let me = [1; 32];
        let cfg = EngineConfig {
            max_channels_per_peer: 1,
            ..Default::default()
        };
        let mut engine = Engine::new(me, cfg);
        let (a, b) = ([3; 32], [4; 32]);
        engine.add_core(a, local(5, true), Mode::Full, now);
        engine.add_core(b, local(5, true), Mode::Full, now);
        outputs(&mut engine);
        engine.handle(Input::PeerConnected(PEER), now);
        let first = opened(&outputs(&mut engine));
        assert_eq!(first.len(), 1);
        let (ch, core) = first[0];
        assert!(
            engine.poll_timeout().is_some(),
            "a core waits for room: a timer"
        );
        let accept = Message::Accept {
            capability: capability(&core, Role::Acceptor, &me, &PEER),
        };
        engine.handle(Input::Message(PEER, ch, accept), now);
        // Our log grows before the peer's Sync says it holds the old one.
        let grown = LocalInfo {
            length: 6,
            byte_length: 6,
            contiguous: 6,
            ..local(5, true)
        };
        engine.handle(Input::LocalChanged(core, grown), now);
        engine.handle(Input::Message(PEER, ch, sync(5, true)), now);
        outputs(&mut engine);
        let close = Message::Close {
            reason: IDLE_REASON.into(),
        };
        engine.handle(Input::Message(PEER, ch, close), now);
        let p = &engine.peers[&PEER];
        assert!(!p.idle_closed.contains(&core), "left closed despite news");
        assert!(
            p.to_open.contains(&core)
                || opened(&outputs(&mut engine))
                    .iter()
                    .any(|(_, k)| *k == core)
        );
        engine.check_timers().unwrap();
    }
}

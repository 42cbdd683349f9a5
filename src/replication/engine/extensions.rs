//! Application extensions (Corestore's `extensions`): named messages between peers, on a
//! core's authenticated channel or on the store channel, a channel per connection that
//! belongs to no core (a peer can tell another of cores it has before they share one).
//!
//! Only names the application registered are delivered ([`Event::Extension`]); others are
//! dropped and counted, as are payloads over [`MAX_EXTENSION_PAYLOAD`] and messages beyond
//! a peer's rate ([`EngineConfig::extension_messages_per_second`]). None of it closes a
//! channel.

use std::{collections::BTreeSet, time::Instant};

use bytes::Bytes;

use super::{ChannelId, Engine, Event, Output, PeerId};
use crate::{
    crypto::{
        CoreKey, DiscoveryKey,
        capability::{Role, capability, check_capability},
        discovery_key,
    },
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

/// A peer's allowance of extension messages: a token bucket refilled at the configured
/// rate, holding at most a second's worth.
#[derive(Debug, Clone, Copy)]
pub(super) struct ExtensionAllowance {
    /// Messages that may arrive now, in thousandths.
    milli_tokens: u64,
    /// When it was last refilled.
    refilled: Option<Instant>,
}

impl Default for ExtensionAllowance {
    fn default() -> Self {
        Self {
            milli_tokens: u64::MAX,
            refilled: None,
        }
    }
}

impl ExtensionAllowance {
    /// Takes one message at `now` if the allowance has it (`per_second` a second, at most
    /// that many at once).
    fn take(&mut self, per_second: u64, now: Instant) -> bool {
        let cap = per_second.saturating_mul(1000);
        let credit = match self.refilled {
            None => u64::MAX,
            Some(t) => {
                let nanos = now.saturating_duration_since(t).as_nanos();
                // Thousandths of a message: nanoseconds × rate / 10⁶, exact to the nanosecond.
                u64::try_from(nanos.saturating_mul(u128::from(per_second)) / 1_000_000)
                    .unwrap_or(u64::MAX)
            }
        };
        self.milli_tokens = self.milli_tokens.saturating_add(credit).min(cap);
        self.refilled = Some(self.refilled.map_or(now, |t| t.max(now)));
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
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

impl Engine {
    /// Delivers extension messages named `name` (as [`Event::Extension`]).
    pub fn register_extension(&mut self, name: &str) {
        self.extensions.insert(name.to_string());
    }

    /// Sends an extension message (a turn of its own). Returns how many channels it was
    /// queued on: none if the core has no open channel with the peer, or the name or payload
    /// is over its limit.
    pub fn send_extension(
        &mut self,
        target: ExtensionTarget,
        name: &str,
        payload: Bytes,
        now: Instant,
    ) -> usize {
        if name.len() > MAX_EXTENSION_NAME || payload.len() > MAX_EXTENSION_PAYLOAD {
            return 0;
        }
        // A peer that does not read what we send gets no more of it (as with serving).
        let msg = Message::Extension {
            name: name.to_string(),
            payload: payload.to_vec(),
        };
        let channels: Vec<(PeerId, ChannelId)> = match target {
            ExtensionTarget::Core(core, peer) => self
                .open_channels(&core)
                .into_iter()
                .filter(|(p, _)| *p == peer)
                .collect(),
            ExtensionTarget::Broadcast(core) => self.open_channels(&core),
            ExtensionTarget::Peer(peer) => {
                if !self.server.has_room(&peer) {
                    return 0;
                }
                return usize::from(self.send_on_store_channel(peer, msg, now));
            }
        };
        let channels: Vec<(PeerId, ChannelId)> = channels
            .into_iter()
            .filter(|(p, _)| self.server.has_room(p))
            .collect();
        for (peer, ch) in &channels {
            self.send(*peer, *ch, msg.clone());
        }
        self.schedule(now);
        channels.len()
    }

    /// Sends `msg` on the store channel with `peer`, opening it (and queueing `msg`) if it is
    /// not open.
    fn send_on_store_channel(&mut self, peer: PeerId, msg: Message, now: Instant) -> bool {
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        if let Some(ch) = p.channels.get(&*STORE_CHANNEL_KEY).copied() {
            if self.is_authenticated(ch) {
                self.send(peer, ch, msg);
                self.schedule(now);
                return true;
            }
        } else {
            let id = self.next_channel;
            self.next_channel += 2;
            let open = Message::Open {
                discovery_key: store_channel_discovery_key(),
                capability: capability(&STORE_CHANNEL_KEY, Role::Opener, &self.me, &peer),
            };
            let deadline = now + self.cfg.handshake_timeout;
            self.add_channel(id, peer, *STORE_CHANNEL_KEY, true, Some(deadline));
            self.handshakes.insert(deadline, id);
            if let Some(p) = self.peers.get_mut(&peer) {
                p.opening += 1;
            }
            self.outputs.push_back(Output::OpenChannel(peer, id, open));
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        let bytes: usize = p.store_queue.iter().map(extension_bytes).sum();
        if p.store_queue.len() >= MAX_QUEUED_ON_STORE_CHANNEL
            || bytes + extension_bytes(&msg) > MAX_QUEUED_BYTES_ON_STORE_CHANNEL
        {
            return false;
        }
        p.store_queue.push(msg);
        true
    }

    /// A peer opened its store channel to us: accepted if its capability checks out.
    pub(super) fn on_store_open(&mut self, peer: PeerId, id: ChannelId, cap: [u8; 32]) {
        if !check_capability(&STORE_CHANNEL_KEY, Role::Opener, &peer, &self.me, &cap) {
            self.count_dropped(peer);
            self.refuse(peer, id, "invalid capability");
            return;
        }
        let existing = self
            .peers
            .get(&peer)
            .and_then(|p| p.channels.get(&*STORE_CHANNEL_KEY).copied());
        if let Some(existing) = existing {
            // Both opened one: keep the one opened by the lower endpoint id (what waited for
            // ours goes on theirs).
            if peer < self.me {
                self.outputs.push_back(Output::CloseChannel(peer, existing));
                self.drop_channel(existing);
            } else {
                self.refuse(peer, id, "duplicate channel");
                return;
            }
        }
        self.add_channel(id, peer, *STORE_CHANNEL_KEY, false, None);
        let accept = Message::Accept {
            capability: capability(&STORE_CHANNEL_KEY, Role::Acceptor, &peer, &self.me),
        };
        self.send(peer, id, accept);
        self.flush_store_queue(peer, id);
    }

    /// The store channel with `peer` is open: what waited for it is sent.
    pub(super) fn flush_store_queue(&mut self, peer: PeerId, id: ChannelId) {
        let queued = self
            .peers
            .get_mut(&peer)
            .map(|p| std::mem::take(&mut p.store_queue))
            .unwrap_or_default();
        for msg in queued {
            self.send(peer, id, msg);
        }
    }

    /// A message on the store channel: only extensions (and its end) mean anything there.
    pub(super) fn on_store_message(
        &mut self,
        peer: PeerId,
        id: ChannelId,
        msg: Message,
        now: Instant,
    ) {
        match msg {
            Message::Extension { name, payload } => {
                self.on_extension(peer, None, name, payload, now)
            }
            Message::Close { .. } => {
                self.outputs.push_back(Output::CloseChannel(peer, id));
                self.drop_channel(id);
            }
            _ => self.count_dropped(peer),
        }
    }

    /// An extension message from `peer` (on `core`'s channel, or the store channel): delivered
    /// if its name is registered, it is within the size limit and the peer's rate.
    pub(super) fn on_extension(
        &mut self,
        peer: PeerId,
        core: Option<CoreKey>,
        name: String,
        payload: Vec<u8>,
        now: Instant,
    ) {
        let per_second = self.cfg.extension_messages_per_second;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let known = self.extensions.contains(&name);
        if !known
            || payload.len() > MAX_EXTENSION_PAYLOAD
            || !p.extension_allowance.take(per_second, now)
        {
            p.stats.extensions_dropped += 1;
            return;
        }
        p.stats.extensions_received += 1;
        self.emit(Event::Extension {
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

/// Registered extension names.
pub(super) type ExtensionNames = BTreeSet<String>;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_allowance_refills_at_its_rate_and_holds_a_second_of_it() {
        let t0 = Instant::now();
        let mut a = ExtensionAllowance::default();
        let taken = (0..20).filter(|_| a.take(10, t0)).count();
        assert_eq!(taken, 10, "a burst of one second's worth");
        assert!(!a.take(10, t0 + Duration::from_millis(50)));
        assert!(
            a.take(10, t0 + Duration::from_millis(100)),
            "one per 100 ms"
        );
        assert!(!a.take(10, t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..20).filter(|_| a.take(10, later)).count(), 10);
    }

    /// A peer sending at exactly its rate is never cut, however the interval falls between
    /// milliseconds; a clock that goes back credits nothing.
    #[test]
    fn the_allowance_counts_fractions_of_a_millisecond() {
        let t0 = Instant::now();
        let mut a = ExtensionAllowance::default();
        assert_eq!((0..256).filter(|_| a.take(256, t0)).count(), 256);
        let step = Duration::from_nanos(1_000_000_000 / 256 + 1);
        let taken = (1..=1000u32)
            .filter(|i| a.take(256, t0 + step * *i))
            .count();
        assert_eq!(taken, 1000);
        assert!(!a.take(256, t0), "no credit for a clock that went back");
    }
}

#[cfg(test)]
mod engine_tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::{
        super::{
            Event, Input, Mode, Output, PeerStats,
            testing::{CORE, PEER, engine_with_peer, local, outputs, sync},
        },
        *,
    };
    use crate::{
        crypto::capability::{Role, capability},
        replication::wire::Message,
    };

    fn ext(name: &str, len: usize) -> Message {
        Message::Extension {
            name: name.into(),
            payload: vec![7; len],
        }
    }

    fn stats(engine: &Engine) -> PeerStats {
        engine.peer_stats().remove(0)
    }

    fn delivered(out: &[Output]) -> usize {
        out.iter()
            .filter(|o| matches!(o, Output::Event(Event::Extension { .. })))
            .count()
    }

    /// Only registered names within the size limit and the peer's rate are delivered; the
    /// rest are counted, and the channel stays open.
    #[test]
    fn extension_messages_are_filtered_limited_and_counted() {
        let now = Instant::now();
        let (mut engine, ch) = engine_with_peer(local(3, true), Mode::Full, sync(3, false), now);
        engine.register_extension("chat");
        engine.handle(Input::Message(PEER, ch, ext("other", 10)), now);
        engine.handle(
            Input::Message(PEER, ch, ext("chat", MAX_EXTENSION_PAYLOAD + 1)),
            now,
        );
        assert_eq!(delivered(&outputs(&mut engine)), 0);
        engine.handle(
            Input::Message(PEER, ch, ext("chat", MAX_EXTENSION_PAYLOAD)),
            now,
        );
        let out = outputs(&mut engine);
        assert!(out.iter().any(|o| matches!(o, Output::Event(Event::Extension {
            core: Some(c), peer, name, payload
        }) if *c == CORE && *peer == PEER && name == "chat" && payload.len() == MAX_EXTENSION_PAYLOAD)));
        let rate = engine.config().extension_messages_per_second;
        for _ in 0..rate * 2 {
            engine.handle(Input::Message(PEER, ch, ext("chat", 1)), now);
        }
        let s = stats(&engine);
        assert_eq!(s.extensions_received, rate, "a second's worth at once");
        assert_eq!(s.extensions_dropped, 2 + rate + 1);
        assert!(
            !outputs(&mut engine)
                .iter()
                .any(|o| matches!(o, Output::CloseChannel(..))),
            "no channel closed"
        );
        let later = now + Duration::from_secs(1);
        engine.handle(Input::Message(PEER, ch, ext("chat", 1)), later);
        assert_eq!(delivered(&outputs(&mut engine)), 1, "the rate refills");
    }

    /// An extension to a peer with no shared core opens the store channel and waits for its
    /// `Accept`; the peer's side accepts a store channel, delivers its extensions with no
    /// core, and ignores anything else on it.
    #[test]
    fn the_store_channel_carries_extensions_between_peers_with_no_core_in_common() {
        let now = Instant::now();
        let (me, peer) = ([1; 32], PEER);
        let mut a = Engine::new(me, super::super::EngineConfig::default());
        let mut b = Engine::new(peer, super::super::EngineConfig::default());
        a.handle(Input::PeerConnected(peer), now);
        b.handle(Input::PeerConnected(me), now);
        b.register_extension("cores");
        outputs(&mut a);
        outputs(&mut b);

        let n = a.send_extension(
            ExtensionTarget::Peer(peer),
            "cores",
            Bytes::from_static(b"key"),
            now,
        );
        assert_eq!(n, 1);
        let out = outputs(&mut a);
        let (ch, open) = out
            .iter()
            .find_map(|o| match o {
                Output::OpenChannel(_, ch, open) => Some((*ch, open.clone())),
                _ => None,
            })
            .expect("the store channel opens");
        assert!(
            !out.iter().any(|o| matches!(o, Output::Send(..))),
            "nothing before the Accept"
        );
        // B accepts it; the peer-opened channel gets an odd id on B's side.
        b.handle(Input::Message(me, 1, open), now);
        let accept = outputs(&mut b)
            .into_iter()
            .find_map(|o| match o {
                Output::Send(_, 1, m @ Message::Accept { .. }) => Some(m),
                _ => None,
            })
            .expect("B accepts");
        a.handle(Input::Message(peer, ch, accept), now);
        let sent = outputs(&mut a)
            .into_iter()
            .find_map(|o| match o {
                Output::Send(_, c, m @ Message::Extension { .. }) if c == ch => Some(m),
                _ => None,
            })
            .expect("the queued extension follows the Accept");
        b.handle(Input::Message(me, 1, sent), now);
        let out = outputs(&mut b);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Event(Event::Extension {
            core: None, peer: p, name, payload
        }) if *p == me && name == "cores" && &payload[..] == b"key"))
        );
        // Anything else on the store channel is dropped, and counted.
        b.handle(Input::Message(me, 1, sync(5, false)), now);
        let out = outputs(&mut b);
        assert!(
            out.iter()
                .all(|o| !matches!(o, Output::Task(..) | Output::CloseChannel(..)))
        );
        assert_eq!(b.peer_stats()[0].dropped, 1);
        a.check_timers().unwrap();
        b.check_timers().unwrap();
    }

    /// Opens the store channel from both sides at once (`a` has the lower id): whichever
    /// way the race goes, what each queued reaches the other.
    #[test]
    fn store_channels_opened_at_once_lose_nothing_queued() {
        let now = Instant::now();
        let (lo, hi) = ([1; 32], PEER);
        let mut a = Engine::new(lo, super::super::EngineConfig::default());
        let mut b = Engine::new(hi, super::super::EngineConfig::default());
        a.handle(Input::PeerConnected(hi), now);
        b.handle(Input::PeerConnected(lo), now);
        a.register_extension("x");
        b.register_extension("x");
        outputs(&mut a);
        outputs(&mut b);
        a.send_extension(
            ExtensionTarget::Peer(hi),
            "x",
            Bytes::from_static(b"from a"),
            now,
        );
        b.send_extension(
            ExtensionTarget::Peer(lo),
            "x",
            Bytes::from_static(b"from b"),
            now,
        );
        let a_open = outputs(&mut a);
        let b_open = outputs(&mut b);
        let open_of = |out: &[Output]| {
            out.iter()
                .find_map(|o| match o {
                    Output::OpenChannel(_, ch, m) => Some((*ch, m.clone())),
                    _ => None,
                })
                .unwrap()
        };
        let (a_ch, a_msg) = open_of(&a_open);
        let (b_ch, b_msg) = open_of(&b_open);
        // Each sees the other's Open; peer-opened channels get odd ids.
        a.handle(Input::Message(hi, b_ch + 1, b_msg), now);
        b.handle(Input::Message(lo, a_ch + 1, a_msg), now);
        let mut to_a: Vec<(u64, Message)> = outputs(&mut b)
            .into_iter()
            .filter_map(|o| match o {
                Output::Send(_, ch, m) => Some((ch, m)),
                _ => None,
            })
            .collect();
        let mut to_b: Vec<(u64, Message)> = outputs(&mut a)
            .into_iter()
            .filter_map(|o| match o {
                Output::Send(_, ch, m) => Some((ch, m)),
                _ => None,
            })
            .collect();
        // Deliver until quiet; channel ids map: ours even, theirs odd (+1).
        let id_at = |ch: u64| if ch.is_multiple_of(2) { ch + 1 } else { ch - 1 };
        let mut got = Vec::new();
        for _ in 0..4 {
            for (ch, m) in std::mem::take(&mut to_a) {
                a.handle(Input::Message(hi, id_at(ch), m), now);
            }
            for (ch, m) in std::mem::take(&mut to_b) {
                b.handle(Input::Message(lo, id_at(ch), m), now);
            }
            for o in outputs(&mut a) {
                match o {
                    Output::Send(_, ch, m) => to_b.push((ch, m)),
                    Output::Event(Event::Extension { payload, .. }) => got.push(payload),
                    _ => {}
                }
            }
            for o in outputs(&mut b) {
                match o {
                    Output::Send(_, ch, m) => to_a.push((ch, m)),
                    Output::Event(Event::Extension { payload, .. }) => got.push(payload),
                    _ => {}
                }
            }
        }
        got.sort();
        assert_eq!(got, [&b"from a"[..], b"from b"]);
    }

    /// Extension messages wait while the peer does not read what we send; a store channel
    /// reads frames of one extension message at most; no core takes the store channel's key.
    #[test]
    fn extensions_respect_the_backlog_and_the_store_channel_is_its_own() {
        let now = Instant::now();
        let (mut engine, _) = engine_with_peer(local(3, true), Mode::Full, sync(3, false), now);
        let max = engine.config().max_backlog_bytes;
        engine.handle(Input::Backlog(PEER, max), now);
        let payload = Bytes::from_static(b"hi");
        assert_eq!(
            engine.send_extension(ExtensionTarget::Core(CORE, PEER), "x", payload.clone(), now),
            0
        );
        assert_eq!(
            engine.send_extension(ExtensionTarget::Peer(PEER), "x", payload.clone(), now),
            0
        );
        engine.handle(Input::Backlog(PEER, 0), now);
        assert_eq!(
            engine.send_extension(ExtensionTarget::Core(CORE, PEER), "x", payload.clone(), now),
            1
        );
        engine.send_extension(ExtensionTarget::Peer(PEER), "x", payload, now);
        let store = outputs(&mut engine)
            .into_iter()
            .find_map(|o| match o {
                Output::OpenChannel(_, ch, _) => Some(ch),
                _ => None,
            })
            .unwrap();
        let accept = Message::Accept {
            capability: capability(&STORE_CHANNEL_KEY, Role::Acceptor, &[1; 32], &PEER),
        };
        engine.handle(Input::Message(PEER, store, accept), now);
        assert_eq!(engine.max_frame(store), MAX_STORE_CHANNEL_FRAME);
        engine.add_core(*STORE_CHANNEL_KEY, local(0, false), Mode::Full, now);
        assert!(!engine.has_core(&STORE_CHANNEL_KEY));
    }
}

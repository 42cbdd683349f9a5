//! Gossip: announcing our length on each core's topic at most once per `announce_interval`,
//! and acting on the announcements of others, with a rate limit on the dials they cause.
//!
//! [`Announcer`] owns the timing: when each core was last announced and which announcements
//! wait for their interval, by deadline. [`DialLimit`] owns the dial rate limit. The engine's
//! methods here build the announcement from the core's state and route what an announcement
//! asks for (a dial, a `Sync`, a channel).

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use bytes::Bytes;

use super::{Engine, Output};
use crate::{
    crypto::CoreKey,
    replication::{deadlines::Deadlines, gossip::GossipOp, wire::Message},
};

/// When each core was last announced, and the announcements waiting for their interval.
#[derive(Debug)]
pub(super) struct Announcer {
    interval: Duration,
    /// When each core was last announced.
    last: BTreeMap<CoreKey, Instant>,
    /// Cores whose announcement waits, keyed by the end of their interval.
    waiting: Deadlines<CoreKey>,
}

impl Announcer {
    /// No core announced yet; at most one announcement per core per `interval`.
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: BTreeMap::new(),
            waiting: Deadlines::default(),
        }
    }

    /// Whether `core` may be announced at `now`: if so, it counts as announced now; if not,
    /// its announcement waits for the end of its interval.
    pub(super) fn may_announce(&mut self, core: CoreKey, now: Instant) -> bool {
        let end = self.last.get(&core).map(|t| *t + self.interval);
        if let Some(end) = end.filter(|end| *end > now) {
            self.waiting.insert(end, core);
            return false;
        }
        self.waiting.replace(core, end, None);
        self.last.insert(core, now);
        true
    }

    /// Drops the waiting announcement of `core`, if there is one.
    pub(super) fn cancel(&mut self, core: CoreKey) {
        let end = self.last.get(&core).map(|t| *t + self.interval);
        self.waiting.replace(core, end, None);
    }

    /// Forgets `core`: its waiting announcement and when it was last announced (the core is no
    /// longer replicated).
    pub(super) fn forget(&mut self, core: &CoreKey) {
        self.cancel(*core);
        self.last.remove(core);
    }

    /// The cores whose announcement may go at `now`, in key order; they wait no more.
    pub(super) fn due(&mut self, now: Instant) -> Vec<CoreKey> {
        let mut due = self.waiting.drain_due(now);
        due.sort_unstable();
        due
    }

    /// Checks that each waiting announcement waits for the end of its core's interval.
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn check_timers(&self) -> Result<(), String> {
        for (at, core) in self.waiting.entries() {
            if self.last.get(&core).map(|t| *t + self.interval) != Some(at) {
                return Err(format!("announcement of {core:?} waits for {at:?}"));
            }
        }
        Ok(())
    }

    /// When the next waiting announcement may go.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.waiting.first()
    }
}

/// A limit on the dials gossip announcements cause: anyone on a topic can announce, naming
/// any origin.
#[derive(Debug)]
pub(super) struct DialLimit {
    per_second: usize,
    /// When the dials of the last second started.
    recent: VecDeque<Instant>,
    /// Dials the limit skipped.
    skipped: u64,
}

impl DialLimit {
    /// At most `per_second` dials in any second.
    pub(super) fn new(per_second: usize) -> Self {
        Self {
            per_second,
            recent: VecDeque::new(),
            skipped: 0,
        }
    }

    /// Whether a dial may start at `now`; counts it if so, and counts it skipped if not.
    pub(super) fn allow(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| *t + Duration::from_secs(1) <= now)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.per_second {
            self.skipped += 1;
            return false;
        }
        self.recent.push_back(now);
        true
    }

    /// Dials the limit skipped so far.
    pub(super) fn skipped(&self) -> u64 {
        self.skipped
    }
}

impl Engine {
    /// Tells the swarm our length, at most once per `announce_interval`.
    pub(super) fn announce(&mut self, core: CoreKey, now: Instant) {
        let Some(local) = self.cores.get(&core).map(|r| r.local) else {
            return;
        };
        if local.length == 0 {
            // Nothing to announce: an announcement that was due is dropped (a due one left
            // set would be a timer in the past, handled again on every turn).
            self.announcer.cancel(core);
            return;
        }
        if !self.announcer.may_announce(core, now) {
            return;
        }
        let op = GossipOp::Announce {
            origin: self.me,
            fork: local.fork,
            length: local.length,
            contiguous: local.contiguous,
        };
        match op.encode(self.cfg.gossip_max_message) {
            Ok(bytes) => self
                .outputs
                .push_back(Output::Broadcast(core, Bytes::from(bytes))),
            Err(e) => tracing::warn!("gossip op not sent: {e}"),
        }
    }

    /// A gossip announcement: a hint to connect to the announcer if it is ahead of us.
    pub(super) fn on_gossip(&mut self, core: CoreKey, bytes: &[u8], now: Instant) {
        let Ok(GossipOp::Announce {
            origin,
            fork,
            length,
            ..
        }) = GossipOp::decode(bytes)
        else {
            tracing::debug!("malformed gossip op ignored");
            return;
        };
        let Some(r) = self.cores.get(&core) else {
            return;
        };
        let ahead = fork > r.local.fork || (fork == r.local.fork && length > r.local.length);
        if origin == self.me || !ahead {
            return;
        }
        if !self.peers.contains_key(&origin) {
            // Anyone on the topic can name any origin: dials are rate limited here, and the
            // driver bounds those in flight and times them out.
            if !self.dials.allow(now) {
                tracing::debug!("gossip dial skipped: rate limit");
                return;
            }
            self.outputs.push_back(Output::Connect(origin));
        } else if let Some(ch) = self.peers[&origin].channels.get(&core).copied() {
            // Connected already: ask for its state rather than trusting the announcement,
            // unless its last `Sync` told us that much already (a writer's `Sync` and push
            // travel beside its announcement).
            let told = self
                .channels
                .get(&ch)
                .and_then(|c| c.remote)
                .is_some_and(|s| (s.fork, s.length) >= (fork, length));
            if !told
                && self.is_authenticated(ch)
                && let Some(info) = self.sync_info(&core, true)
            {
                self.send(origin, ch, Message::Sync(info));
            }
        } else {
            self.open_channel(origin, core, now);
        }
    }

    /// After lost gossip: ask every channel of the core for its state again.
    pub(super) fn resync(&mut self, core: CoreKey) {
        self.broadcast_sync(core, true);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{
        super::testing::{CORE, PEER, engine_with_peer, local, outputs, sync},
        *,
    };
    use crate::replication::{Engine, EngineConfig, Input, LocalInfo, Mode};

    #[test]
    fn dials_are_limited_per_second() {
        let t0 = Instant::now();
        let mut limit = DialLimit::new(2);
        assert!(limit.allow(t0));
        assert!(limit.allow(t0 + Duration::from_millis(500)));
        assert!(!limit.allow(t0 + Duration::from_millis(900)));
        assert_eq!(limit.skipped(), 1);
        assert!(
            limit.allow(t0 + Duration::from_millis(1000)),
            "the first is a second old"
        );
        assert!(!limit.allow(t0 + Duration::from_millis(1400)));
    }

    /// A core truncated to nothing while an announcement waited for its interval leaves no
    /// timer behind: the driver would otherwise be woken at a past instant on every turn.
    #[test]
    fn a_core_truncated_to_nothing_drops_its_due_announcement() {
        let t0 = Instant::now();
        let mut engine = Engine::new([1; 32], EngineConfig::default());
        let core = [2; 32];
        let at = |length, fork| LocalInfo {
            fork,
            length,
            byte_length: length,
            contiguous: length,
            writable: true,
        };
        engine.add_core(core, at(1, 0), Mode::Full, t0);
        engine.handle(
            Input::LocalChanged(core, at(2, 0)),
            t0 + Duration::from_millis(10),
        );
        assert!(
            engine.poll_timeout().is_some(),
            "the second announcement waits"
        );
        engine.handle(
            Input::LocalChanged(core, at(0, 1)),
            t0 + Duration::from_millis(20),
        );
        engine.handle_timeout(t0 + Duration::from_millis(100));
        assert_eq!(engine.poll_timeout(), None, "no timer left");
    }

    /// Announcements within the interval wait for its end and go then, once.
    #[test]
    fn announcements_within_the_interval_wait_for_its_end() {
        let t0 = Instant::now();
        let interval = EngineConfig::default().announce_interval;
        let mut engine = Engine::new([1; 32], EngineConfig::default());
        let core = [2; 32];
        let at = |length| LocalInfo {
            length,
            byte_length: length,
            contiguous: length,
            writable: true,
            ..Default::default()
        };
        let broadcasts = |engine: &mut Engine| {
            outputs(engine)
                .iter()
                .filter(|o| matches!(o, Output::Broadcast(..)))
                .count()
        };
        engine.add_core(core, at(1), Mode::Full, t0);
        assert_eq!(broadcasts(&mut engine), 1);
        for (i, length) in [2, 3].into_iter().enumerate() {
            let now = t0 + Duration::from_millis(1 + i as u64);
            engine.handle(Input::LocalChanged(core, at(length)), now);
        }
        assert_eq!(broadcasts(&mut engine), 0);
        assert_eq!(engine.poll_timeout(), Some(t0 + interval));
        engine.handle_timeout(t0 + interval);
        assert_eq!(broadcasts(&mut engine), 1);
        assert_eq!(engine.poll_timeout(), None);
    }

    /// An announcement from a connected peer is a reason to ask for its state only if its last
    /// `Sync` did not say as much: a writer's announcement travels beside its `Sync` and push.
    #[test]
    fn an_announcement_its_sync_told_already_asks_nothing() {
        let now = Instant::now();
        let (mut engine, _) = engine_with_peer(local(5, false), Mode::Full, sync(10, false), now);
        let announce = |length| {
            let op = GossipOp::Announce {
                origin: PEER,
                fork: 0,
                length,
                contiguous: length,
            };
            let bytes = op.encode(crate::replication::gossip::GOSSIP_MAX_MESSAGE);
            Input::Gossip(CORE, bytes.unwrap().into())
        };
        let asks = |engine: &mut Engine| {
            outputs(engine)
                .iter()
                .filter(|o| matches!(o, Output::Send(_, _, Message::Sync(s)) if s.ask))
                .count()
        };
        engine.handle(announce(10), now);
        assert_eq!(asks(&mut engine), 0, "its Sync said 10 already");
        engine.handle(announce(11), now);
        assert_eq!(asks(&mut engine), 1, "11 is news");
    }
}

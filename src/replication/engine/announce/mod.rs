//! The gossip part: announcing our length on each core's topic at most once per
//! `announce_interval`, and reading the announcements of others, with a rate limit on the
//! dials they cause. An announcement is only a hint: the engine asks the announcer for its
//! state (or connects to it), and believes only what it proves.

mod dial_limit;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use bytes::Bytes;
use dial_limit::DialLimit;

use super::{
    LocalInfo, Output, PeerId,
    cx::Cx,
    timer::{Timer, TimerTable},
};
use crate::{crypto::CoreKey, replication::gossip::GossipOp};

/// An announcement of a core ahead of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Heard {
    /// Who says it holds it.
    pub(super) origin: PeerId,
    /// Its fork.
    pub(super) fork: u64,
    /// Its signed length.
    pub(super) length: u64,
}

/// The gossip part; see the module docs.
#[derive(Debug)]
pub(super) struct Announcer {
    me: PeerId,
    interval: Duration,
    max_message: usize,
    /// When each core was last announced (its `Announce` timer is the end of the interval, for
    /// an announcement that waits).
    last: BTreeMap<CoreKey, Instant>,
    /// The rate limit on dials announcements cause.
    dials: DialLimit,
}

impl Announcer {
    /// Nothing announced yet: at most one announcement per core per `interval`, each within
    /// `max_message` bytes, and at most `dials_per_second` dials for announcements.
    pub(super) fn new(
        me: PeerId,
        interval: Duration,
        max_message: usize,
        dials_per_second: usize,
    ) -> Self {
        Self {
            me,
            interval,
            max_message,
            last: BTreeMap::new(),
            dials: DialLimit::new(dials_per_second),
        }
    }

    /// Tells the swarm that `core` is at `local`, at most once per interval (a later one
    /// waits for the interval's end, with a timer).
    pub(super) fn announce(&mut self, core: CoreKey, local: LocalInfo, cx: &mut Cx) {
        if local.length == 0 {
            // Nothing to announce: an announcement that was due is dropped (a due one left
            // set would be a timer in the past, handled again on every turn).
            cx.timers.clear(Timer::Announce(core));
            return;
        }
        if !self.may_announce(core, cx.now, cx.timers) {
            return;
        }
        let op = GossipOp::Announce {
            origin: self.me,
            fork: local.fork,
            length: local.length,
            contiguous: local.contiguous,
        };
        match op.encode(self.max_message) {
            Ok(bytes) => cx
                .out
                .push_back(Output::Broadcast(core, Bytes::from(bytes))),
            Err(e) => tracing::warn!("gossip op not sent: {e}"),
        }
    }

    /// Whether `core` may be announced at `now`: if so, it counts as announced now; if not,
    /// its announcement waits for the end of its interval.
    fn may_announce(&mut self, core: CoreKey, now: Instant, timers: &mut TimerTable) -> bool {
        let end = self.last.get(&core).map(|t| *t + self.interval);
        if let Some(end) = end.filter(|end| *end > now) {
            timers.set(Timer::Announce(core), end);
            return false;
        }
        timers.clear(Timer::Announce(core));
        self.last.insert(core, now);
        true
    }

    /// Forgets `core`: its waiting announcement and when it was last announced (the core is
    /// no longer replicated).
    pub(super) fn forget(&mut self, core: &CoreKey, timers: &mut TimerTable) {
        timers.clear(Timer::Announce(*core));
        self.last.remove(core);
    }

    /// A gossip message on `core`'s topic, whose state is `local`: an announcement of a state
    /// ahead of ours by another node, or nothing.
    pub(super) fn heard(&self, bytes: &[u8], local: &LocalInfo) -> Option<Heard> {
        let Ok(GossipOp::Announce {
            origin,
            fork,
            length,
            ..
        }) = GossipOp::decode(bytes)
        else {
            tracing::debug!("malformed gossip op ignored");
            return None;
        };
        let ahead = fork > local.fork || (fork == local.fork && length > local.length);
        (origin != self.me && ahead).then_some(Heard {
            origin,
            fork,
            length,
        })
    }

    /// Whether an announcement may make us dial at `now` (anyone on a topic can announce,
    /// naming any origin); counts the dial, or the skip.
    pub(super) fn allow_dial(&mut self, now: Instant) -> bool {
        self.dials.allow(now)
    }

    /// Dials that announcements asked for and the rate limit skipped.
    pub(super) fn dials_skipped(&self) -> u64 {
        self.dials.skipped()
    }

    /// Checks that each `Announce` timer is set for the end of its core's interval.
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn check_timers(&self, timers: &TimerTable) -> Result<(), String> {
        for (timer, at) in timers.entries() {
            if let Timer::Announce(core) = timer
                && self.last.get(&core).map(|t| *t + self.interval) != Some(at)
            {
                return Err(format!("announcement of {core:?} waits for {at:?}"));
            }
        }
        Ok(())
    }
}

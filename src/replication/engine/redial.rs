//! The redial part: peers come back. Each replicated core remembers the peers it was named (the
//! nodes of its ticket or `join`, its record's) and, apart, those it learnt (the peers it had a
//! channel with, gossip neighbours and announcers), at most [`MAX_NAMED`] and
//! [`MAX_LEARNT`]: a peer that learns the key and opens channels from many ids can fill the
//! learnt places, never take a named one. While a core
//! has no channel it dials them again, a few per attempt, with exponential back-off and
//! jitter ([`Event::Reconnecting`]), for as long as it is replicated; a channel that opens
//! ends the search. The back-off runs on the engine's clock and the jitter comes from a
//! generator seeded by this endpoint's id, so a simulation replays it.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use rand::{RngExt, SeedableRng, rngs::StdRng};

use super::{
    Event, Output, PeerId,
    cx::Cx,
    timer::{Timer, TimerTable},
};
use crate::crypto::CoreKey;

/// Peers remembered per core: [`MAX_NAMED`] named and [`MAX_LEARNT`] learnt.
pub const MAX_KNOWN_PER_CORE: usize = MAX_NAMED + MAX_LEARNT;

/// Peers named by the application (ticket, `join`, the record of before a restart) kept per
/// core, the most recently named first.
pub const MAX_NAMED: usize = 8;

/// Peers learnt (a channel, gossip) kept per core, the most recently useful first.
pub const MAX_LEARNT: usize = 8;

/// Peers dialed per attempt of one core.
const DIALS_PER_ATTEMPT: usize = 4;

/// The wait before a core's first redial; it doubles with each attempt.
const FIRST_WAIT: Duration = Duration::from_secs(1);

/// The longest wait between two redials of a core.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The peers one core knows, and its search for them.
#[derive(Debug, Default)]
struct Known {
    /// Named by the application, most recently named first.
    named: VecDeque<PeerId>,
    /// Learnt and not named, most recently useful first.
    learnt: VecDeque<PeerId>,
    /// Redials so far in the current search; `None` while the core has a channel.
    attempt: Option<u32>,
}

impl Known {
    /// The named, then the learnt.
    fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.named.iter().chain(self.learnt.iter()).copied()
    }
}

/// The redial part; see the module docs.
#[derive(Debug)]
pub(super) struct Redial {
    cores: BTreeMap<CoreKey, Known>,
    /// The jitter of the waits.
    rng: StdRng,
}

impl Redial {
    /// No core known yet; the jitter is seeded by `me`.
    pub(super) fn new(me: PeerId) -> Self {
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&me[..8]);
        Self {
            cores: BTreeMap::new(),
            rng: StdRng::seed_from_u64(u64::from_le_bytes(seed)),
        }
    }

    /// The application named `peer` for `core` (a ticket's or `join`'s node, or one of its
    /// record): it goes first among the named, the least recently named going past
    /// [`MAX_NAMED`].
    pub(super) fn name(&mut self, core: CoreKey, peer: PeerId) {
        let known = self.cores.entry(core).or_default();
        known.learnt.retain(|p| *p != peer);
        known.named.retain(|p| *p != peer);
        known.named.push_front(peer);
        known.named.truncate(MAX_NAMED);
    }

    /// `core` learnt `peer` (a named one stays as it is): first among the learnt if it was
    /// `useful` (a channel with it opened), else last unless known already, taking the place
    /// of the least recently useful one past [`MAX_LEARNT`].
    pub(super) fn learn(&mut self, core: CoreKey, peer: PeerId, useful: bool) {
        let k = self.cores.entry(core).or_default();
        if k.named.contains(&peer) {
            return;
        }
        let known = &mut k.learnt;
        match known.iter().position(|p| *p == peer) {
            Some(0) => {}
            Some(i) if useful => {
                known.remove(i);
                known.push_front(peer);
            }
            Some(_) => {}
            None if useful => {
                known.push_front(peer);
                known.truncate(MAX_LEARNT);
            }
            None => {
                known.truncate(MAX_LEARNT - 1);
                known.push_back(peer);
            }
        }
    }

    /// The peers `core` knows: the named, most recently named first, then the learnt, most
    /// recently useful first.
    pub(super) fn known(&self, core: &CoreKey) -> Vec<PeerId> {
        self.cores
            .get(core)
            .map(|k| k.peers().collect())
            .unwrap_or_default()
    }

    /// The cores that know `peer`, in key order.
    pub(super) fn cores_knowing(&self, peer: &PeerId) -> Vec<CoreKey> {
        self.cores
            .iter()
            .filter(|(_, k)| k.named.contains(peer) || k.learnt.contains(peer))
            .map(|(core, _)| *core)
            .collect()
    }

    /// Whether `core` is looking for its peers.
    pub(super) fn is_searching(&self, core: &CoreKey) -> bool {
        self.cores.get(core).is_some_and(|k| k.attempt.is_some())
    }

    /// `core` has no channel: it starts looking for the peers it knows (if it knows some and
    /// is not looking already), the first redial after [`FIRST_WAIT`] (a peer that went may
    /// be restarting), or `at_once` (peers just learnt, as a restarted node's).
    pub(super) fn lost(&mut self, core: CoreKey, at_once: bool, cx: &mut Cx) {
        let Some(k) = self.cores.get_mut(&core) else {
            return;
        };
        if (k.named.is_empty() && k.learnt.is_empty()) || k.attempt.is_some() {
            return;
        }
        k.attempt = Some(0);
        let wait = if at_once {
            Duration::ZERO
        } else {
            self.wait(0)
        };
        cx.timers.set(Timer::Redial(core), cx.now + wait);
        cx.emit(Event::Reconnecting {
            core,
            attempt: 0,
            next_in: wait,
        });
    }

    /// A channel of `core` opened: its search ends.
    pub(super) fn found(&mut self, core: CoreKey, timers: &mut TimerTable) {
        if let Some(k) = self.cores.get_mut(&core)
            && k.attempt.take().is_some()
        {
            timers.clear(Timer::Redial(core));
        }
    }

    /// The `Redial` timer of `core` fired: a few of the peers it knows that are not connected
    /// (`connected` says which are) are dialed, and the next attempt set, later.
    pub(super) fn redial(
        &mut self,
        core: CoreKey,
        connected: impl Fn(&PeerId) -> bool,
        cx: &mut Cx,
    ) {
        let Some(k) = self.cores.get_mut(&core) else {
            return;
        };
        let Some(attempt) = k.attempt else {
            return;
        };
        let attempt = attempt.saturating_add(1);
        k.attempt = Some(attempt);
        // Round the known peers from where the last attempt stopped.
        let peers: Vec<PeerId> = k.peers().collect();
        let n = peers.len();
        let start = (attempt as usize - 1).saturating_mul(DIALS_PER_ATTEMPT) % n.max(1);
        let targets: Vec<PeerId> = (0..n)
            .map(|i| peers[(start + i) % n])
            .filter(|p| !connected(p))
            .take(DIALS_PER_ATTEMPT)
            .collect();
        for peer in targets {
            cx.out.push_back(Output::Connect(peer));
        }
        let wait = self.wait(attempt);
        cx.timers.set(Timer::Redial(core), cx.now + wait);
        cx.emit(Event::Reconnecting {
            core,
            attempt,
            next_in: wait,
        });
    }

    /// `core` is no longer replicated.
    pub(super) fn forget(&mut self, core: &CoreKey, timers: &mut TimerTable) {
        self.cores.remove(core);
        timers.clear(Timer::Redial(*core));
    }

    /// The wait before attempt `attempt + 1`: [`FIRST_WAIT`] doubling, at most [`MAX_WAIT`],
    /// give or take a quarter.
    fn wait(&mut self, attempt: u32) -> Duration {
        let base = FIRST_WAIT
            .saturating_mul(1 << attempt.min(16))
            .min(MAX_WAIT);
        base.mul_f64(self.rng.random_range(0.75..1.25))
    }

    /// Checks that no core knows more than [`MAX_KNOWN_PER_CORE`] peers.
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn check_bounds(&self) -> Result<(), String> {
        match self
            .cores
            .iter()
            .find(|(_, k)| k.named.len() > MAX_NAMED || k.learnt.len() > MAX_LEARNT)
        {
            Some((core, k)) => Err(format!(
                "{} named and {} learnt peers known for {core:?}",
                k.named.len(),
                k.learnt.len()
            )),
            None => Ok(()),
        }
    }

    /// Checks that exactly the cores looking for their peers have a `Redial` timer.
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn check_timers(&self, timers: &TimerTable) -> Result<(), String> {
        for (core, k) in &self.cores {
            if timers.get(Timer::Redial(*core)).is_some() != k.attempt.is_some() {
                return Err(format!("redial timer of {core:?} out of step"));
            }
        }
        for (timer, _) in timers.entries() {
            if let Timer::Redial(core) = timer
                && !self.cores.contains_key(&core)
            {
                return Err(format!("redial timer of an unknown core {core:?}"));
            }
        }
        Ok(())
    }
}

//! The engine's timers, in one table (after quinn-proto's `connection/timer.rs`): each
//! [`Timer`] names what it is for and is set at most once. Parts set and clear their timers as
//! their state changes; [`Engine::poll_timeout`](super::Engine::poll_timeout) reads the first
//! one, and [`Engine::handle_timeout`](super::Engine::handle_timeout) pops the due ones and
//! routes each to the part it names. (The fetch queue keeps its own, for requests and
//! back-offs: it is a state machine of its own with its own tests.)

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use super::ChannelId;
use crate::{crypto::CoreKey, replication::PeerId};

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// A channel's handshake: ours waiting for the peer's `Accept`, or a parked one waiting
    /// for its core.
    Handshake(ChannelId),
    /// The higher id of a connection opens the channels the lower one did not.
    OpenRest(PeerId),
    /// Cores wait for room among a peer's channels: look for idle ones again.
    Room,
    /// A core's `update` stops waiting for silent peers.
    Update(CoreKey),
    /// A core's upgrade request is asked of another peer.
    Upgrade(CoreKey),
    /// A core's announcement waited for its interval.
    Announce(CoreKey),
    /// A core with no channel dials the peers it knows again.
    Redial(CoreKey),
    /// A channel of ours the peer refused for lack of room is opened again.
    Reopen(PeerId, CoreKey),
}

/// Every timer set, by timer and by deadline.
#[derive(Debug, Default)]
pub(super) struct TimerTable {
    by_timer: BTreeMap<Timer, Instant>,
    by_deadline: BTreeSet<(Instant, Timer)>,
}

impl TimerTable {
    /// Sets `timer` to fire at `at` (replacing its deadline if it was set).
    pub(super) fn set(&mut self, timer: Timer, at: Instant) {
        if let Some(old) = self.by_timer.insert(timer, at) {
            self.by_deadline.remove(&(old, timer));
        }
        self.by_deadline.insert((at, timer));
    }

    /// Clears `timer`, if it was set.
    pub(super) fn clear(&mut self, timer: Timer) {
        if let Some(at) = self.by_timer.remove(&timer) {
            self.by_deadline.remove(&(at, timer));
        }
    }

    /// When `timer` fires, if it is set.
    pub(super) fn get(&self, timer: Timer) -> Option<Instant> {
        self.by_timer.get(&timer).copied()
    }

    /// The earliest deadline.
    pub(super) fn first(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(at, _)| *at)
    }

    /// Removes and returns the earliest timer if it is due at `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let (at, timer) = *self.by_deadline.first()?;
        if at > now {
            return None;
        }
        self.by_deadline.pop_first();
        self.by_timer.remove(&timer);
        Some(timer)
    }

    /// Every timer set, in timer order.
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn entries(&self) -> impl Iterator<Item = (Timer, Instant)> + '_ {
        self.by_timer.iter().map(|(t, at)| (*t, *at))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn due_timers_pop_in_deadline_order_and_a_timer_is_set_once() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut table = TimerTable::default();
        table.set(Timer::Room, at(30));
        table.set(Timer::Handshake(4), at(10));
        table.set(Timer::Announce([1; 32]), at(20));
        table.set(Timer::Handshake(4), at(40));
        table.clear(Timer::Announce([1; 32]));
        table.clear(Timer::Update([1; 32]));
        assert_eq!(table.first(), Some(at(30)));
        assert_eq!(table.get(Timer::Handshake(4)), Some(at(40)));
        assert_eq!(table.pop_due(at(29)), None);
        assert_eq!(table.pop_due(at(40)), Some(Timer::Room));
        assert_eq!(table.pop_due(at(40)), Some(Timer::Handshake(4)));
        assert_eq!(table.pop_due(at(40)), None);
        assert_eq!(table.first(), None);
        assert_eq!(table.entries().count(), 0);
    }
}

//! Deadlines ordered by time, so that the next one is found without looking at every timer.
//!
//! The owner of a timer keeps its deadline in its own state (a request's `deadline`, a peer's
//! back-off) and tells this set whenever it sets, moves or clears it: the set is an index of
//! those fields, kept in step with them, and holds nothing the owner does not.

use std::{collections::BTreeSet, time::Instant};

/// A set of `(deadline, key)`: the earliest deadline in `O(log n)`, due timers popped in
/// deadline order, ties by key.
#[derive(Debug, Clone)]
pub(super) struct Deadlines<K> {
    set: BTreeSet<(Instant, K)>,
}

impl<K> Default for Deadlines<K> {
    fn default() -> Self {
        Self {
            set: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Copy> Deadlines<K> {
    /// Adds the timer of `key` due `at`.
    pub(super) fn insert(&mut self, at: Instant, key: K) {
        self.set.insert((at, key));
    }

    /// Removes the timer of `key` due `at`, if it is set.
    pub(super) fn remove(&mut self, at: Instant, key: K) {
        self.set.remove(&(at, key));
    }

    /// Moves the timer of `key` from `old` to `new` (either may be unset).
    pub(super) fn replace(&mut self, key: K, old: Option<Instant>, new: Option<Instant>) {
        if old == new {
            return;
        }
        if let Some(at) = old {
            self.remove(at, key);
        }
        if let Some(at) = new {
            self.insert(at, key);
        }
    }

    /// The earliest deadline.
    pub(super) fn first(&self) -> Option<Instant> {
        self.set.first().map(|(at, _)| *at)
    }

    /// Removes and returns the earliest timer if it is due at `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        if self.first()? > now {
            return None;
        }
        self.set.pop_first()
    }

    /// Removes every timer due at `now`, returning their keys in deadline order.
    pub(super) fn drain_due(&mut self, now: Instant) -> Vec<K> {
        std::iter::from_fn(|| self.pop_due(now))
            .map(|(_, key)| key)
            .collect()
    }

    /// Every timer set, by deadline.
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn entries(&self) -> Vec<(Instant, K)> {
        self.set.iter().copied().collect()
    }

    /// Number of timers set.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn due_timers_pop_in_deadline_order_and_moved_ones_follow_their_deadline() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut d = Deadlines::default();
        d.insert(at(30), 'a');
        d.insert(at(10), 'b');
        d.insert(at(20), 'c');
        d.replace('b', Some(at(10)), Some(at(40)));
        d.replace('c', Some(at(20)), None);
        assert_eq!(d.first(), Some(at(30)));
        assert_eq!(d.drain_due(at(29)), Vec::<char>::new());
        assert_eq!(d.drain_due(at(40)), vec!['a', 'b']);
        assert_eq!(d.len(), 0);
        assert_eq!(d.first(), None);
    }
}

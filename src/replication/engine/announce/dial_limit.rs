//! The rate limit on the dials that gossip announcements cause.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

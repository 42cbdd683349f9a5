//! A peer's allowance of some kind of message (extension messages, control messages): a
//! token bucket.

use std::time::Instant;

/// A peer's allowance of messages of one kind: a token bucket refilled at the configured
/// rate, holding at most a second's worth.
#[derive(Debug, Clone, Copy)]
pub(super) struct Allowance {
    /// Messages that may arrive now, in thousandths.
    milli_tokens: u64,
    /// When it was last refilled.
    refilled: Option<Instant>,
}

impl Default for Allowance {
    fn default() -> Self {
        Self {
            milli_tokens: u64::MAX,
            refilled: None,
        }
    }
}

impl Allowance {
    /// Takes one message at `now` if the allowance has it (`per_second` a second, at most
    /// that many at once).
    pub(super) fn take(&mut self, per_second: u64, now: Instant) -> bool {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_allowance_refills_at_its_rate_and_holds_a_second_of_it() {
        let t0 = Instant::now();
        let mut a = Allowance::default();
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
        let mut a = Allowance::default();
        assert_eq!((0..256).filter(|_| a.take(256, t0)).count(), 256);
        let step = Duration::from_nanos(1_000_000_000 / 256 + 1);
        let taken = (1..=1000u32)
            .filter(|i| a.take(256, t0 + step * *i))
            .count();
        assert_eq!(taken, 1000);
        assert!(!a.take(256, t0), "no credit for a clock that went back");
    }
}

//! Noticing that a followed log was truncated (moved to a new fork), and from which block
//! what was printed no longer holds.

use std::task::{Context, Poll, Waker};

use iroh_hypercore::{CoreEvent, Hypercore, core::Subscription};
use n0_future::{Stream, StreamExt};

/// Watches a core's events for truncations.
pub struct ForkWatch {
    events: Subscription,
    /// The fork of what was printed.
    fork: u64,
    /// The lowest length a truncation cut the log to since the last look.
    cut: Option<u64>,
    /// Events were missed since the last look: a cut may be unknown.
    missed: bool,
}

impl ForkWatch {
    /// Starts watching `core`, whose blocks printed so far are of its current fork.
    pub fn new(core: &Hypercore) -> Self {
        Self {
            events: core.subscribe(),
            fork: core.info().fork,
            cut: None,
            missed: false,
        }
    }

    /// If the log moved to another fork since the last look, the block from which what was
    /// printed may differ (0 when the cut was missed), and the new fork.
    pub fn rewind(&mut self, core: &Hypercore) -> Option<(u64, u64)> {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        while let Poll::Ready(Some(event)) = std::pin::Pin::new(&mut self.events).poll_next(&mut cx)
        {
            self.take(event);
        }
        // The state after the events: a core publishes its state before it sends the events,
        // so a truncation drained above shows in it, and a later one is drained next time.
        let info = core.info();
        if info.fork == self.fork {
            // Nothing was cut (every cut makes a new fork): what was missed did not matter.
            (self.cut, self.missed) = (None, false);
            return None;
        }
        self.fork = info.fork;
        let cut = match (self.missed, self.cut) {
            (false, Some(cut)) => cut,
            (false, None) => info.length,
            (true, _) => 0,
        };
        (self.cut, self.missed) = (None, false);
        Some((cut.min(info.length), info.fork))
    }

    /// Resolves at the next truncation (or missed events); [`rewind`](Self::rewind) says
    /// what it means.
    pub async fn changed(&mut self) {
        while let Some(event) = self.events.next().await {
            if self.take(event) {
                return;
            }
        }
        std::future::pending::<()>().await;
    }

    /// Records a truncation or missed events; returns whether it was one.
    fn take(&mut self, event: CoreEvent) -> bool {
        match event {
            CoreEvent::Truncate { length, .. } => {
                self.cut = Some(self.cut.map_or(length, |c| c.min(length)));
                true
            }
            CoreEvent::Lagged(_) => {
                self.missed = true;
                true
            }
            _ => false,
        }
    }
}

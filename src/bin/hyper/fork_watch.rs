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
    /// The newest fork a truncation event named since the last look, and the lowest length
    /// one cut the log to.
    cut: Option<(u64, u64)>,
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

    /// If the log moved to another fork since the last look: the block from which what was
    /// printed may differ (0 when the cut was missed), and the new fork.
    ///
    /// The fork moves on the truncation events alone. A core publishes its state before it
    /// sends the events, so a new fork can show in the state before its event is here: it
    /// is taken when the event comes (and [`changed`](Self::changed) wakes for it). Only
    /// when events were missed does the state decide, with the cut unknown.
    pub fn rewind(&mut self, core: &Hypercore) -> Option<(u64, u64)> {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        while let Poll::Ready(Some(event)) = std::pin::Pin::new(&mut self.events).poll_next(&mut cx)
        {
            self.take(event);
        }
        if std::mem::take(&mut self.missed) {
            // Events drained so far were sent after their state: this state is at least as
            // new as any of them.
            let fork = core.info().fork;
            if fork != self.fork {
                self.fork = fork;
                self.cut = None;
                return Some((0, fork));
            }
        }
        let (fork, cut) = self.cut.take()?;
        self.fork = fork;
        Some((cut, fork))
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

    /// Records a truncation to a newer fork or missed events; returns whether it was one.
    fn take(&mut self, event: CoreEvent) -> bool {
        match event {
            CoreEvent::Truncate { length, fork } if fork > self.fork => {
                self.cut = Some(match self.cut {
                    Some((f, cut)) => (f.max(fork), cut.min(length)),
                    None => (fork, length),
                });
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

//! [`CoreNews`]: how a core tells of its commits. Storage hands each committed batch's
//! [`Change`]s to it ([`CommitListener`]); it sends them to the core's event subscribers as
//! [`CoreEvent`]s, to the reads waiting inside the crate as [`StoredNews`] news (a run of blocks
//! in one message), and tells the replicating protocols watching the core that its log moved.
//! The application's signals to those protocols (wants, updates, a close) go through it too.

use tokio::sync::broadcast;

use super::{
    CoreEvent, LazyBroadcast,
    signals::{Signal, Watchers},
};
use crate::{
    crypto::CoreKey,
    storage::{Change, CommitListener},
};

/// Capacity of each core's event channel (the application's, one event per block: a run of
/// up to `MAX_RUN` blocks stored at once fits), allocated by its first subscriber.
const EVENT_CAPACITY: usize = 1024;

/// Capacity of each core's channel of [`StoredNews`] news, allocated by its first subscriber
/// (a waiting read). A slot costs about 70 bytes: with the application's 1,024-slot channel
/// behind every `download`, a reader following 10,000 cores spent 700 MiB and much of its
/// time filling these buffers (`bench_store`); 64 slots still cost 30 MiB there. A read this
/// far behind is told it lagged and looks in storage again (a run of stored blocks is one
/// message, so a read that keeps up is never this far behind).
const STORED_CAPACITY: usize = 16;

/// What a commit did to a core, as the reads waiting inside the crate follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoredNews {
    /// Blocks `start..end` were stored (one message for a run).
    Blocks {
        /// First block stored.
        start: u64,
        /// End of the stored run (exclusive).
        end: u64,
    },
    /// The log grew to `length`.
    Grew {
        /// New length.
        length: u64,
    },
    /// The log was truncated.
    Truncated,
}

/// The news of one core: its event channel and the protocols watching it.
#[derive(Debug)]
pub(crate) struct CoreNews {
    key: CoreKey,
    events: LazyBroadcast<CoreEvent>,
    stored: LazyBroadcast<StoredNews>,
    /// The replicating protocols following this core.
    pub watchers: Watchers,
}

impl CoreNews {
    /// The news of core `key`, with no subscriber or watcher yet.
    pub fn new(key: CoreKey) -> Self {
        Self {
            key,
            events: LazyBroadcast::new(EVENT_CAPACITY),
            stored: LazyBroadcast::new(STORED_CAPACITY),
            watchers: Watchers::default(),
        }
    }

    /// A receiver of this core's events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CoreEvent> {
        self.events.subscribe()
    }

    /// A receiver of what commits store from now on, a run of blocks in one message.
    pub fn subscribe_stored(&self) -> broadcast::Receiver<StoredNews> {
        self.stored.subscribe()
    }

    /// Sends the run of stored blocks gathered so far, if any.
    fn flush_run(&self, run: &mut Option<(u64, u64)>) {
        if let Some((start, end)) = run.take() {
            self.stored.send(StoredNews::Blocks { start, end });
        }
    }

    /// Tells the watching protocols of `signal`.
    pub fn signal(&self, signal: Signal) {
        self.watchers.signal(self.key, signal);
    }
}

impl CommitListener for CoreNews {
    fn committed(&self, changes: Vec<Change>) {
        let moved = changes.iter().any(Change::moves_the_log);
        let mut run: Option<(u64, u64)> = None;
        for change in changes {
            match change {
                Change::Download { index, .. } => match &mut run {
                    Some((_, end)) if *end == index => *end += 1,
                    _ => {
                        if let Some((start, end)) = run.replace((index, index.saturating_add(1))) {
                            self.stored.send(StoredNews::Blocks { start, end });
                        }
                    }
                },
                Change::Append { length, .. } => {
                    self.flush_run(&mut run);
                    self.stored.send(StoredNews::Grew { length });
                }
                Change::Truncate { .. } => {
                    self.flush_run(&mut run);
                    self.stored.send(StoredNews::Truncated);
                }
                Change::Clear { .. } => {}
            }
            self.events.send(change.into());
        }
        self.flush_run(&mut run);
        if moved {
            self.signal(Signal::Changed);
        }
    }
}

impl From<Change> for CoreEvent {
    fn from(change: Change) -> Self {
        match change {
            Change::Append {
                length,
                byte_length,
                fork,
            } => CoreEvent::Append {
                length,
                byte_length,
                fork,
            },
            Change::Truncate { length, fork } => CoreEvent::Truncate { length, fork },
            Change::Clear { start, end } => CoreEvent::Clear { start, end },
            Change::Download { index, bytes } => CoreEvent::Download { index, bytes },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit's downloads reach the waiting reads as runs, in order with its appends and
    /// truncations; the application's channel still gets one event per block.
    #[test]
    fn stored_news_gathers_runs_of_downloads_between_length_changes() {
        let news = CoreNews::new([3; 32]);
        let mut stored = news.subscribe_stored();
        let mut events = news.subscribe();
        let download = |index| Change::Download { index, bytes: 10 };
        news.committed(vec![
            download(0),
            download(1),
            download(2),
            download(5),
            Change::Append {
                length: 7,
                byte_length: 70,
                fork: 0,
            },
            download(6),
            Change::Clear { start: 0, end: 1 },
            Change::Truncate { length: 3, fork: 1 },
            download(2),
        ]);
        let got: Vec<StoredNews> = std::iter::from_fn(|| stored.try_recv().ok()).collect();
        assert_eq!(
            got,
            vec![
                StoredNews::Blocks { start: 0, end: 3 },
                StoredNews::Blocks { start: 5, end: 6 },
                StoredNews::Grew { length: 7 },
                StoredNews::Blocks { start: 6, end: 7 },
                StoredNews::Truncated,
                StoredNews::Blocks { start: 2, end: 3 },
            ]
        );
        let downloads = std::iter::from_fn(|| events.try_recv().ok())
            .filter(|e| matches!(e, CoreEvent::Download { .. }))
            .count();
        assert_eq!(downloads, 6);
    }
}

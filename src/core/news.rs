//! [`CoreNews`]: how a core tells of its commits. Storage hands each committed batch's
//! [`Change`]s to it ([`CommitListener`]); it sends them to the core's event subscribers as
//! [`CoreEvent`]s, and tells the replicating protocols watching the core that its log moved.
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

/// Capacity of each core's event channel, allocated by its first subscriber. Each slot
/// costs about 70 bytes: at 1,024 slots a store following 10,000 cores spent 700 MiB and
/// much of its time on these buffers (`bench_store`); a subscriber that falls this far
/// behind is told it lagged and re-reads.
const EVENT_CAPACITY: usize = 128;

/// The news of one core: its event channel and the protocols watching it.
#[derive(Debug)]
pub(crate) struct CoreNews {
    key: CoreKey,
    events: LazyBroadcast<CoreEvent>,
    /// The replicating protocols following this core.
    pub watchers: Watchers,
}

impl CoreNews {
    /// The news of core `key`, with no subscriber or watcher yet.
    pub fn new(key: CoreKey) -> Self {
        Self {
            key,
            events: LazyBroadcast::new(EVENT_CAPACITY),
            watchers: Watchers::default(),
        }
    }

    /// A receiver of this core's events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CoreEvent> {
        self.events.subscribe()
    }

    /// Tells the watching protocols of `signal`.
    pub fn signal(&self, signal: Signal) {
        self.watchers.signal(self.key, signal);
    }
}

impl CommitListener for CoreNews {
    fn committed(&self, changes: Vec<Change>) {
        let moved = changes.iter().any(Change::moves_the_log);
        for change in changes {
            self.events.send(change.into());
        }
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

//! How a replicating protocol follows the cores it replicates without a task per core: each
//! core pushes what the protocol must learn (its log changed, a read wants or no longer wants
//! blocks, an update was asked, it was closed, its last handle went) into the [`SignalQueue`]
//! of every protocol watching it, and each protocol drains its one queue.

use std::{
    collections::{BTreeSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard, Weak},
};

use tokio::sync::Notify;

use crate::crypto::CoreKey;

/// What happened to a watched core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Its log grew, was truncated or cleared. Coalesced per core: the protocol reads the
    /// core's state when it takes the signal.
    Changed,
    /// A read waits for blocks `start..end`.
    Want(u64, u64),
    /// A read stopped waiting for blocks `start..end`.
    Unwant(u64, u64),
    /// The application asked for its `n`th update.
    Update(u64),
    /// It was closed or deleted.
    Closed,
    /// Its last handle was dropped.
    Dropped,
}

/// The signals of every core one protocol watches, in the order they came (changes merged per
/// core). Unbounded, but only the application's own calls fill it: peers cannot.
#[derive(Debug, Default)]
pub(crate) struct SignalQueue {
    pending: Mutex<Pending>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    /// Cores whose log changed since the last drain.
    changed: BTreeSet<CoreKey>,
    /// Every other signal, in order: an unwant never overtakes its want.
    ordered: VecDeque<(CoreKey, Signal)>,
}

impl SignalQueue {
    /// An empty queue.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a signal of core `key`.
    pub fn push(&self, key: CoreKey, signal: Signal) {
        {
            let mut pending = self.pending();
            match signal {
                Signal::Changed => {
                    pending.changed.insert(key);
                }
                other => pending.ordered.push_back((key, other)),
            }
        }
        self.notify.notify_one();
    }

    /// Takes every signal queued: the ordered ones first, then one `Changed` per changed core.
    pub fn drain(&self) -> Vec<(CoreKey, Signal)> {
        let mut pending = self.pending();
        let changed = std::mem::take(&mut pending.changed);
        let mut out: Vec<_> = pending.ordered.drain(..).collect();
        out.extend(changed.into_iter().map(|key| (key, Signal::Changed)));
        out
    }

    /// Waits until there is a signal, then takes them all. Cancel-safe: signals not taken
    /// stay queued.
    pub async fn next(&self) -> Vec<(CoreKey, Signal)> {
        loop {
            let batch = self.drain();
            if !batch.is_empty() {
                return batch;
            }
            self.notify.notified().await;
        }
    }
}

/// The queues watching one core. They are held weakly: a protocol that is gone receives
/// nothing and is pruned.
#[derive(Debug, Default)]
pub(crate) struct Watchers(Mutex<Vec<Weak<SignalQueue>>>);

impl Watchers {
    fn list(&self) -> MutexGuard<'_, Vec<Weak<SignalQueue>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts sending this core's signals to `queue` (once, however often it is added).
    /// Returns whether it was not watching yet.
    pub fn add(&self, queue: &Arc<SignalQueue>) -> bool {
        let mut list = self.list();
        list.retain(|w| w.strong_count() > 0);
        let new = !list
            .iter()
            .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(queue)));
        if new {
            list.push(Arc::downgrade(queue));
        }
        new
    }

    /// Stops sending this core's signals to `queue`.
    pub fn remove(&self, queue: &Arc<SignalQueue>) {
        self.list()
            .retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(queue)));
    }

    /// Sends `signal` of core `key` to every queue watching it.
    pub fn signal(&self, key: CoreKey, signal: Signal) {
        let queues: Vec<_> = self.list().iter().filter_map(Weak::upgrade).collect();
        for queue in queues {
            queue.push(key, signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changes_merge_per_core_and_other_signals_keep_their_order() {
        let queue = SignalQueue::new();
        let watchers = Watchers::default();
        assert!(watchers.add(&queue));
        assert!(!watchers.add(&queue));
        let (a, b) = ([1; 32], [2; 32]);
        watchers.signal(a, Signal::Changed);
        watchers.signal(a, Signal::Want(0, 4));
        watchers.signal(b, Signal::Changed);
        watchers.signal(a, Signal::Changed);
        watchers.signal(a, Signal::Unwant(0, 4));
        let batch = tokio::time::timeout(std::time::Duration::from_secs(5), queue.next())
            .await
            .expect("signals were queued");
        assert_eq!(
            batch,
            vec![
                (a, Signal::Want(0, 4)),
                (a, Signal::Unwant(0, 4)),
                (a, Signal::Changed),
                (b, Signal::Changed),
            ],
            "one queue entry per signal although the queue was added twice"
        );
        assert!(queue.drain().is_empty());
    }

    #[test]
    fn a_removed_or_dropped_queue_gets_nothing() {
        let (kept, removed) = (SignalQueue::new(), SignalQueue::new());
        let watchers = Watchers::default();
        watchers.add(&kept);
        watchers.add(&removed);
        watchers.remove(&removed);
        watchers.signal([0; 32], Signal::Closed);
        assert!(removed.drain().is_empty());
        assert_eq!(kept.drain(), vec![([0; 32], Signal::Closed)]);
        drop(kept);
        watchers.signal([0; 32], Signal::Closed);
        assert!(watchers.list().is_empty() || watchers.list()[0].strong_count() == 0);
        watchers.add(&removed);
        assert_eq!(watchers.list().len(), 1, "the dropped queue was pruned");
    }
}

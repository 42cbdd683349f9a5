//! The cores replicated: each sends its changes, wanted ranges, update requests and its
//! closing to the driver's one signal queue (no task per core), which turns them into engine
//! inputs, and the engine's storage tasks run against it. Leaving a core undoes all of it.

use std::{
    sync::{Arc, Weak},
    time::Instant,
};

use super::Driver;
use crate::{
    core::{CoreInnerHandle, Hypercore, Signal},
    crypto::CoreKey,
    replication::{Input, Mode, Task, storage},
};

/// Why the driver replicates a core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    /// The application replicates it by name (`replicate`, `join`, `open_ticket`).
    Named,
    /// It is a core of the store, and the application follows the whole store.
    Store,
    /// A peer asked for it and the store serves it: only to the peers that ask.
    Served,
}

/// The driver's hold on a core it replicates.
enum Hold {
    /// A core the application replicates by name on a node that does not serve its whole
    /// store: held weakly, so that dropping its last handle ends its replication.
    App(Weak<CoreInnerHandle>),
    /// Any other core (served or followed for the store, or named on a node that serves its
    /// store): held open.
    Store(Hypercore),
}

/// A core the driver replicates.
pub(super) struct Replicated {
    /// The core (storage tasks run on it).
    hold: Hold,
    /// Why it is replicated.
    pub(super) why: Why,
    /// Its gossip topic, once the engine named it (joined only for [`Why::Named`]).
    pub(super) topic: Option<[u8; 32]>,
}

impl Replicated {
    /// A handle of the core, unless the application dropped its last one.
    pub(super) fn core(&self) -> Option<Hypercore> {
        match &self.hold {
            Hold::App(weak) => weak.upgrade().map(Hypercore::from_inner),
            Hold::Store(core) => Some(core.clone()),
        }
    }

    /// Holds `core` as `why` requires: weakly only for a core the application names on a
    /// node that does not serve its store (a served store keeps serving what it holds).
    fn hold(core: Hypercore, why: Why, serve_store: bool) -> Hold {
        match why {
            Why::Named if !serve_store => Hold::App(Arc::downgrade(&core.inner)),
            _ => Hold::Store(core),
        }
    }
}

impl Driver {
    /// Replicates `core` in `mode` (`None` keeps the mode of a core already replicated, else
    /// full), for the reason `why`: a core the application names joins its gossip topic.
    pub(super) fn replicate(
        &mut self,
        core: Hypercore,
        mode: Option<Mode>,
        why: Why,
        now: Instant,
    ) {
        let key = core.key();
        if core.is_closed() {
            return;
        }
        if why == Why::Named {
            self.left.remove(&key);
        }
        self.forget_closed(&key, now);
        if let Some(r) = self.cores.get_mut(&key) {
            let promoted = match (r.why, why) {
                (_, Why::Named) if r.why != Why::Named => true,
                (Why::Served, Why::Store) => true,
                _ => false,
            };
            if promoted {
                r.why = why;
                // The instance tracked (and watched) stays: `forget_closed` left it only if
                // it is open, and a handle passed in may be an older, closed one.
                let current = r.core().unwrap_or_else(|| core.clone());
                r.hold = Replicated::hold(current, why, self.serve_store);
                if why == Why::Named
                    && let Some(topic) = r.topic
                {
                    self.join_gossip(key, topic);
                }
            } else if mode.is_none() {
                return;
            }
        } else {
            self.track(core.clone(), why);
        }
        let mode = mode.unwrap_or_default();
        self.engine
            .add_core(key, storage::local_info(&core), mode, now);
    }

    /// Serves `core` (found in the store for a peer) to the peers whose parked channels prove
    /// its key; if none does, it is not kept.
    pub(super) fn serve(&mut self, core: Hypercore, mode: Mode, now: Instant) {
        let key = core.key();
        self.forget_closed(&key, now);
        if self.cores.contains_key(&key) {
            return;
        }
        self.track(core.clone(), Why::Served);
        let local = storage::local_info(&core);
        if !self.engine.serve_core(key, local, mode, now) {
            self.cores.remove(&key);
            core.inner.unwatch(&self.signals);
        }
    }

    /// Starts following the signals of `core`.
    fn track(&mut self, core: Hypercore, why: Why) {
        core.inner.watch(&self.signals);
        self.cores.insert(
            core.key(),
            Replicated {
                hold: Replicated::hold(core, why, self.serve_store),
                why,
                topic: None,
            },
        );
    }

    /// Drops the replication of `key` if its handle was closed, deleted or dropped (a core of
    /// the same key opened since is another one).
    pub(super) fn forget_closed(&mut self, key: &CoreKey, now: Instant) {
        let gone = self
            .cores
            .get(key)
            .is_some_and(|r| r.core().is_none_or(|c| c.is_closed()));
        if gone {
            self.stop(*key, now);
        }
    }

    /// The application leaves `key`: it is no longer replicated, and not served on demand
    /// until replicated by name again. Returns whether it was replicated.
    pub(super) fn leave(&mut self, key: CoreKey, now: Instant) -> bool {
        self.left.insert(key);
        self.stop(key, now)
    }

    /// Takes the signals of the cores replicated.
    pub(super) fn on_signals(&mut self, batch: Vec<(CoreKey, Signal)>) {
        let now = Instant::now();
        for (key, signal) in batch {
            match signal {
                Signal::Changed => self.local_changed(key, now),
                Signal::Want(s, e) => self.engine.handle(Input::Want(key, s, e), now),
                Signal::Unwant(s, e) => self.engine.handle(Input::Unwant(key, s, e), now),
                Signal::Update(asked) => self.update(key, asked, now),
                // Stops if the handle replicated is the one closed, deleted or dropped.
                Signal::Closed => self.forget_closed(&key, now),
                Signal::Dropped => {
                    let was_replicated = self.cores.contains_key(&key);
                    self.forget_closed(&key, now);
                    if was_replicated && !self.cores.contains_key(&key) {
                        // Still a core of the store: followed again if the store is.
                        self.on_core_created(key);
                    }
                }
            }
        }
    }

    /// Tells the engine the state of `key` if it changed since the engine last heard of it. A
    /// commit of the engine's own storage task reaches the engine with the task's result: its
    /// change signal then finds nothing new, and the engine hears of the commit once.
    pub(super) fn local_changed(&mut self, key: CoreKey, now: Instant) {
        if let Some(core) = self.cores.get(&key).and_then(Replicated::core) {
            let info = storage::local_info(&core);
            if self.engine.local(&key) != Some(info) {
                self.engine.handle(Input::LocalChanged(key, info), now);
            }
        }
    }

    /// Stops replicating `key`: the engine closes its channels, its gossip topic is left, its
    /// signals are no longer followed and the reads waiting on it fail. Returns whether it was
    /// replicated.
    fn stop(&mut self, key: CoreKey, now: Instant) -> bool {
        let replicated = self.engine.remove_core(key, now);
        self.update_asked.remove(&key);
        self.join_nodes.remove(&key);
        self.leave_gossip(key);
        if let Some(core) = self.cores.remove(&key).and_then(|r| r.core()) {
            core.inner.unwatch(&self.signals);
            core.stop_waits();
        }
        replicated
    }

    /// The engine named a core's gossip topic: joined if the application asked for the core.
    pub(super) fn on_join_gossip(&mut self, key: CoreKey, topic: [u8; 32]) {
        let Some(r) = self.cores.get_mut(&key) else {
            return;
        };
        r.topic = Some(topic);
        if r.why == Why::Named {
            self.join_gossip(key, topic);
        }
    }

    /// The application asked for an update of `key` (the `asked`th).
    pub(super) fn update(&mut self, key: CoreKey, asked: u64, now: Instant) {
        if !self.cores.contains_key(&key) {
            // Asked of a core not replicated (or of an instance left since): nobody answers.
            return;
        }
        let latest = self.update_asked.entry(key).or_default();
        *latest = (*latest).max(asked);
        self.engine.handle(Input::Update(key), now);
    }

    /// The engine answered the updates of `key` asked so far.
    pub(super) fn on_updated(&mut self, key: CoreKey) {
        if let Some(asked) = self.update_asked.remove(&key)
            && let Some(core) = self.cores.get(&key).and_then(Replicated::core)
        {
            core.mark_updated(asked);
        }
    }

    /// Runs a storage task of the engine on its core; its result goes back to the engine
    /// (failed at once if the core is no longer replicated: every task is answered).
    pub(super) fn run_task(&mut self, key: CoreKey, task: Task) {
        let core = self.cores.get(&key).and_then(Replicated::core);
        if core.is_none() && self.cores.contains_key(&key) {
            // Its last handle went and the signal is still queued: stop it first, so that
            // the engine takes the task's failure for a core it no longer has rather than
            // for an empty log.
            self.stop(key, Instant::now());
        }
        self.tasks.push(Box::pin(async move {
            match core {
                Some(core) => storage::run(core, task).await,
                None => task.not_run("the core is no longer replicated"),
            }
        }));
    }
}

//! The cores replicated: a forwarder per core turns its appends, truncations, wanted ranges
//! and its closing into engine inputs, and the engine's storage tasks run against it. Leaving
//! a core undoes all of it.

use std::time::Instant;

use n0_future::StreamExt;
use tokio::task::AbortHandle;

use super::{super::storage_tasks, Driver, Forward};
use crate::{
    core::{CoreEvent, Hypercore, WantChange},
    crypto::CoreKey,
    replication::{Mode, Task, engine::TaskId},
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

/// A core the driver replicates.
pub(super) struct Replicated {
    /// A handle of it (storage tasks run on it).
    pub(super) core: Hypercore,
    /// The task forwarding its changes.
    forwarder: AbortHandle,
    /// Why it is replicated.
    pub(super) why: Why,
    /// Its gossip topic, once the engine named it (joined only for [`Why::Named`]).
    pub(super) topic: Option<[u8; 32]>,
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
            .add_core(key, storage_tasks::local_info(&core), mode, now);
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
        let local = storage_tasks::local_info(&core);
        if !self.engine.serve_core(key, local, mode, now)
            && let Some(r) = self.cores.remove(&key)
        {
            r.forwarder.abort();
        }
    }

    /// Starts forwarding the changes of `core`.
    fn track(&mut self, core: Hypercore, why: Why) {
        let forwarder = self.spawn_forwarder(&core);
        self.cores.insert(
            core.key(),
            Replicated {
                core,
                forwarder,
                why,
                topic: None,
            },
        );
    }

    /// Drops the replication of `key` if its handle was closed or deleted (a core of the same
    /// key opened since is another one).
    fn forget_closed(&mut self, key: &CoreKey, now: Instant) {
        if self.cores.get(key).is_some_and(|r| r.core.is_closed()) {
            self.stop(*key, now);
        }
    }

    /// The application leaves `key`: it is no longer replicated, and not served on demand
    /// until replicated by name again. Returns whether it was replicated.
    pub(super) fn leave(&mut self, key: CoreKey, now: Instant) -> bool {
        self.left.insert(key);
        self.stop(key, now)
    }

    /// A replicated core was closed or deleted: it stops, if the handle replicated is the
    /// closed one.
    pub(super) fn on_core_closed(&mut self, key: CoreKey, now: Instant) {
        self.forget_closed(&key, now);
    }

    /// Stops replicating `key`: the engine closes its channels, its gossip topic is left, its
    /// forwarder stops and the reads waiting on it fail. Returns whether it was replicated.
    fn stop(&mut self, key: CoreKey, now: Instant) -> bool {
        let replicated = self.engine.remove_core(key, now);
        self.update_asked.remove(&key);
        self.leave_gossip(key);
        if let Some(r) = self.cores.remove(&key) {
            r.forwarder.abort();
            r.core.stop_waits();
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

    /// Forwards the changes, wanted ranges and closing of `core` to the driver.
    fn spawn_forwarder(&mut self, core: &Hypercore) -> AbortHandle {
        let key = core.key();
        let mut events = core.subscribe();
        let mut wants = core.subscribe_wants();
        let closed = core.closed();
        let mut updates = core.subscribe_update_requests();
        let tx = self.fwd_tx.clone();
        self.forwarders.spawn(async move {
            tokio::pin!(closed);
            loop {
                tokio::select! {
                    Ok(()) = updates.changed() => {
                        let asked = *updates.borrow_and_update();
                        if tx.send(Forward::Update(key, asked)).await.is_err() { break; }
                    }
                    ev = events.next() => match ev {
                        Some(CoreEvent::Append { .. } | CoreEvent::Truncate { .. }
                            | CoreEvent::Clear { .. } | CoreEvent::Lagged(_)) => {
                            if tx.send(Forward::CoreChanged(key)).await.is_err() { break; }
                        }
                        Some(_) => {}
                        None => break,
                    },
                    want = wants.recv() => match want {
                        Ok(WantChange::Want(s, e)) => {
                            if tx.send(Forward::Want(key, s, e)).await.is_err() { break; }
                        }
                        Ok(WantChange::Unwant(s, e)) => {
                            if tx.send(Forward::Unwant(key, s, e)).await.is_err() { break; }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    },
                    () = &mut closed => {
                        let _ = tx.send(Forward::CoreClosed(key)).await;
                        break;
                    }
                }
            }
        })
    }

    /// The application asked for an update of `key` (the `asked`th).
    pub(super) fn update(&mut self, key: CoreKey, asked: u64, now: Instant) {
        let latest = self.update_asked.entry(key).or_default();
        *latest = (*latest).max(asked);
        self.engine
            .handle(crate::replication::Input::Update(key), now);
    }

    /// The engine answered the updates of `key` asked so far.
    pub(super) fn on_updated(&mut self, key: CoreKey) {
        if let Some(asked) = self.update_asked.remove(&key)
            && let Some(r) = self.cores.get(&key)
        {
            r.core.mark_updated(asked);
        }
    }

    /// Runs a storage task of the engine on its core; its result goes back to the engine
    /// (failed at once if the core is no longer replicated: every task is answered).
    pub(super) fn run_task(&mut self, id: TaskId, key: CoreKey, task: Task) {
        let core = self.cores.get(&key).map(|r| r.core.clone());
        self.tasks.push(Box::pin(async move {
            let result = match core {
                Some(core) => storage_tasks::run_caught(core, task).await,
                None => storage_tasks::not_run(&task, "the core is no longer replicated"),
            };
            (id, result)
        }));
    }
}

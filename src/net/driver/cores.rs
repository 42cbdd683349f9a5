//! The cores replicated: a forwarder per core turns its appends, truncations, wanted ranges
//! and its closing into engine inputs, and the engine's storage tasks run against it. Leaving
//! a core undoes all of it.

use std::time::Instant;

use n0_future::StreamExt;
use tokio::task::AbortHandle;

use super::{super::storage_tasks, Driver, Forward};
use crate::{
    core::{CoreEvent, Hypercore},
    crypto::CoreKey,
    replication::{Mode, Task, engine::TaskId},
};

/// A core the driver replicates.
pub(super) struct Replicated {
    /// A handle of it (storage tasks run on it).
    pub(super) core: Hypercore,
    /// The task forwarding its changes.
    forwarder: AbortHandle,
    /// Whether its gossip topic is joined when the engine asks (the application replicates
    /// it by name; a core served only because a peer asked for it joins no topic).
    pub(super) gossip: bool,
    /// Its gossip topic, once the engine named it.
    pub(super) topic: Option<[u8; 32]>,
}

impl Driver {
    /// Replicates `core` in `mode` (`None` keeps the mode of a core already replicated, else
    /// full). `gossip`: the application asked for this core, so its topic is joined.
    pub(super) fn replicate(
        &mut self,
        core: Hypercore,
        mode: Option<Mode>,
        gossip: bool,
        now: Instant,
    ) {
        let key = core.key();
        self.left.remove(&key);
        if let Some(r) = self.cores.get_mut(&key) {
            if gossip && !r.gossip {
                r.gossip = true;
                if let Some(topic) = r.topic {
                    self.join_gossip(key, topic);
                }
            }
            if mode.is_none() {
                return;
            }
        } else {
            let forwarder = self.spawn_forwarder(&core);
            self.cores.insert(
                key,
                Replicated {
                    core: core.clone(),
                    forwarder,
                    gossip,
                    topic: None,
                },
            );
        }
        let mode = mode.unwrap_or_default();
        self.engine
            .add_core(key, storage_tasks::local_info(&core), mode, now);
    }

    /// Stops replicating `key`: the engine closes its channels, its gossip topic is left, its
    /// forwarder stops and the reads waiting on it fail. Returns whether it was replicated.
    pub(super) fn leave(&mut self, key: CoreKey, now: Instant) -> bool {
        self.left.insert(key);
        let replicated = self.engine.remove_core(key, now);
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
        if r.gossip {
            self.join_gossip(key, topic);
        }
    }

    /// Forwards the changes, wanted ranges and closing of `core` to the driver.
    fn spawn_forwarder(&mut self, core: &Hypercore) -> AbortHandle {
        let key = core.key();
        let mut events = core.subscribe();
        let mut wants = core.subscribe_wants();
        let closed = core.closed();
        let tx = self.fwd_tx.clone();
        self.forwarders.spawn(async move {
            tokio::pin!(closed);
            loop {
                tokio::select! {
                    ev = events.next() => match ev {
                        Some(CoreEvent::Append { .. } | CoreEvent::Truncate { .. }
                            | CoreEvent::Clear { .. } | CoreEvent::Lagged(_)) => {
                            if tx.send(Forward::CoreChanged(key)).await.is_err() { break; }
                        }
                        Some(_) => {}
                        None => break,
                    },
                    want = wants.recv() => match want {
                        Ok((s, e)) => {
                            if tx.send(Forward::Want(key, s, e)).await.is_err() { break; }
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

//! The cores replicated: a forwarder per core turns its appends, truncations and wanted
//! ranges into engine inputs, and the engine's storage tasks run against it.

use std::time::Instant;

use n0_future::StreamExt;

use super::{super::storage_tasks, Driver, Forward};
use crate::{
    core::{CoreEvent, Hypercore},
    crypto::CoreKey,
    replication::{Mode, Task, engine::TaskId},
};

impl Driver {
    pub(super) fn replicate(&mut self, core: Hypercore, mode: Option<Mode>, now: Instant) {
        let key = core.key();
        if mode.is_none() && self.cores.contains_key(&key) {
            return;
        }
        let mode = mode.unwrap_or_default();
        if !self.cores.contains_key(&key) {
            let mut events = core.subscribe();
            let mut wants = core.subscribe_wants();
            let tx = self.fwd_tx.clone();
            self.forwarders.spawn(async move {
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
                    }
                }
            });
            self.cores.insert(key, core.clone());
        }
        self.engine
            .add_core(key, storage_tasks::local_info(&core), mode, now);
    }

    /// Runs a storage task of the engine on its core; its result goes back to the engine.
    pub(super) fn run_task(&mut self, id: TaskId, key: CoreKey, task: Task) {
        if let Some(core) = self.cores.get(&key).cloned() {
            self.tasks.push(Box::pin(async move {
                (id, storage_tasks::run_caught(core, task).await)
            }));
        }
    }
}

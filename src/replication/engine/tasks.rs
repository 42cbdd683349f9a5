//! Storage tasks: what each running task is for, and routing its result to the part of the
//! engine that asked for it. Every [`Output::Task`](super::Output::Task) is answered by
//! exactly one [`Input::TaskDone`](super::Input::TaskDone) with its id.

use std::time::Instant;

use super::{ChannelId, Engine, Output, PeerId, Task, TaskResult};
use crate::{crypto::CoreKey, replication::wire::Message};

/// What a running storage task is for.
#[derive(Debug)]
pub(super) enum TaskCtx {
    /// Reading a proof for request `id` of `peer`.
    Serve {
        peer: PeerId,
        channel: ChannelId,
        id: u64,
    },
    /// Reading part of a run for `peer`.
    ServeRun {
        peer: PeerId,
        channel: ChannelId,
        /// The request, with `start` where this part of it begins.
        request: Message,
    },
    /// Preparing a push of new blocks (see the `push` module).
    Push { peer: PeerId, channel: ChannelId },
    /// Applying an upgrade proof from `peer`.
    ApplyUpgrade {
        core: CoreKey,
        /// The epoch of the core's replica that started it (see `Replica::epoch`).
        epoch: u64,
        peer: PeerId,
        /// The block that came with the upgrade: index and size.
        block: Option<(u64, u64)>,
    },
    /// Applying a batch of run proofs.
    ApplyRun {
        core: CoreKey,
        /// The epoch of the core's replica that started it.
        epoch: u64,
        /// Each proof's block index, peer and run request.
        proofs: Vec<(u64, PeerId, u64)>,
    },
}

impl Engine {
    /// Asks the driver to run `task` on `core`; its result comes back to the part of the
    /// engine `ctx` names.
    pub(super) fn new_task(&mut self, core: CoreKey, task: Task, ctx: TaskCtx) {
        let id = self.next_task;
        self.next_task += 1;
        self.tasks.insert(id, ctx);
        self.outputs.push_back(Output::Task(id, core, task));
    }

    pub(super) fn on_task_done(&mut self, id: u64, result: TaskResult, now: Instant) {
        let Some(ctx) = self.tasks.remove(&id) else {
            return;
        };
        if let TaskCtx::Serve { peer, .. } | TaskCtx::ServeRun { peer, .. } = &ctx {
            self.server.finished(peer);
        }
        match (ctx, result) {
            (TaskCtx::Serve { peer, channel, id }, TaskResult::Proof(r)) => {
                self.on_served(peer, channel, id, r)
            }
            (
                TaskCtx::ServeRun {
                    peer,
                    channel,
                    request,
                },
                TaskResult::Run(r),
            ) => self.on_served_run(peer, channel, request, r),
            (TaskCtx::Push { peer, channel }, TaskResult::Proof(r)) => {
                self.on_pushed(peer, channel, r)
            }
            // An apply started before the core was left and added again: the new replica
            // knows nothing of it (the core's change events bring its state).
            (
                TaskCtx::ApplyUpgrade { core, epoch, .. } | TaskCtx::ApplyRun { core, epoch, .. },
                _,
            ) if self.cores.get(&core).is_none_or(|r| r.epoch != epoch) => {}
            (
                TaskCtx::ApplyUpgrade {
                    core, peer, block, ..
                },
                TaskResult::Applied(outcome, local),
            ) => self.on_upgrade_applied(core, peer, block, outcome, local, now),
            (TaskCtx::ApplyRun { core, proofs, .. }, TaskResult::RunApplied(outcome, local)) => {
                self.on_run_applied(core, proofs, outcome, local, now)
            }
            (ctx, result) => {
                tracing::error!("task result {result:?} does not match its task {ctx:?}");
            }
        }
    }
}

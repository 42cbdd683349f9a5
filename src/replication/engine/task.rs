//! Storage tasks: what the engine asks the driver to run on a core, each variant carrying the
//! [`Reply`] its result goes back with. A `Reply<T>` takes only a `T`, so a task is answered
//! with a result of its own kind or not at all: there is no pairing to check at run time.

use std::marker::PhantomData;

use super::{ApplyOutcome, Input, LocalInfo};
use crate::{
    core::{RunApplied, RunItem},
    crypto::CoreKey,
    tree::{Proof, ProofRequest},
};

/// Identifies a storage task.
pub type TaskId = u64;

/// The result of reading a proof ([`Task::CreateProof`]).
pub type ProofRead = Result<Proof, String>;

/// The result of reading part of a run ([`Task::CreateRun`]).
pub type RunRead = Result<Vec<RunItem>, String>;

/// How applying data from a peer ended, with the core's state after it.
#[derive(Debug)]
pub struct Applied<T> {
    /// Stored, refused as invalid, or failed in storage.
    pub outcome: ApplyOutcome<T>,
    /// The core's state after the task.
    pub local: LocalInfo,
}

/// A storage task for the driver to run against a core; its result goes back with its
/// `reply` ([`Reply::done`]), exactly once.
#[derive(Debug)]
pub enum Task {
    /// `Hypercore::create_proof`.
    CreateProof {
        /// What to prove.
        request: ProofRequest,
        /// Where the proof goes.
        reply: Reply<ProofRead>,
    },
    /// `Hypercore::create_run_proofs_within(fork, start, end, length, max_bytes)`: a prefix
    /// of the run holding about `max_bytes` of blocks; the engine asks for the rest later.
    CreateRun {
        /// Requester's fork.
        fork: u64,
        /// First block.
        start: u64,
        /// End of the run.
        end: u64,
        /// Requester's length.
        length: u64,
        /// Block bytes read for this part of the run.
        max_bytes: u64,
        /// Where the proofs go.
        reply: Reply<RunRead>,
    },
    /// `Hypercore::verify_and_apply_proof`.
    ApplyProof {
        /// The proof a peer sent.
        proof: Proof,
        /// Where the outcome goes.
        reply: Reply<Applied<()>>,
    },
    /// `Hypercore::apply_block_proofs`.
    ApplyRun {
        /// The block proofs peers sent, in order.
        proofs: Vec<Proof>,
        /// Where the outcome goes.
        reply: Reply<Applied<RunApplied>>,
    },
}

impl Task {
    /// The task's id.
    pub fn id(&self) -> TaskId {
        match self {
            Task::CreateProof { reply, .. } => reply.id,
            Task::CreateRun { reply, .. } => reply.id,
            Task::ApplyProof { reply, .. } => reply.id,
            Task::ApplyRun { reply, .. } => reply.id,
        }
    }

    /// The input that reports this task as not run (its core is gone, say): failed, and
    /// nobody's fault.
    pub fn not_run(self, reason: &str) -> Input {
        self.fail(reason, false, LocalInfo::default())
    }

    /// The input that reports this task as failed with `reason`: a read fails, and an apply
    /// ends as the peer's fault (`peer_fault`: its data made the task fail) or as ours, with
    /// the core's state `local`.
    pub fn fail(self, reason: &str, peer_fault: bool, local: LocalInfo) -> Input {
        fn outcome<T>(e: String, peer_fault: bool) -> ApplyOutcome<T> {
            if peer_fault {
                ApplyOutcome::Invalid(e)
            } else {
                ApplyOutcome::Failed(e)
            }
        }
        let e = reason.to_string();
        match self {
            Task::CreateProof { reply, .. } => reply.done(Err(e)),
            Task::CreateRun { reply, .. } => reply.done(Err(e)),
            Task::ApplyProof { reply, .. } => reply.done(Applied {
                outcome: outcome(e, peer_fault),
                local,
            }),
            Task::ApplyRun { reply, .. } => reply.done(Applied {
                outcome: outcome(e, peer_fault),
                local,
            }),
        }
    }
}

/// The way back of a task's result: only a `T` answers it.
#[derive(Debug)]
pub struct Reply<T> {
    id: TaskId,
    /// The core the task runs on.
    core: CoreKey,
    result: PhantomData<fn(T)>,
}

impl<T> Reply<T> {
    /// The reply of task `id` on `core`.
    pub(super) fn new(id: TaskId, core: CoreKey) -> Self {
        Self {
            id,
            core,
            result: PhantomData,
        }
    }

    /// The id of its task.
    pub fn id(&self) -> TaskId {
        self.id
    }
}

/// A finished storage task, as [`Input::TaskDone`] carries it: made only by [`Reply::done`].
#[derive(Debug)]
pub struct TaskDone(pub(super) Done);

/// The result of a finished task, by kind, with the task's core and id.
#[derive(Debug)]
pub(super) enum Done {
    Proof(CoreKey, TaskId, ProofRead),
    Run(TaskId, RunRead),
    Applied(CoreKey, TaskId, Applied<()>),
    RunApplied(CoreKey, TaskId, Applied<RunApplied>),
}

impl TaskDone {
    /// The id of the task it answers.
    pub fn id(&self) -> TaskId {
        match self.0 {
            Done::Proof(_, id, _)
            | Done::Run(id, _)
            | Done::Applied(_, id, _)
            | Done::RunApplied(_, id, _) => id,
        }
    }
}

impl Reply<ProofRead> {
    /// The input reporting the task's result.
    pub fn done(self, result: ProofRead) -> Input {
        Input::TaskDone(TaskDone(Done::Proof(self.core, self.id, result)))
    }
}

impl Reply<RunRead> {
    /// The input reporting the task's result.
    pub fn done(self, result: RunRead) -> Input {
        Input::TaskDone(TaskDone(Done::Run(self.id, result)))
    }
}

impl Reply<Applied<()>> {
    /// The input reporting the task's result.
    pub fn done(self, result: Applied<()>) -> Input {
        Input::TaskDone(TaskDone(Done::Applied(self.core, self.id, result)))
    }
}

impl Reply<Applied<RunApplied>> {
    /// The input reporting the task's result.
    pub fn done(self, result: Applied<RunApplied>) -> Input {
        Input::TaskDone(TaskDone(Done::RunApplied(self.core, self.id, result)))
    }
}

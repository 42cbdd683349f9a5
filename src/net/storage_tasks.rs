//! Storage tasks: the engine's [`Task`]s carried out on a [`Hypercore`], and the engine's view
//! of a core ([`local_info`]).

use crate::{
    core::Hypercore,
    error::Error,
    replication::{LocalInfo, Task, TaskResult, engine::ApplyOutcome},
};

/// The engine's view of a core's state.
pub fn local_info(core: &Hypercore) -> LocalInfo {
    let info = core.info();
    LocalInfo {
        fork: info.fork,
        length: info.length,
        byte_length: info.byte_length,
        contiguous: info.contiguous_length,
        writable: info.writable,
    }
}

/// Runs `task` on `core`.
pub async fn run(core: Hypercore, task: Task) -> TaskResult {
    match task {
        Task::CreateProof(req) => {
            TaskResult::Proof(core.create_proof(req).await.map_err(|e| e.to_string()))
        }
        Task::CreateRun {
            fork,
            start,
            end,
            length,
            max_bytes,
        } => TaskResult::Run(
            core.create_run_proofs_within(fork, start, end, length, max_bytes)
                .await
                .map_err(|e| e.to_string()),
        ),
        Task::ApplyProof(proof) => {
            let outcome = outcome(core.verify_and_apply_proof(proof).await.map(|_| ()));
            TaskResult::Applied(outcome, local_info(&core))
        }
        Task::ApplyRun(proofs) => {
            let outcome = outcome(core.apply_block_proofs(proofs).await);
            TaskResult::RunApplied(outcome, local_info(&core))
        }
    }
}

/// Runs `task` on `core`; a panic inside it (a bug that input from a peer reached) becomes a
/// failed task rather than the end of the engine. A panic while applying a peer's data is the
/// peer's fault: that data is what it ran on.
pub async fn run_caught(core: Hypercore, task: Task) -> TaskResult {
    use n0_future::FutureExt;
    let failed: fn(String, &Hypercore) -> TaskResult = match &task {
        Task::CreateProof(_) => |e, _| TaskResult::Proof(Err(e)),
        Task::CreateRun { .. } => |e, _| TaskResult::Run(Err(e)),
        Task::ApplyProof(_) => {
            |e, core| TaskResult::Applied(ApplyOutcome::Invalid(e), local_info(core))
        }
        Task::ApplyRun(_) => {
            |e, core| TaskResult::RunApplied(ApplyOutcome::Invalid(e), local_info(core))
        }
    };
    match std::panic::AssertUnwindSafe(run(core.clone(), task))
        .catch_unwind()
        .await
    {
        Ok(result) => result,
        Err(_) => {
            tracing::error!("a replication task panicked");
            failed("the task panicked on this input".into(), &core)
        }
    }
}

/// The result of a `task` that could not run (its core is no longer replicated): failed,
/// nobody's fault.
pub(crate) fn not_run(task: &Task, reason: &str) -> TaskResult {
    let e = reason.to_string();
    match task {
        Task::CreateProof(_) => TaskResult::Proof(Err(e)),
        Task::CreateRun { .. } => TaskResult::Run(Err(e)),
        Task::ApplyProof(_) => TaskResult::Applied(ApplyOutcome::Failed(e), LocalInfo::default()),
        Task::ApplyRun(_) => TaskResult::RunApplied(ApplyOutcome::Failed(e), LocalInfo::default()),
    }
}

/// Splits errors into the peer's fault (the data did not verify) and ours (storage).
fn outcome<T>(r: Result<T, Error>) -> ApplyOutcome<T> {
    match r {
        Ok(v) => ApplyOutcome::Done(v),
        Err(
            e @ (Error::Proof(_)
            | Error::Signature(_)
            | Error::OutOfRange { .. }
            | Error::InvalidArgument(_)),
        ) => ApplyOutcome::Invalid(e.to_string()),
        Err(e) => ApplyOutcome::Failed(e.to_string()),
    }
}

//! Carrying out the engine's storage tasks on a [`Hypercore`].

use crate::{
    Error, Hypercore,
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
        } => TaskResult::Run(
            core.create_run_proofs(fork, start, end, length)
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

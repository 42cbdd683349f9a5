//! The engine's storage tasks carried out on a [`Hypercore`], and the engine's view of a core
//! ([`local_info`]): the one adapter between the sans-IO engine and storage, used by the iroh
//! driver and the simulator alike.

use n0_future::FutureExt;

use super::engine::{Applied, ApplyOutcome, Input, LocalInfo, Task};
use crate::{core::Hypercore, error::Error};

/// What a task that panicked reports.
const PANICKED: &str = "the task panicked on this input";

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

/// Runs `task` on `core` and returns the input that reports it. A panic inside it (a bug that
/// input from a peer reached) becomes a failed task rather than the end of the engine; a panic
/// while applying a peer's data is the peer's fault, since that data is what it ran on.
pub async fn run(core: Hypercore, task: Task) -> Input {
    match task {
        Task::CreateProof { request, reply } => {
            let read = caught(core.create_proof(request)).await;
            reply.done(read.and_then(|r| r.map_err(|e| e.to_string())))
        }
        Task::CreateRun {
            fork,
            start,
            end,
            length,
            max_bytes,
            reply,
        } => {
            let read = caught(core.create_run_proofs_within(fork, start, end, length, max_bytes));
            reply.done(read.await.and_then(|r| r.map_err(|e| e.to_string())))
        }
        Task::ApplyProof { proof, reply } => {
            let outcome = match caught(core.verify_and_apply_proof(proof)).await {
                Ok(r) => outcome(r.map(|_| ())),
                Err(e) => ApplyOutcome::Invalid(e),
            };
            let local = local_info(&core);
            reply.done(Applied { outcome, local })
        }
        Task::ApplyRun { proofs, reply } => {
            let outcome = match caught(core.apply_block_proofs(proofs)).await {
                Ok(r) => outcome(r),
                Err(e) => ApplyOutcome::Invalid(e),
            };
            let local = local_info(&core);
            reply.done(Applied { outcome, local })
        }
    }
}

/// `f`'s output, or what a panic in it reports.
async fn caught<T>(f: impl Future<Output = T>) -> Result<T, String> {
    std::panic::AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .map_err(|_| {
            tracing::error!("a replication task panicked");
            PANICKED.to_string()
        })
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

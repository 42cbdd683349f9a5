//! The engine's storage tasks carried out on a [`Hypercore`], and the engine's view of a core
//! ([`local_info`]): the one adapter between the sans-IO engine and storage, used by the iroh
//! driver and the simulator alike.

use n0_future::{FutureExt, boxed::BoxFuture};

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
///
/// A run apply takes its turn on the core when this is called, not when the future is first
/// polled: the engine's applies of one core are verified in the order it started them, each
/// while the one before it is written, and end in that order
/// ([`Hypercore::apply_block_proofs_in_turn`]). Every future returned must be polled to its end
/// or dropped.
pub fn run(core: Hypercore, task: Task) -> BoxFuture<Input> {
    match task {
        Task::CreateProof { request, reply } => {
            let read = caught(core.create_proof(request));
            Box::pin(
                async move { reply.done(read.await.and_then(|r| r.map_err(|e| e.to_string()))) },
            )
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
            Box::pin(
                async move { reply.done(read.await.and_then(|r| r.map_err(|e| e.to_string()))) },
            )
        }
        Task::ApplyProof { proof, reply } => {
            let apply = core.verify_and_apply_proof(proof);
            let apply = async move { apply.await.map(|_| ()) };
            Box::pin(applied(core, apply, |a| reply.done(a)))
        }
        Task::ApplyRun { proofs, reply } => {
            let apply = core.apply_block_proofs_in_turn(proofs);
            Box::pin(applied(core, apply, |a| reply.done(a)))
        }
    }
}

/// Awaits `apply` on `core` and reports it with `done`, with the core's state after it.
async fn applied<T>(
    core: Hypercore,
    apply: impl Future<Output = Result<T, Error>>,
    done: impl FnOnce(Applied<T>) -> Input,
) -> Input {
    let outcome = match caught(apply).await {
        Ok(r) => outcome(r),
        Err(e) => ApplyOutcome::Invalid(e),
    };
    let local = local_info(&core);
    done(Applied { outcome, local })
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

//! Which blobs a node serves to its peers over iroh-blobs: those a block of a core it serves
//! names, or that are being appended to one (every core of the store under `serve_store`,
//! but the ones the application left; else only the cores it replicates). A request for any
//! other hash (a blob of a log `hyper share` does not name, or one this node merely holds)
//! is refused as iroh-blobs refuses for permission, and so is the question of how much of it
//! is held (`observe`). A get must be for one blob (a request past its first item would read
//! the blob as a list of hashes and send those); a get-many names at most 64. Pushes are
//! refused always. Each decision is one pass over the store's tags.

use iroh_blobs::{
    Hash,
    provider::events::{
        AbortReason, EventMask, EventSender, ObserveMode, ProviderMessage, RequestMode,
    },
};
use tokio::sync::{mpsc, oneshot};

use super::driver::Command;

/// Requests waiting for a decision at most; iroh-blobs waits for room past it.
const QUEUE: usize = 64;
/// The most hashes one get-many request may name (our own fetches name one).
const MAX_HASHES: usize = 64;

/// The event sender to give `BlobsProtocol::new`: each request is decided by the scope the
/// driver reports at that moment.
pub(super) fn event_sender(commands: mpsc::WeakSender<Command>) -> EventSender {
    let mask = EventMask {
        get: RequestMode::Intercept,
        get_many: RequestMode::Intercept,
        push: RequestMode::Disabled,
        observe: ObserveMode::Intercept,
        ..EventMask::DEFAULT
    };
    let (sender, mut requests) = EventSender::channel(QUEUE, mask);
    tokio::spawn(async move {
        while let Some(request) = requests.recv().await {
            match request {
                ProviderMessage::GetRequestReceived(msg) => {
                    // One blob only: a request past offset 0 would read the blob as a list
                    // of hashes and send those blobs unasked for.
                    let verdict = match msg.inner.request.ranges.is_blob() {
                        true => decide(&commands, &[msg.inner.request.hash]).await,
                        false => Err(AbortReason::Permission),
                    };
                    let _ = msg.tx.send(verdict).await;
                }
                ProviderMessage::GetManyRequestReceived(msg) => {
                    let hashes = &msg.inner.request.hashes;
                    let verdict = match hashes.len() <= MAX_HASHES {
                        true => decide(&commands, hashes).await,
                        false => Err(AbortReason::RateLimited),
                    };
                    let _ = msg.tx.send(verdict).await;
                }
                ProviderMessage::ObserveRequestReceived(msg) => {
                    let verdict = decide(&commands, &[msg.inner.request.hash]).await;
                    let _ = msg.tx.send(verdict).await;
                }
                // Not asked for by the mask; a request dropped unanswered fails.
                _ => {}
            }
        }
    });
    sender
}

/// Allowed if every hash is named by a block of a core the node serves.
async fn decide(commands: &mpsc::WeakSender<Command>, hashes: &[Hash]) -> Result<(), AbortReason> {
    let Some(to_driver) = commands.upgrade() else {
        return Err(AbortReason::Permission);
    };
    let (tx, rx) = oneshot::channel();
    if to_driver.send(Command::BlobScope(tx)).await.is_err() {
        return Err(AbortReason::Permission);
    }
    drop(to_driver);
    let Ok(Some((store, scope))) = rx.await else {
        return Err(AbortReason::Permission);
    };
    if store.all_named(hashes, &scope).await {
        Ok(())
    } else {
        tracing::debug!("blob request refused: no block of a served core names its hash");
        Err(AbortReason::Permission)
    }
}

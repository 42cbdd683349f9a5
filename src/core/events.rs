//! Events a core emits, and a subscription stream of them.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use n0_future::Stream;
use tokio::sync::broadcast;

/// Something that happened to a core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreEvent {
    /// The log grew to `length` (by local appends or a verified upgrade).
    Append {
        /// New length.
        length: u64,
        /// New byte length.
        byte_length: u64,
        /// Fork id.
        fork: u64,
    },
    /// The log was truncated to `length` and is now on fork `fork`.
    Truncate {
        /// New length.
        length: u64,
        /// New fork id.
        fork: u64,
    },
    /// Blocks `start..end` were cleared locally (their tree nodes are kept).
    Clear {
        /// First cleared block.
        start: u64,
        /// End of the cleared range (exclusive).
        end: u64,
    },
    /// A verified block from a proof was stored.
    Download {
        /// Block index.
        index: u64,
        /// Block size.
        bytes: u64,
    },
    /// The subscriber fell behind and `n` events were dropped; re-read the core's state.
    Lagged(u64),
}

/// A stream of [`CoreEvent`]s from [`Hypercore::subscribe`](super::Hypercore::subscribe).
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = CoreEvent> + Send>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn new(rx: broadcast::Receiver<CoreEvent>) -> Self {
        let stream = n0_future::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(ev) => Some((ev, rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((CoreEvent::Lagged(n), rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        Self {
            inner: Box::pin(stream),
        }
    }
}

impl Stream for Subscription {
    type Item = CoreEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<CoreEvent>> {
        self.inner.as_mut().poll_next(cx)
    }
}

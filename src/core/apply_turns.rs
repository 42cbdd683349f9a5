//! Run applies of one core taking turns, so that one batch is verified while the batch before
//! it is written.
//!
//! Applying a batch of block proofs is a verifying read and then a write; one after the other,
//! the storage thread waits while a batch is verified and the verifying waits while it is
//! written. The replication engine starts a core's next apply while the last one is written
//! ([`Hypercore::apply_block_proofs_in_turn`](super::Hypercore::apply_block_proofs_in_turn)).
//! Each apply takes a [`Turn`] when it starts:
//! - it verifies after the apply before it verified, on top of the nodes that one verified
//!   (its proofs may rely on them, and they may not be written yet);
//! - its write carries the earlier nodes it relied on, so that what it stores stands on its
//!   own whether or not the earlier write succeeds (a stored node is never replaced);
//! - it ends after the apply before it ended, so the engine hears of them in order.
//!
//! Nodes are verified facts of a fork (a node covers a complete subtree, whose hash its blocks
//! fix): an apply on another fork than the earlier one's ignores them.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::tree::Node;

/// Where an apply stands, as the next apply of the core sees it.
#[derive(Debug, Clone, Default)]
enum Stage {
    /// Verifying (or waiting to).
    #[default]
    Verifying,
    /// Verified, its write queued: the nodes the verified proofs rely on, for the next apply.
    Verified(Arc<EarlierNodes>),
    /// Ended (written, failed or dropped): its nodes are stored, or will never be.
    Ended,
}

/// The nodes an apply verified (and the earlier ones it relied on), on `fork`, by index.
#[derive(Debug, Default)]
pub(crate) struct EarlierNodes {
    fork: u64,
    sorted: Arc<Vec<Node>>,
}

impl EarlierNodes {
    /// The node at `index`, if these nodes are of `fork` and hold one.
    pub(crate) fn get(&self, fork: u64, index: u64) -> Option<Node> {
        if fork != self.fork {
            return None;
        }
        let i = self.sorted.binary_search_by_key(&index, |n| n.index).ok()?;
        self.sorted.get(i).copied()
    }
}

/// The latest apply started on a core, which the next one follows (held by the core).
#[derive(Debug, Default)]
pub(crate) struct ApplyTurns {
    last: Mutex<Option<watch::Receiver<Stage>>>,
}

impl ApplyTurns {
    fn last(&self) -> MutexGuard<'_, Option<watch::Receiver<Stage>>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A turn for an apply starting now: it follows the apply started before it.
    pub(crate) fn take_turn(&self) -> Turn {
        let (stage, watch) = watch::channel(Stage::Verifying);
        let before = self.last().replace(watch);
        Turn { before, stage }
    }
}

/// One apply's place among its core's applies; see the module docs. Dropping it ends the
/// apply for the next one.
#[derive(Debug)]
pub(crate) struct Turn {
    before: Option<watch::Receiver<Stage>>,
    stage: watch::Sender<Stage>,
}

impl Turn {
    /// Waits until the apply before this one verified or ended: the nodes it verified and its
    /// write may not have stored yet (none when it ended, or there is none).
    pub(crate) async fn earlier_nodes(&mut self) -> Option<Arc<EarlierNodes>> {
        let before = self.before.as_mut()?;
        let stage = before
            .wait_for(|s| !matches!(s, Stage::Verifying))
            .await
            .ok()?
            .clone();
        match stage {
            Stage::Verified(nodes) => Some(nodes),
            Stage::Verifying | Stage::Ended => None,
        }
    }

    /// This apply verified and queued its write, which stores `sorted` (by index) on `fork`:
    /// the next apply may verify.
    pub(crate) fn verified(&self, fork: u64, sorted: Arc<Vec<Node>>) {
        let nodes = EarlierNodes { fork, sorted };
        self.stage.send_replace(Stage::Verified(Arc::new(nodes)));
    }

    /// Waits until the apply before this one ended, then ends this one.
    pub(crate) async fn end(mut self) {
        if let Some(before) = self.before.as_mut() {
            // An error is a sender dropped: that apply ended too.
            let _ = before.wait_for(|s| matches!(s, Stage::Ended)).await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // The nodes are let go: they are stored by now, or never will be.
        self.stage.send_replace(Stage::Ended);
    }
}

#[cfg(test)]
mod tests {
    use n0_future::future::poll_once;

    use super::*;

    fn node(index: u64) -> Node {
        Node {
            index,
            size: index,
            hash: [index as u8; 32],
        }
    }

    #[tokio::test]
    async fn the_first_apply_waits_for_nothing() {
        let turns = ApplyTurns::default();
        let mut first = turns.take_turn();
        assert!(first.earlier_nodes().await.is_none());
        first.end().await;
    }

    #[tokio::test]
    async fn the_next_apply_sees_the_nodes_verified_before_it_only_on_their_fork() {
        let turns = ApplyTurns::default();
        let first = turns.take_turn();
        let mut second = turns.take_turn();
        first.verified(3, Arc::new(vec![node(2), node(5)]));
        let nodes = second.earlier_nodes().await.expect("verified before");
        assert_eq!(nodes.get(3, 5), Some(node(5)));
        assert_eq!(nodes.get(3, 4), None);
        assert_eq!(nodes.get(4, 5), None, "another fork's nodes are not used");
        drop(first);
        second.end().await;
    }

    #[tokio::test]
    async fn an_apply_ends_after_the_one_before_it() {
        let turns = ApplyTurns::default();
        let first = turns.take_turn();
        let second = turns.take_turn();
        first.verified(0, Arc::default());
        let mut ending = std::pin::pin!(second.end());
        assert!(
            poll_once(&mut ending).await.is_none(),
            "ended before the apply before it"
        );
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), ending)
            .await
            .expect("ends once the one before it ended");
    }

    #[tokio::test]
    async fn an_ended_apply_hands_over_no_nodes_and_lets_them_go() {
        let turns = ApplyTurns::default();
        let first = turns.take_turn();
        first.verified(0, Arc::new(vec![node(1)]));
        drop(first);
        let mut second = turns.take_turn();
        assert!(
            second.earlier_nodes().await.is_none(),
            "its nodes are stored by now"
        );
    }
}

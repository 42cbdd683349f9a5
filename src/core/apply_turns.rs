//! Run applies of one core taking turns, so that one batch is verified while the batch before
//! it is written.
//!
//! Applying a batch of block proofs is a verifying read and then a write; one after the other,
//! the storage thread waits while a batch is verified and the verifying waits while it is
//! written. The replication engine starts a core's next apply while the last one is written
//! ([`Hypercore::apply_block_proofs_in_turn`](super::Hypercore::apply_block_proofs_in_turn)).
//! Each apply takes a [`Turn`] when it starts:
//! - it verifies after the apply before it verified, on top of the nodes that every apply
//!   verified and has not finished writing (its proofs may rely on them);
//! - what it writes is verified whether or not the earlier write succeeds: a proof relies
//!   only on the node its path ends at, which it computes and writes itself. If the earlier
//!   write failed (a storage error), the blocks written after it cannot be proven to a peer
//!   until the failed ones are fetched again and their nodes stored; the contiguous length
//!   never passes the gap, so nothing is claimed that is not held;
//! - it ends after the apply before it ended, so that the engine hears of them in order.
//!
//! Nodes are verified facts of a fork (a node covers a complete subtree, whose hash its blocks
//! fix): an apply on another fork than theirs ignores them. The nodes of an apply are let go
//! when it ends: they are stored by then, or never will be. So a core holds the nodes of the
//! applies running, whichever engines started them, and no more.

use std::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::watch;

use crate::tree::Node;

/// Where an apply stands, as the next apply of the core sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Verifying (or waiting to).
    Verifying,
    /// Verified, its write queued.
    Verified,
    /// Ended (written, failed, dropped or panicked).
    Ended,
}

/// The nodes an apply verified, on `fork`, by index.
#[derive(Debug, Default)]
pub(crate) struct EarlierNodes {
    fork: u64,
    sorted: Arc<Vec<Node>>,
}

impl EarlierNodes {
    /// The node at `index`, if these nodes are of `fork` and hold one.
    fn get(&self, fork: u64, index: u64) -> Option<Node> {
        if fork != self.fork {
            return None;
        }
        let i = self.sorted.binary_search_by_key(&index, |n| n.index).ok()?;
        self.sorted.get(i).copied()
    }
}

/// The nodes of the applies that verified and have not ended, when an apply looked.
#[derive(Debug, Default)]
pub(crate) struct Unwritten(Vec<Arc<EarlierNodes>>);

impl Unwritten {
    /// The node at `index` on `fork` among them, if one holds it.
    pub(crate) fn get(&self, fork: u64, index: u64) -> Option<Node> {
        self.0.iter().find_map(|n| n.get(fork, index))
    }
}

/// A core's run applies: the latest started, which the next follows, and the nodes of those
/// that verified and have not ended (held by the core).
#[derive(Debug, Default)]
pub(crate) struct ApplyTurns {
    /// The latest apply started (its id and stage), until it ends with no apply after it.
    last: Mutex<Option<(u64, watch::Receiver<Stage>)>>,
    unwritten: Mutex<Vec<(u64, Arc<EarlierNodes>)>>,
    next: AtomicU64,
}

/// Locks `m`; a panic elsewhere while it was held leaves nothing half-done here.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ApplyTurns {
    /// A turn for an apply starting now: it follows the apply started before it.
    pub(crate) fn take_turn(self: &Arc<Self>) -> Turn {
        let (stage, watch) = watch::channel(Stage::Verifying);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let before = lock(&self.last).replace((id, watch)).map(|(_, w)| w);
        Turn {
            turns: self.clone(),
            id,
            before,
            stage,
        }
    }

    /// How many applies' nodes are held (they verified and have not ended), and whether the
    /// stage of the latest apply is.
    #[cfg(test)]
    fn held(&self) -> (usize, bool) {
        (lock(&self.unwritten).len(), lock(&self.last).is_some())
    }
}

/// One apply's place among its core's applies; see the module docs. Dropping it ends the
/// apply for the next one.
#[derive(Debug)]
pub(crate) struct Turn {
    turns: Arc<ApplyTurns>,
    id: u64,
    before: Option<watch::Receiver<Stage>>,
    stage: watch::Sender<Stage>,
}

impl Turn {
    /// Waits until the apply before this one verified or ended, then returns the nodes of
    /// every apply that verified and has not ended: their writes may not have stored them.
    pub(crate) async fn earlier_nodes(&mut self) -> Unwritten {
        if let Some(before) = self.before.as_mut() {
            // An error is a sender dropped: that apply ended.
            let _ = before.wait_for(|s| *s != Stage::Verifying).await;
        }
        let unwritten = lock(&self.turns.unwritten);
        Unwritten(unwritten.iter().map(|(_, n)| n.clone()).collect())
    }

    /// This apply verified and queued its write, which stores `sorted` (by index) on `fork`:
    /// the next apply may verify, relying on them.
    pub(crate) fn verified(&self, fork: u64, sorted: Arc<Vec<Node>>) {
        {
            let mut unwritten = lock(&self.turns.unwritten);
            unwritten.retain(|(id, _)| *id != self.id);
            unwritten.push((self.id, Arc::new(EarlierNodes { fork, sorted })));
        }
        self.stage.send_replace(Stage::Verified);
    }

    /// Waits until the apply before this one ended, then ends this one.
    pub(crate) async fn end(mut self) {
        if let Some(before) = self.before.as_mut() {
            // An error is a sender dropped: that apply ended too.
            let _ = before.wait_for(|s| *s == Stage::Ended).await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        lock(&self.turns.unwritten).retain(|(id, _)| *id != self.id);
        self.stage.send_replace(Stage::Ended);
        // The latest apply ended: a core whose downloads are done keeps no stage of them.
        let mut last = lock(&self.turns.last);
        if last.as_ref().is_some_and(|(id, _)| *id == self.id) {
            *last = None;
        }
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
        let turns = Arc::new(ApplyTurns::default());
        let mut first = turns.take_turn();
        assert!(first.earlier_nodes().await.0.is_empty());
        first.end().await;
    }

    #[tokio::test]
    async fn the_next_apply_waits_for_the_one_before_to_verify_and_sees_its_nodes_on_their_fork() {
        let turns = Arc::new(ApplyTurns::default());
        let first = turns.take_turn();
        let mut second = turns.take_turn();
        assert!(
            poll_once(second.earlier_nodes()).await.is_none(),
            "waits for the one before it"
        );
        first.verified(3, Arc::new(vec![node(2), node(5)]));
        let nodes = second.earlier_nodes().await;
        assert_eq!(nodes.get(3, 5), Some(node(5)));
        assert_eq!(nodes.get(3, 4), None);
        assert_eq!(nodes.get(4, 5), None, "another fork's nodes are not used");
        drop(first);
        second.end().await;
    }

    /// Two engines driving one core interleave their applies: the third sees the nodes of
    /// the first as well as the second's while both are written.
    #[tokio::test]
    async fn an_apply_sees_the_nodes_of_every_apply_not_ended() {
        let turns = Arc::new(ApplyTurns::default());
        let first = turns.take_turn();
        let second = turns.take_turn();
        let mut third = turns.take_turn();
        first.verified(0, Arc::new(vec![node(1)]));
        second.verified(0, Arc::new(vec![node(3)]));
        let nodes = third.earlier_nodes().await;
        assert_eq!(
            (nodes.get(0, 1), nodes.get(0, 3)),
            (Some(node(1)), Some(node(3)))
        );
        drop(first);
        assert_eq!(turns.held(), (1, true), "an ended apply's nodes are let go");
        let mut fourth = turns.take_turn();
        drop((second, third));
        let nodes = fourth.earlier_nodes().await;
        assert!(nodes.0.is_empty(), "every earlier apply ended");
        drop(fourth);
        assert_eq!(
            turns.held(),
            (0, false),
            "nothing is kept once the last ended"
        );
    }

    #[tokio::test]
    async fn an_apply_ends_after_the_one_before_it() {
        let turns = Arc::new(ApplyTurns::default());
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
}

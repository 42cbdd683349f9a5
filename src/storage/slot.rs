//! [`CoreSlot`]: storage's record of one open core, shared by its handles and the storage
//! actor. The actor stages each batch's changes to the header here, signs and writes the header
//! once per batch, and after the commit publishes it as the committed state and tells the
//! core's [`CommitListener`] what changed.

use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    change::{Change, CommitListener},
    schema::CoreHeader,
};
use crate::{
    crypto::{CoreKind, KeyPair},
    tree::TreeState,
};

/// The state of a core its handles see.
#[derive(Debug)]
pub(crate) struct CoreState {
    /// The committed header: what is durable (or about to be, with relaxed durability).
    pub committed: CoreHeader,
    /// The head appends build on: the committed tree plus queued appends.
    pub head: TreeState,
    /// Set by `close()`: no more writes.
    pub closed: bool,
}

/// The header as the storage actor has applied it (ahead of the committed one while a batch is
/// open), and the changes to tell of once that batch commits. Touched only by the actor.
#[derive(Debug)]
pub(super) struct Staged {
    pub header: CoreHeader,
    pub events: Vec<Change>,
    /// Set when the core is deleted: nothing more is written for it.
    pub deleted: bool,
}

/// One open core: its id, its signing key pair (travelling with every write of the core), its
/// committed and staged state, and who hears of its commits.
#[derive(Debug)]
pub(crate) struct CoreSlot {
    /// The core's id in the database.
    pub id: u64,
    /// The secret seed of a writable core.
    seed: Option<[u8; 32]>,
    /// Its key pair, derived from the seed on first use (the actor signs each batch's final
    /// tree with it): deriving costs a base-point multiplication, which a core opened only
    /// to be served or read never needs.
    signer: std::sync::OnceLock<KeyPair>,
    state: Mutex<CoreState>,
    staged: Mutex<Staged>,
    /// Hears of each commit's changes.
    listener: Arc<dyn CommitListener>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CoreSlot {
    /// The slot of core `id`, stored with `header`, whose commits `listener` hears of.
    pub fn new(id: u64, header: CoreHeader, listener: Arc<dyn CommitListener>) -> Self {
        Self {
            id,
            seed: header.secret,
            signer: std::sync::OnceLock::new(),
            listener,
            state: Mutex::new(CoreState {
                head: header.tree.clone(),
                committed: header.clone(),
                closed: false,
            }),
            staged: Mutex::new(Staged {
                header,
                events: Vec::new(),
                deleted: false,
            }),
        }
    }

    /// Whether the core is writable here (its secret seed is stored).
    pub fn writable(&self) -> bool {
        self.seed.is_some()
    }

    /// The key pair of a writable core, derived on first use.
    pub fn signer(&self) -> Option<&KeyPair> {
        let seed = self.seed?;
        Some(self.signer.get_or_init(|| KeyPair::from_seed(seed)))
    }

    /// The state handles see.
    pub fn state(&self) -> MutexGuard<'_, CoreState> {
        lock(&self.state)
    }

    pub(super) fn staged(&self) -> MutexGuard<'_, Staged> {
        lock(&self.staged)
    }

    /// Drops queued-but-failed appends from the head.
    pub fn resync_head(&self) {
        let mut st = self.state();
        st.head = st.committed.tree.clone();
    }

    /// The staged header, signed if its tree is unsigned and this core holds the key pair,
    /// and the staged changes; `None` once the core is deleted.
    pub(super) fn seal(&self) -> Option<(CoreHeader, Vec<Change>)> {
        let mut staged = self.staged();
        if staged.deleted {
            return None;
        }
        let h = &mut staged.header;
        if h.tree.signature.is_none()
            && h.tree.length > 0
            && let Some(signer) = self.signer()
        {
            let kind = h.kind.unwrap_or(CoreKind::Default);
            let sig = signer.sign_tree(kind, &h.key, &h.tree.hash(), h.tree.length, h.tree.fork);
            h.tree.signature = Some(sig);
        }
        Some((staged.header.clone(), std::mem::take(&mut staged.events)))
    }

    /// Makes a committed header the core's state and tells the listener what changed, while
    /// the state is locked: whoever sees the new state subscribed to the listener's events
    /// after they were sent, so no event reaches a subscriber after the state it describes.
    pub(super) fn publish(&self, header: CoreHeader, changes: Vec<Change>) {
        let mut st = self.state();
        let appended = st.head.length > header.tree.length && st.head.fork == header.tree.fork;
        if !appended {
            st.head = header.tree.clone();
        }
        st.committed = header;
        if !changes.is_empty() {
            self.listener.committed(changes);
        }
    }

    /// Sets the staged state back to the committed one (after a failed batch).
    pub(super) fn roll_back(&self) {
        let committed = self.state().committed.clone();
        let mut staged = self.staged();
        staged.header = committed;
        staged.events.clear();
    }
}

//! A core the driver replicates: why, how it is held, and its gossip topic.

use std::sync::{Arc, Weak};

use crate::core::{CoreInnerHandle, Hypercore};

/// Why the driver replicates a core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    /// The application replicates it by name (`replicate`, `join`, `open_ticket`).
    Named,
    /// It is a core of the store, and the application follows the whole store.
    Store,
    /// A peer asked for it and the store serves it: only to the peers that ask.
    Served,
}

/// The driver's hold on a core it replicates.
enum Hold {
    /// A core the application replicates by name on a node that does not serve its whole
    /// store: held weakly, so that dropping its last handle ends its replication.
    App(Weak<CoreInnerHandle>),
    /// Any other core (served or followed for the store, or named on a node that serves its
    /// store): held open.
    Store(Hypercore),
}

/// A core the driver replicates.
pub(super) struct Replicated {
    /// The core (storage tasks run on it).
    hold: Hold,
    /// Why it is replicated.
    pub(super) why: Why,
    /// Its gossip topic, once the engine named it (joined only for [`Why::Named`]).
    pub(super) topic: Option<[u8; 32]>,
}

impl Replicated {
    /// `core`, replicated for `why` on a node that serves its store or not.
    pub(super) fn new(core: Hypercore, why: Why, serve_store: bool) -> Self {
        Self {
            hold: Self::hold(core, why, serve_store),
            why,
            topic: None,
        }
    }

    /// A handle of the core, unless the application dropped its last one.
    pub(super) fn core(&self) -> Option<Hypercore> {
        match &self.hold {
            Hold::App(weak) => weak.upgrade().map(Hypercore::from_inner),
            Hold::Store(core) => Some(core.clone()),
        }
    }

    /// Replicated for `why` from now on, holding `core` as that requires.
    pub(super) fn promote(&mut self, core: Hypercore, why: Why, serve_store: bool) {
        self.why = why;
        self.hold = Self::hold(core, why, serve_store);
    }

    /// Holds `core` as `why` requires: weakly only for a core the application names on a
    /// node that does not serve its store (a served store keeps serving what it holds).
    fn hold(core: Hypercore, why: Why, serve_store: bool) -> Hold {
        match why {
            Why::Named if !serve_store => Hold::App(Arc::downgrade(&core.inner)),
            _ => Hold::Store(core),
        }
    }
}

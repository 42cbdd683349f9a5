//! The whole-store part: finding the cores of the store that peers ask for by discovery key
//! (the key never travels; a few lookups at once), following every core of the store once
//! `replicate_store` is called (listing it, and hearing of cores created later), and
//! remembering the cores the application left. It owns the futures of its lookups and lists.

use std::collections::{HashSet, VecDeque};

use n0_future::{FuturesUnordered, StreamExt, boxed::BoxFuture};
use tokio::sync::broadcast;

use crate::{
    core::Hypercore,
    crypto::{CoreKey, DiscoveryKey},
    replication::Mode,
    store::Corestore,
};

/// Mode of a core served only because a peer opened a channel for it: nothing is fetched
/// but what the application asks for, and its length is followed.
pub(super) const SERVED_MODE: Mode = Mode::Sparse;

/// Store lookups run at once; more wait their turn (a peer can make us look up one discovery
/// key per channel it opens, and the engine bounds those channels).
pub(crate) const MAX_LOOKUPS: usize = 32;

/// Lookups waiting their turn past which those no channel waits for any more are dropped
/// (twice the engine's default cap of parked channels, each of which asks for at most one).
const MAX_WAITING_LOOKUPS: usize = 8192;

/// What the store part found.
pub(super) enum StoreEvent {
    /// A lookup by discovery key ended, with the core if the store holds it.
    Found(DiscoveryKey, Option<Hypercore>),
    /// Cores of the store to follow in the store's mode.
    Cores(Vec<Hypercore>),
    /// A core was created in the store.
    Created(CoreKey),
}

/// The whole-store part; see the module docs.
pub(super) struct StoreServing {
    store: Corestore,
    /// Whether a core of the store a peer asks for is served without the application
    /// replicating it.
    serve_store: bool,
    /// The mode every core of the store is followed in, once `replicate_store` was called.
    mode: Option<Mode>,
    /// News of cores created, once the store is followed.
    created: Option<broadcast::Receiver<CoreKey>>,
    /// Discovery keys being looked up, or waiting for a lookup.
    finding: HashSet<DiscoveryKey>,
    /// Discovery keys waiting for a lookup (at most [`MAX_LOOKUPS`] run at once).
    to_find: VecDeque<DiscoveryKey>,
    /// Lookups running.
    lookups: usize,
    /// Cores the application left: not served on demand until replicated again.
    left: HashSet<CoreKey>,
    io: FuturesUnordered<BoxFuture<StoreEvent>>,
}

impl StoreServing {
    /// Serving `store` (on demand if `serve_store`).
    pub(super) fn new(store: Corestore, serve_store: bool) -> Self {
        Self {
            store,
            serve_store,
            mode: None,
            created: None,
            finding: HashSet::new(),
            to_find: VecDeque::new(),
            lookups: 0,
            left: HashSet::new(),
            io: FuturesUnordered::new(),
        }
    }

    /// Whether a core of the store a peer asks for is served without being replicated.
    pub(super) fn serves_store(&self) -> bool {
        self.serve_store
    }

    /// The cores the application left.
    pub(super) fn left_cores(&self) -> Vec<CoreKey> {
        self.left.iter().copied().collect()
    }

    /// The store served.
    pub(super) fn corestore(&self) -> &Corestore {
        &self.store
    }

    /// The mode the whole store is followed in, once it is.
    pub(super) fn mode(&self) -> Option<Mode> {
        self.mode
    }

    /// The application left `key`: it is not served on demand until replicated by name.
    pub(super) fn left(&mut self, key: CoreKey) {
        self.left.insert(key);
    }

    /// The application replicates `key` by name again.
    pub(super) fn named(&mut self, key: &CoreKey) {
        self.left.remove(key);
    }

    /// Whether the application left `key`.
    pub(super) fn is_left(&self, key: &CoreKey) -> bool {
        self.left.contains(key)
    }

    /// A peer asked for a core we do not replicate: look for it in the store. `wanted` says
    /// whether a channel still waits for a discovery key: a lookup whose channels are all gone
    /// (refused, or timed out, while it waited its turn) is skipped, so a peer's made-up keys
    /// do not hold up another's.
    pub(super) fn find(&mut self, dk: DiscoveryKey, wanted: impl Fn(&DiscoveryKey) -> bool) {
        if !self.serve_store {
            return;
        }
        if self.finding.insert(dk) {
            self.to_find.push_back(dk);
            if self.to_find.len() > MAX_WAITING_LOOKUPS {
                let finding = &mut self.finding;
                self.to_find.retain(|dk| {
                    let keep = wanted(dk);
                    if !keep {
                        finding.remove(dk);
                    }
                    keep
                });
            }
            self.start_lookups(wanted);
        }
    }

    /// Starts waiting lookups that are still `wanted` while fewer than [`MAX_LOOKUPS`] run.
    fn start_lookups(&mut self, wanted: impl Fn(&DiscoveryKey) -> bool) {
        while self.lookups < MAX_LOOKUPS
            && let Some(dk) = self.to_find.pop_front()
        {
            if !wanted(&dk) {
                self.finding.remove(&dk);
                continue;
            }
            self.lookups += 1;
            let store = self.store.clone();
            self.io.push(Box::pin(async move {
                match store.get_by_discovery_key(&dk).await {
                    Ok(core) => StoreEvent::Found(dk, core),
                    Err(e) => {
                        tracing::warn!("looking up a core for a peer failed: {e}");
                        StoreEvent::Found(dk, None)
                    }
                }
            }));
        }
    }

    /// The lookup of `dk` ended: the next one still `wanted` starts.
    pub(super) fn found(&mut self, dk: &DiscoveryKey, wanted: impl Fn(&DiscoveryKey) -> bool) {
        self.finding.remove(dk);
        self.lookups = self.lookups.saturating_sub(1);
        self.start_lookups(wanted);
    }

    /// Follows every core of the store in `mode`, and each core created later.
    pub(super) fn follow(&mut self, mode: Mode) {
        if self.mode.is_none() {
            self.created = Some(self.store.subscribe_created());
        }
        self.mode = Some(mode);
        self.load();
    }

    /// Lists every core of the store, to follow them in the store's mode.
    fn load(&mut self) {
        let store = self.store.clone();
        self.io.push(Box::pin(async move {
            let mut cores = Vec::new();
            match store.list().await {
                Ok(keys) => {
                    for key in keys {
                        match store.get(key).await {
                            Ok(Some(core)) => cores.push(core),
                            Ok(None) => {} // deleted meanwhile
                            Err(e) => tracing::warn!("opening a core of the store failed: {e}"),
                        }
                    }
                }
                Err(e) => tracing::warn!("listing the store failed: {e}"),
            }
            StoreEvent::Cores(cores)
        }));
    }

    /// Opens core `key` of the store, created since, to follow it.
    pub(super) fn open(&mut self, key: CoreKey) {
        let store = self.store.clone();
        self.io.push(Box::pin(async move {
            match store.get(key).await {
                Ok(core) => StoreEvent::Cores(core.into_iter().collect()),
                Err(e) => {
                    tracing::warn!("opening a created core failed: {e}");
                    StoreEvent::Cores(Vec::new())
                }
            }
        }));
    }

    /// The next lookup, list or created core. Cancel-safe.
    pub(super) async fn next(&mut self) -> StoreEvent {
        loop {
            let created = &mut self.created;
            let news = async move {
                match created {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let news = tokio::select! {
                Some(ev) = self.io.next(), if !self.io.is_empty() => return ev,
                news = news => news,
            };
            match news {
                Ok(key) => return StoreEvent::Created(key),
                // News of created cores was lost: list the store again.
                Err(broadcast::error::RecvError::Lagged(_)) => self.load(),
                Err(broadcast::error::RecvError::Closed) => self.created = None,
            }
        }
    }
}

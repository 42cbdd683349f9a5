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

/// Discovery keys looked up in one read of the store.
const MAX_LOOKUP_BATCH: usize = 32;
/// Reads of lookups at once; more keys wait their turn (a peer can make us look up one
/// discovery key per channel it opens, and the engine bounds those channels). Keys that come
/// while both run go together in the next.
const MAX_LOOKUP_READS: usize = 2;

/// Lookups waiting their turn past which those no channel waits for any more are dropped
/// (twice the engine's default cap of parked channels, each of which asks for at most one).
const MAX_WAITING_LOOKUPS: usize = 8192;

/// What the store part found.
pub(super) enum StoreEvent {
    /// Lookups by discovery key ended, each with the core if the store holds it.
    Found(Vec<(DiscoveryKey, Option<Hypercore>)>),
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
    /// Discovery keys waiting for a lookup.
    to_find: VecDeque<DiscoveryKey>,
    /// Reads of lookups running (at most [`MAX_LOOKUP_READS`]).
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

    /// Starts reads of the waiting lookups that are still `wanted`, up to
    /// [`MAX_LOOKUP_BATCH`] keys each, while fewer than [`MAX_LOOKUP_READS`] run.
    fn start_lookups(&mut self, wanted: impl Fn(&DiscoveryKey) -> bool) {
        while self.lookups < MAX_LOOKUP_READS && !self.to_find.is_empty() {
            let mut batch = Vec::new();
            while batch.len() < MAX_LOOKUP_BATCH
                && let Some(dk) = self.to_find.pop_front()
            {
                if wanted(&dk) {
                    batch.push(dk);
                } else {
                    self.finding.remove(&dk);
                }
            }
            if batch.is_empty() {
                return;
            }
            self.lookups += 1;
            let store = self.store.clone();
            self.io.push(Box::pin(async move {
                let found = match store.get_by_discovery_keys(batch.clone()).await {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::warn!("looking up cores for peers failed: {e}");
                        Vec::new()
                    }
                };
                let mut found = found.into_iter();
                let found = batch
                    .into_iter()
                    .map(|dk| match found.next() {
                        Some(Ok(core)) => (dk, core),
                        Some(Err(e)) => {
                            tracing::warn!("looking up a core for a peer failed: {e}");
                            (dk, None)
                        }
                        None => (dk, None),
                    })
                    .collect();
                StoreEvent::Found(found)
            }));
        }
    }

    /// A read of lookups ended: `dks` are no longer being found, and the next read of those
    /// still `wanted` starts.
    pub(super) fn found<'a>(
        &mut self,
        dks: impl IntoIterator<Item = &'a DiscoveryKey>,
        wanted: impl Fn(&DiscoveryKey) -> bool,
    ) {
        for dk in dks {
            self.finding.remove(dk);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::discovery_key;

    /// The lookups of a read that ended.
    async fn next_found(serving: &mut StoreServing) -> Vec<(DiscoveryKey, Option<Hypercore>)> {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), serving.next())
            .await
            .expect("a read of lookups ended");
        match ev {
            StoreEvent::Found(found) => found,
            _ => panic!("not a lookup"),
        }
    }

    #[tokio::test]
    async fn lookups_are_read_in_batches_and_every_key_is_answered_once() {
        let store = Corestore::memory().await.unwrap();
        let mut keys = Vec::new();
        for i in 0..40 {
            // Closed again: found by reading the store.
            keys.push(store.get_named(&format!("core {i}")).await.unwrap().key());
        }
        let mut serving = StoreServing::new(store, true);
        // 70 keys: the 40 cores, 20 the store does not hold, and 10 no channel waits for
        // any more by the time their turn comes.
        let held: Vec<DiscoveryKey> = keys.iter().map(discovery_key).collect();
        let unknown: Vec<DiscoveryKey> = (0..20u8).map(|i| [i; 32]).collect();
        let dropped: Vec<DiscoveryKey> = (100..110u8).map(|i| [i; 32]).collect();
        let wanted = |dk: &DiscoveryKey| !dropped.contains(dk);
        for dk in held.iter().chain(&unknown).chain(&dropped) {
            serving.find(*dk, wanted);
        }
        // Two reads started with the first keys, the rest wait for them.
        assert_eq!(serving.lookups, MAX_LOOKUP_READS);
        let (mut answered, mut reads) = (Vec::new(), 0);
        while answered.len() < held.len() + unknown.len() {
            reads += 1;
            let found = next_found(&mut serving).await;
            assert!(found.len() <= MAX_LOOKUP_BATCH);
            assert!(!found.is_empty());
            serving.found(found.iter().map(|(dk, _)| dk), wanted);
            assert!(serving.lookups <= MAX_LOOKUP_READS);
            answered.extend(found);
        }
        // The first two keys went alone, as they came; the 58 others waited and went in two
        // reads.
        assert_eq!(reads, 4);
        // Every wanted key once (reads end in any order), each held one with its core.
        let mut got: Vec<DiscoveryKey> = answered.iter().map(|(dk, _)| *dk).collect();
        let mut asked: Vec<DiscoveryKey> = held.iter().chain(&unknown).copied().collect();
        got.sort_unstable();
        asked.sort_unstable();
        assert_eq!(got, asked);
        for (dk, core) in &answered {
            let key = keys.iter().find(|k| discovery_key(k) == *dk);
            assert_eq!(core.as_ref().map(|c| c.key()), key.copied());
        }
        // Nothing left: no read runs, and every key can be asked for again.
        assert_eq!(serving.lookups, 0);
        assert!(serving.to_find.is_empty() && serving.finding.is_empty());
    }
}

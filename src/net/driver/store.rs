//! Serving the whole store: a channel a peer opens for a core the store holds (named by its
//! discovery key; the key never travels) is served on demand, and `replicate_store` follows
//! every core of the store, the ones created later too.

use std::time::Instant;

use super::{Driver, Forward, Io, Why};
use crate::{core::Hypercore, crypto::DiscoveryKey, replication::Mode};

/// Mode of a core served only because a peer opened a channel for it: nothing is fetched
/// but what the application asks for, and its length is followed.
const SERVED_MODE: Mode = Mode::Sparse;

/// Store lookups run at once; more wait their turn (a peer can make us look up one discovery
/// key per channel it opens, and the engine bounds those channels).
pub(crate) const MAX_LOOKUPS: usize = 32;

impl Driver {
    /// The engine parked a channel for a core it does not replicate: look for it in the store.
    pub(super) fn find_core(&mut self, dk: DiscoveryKey) {
        if !self.serve_store {
            return;
        }
        if self.finding.insert(dk) {
            self.to_find.push_back(dk);
            self.start_lookups();
        }
    }

    /// Starts waiting lookups while fewer than [`MAX_LOOKUPS`] run.
    fn start_lookups(&mut self) {
        while self.lookups < MAX_LOOKUPS
            && let Some(dk) = self.to_find.pop_front()
        {
            self.lookups += 1;
            let store = self.store.clone();
            self.io.push(Box::pin(async move {
                match store.get_by_discovery_key(&dk).await {
                    Ok(core) => Io::Found(dk, core),
                    Err(e) => {
                        tracing::warn!("looking up a core for a peer failed: {e}");
                        Io::Found(dk, None)
                    }
                }
            }));
        }
    }

    /// A lookup ended: a core found (and not left by the application) is served to the peers
    /// that proved its key; otherwise their channels wait out their handshake timeout.
    pub(super) fn on_found(&mut self, dk: DiscoveryKey, core: Option<Hypercore>, now: Instant) {
        self.finding.remove(&dk);
        self.lookups = self.lookups.saturating_sub(1);
        self.start_lookups();
        match core {
            Some(core) if !self.left.contains(&core.key()) && !core.is_closed() => {
                match self.store_mode {
                    Some(mode) => self.replicate(core, Some(mode), Why::Store, now),
                    None => self.serve(core, SERVED_MODE, now),
                }
            }
            _ => {}
        }
    }

    /// Follows every core of the store in `mode`, and each core created later.
    pub(super) fn replicate_store(&mut self, mode: Mode) {
        if self.store_mode.is_none() {
            let mut created = self.store.subscribe_created();
            let tx = self.fwd_tx.clone();
            self.forwarders.spawn(async move {
                loop {
                    let fwd = match created.recv().await {
                        Ok(key) => Forward::CoreCreated(key),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            Forward::CreatedLagged
                        }
                        Err(_) => return,
                    };
                    if tx.send(fwd).await.is_err() {
                        return;
                    }
                }
            });
        }
        self.store_mode = Some(mode);
        self.load_store();
    }

    /// Loads every core of the store, to replicate them in the store's mode.
    pub(super) fn load_store(&mut self) {
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
            Io::StoreCores(cores)
        }));
    }

    /// Cores of the store to follow in the store's mode: each not replicated yet (and not
    /// left) is added, and each only served so far is followed in that mode.
    pub(super) fn on_store_cores(&mut self, cores: Vec<Hypercore>, now: Instant) {
        let Some(mode) = self.store_mode else {
            return;
        };
        for core in cores {
            let key = core.key();
            // A core deleted and created again: the closed instance tracked goes first.
            self.forget_closed(&key, now);
            let why = self.cores.get(&key).map(|r| r.why);
            if self.left.contains(&key) || why.is_some_and(|w| w != Why::Served) {
                continue;
            }
            self.replicate(core, Some(mode), Why::Store, now);
        }
    }

    /// A core was created in the store: followed if the whole store is.
    pub(super) fn on_core_created(&mut self, key: crate::crypto::CoreKey) {
        // Its closed predecessor may still be tracked (its Closed signal not taken yet).
        self.forget_closed(&key, Instant::now());
        if self.store_mode.is_none() || self.cores.get(&key).is_some_and(|r| r.why != Why::Served) {
            return;
        }
        let store = self.store.clone();
        self.io.push(Box::pin(async move {
            match store.get(key).await {
                Ok(core) => Io::StoreCores(core.into_iter().collect()),
                Err(e) => {
                    tracing::warn!("opening a created core failed: {e}");
                    Io::Done
                }
            }
        }));
    }
}

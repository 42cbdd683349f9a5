//! The cores part: the cores replicated, how each is held, the nodes each was joined with, the
//! `update`s the application asked, and the storage tasks the engine runs on them. Each core
//! pushes its changes, wanted ranges, update requests and its closing into one signal queue
//! (no task per core), which this part owns with its task futures.

use std::{collections::HashMap, sync::Arc};

use iroh::EndpointId;
use n0_future::{FuturesUnordered, StreamExt, boxed::BoxFuture};

use super::{
    connections::MAX_JOIN_NODES,
    replicated::{Replicated, Why},
};
use crate::{
    core::{Hypercore, SignalQueue},
    crypto::CoreKey,
    replication::{Input, Task, storage},
};

/// The cores part; see the module docs.
pub(super) struct Cores {
    /// Whether the store is served (cores named are then held open).
    serve_store: bool,
    cores: HashMap<CoreKey, Replicated>,
    /// The latest `update()` the application asked of each core, until the engine answers.
    update_asked: HashMap<CoreKey, u64>,
    /// The nodes each core was joined with (at most `MAX_JOIN_NODES`): its blob providers
    /// beside its channel peers.
    join_nodes: HashMap<CoreKey, Vec<EndpointId>>,
    /// What happens to the cores replicated (each pushes into it).
    signals: Arc<SignalQueue>,
    /// Storage tasks running, each ending with the input that reports it.
    tasks: FuturesUnordered<BoxFuture<Input>>,
}

impl Cores {
    /// No core yet (`serve_store`: the store is served).
    pub(super) fn new(serve_store: bool) -> Self {
        Self {
            serve_store,
            cores: HashMap::new(),
            update_asked: HashMap::new(),
            join_nodes: HashMap::new(),
            signals: SignalQueue::new(),
            tasks: FuturesUnordered::new(),
        }
    }

    /// The cores replicated.
    pub(super) fn len(&self) -> usize {
        self.cores.len()
    }

    /// Why `key` is replicated, if it is.
    pub(super) fn why(&self, key: &CoreKey) -> Option<Why> {
        self.cores.get(key).map(|r| r.why)
    }

    /// A handle of `key`, if it is replicated and the application kept one.
    pub(super) fn core(&self, key: &CoreKey) -> Option<Hypercore> {
        self.cores.get(key).and_then(Replicated::core)
    }

    /// Whether `key` is tracked but its handle was closed, deleted or dropped (a core of the
    /// same key opened since is another one).
    pub(super) fn is_gone(&self, key: &CoreKey) -> bool {
        self.cores
            .get(key)
            .is_some_and(|r| r.core().is_none_or(|c| c.is_closed()))
    }

    /// Starts following the signals of `core`, replicated for `why`.
    pub(super) fn track(&mut self, core: Hypercore, why: Why) {
        core.inner.watch(&self.signals);
        let r = Replicated::new(core.clone(), why, self.serve_store);
        self.cores.insert(core.key(), r);
    }

    /// `core`, replicated already, is now replicated for `why` if that is a promotion (by
    /// name, or from served to followed with the store): returns whether it was, and the
    /// gossip topic to join if it is now named.
    pub(super) fn promote(&mut self, core: &Hypercore, why: Why) -> (bool, Option<[u8; 32]>) {
        let Some(r) = self.cores.get_mut(&core.key()) else {
            return (false, None);
        };
        let promoted = match (r.why, why) {
            (old, Why::Named) => old != Why::Named,
            (Why::Served, Why::Store) => true,
            _ => false,
        };
        if !promoted {
            return (false, None);
        }
        // The instance tracked (and watched) stays: a handle passed in may be an older,
        // closed one.
        let current = r.core().unwrap_or_else(|| core.clone());
        r.promote(current, why, self.serve_store);
        let topic = if why == Why::Named { r.topic } else { None };
        (true, topic)
    }

    /// The engine named `key`'s gossip topic: returns it if the core is named (and so joins
    /// it).
    pub(super) fn set_topic(&mut self, key: &CoreKey, topic: [u8; 32]) -> Option<[u8; 32]> {
        let r = self.cores.get_mut(key)?;
        r.topic = Some(topic);
        (r.why == Why::Named).then_some(topic)
    }

    /// Stops tracking `key`: its signals are no longer followed and the reads waiting on it
    /// fail. Returns whether it was tracked.
    pub(super) fn remove(&mut self, key: &CoreKey) -> bool {
        self.update_asked.remove(key);
        self.join_nodes.remove(key);
        let Some(r) = self.cores.remove(key) else {
            return false;
        };
        if let Some(core) = r.core() {
            core.inner.unwatch(&self.signals);
            core.stop_waits();
        }
        true
    }

    /// Stops tracking `key` without touching its handle: its signals are no longer followed,
    /// and reads waiting on it (the application's) go on. For a core found for a peer and not
    /// served after all.
    pub(super) fn untrack(&mut self, key: &CoreKey) {
        if let Some(core) = self.cores.remove(key).and_then(|r| r.core()) {
            core.inner.unwatch(&self.signals);
        }
    }

    /// Keeps `ids` (the latest [`MAX_JOIN_NODES`] at most, but `me`) as `key`'s blob providers
    /// beside its channel peers.
    pub(super) fn joined(&mut self, key: CoreKey, ids: &[EndpointId], me: EndpointId) {
        let known = self.join_nodes.entry(key).or_default();
        for id in ids.iter().filter(|id| **id != me) {
            if !known.contains(id) {
                known.push(*id);
            }
        }
        let excess = known.len().saturating_sub(MAX_JOIN_NODES);
        known.drain(..excess);
    }

    /// The nodes every core was joined with (each core's last ones, as kept above).
    pub(super) fn all_join_nodes(&self) -> Vec<EndpointId> {
        let mut ids: Vec<EndpointId> = self.join_nodes.values().flatten().copied().collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The nodes `key` was joined with.
    pub(super) fn join_nodes(&self, key: &CoreKey) -> &[EndpointId] {
        self.join_nodes.get(key).map_or(&[], Vec::as_slice)
    }

    /// The application asked for the `asked`th update of `key`: false if it is not
    /// replicated (nobody answers).
    pub(super) fn update_asked(&mut self, key: CoreKey, asked: u64) -> bool {
        if !self.cores.contains_key(&key) {
            return false;
        }
        let latest = self.update_asked.entry(key).or_default();
        *latest = (*latest).max(asked);
        true
    }

    /// The engine answered the updates of `key` asked so far: they resolve.
    pub(super) fn updated(&mut self, key: &CoreKey) {
        if let Some(asked) = self.update_asked.remove(key)
            && let Some(core) = self.core(key)
        {
            core.mark_updated(asked);
        }
    }

    /// Runs a storage task of the engine on `key` (or fails it at once if the core is gone:
    /// every task is answered).
    pub(super) fn run(&mut self, key: CoreKey, task: Task) {
        // Started here, not when first polled: a run apply takes its turn on the core now.
        let task = match self.core(&key) {
            Some(core) => storage::run(core, task),
            None => {
                let input = task.not_run("the core is no longer replicated");
                Box::pin(std::future::ready(input))
            }
        };
        self.tasks.push(task);
    }

    /// Whether `key` is tracked although its last handle went (its signal is still queued).
    pub(super) fn is_dropped(&self, key: &CoreKey) -> bool {
        match self.cores.get(key) {
            Some(r) => r.core().is_none(),
            None => false,
        }
    }

    /// The next finished storage task's report; pending forever while none runs.
    pub(super) async fn next_done(&mut self) -> Input {
        match self.tasks.next().await {
            Some(done) => done,
            None => std::future::pending().await,
        }
    }

    /// The queue the cores replicated push their signals into.
    pub(super) fn signal_queue(&self) -> Arc<SignalQueue> {
        self.signals.clone()
    }

    /// Whether `key` is tracked.
    pub(super) fn contains(&self, key: &CoreKey) -> bool {
        self.cores.contains_key(key)
    }

    /// The keys of the cores replicated.
    pub(super) fn keys(&self) -> Vec<CoreKey> {
        self.cores.keys().copied().collect()
    }
}

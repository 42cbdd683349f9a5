//! Running a simulation: setting it up, the event loop, and what scenarios do to it (appends,
//! truncation, nodes going offline, partitions).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use rand::{RngExt, SeedableRng, rngs::StdRng};

use super::{
    Hostile, Hostility, Links, Node, Script, Sim, SimConfig,
    node::Serving,
    trace::{Kind, Trace},
};
use crate::{
    core::{Hypercore, Info},
    replication::{
        Engine, Event, Input, Message, Mode, Output, PeerId, Task,
        storage::{local_info, run as run_task},
        wire::encode_frame,
    },
    store::{Corestore, StoreOptions},
    tree::{ProofRequest, UpgradeRequest},
};

/// Why a simulation run failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A store failed.
    #[error("store: {0}")]
    Store(#[from] crate::error::Error),
    /// The honest nodes did not all reach the writer's state in time.
    #[error("{unsynced} honest nodes not synced after {at:?}; for example {example}")]
    NotSynced {
        /// Simulated time.
        at: Duration,
        /// Honest nodes behind.
        unsynced: usize,
        /// One of them.
        example: String,
    },
    /// A node's signed state went back: a replayed old state was taken.
    #[error("node {node} went back from {from:?} to {to:?} (fork, length)")]
    WentBack {
        /// Node.
        node: usize,
        /// State before.
        from: (u64, u64),
        /// State after.
        to: (u64, u64),
    },
    /// A node's engine holds a timer that no state of it needs, or state without its timer.
    #[error("node {node}: {reason}")]
    Timers {
        /// Node.
        node: usize,
        /// What is out of step.
        reason: String,
    },
    /// An honest node's engine holds more for its peers than its bounds allow.
    #[error("node {node} over a bound: {reason}")]
    Bounds {
        /// Node.
        node: usize,
        /// Which bound.
        reason: String,
    },
    /// A node's engine asked to be woken at an instant already handled: its driver would be
    /// woken again and again without time passing.
    #[error("node {node}: a timer at or before {at:?} is left after handling the timers due")]
    TimerInPast {
        /// Node.
        node: usize,
        /// Simulated time.
        at: Duration,
    },
    /// An honest node holds something the writer did not write.
    #[error("node {node}: {reason}")]
    Diverged {
        /// Node.
        node: usize,
        /// What differs.
        reason: String,
    },
}

/// Something due at a simulated time.
#[derive(Debug)]
pub(super) enum Ev {
    /// An input that came over the connection `epoch` from node `from`.
    Deliver {
        to: usize,
        incarnation: u64,
        from: usize,
        epoch: u64,
        input: Input,
    },
    /// An input from the node's own driver (a finished storage operation, a failed open).
    Local {
        to: usize,
        incarnation: u64,
        input: Input,
    },
    /// A node's engine timer.
    Timer { node: usize, incarnation: u64 },
    /// A random reader leaves.
    Churn,
    /// A node that left comes back.
    Rejoin(usize),
}

/// The content of block `i` in a simulation with blocks of `size` bytes.
pub fn block(i: u64, size: usize) -> Vec<u8> {
    let mut b = format!("sim block {i} ").into_bytes();
    b.resize(size.max(b.len()), b'.');
    b
}

/// Length of the old signed state hostile nodes replay.
const OLD_STATE_LENGTH: u64 = 5;

impl Sim {
    /// Sets up a network: the writer (node 0) with `cfg.blocks` blocks, readers with empty
    /// memory stores, each connected to `min_degree..=max_degree` random others.
    pub async fn new(cfg: SimConfig) -> Result<Self, SimError> {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let writer_store = Corestore::memory_with(StoreOptions {
            primary_key: Some(rng.random()),
            ..Default::default()
        })
        .await?;
        let writer = writer_store.get_named("sim").await?;
        let first = cfg.blocks.min(OLD_STATE_LENGTH);
        writer
            .append_batch((0..first).map(|i| block(i, cfg.block_size)))
            .await?;
        let old_state = writer
            .create_proof(ProofRequest {
                upgrade: Some(UpgradeRequest {
                    start: 0,
                    length: first,
                }),
                manifest: true,
                ..Default::default()
            })
            .await?;
        writer
            .append_batch((first..cfg.blocks).map(|i| block(i, cfg.block_size)))
            .await?;
        let epoch = Instant::now();
        let mut nodes = Vec::with_capacity(cfg.nodes);
        let mut index = BTreeMap::new();
        for n in 0..cfg.nodes {
            let core = if n == 0 {
                writer.clone()
            } else {
                Corestore::memory().await?.get_remote(writer.key()).await?
            };
            let id: PeerId = rng.random();
            index.insert(id, n);
            let hostile = (n >= 1 && n <= cfg.hostile)
                .then(|| {
                    cfg.hostile_kinds
                        .get((n - 1) % cfg.hostile_kinds.len().max(1))
                })
                .flatten()
                .map(|kind| Hostile::new(*kind, old_state.clone()));
            nodes.push(Node {
                id,
                core,
                engine: None,
                incarnation: 0,
                next_incoming: 1,
                timer: None,
                storage_free_at: Duration::ZERO,
                hostile,
                furthest: (0, 0),
                serving: Serving::Replicate,
                remembered: Vec::new(),
            });
        }
        let churn = cfg.churn_per_minute > 0.0;
        let mut sim = Self {
            links: Links::new(cfg.links.clone()),
            cfg,
            rng,
            epoch,
            now: Duration::ZERO,
            queue: Default::default(),
            nodes,
            index,
            pipes: BTreeMap::new(),
            churned: BTreeSet::new(),
            churn,
            trace: Trace::default(),
            blamed: 0,
            dials_connected: 0,
            rejoins: 0,
            went_back: None,
            old_state,
        };
        for n in 0..sim.nodes.len() {
            sim.start_engine(n);
        }
        for n in 0..sim.nodes.len() {
            sim.connect_to_random(n).await;
        }
        if churn {
            let next = sim.churn_interval();
            sim.queue.push(next, Ev::Churn);
        }
        Ok(sim)
    }

    /// The setup.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The trace: its digest and counters.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// The digest of the whole run so far, in hex.
    pub fn digest(&self) -> String {
        self.trace.digest()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The writer's core.
    pub fn writer(&self) -> &Hypercore {
        &self.nodes[0].core
    }

    /// Connections open.
    pub fn links(&self) -> &Links {
        &self.links
    }

    /// Times an honest node rejected data from a hostile one.
    pub fn blamed(&self) -> u64 {
        self.blamed
    }

    /// Connections made because an engine asked to dial a peer (its redials).
    pub fn dials_connected(&self) -> u64 {
        self.dials_connected
    }

    /// Nodes that came back after leaving (churn).
    pub fn rejoins(&self) -> u64 {
        self.rejoins
    }

    /// Messages hostile nodes rewrote, dropped or made up.
    pub fn lies(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| n.hostile.as_ref())
            .map(|h| h.lies)
            .sum()
    }

    /// Makes reader `n` hostile of `kind` from now on (or honest again with `None`).
    pub fn set_hostile(&mut self, n: usize, kind: Option<Hostility>) {
        assert!(n != 0, "the writer stays honest");
        self.nodes[n].hostile = kind.map(|k| Hostile::new(k, self.old_state.clone()));
    }

    /// Makes reader `n` hostile from now on, sending what `script` says (see [`Script`]); once
    /// the script is used up it sends what its engine does.
    pub fn set_script(&mut self, n: usize, script: Vec<u8>) {
        assert!(n != 0, "the writer stays honest");
        let mut hostile = Hostile::new(Hostility::Scripted, self.old_state.clone());
        hostile.script = Some(Script::new(script));
        self.nodes[n].hostile = Some(hostile);
    }

    /// Whether node `n`'s script is used up (or it has none).
    pub fn script_done(&self, n: usize) -> bool {
        self.nodes[n]
            .hostile
            .as_ref()
            .and_then(|h| h.script.as_ref())
            .is_none_or(Script::is_done)
    }

    /// Whether node `n` is honest (the writer is).
    pub fn is_honest(&self, n: usize) -> bool {
        self.nodes[n].hostile.is_none()
    }

    fn instant(&self, at: Duration) -> Instant {
        self.epoch + at
    }

    fn action(&mut self, node: usize, what: String) {
        self.trace
            .record(self.now, node, Kind::Action, what.as_bytes());
    }

    // --- What scenarios do ---

    /// The writer appends `count` blocks (online or not: an offline writer's peers get them
    /// when it is back).
    pub async fn append(&mut self, count: u64) -> Result<(), SimError> {
        let writer = self.writer().clone();
        let length = writer.info().length;
        let size = self.cfg.block_size;
        writer
            .append_batch((length..length + count).map(|i| block(i, size)))
            .await?;
        self.action(0, format!("append {count}"));
        self.local_changed(0).await;
        Ok(())
    }

    /// The writer truncates its log to `length`, moving to a new fork.
    pub async fn truncate(&mut self, length: u64) -> Result<(), SimError> {
        self.writer().truncate(length).await?;
        self.action(0, format!("truncate {length}"));
        self.local_changed(0).await;
        Ok(())
    }

    async fn local_changed(&mut self, n: usize) {
        let core = &self.nodes[n].core;
        let input = Input::LocalChanged(core.key(), local_info(core));
        if self.nodes[n].online() {
            self.handle(n, input).await;
        }
    }

    /// Takes node `n` offline (its connections drop) or brings it back from its store.
    pub async fn set_online(&mut self, n: usize, online: bool) {
        if online == self.nodes[n].online() {
            return;
        }
        self.action(n, format!("online {online}"));
        if online {
            self.start_engine(n);
            // What the driver's peer book hands a restarted engine: it dials them at once.
            let node = &self.nodes[n];
            if node.serving == Serving::Replicate && !node.remembered.is_empty() {
                let input = Input::Peers(node.core.key(), node.remembered.clone());
                self.handle(n, input).await;
            }
            if !self.cfg.rejoin_by_redial || self.nodes[n].remembered.is_empty() {
                self.connect_to_random(n).await;
            }
        } else {
            let node = &mut self.nodes[n];
            if let Some(engine) = &node.engine
                && node.serving == Serving::Replicate
            {
                node.remembered = engine.known_peers(&node.core.key());
            }
            node.engine = None;
            node.incarnation += 1;
            node.timer = None;
            for q in self.links.neighbours(n) {
                self.disconnect(n, q).await;
            }
        }
    }

    /// Splits the network: the nodes in `side` lose their connections to the others and
    /// cannot reach them until [`Sim::heal`].
    pub async fn partition(&mut self, side: BTreeSet<usize>) {
        self.action(0, format!("partition {}", side.len()));
        for (a, b) in self.links.partition(side) {
            self.disconnect_cut(a, b).await;
        }
        for n in 0..self.nodes.len() {
            self.repair(n).await;
        }
    }

    /// Ends a partition: every node may reach every other again, and half the nodes make one
    /// new random connection.
    pub async fn heal(&mut self) {
        self.action(0, "heal".into());
        self.links.heal();
        for n in 0..self.nodes.len() {
            if self.rng.random_bool(0.5) {
                let q = self.rng.random_range(0..self.nodes.len());
                self.connect(n, q).await;
            }
        }
    }

    /// No more nodes leave; those that left still come back.
    pub fn stop_churn(&mut self) {
        self.churn = false;
    }

    // --- Running ---

    /// Runs for `time` of simulated time.
    pub async fn run_for(&mut self, time: Duration) -> Result<(), SimError> {
        let until = self.now + time;
        while let Some((at, ev)) = self.queue.pop_until(until) {
            self.now = at;
            self.process(ev).await?;
        }
        self.now = until;
        Ok(())
    }

    /// Runs until every honest node is online and holds the writer's whole log (its fork and
    /// length, every block), at most `limit` of simulated time. Returns the time it took.
    pub async fn run_until_synced(&mut self, limit: Duration) -> Result<Duration, SimError> {
        self.run_until(limit, false).await
    }

    /// Like [`Sim::run_until_synced`], but nodes offline at the time do not count: while nodes
    /// keep leaving, every online honest node holds the writer's whole log.
    pub async fn run_until_online_synced(&mut self, limit: Duration) -> Result<Duration, SimError> {
        self.run_until(limit, true).await
    }

    async fn run_until(
        &mut self,
        limit: Duration,
        online_only: bool,
    ) -> Result<Duration, SimError> {
        let start = self.now;
        let deadline = start + limit;
        let target = self.writer().info();
        let mut behind: BTreeSet<usize> = (0..self.nodes.len())
            .filter(|n| !self.synced(*n, &target, online_only))
            .collect();
        loop {
            if behind.is_empty() {
                return Ok(self.now - start);
            }
            let Some((at, ev)) = self.queue.pop_until(deadline) else {
                let example = behind
                    .first()
                    .map(|n| {
                        let node = &self.nodes[*n];
                        format!(
                            "node {n} online {} degree {}: {:?}",
                            node.online(),
                            self.links.degree(*n),
                            node.core.info()
                        )
                    })
                    .unwrap_or_default();
                return Err(SimError::NotSynced {
                    at: self.now,
                    unsynced: behind.len(),
                    example,
                });
            };
            self.now = at;
            let touched = ev.node();
            self.process(ev).await?;
            match touched {
                Some(n) => {
                    if self.synced(n, &target, online_only) {
                        behind.remove(&n);
                    } else if self.is_honest(n) {
                        behind.insert(n);
                    }
                }
                // Churn takes a random node offline: any of them may be behind now.
                None => {
                    behind = (0..self.nodes.len())
                        .filter(|n| !self.synced(*n, &target, online_only))
                        .collect();
                }
            }
        }
    }

    /// Whether node `n` is hostile or holds `target` and is online (or, `online_only`, is
    /// offline).
    fn synced(&self, n: usize, target: &Info, online_only: bool) -> bool {
        let node = &self.nodes[n];
        let replicates = node.serving == Serving::Replicate;
        if node.hostile.is_some() || !replicates || (online_only && !node.online()) {
            return true;
        }
        let info = node.core.info();
        node.online()
            && info.fork == target.fork
            && info.length == target.length
            && info.contiguous_length >= target.length
    }

    /// Checks that every honest node holds exactly the writer's log: its tree hash, and every
    /// block byte for byte.
    pub async fn check_honest_logs(&self) -> Result<(), SimError> {
        let writer = self.writer();
        let info = writer.info();
        let mut blocks = Vec::new();
        for i in 0..info.length {
            blocks.push(writer.get(i).await?);
        }
        for (n, node) in self.nodes.iter().enumerate().skip(1) {
            if node.hostile.is_some() || node.serving != Serving::Replicate {
                continue;
            }
            let theirs = node.core.info();
            let diverged = |reason: String| SimError::Diverged { node: n, reason };
            if (theirs.fork, theirs.length) != (info.fork, info.length) {
                return Err(diverged(format!("{theirs:?}")));
            }
            if node.core.tree_hash() != writer.tree_hash() {
                return Err(diverged("tree hash".into()));
            }
            for (i, expected) in blocks.iter().enumerate() {
                let got = node.core.get(i as u64).await?;
                if got != *expected {
                    return Err(diverged(format!("block {i}")));
                }
            }
        }
        Ok(())
    }

    // --- The event loop ---

    async fn process(&mut self, ev: Ev) -> Result<(), SimError> {
        match ev {
            Ev::Deliver {
                to,
                incarnation,
                from,
                epoch,
                input,
            } => {
                if self.nodes[to].incarnation != incarnation
                    || self.links.epoch(from, to) != Some(epoch)
                {
                    return Ok(());
                }
                match &input {
                    Input::Message(_, ch, _) if !self.pipes.contains_key(&(to, *ch)) => {
                        return Ok(());
                    }
                    Input::Message(_, _, msg) => {
                        // A scripted node replays what it heard.
                        if let Some(Hostile {
                            script: Some(s), ..
                        }) = &mut self.nodes[to].hostile
                        {
                            s.remember(msg);
                        }
                    }
                    Input::ChannelClosed(_, ch) if self.pipes.remove(&(to, *ch)).is_none() => {
                        return Ok(());
                    }
                    _ => {}
                }
                self.handle(to, input).await;
            }
            Ev::Local {
                to,
                incarnation,
                input,
            } => {
                if self.nodes[to].incarnation == incarnation {
                    self.handle(to, input).await;
                }
            }
            Ev::Timer { node, incarnation } => {
                let now = self.instant(self.now);
                let n = &mut self.nodes[node];
                if n.incarnation != incarnation || n.timer != Some(self.now) {
                    return Ok(());
                }
                n.timer = None;
                if let Some(engine) = &mut n.engine
                    && engine.poll_timeout().is_some_and(|t| t <= now)
                {
                    engine.handle_timeout(now);
                    if engine.poll_timeout().is_some_and(|t| t <= now) {
                        return Err(SimError::TimerInPast { node, at: self.now });
                    }
                }
                self.drain(node).await;
            }
            Ev::Churn => self.churn_one().await,
            Ev::Rejoin(n) => {
                self.churned.remove(&n);
                self.rejoins += 1;
                self.set_online(n, true).await;
            }
        }
        self.check_forward()
    }

    /// Fails if a node's signed state went back.
    fn check_forward(&mut self) -> Result<(), SimError> {
        match self.went_back.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn start_engine(&mut self, n: usize) {
        let now = self.instant(self.now);
        let node = &mut self.nodes[n];
        let mut engine = Engine::new(node.id, self.cfg.engine.clone());
        if node.serving == Serving::Replicate {
            engine.add_core(node.core.key(), local_info(&node.core), Mode::Full, now);
        }
        node.engine = Some(engine);
    }

    /// Sets what node `n` does with the core. `Left` leaves it at once (its channels close);
    /// `StoreOnly` restarts an online node without replicating it; `Replicate` adds it.
    pub async fn set_serving(&mut self, n: usize, serving: Serving) {
        self.action(n, format!("serving {serving:?}"));
        self.nodes[n].serving = serving;
        if !self.nodes[n].online() {
            return;
        }
        let now = self.instant(self.now);
        let key = self.nodes[n].core.key();
        match serving {
            Serving::Left => {
                if let Some(engine) = self.nodes[n].engine.as_mut() {
                    engine.remove_core(key, now);
                }
                self.drain(n).await;
            }
            Serving::StoreOnly => {
                self.set_online(n, false).await;
                self.set_online(n, true).await;
            }
            Serving::Replicate => {
                let info = local_info(&self.nodes[n].core);
                if let Some(engine) = self.nodes[n].engine.as_mut() {
                    engine.add_core(key, info, Mode::Full, now);
                }
                self.drain(n).await;
            }
        }
    }

    /// Replaces the store of offline node `n` with an empty one: it comes back knowing only
    /// the core's key.
    pub async fn wipe(&mut self, n: usize) -> Result<(), SimError> {
        if self.nodes[n].online() || n == 0 {
            return Ok(());
        }
        self.action(n, "wipe".into());
        let key = self.nodes[n].core.key();
        self.nodes[n].core = Corestore::memory().await?.get_remote(key).await?;
        self.nodes[n].furthest = (0, 0);
        // The peers it remembered were in the store.
        self.nodes[n].remembered.clear();
        Ok(())
    }

    /// Hands `input` to node `n`'s engine and carries out what it asks for.
    async fn handle(&mut self, n: usize, input: Input) {
        let now = self.instant(self.now);
        let Some(engine) = &mut self.nodes[n].engine else {
            return;
        };
        engine.handle(input, now);
        self.drain(n).await;
    }

    /// Carries out everything node `n`'s engine asked for, then arms its timer.
    async fn drain(&mut self, n: usize) {
        loop {
            let Some(out) = self.nodes[n].engine.as_mut().and_then(|e| e.poll_output()) else {
                break;
            };
            self.output(n, out).await;
        }
        if let Some(Err(reason)) = self.nodes[n].engine.as_ref().map(|e| e.check_timers()) {
            self.went_back
                .get_or_insert(SimError::Timers { node: n, reason });
        }
        if self.nodes[n].hostile.is_none()
            && let Some(Err(reason)) = self.nodes[n].engine.as_ref().map(|e| e.check_bounds())
        {
            self.went_back
                .get_or_insert(SimError::Bounds { node: n, reason });
        }
        self.arm_timer(n);
    }

    fn arm_timer(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let Some(t) = node.engine.as_ref().and_then(|e| e.poll_timeout()) else {
            return;
        };
        let at = t.saturating_duration_since(self.epoch).max(self.now);
        if node.timer.is_none_or(|armed| at < armed) {
            node.timer = Some(at);
            let incarnation = node.incarnation;
            self.queue.push(
                at,
                Ev::Timer {
                    node: n,
                    incarnation,
                },
            );
        }
    }

    async fn output(&mut self, n: usize, out: Output) {
        match out {
            Output::Connect(peer) => {
                if let Some(q) = self.index.get(&peer).copied()
                    && self.links.degree(n) < self.cfg.max_degree
                {
                    let before = self.links.degree(n);
                    self.connect(n, q).await;
                    if self.links.degree(n) > before {
                        self.dials_connected += 1;
                    }
                }
            }
            Output::OpenChannel(peer, ch, first) => {
                let q = self.index.get(&peer).copied();
                let epoch = q.and_then(|q| self.links.epoch(n, q).map(|e| (q, e)));
                let Some((q, epoch)) = epoch else {
                    let incarnation = self.nodes[n].incarnation;
                    self.queue.push(
                        self.now,
                        Ev::Local {
                            to: n,
                            incarnation,
                            input: Input::ChannelClosed(peer, ch),
                        },
                    );
                    return;
                };
                let theirs = self.nodes[q].next_incoming;
                self.nodes[q].next_incoming += 2;
                self.pipes.insert((n, ch), (q, theirs, epoch));
                self.pipes.insert((q, theirs), (n, ch, epoch));
                self.send(n, ch, first);
            }
            Output::Send(_, ch, msg) => self.send(n, ch, msg),
            Output::CloseChannel(_, ch) => {
                if let Some((q, theirs, epoch)) = self.pipes.remove(&(n, ch)) {
                    let input = Input::ChannelClosed(self.nodes[n].id, theirs);
                    self.transmit(n, q, epoch, 8, input);
                }
            }
            Output::Task(_, task) => {
                self.trace
                    .record(self.now, n, Kind::StorageOp, describe(&task).as_bytes());
                self.trace.storage_ops += 1;
                let cost = self.cfg.storage.cost(&task);
                let node = &mut self.nodes[n];
                let result = run_task(node.core.clone(), task).await;
                let info = node.core.info();
                let state = (info.fork, info.length);
                if state < node.furthest && node.hostile.is_none() {
                    self.went_back = Some(SimError::WentBack {
                        node: n,
                        from: node.furthest,
                        to: state,
                    });
                }
                node.furthest = node.furthest.max(state);
                let at = node.storage_free_at.max(self.now) + cost;
                node.storage_free_at = at;
                let incarnation = node.incarnation;
                self.queue.push(
                    at,
                    Ev::Local {
                        to: n,
                        incarnation,
                        input: result,
                    },
                );
            }
            Output::FindCore(dk) => {
                // A store that holds the core serves it, unless the node left it.
                let node = &mut self.nodes[n];
                let key = node.core.key();
                if node.serving == Serving::StoreOnly && dk == crate::crypto::discovery_key(&key) {
                    let info = local_info(&node.core);
                    let now = self.instant(self.now);
                    if let Some(engine) = self.nodes[n].engine.as_mut() {
                        engine.serve_core(key, info, Mode::Sparse, now);
                    }
                }
            }
            Output::JoinGossip(..) | Output::LeaveGossip(..) => {}
            Output::Broadcast(core, bytes) => {
                if std::env::var("SIM_DEBUG").is_ok() {
                    eprintln!("{:?} {n} broadcast", self.now);
                }
                self.trace.record(self.now, n, Kind::Message, &bytes);
                for q in self.links.neighbours(n) {
                    if let Some(epoch) = self.links.epoch(n, q) {
                        let input = Input::Gossip(core, bytes.clone());
                        self.transmit(n, q, epoch, bytes.len(), input);
                    }
                }
            }
            Output::Event(event) => {
                let text = format!("{event:?}");
                if std::env::var("SIM_DEBUG").is_ok() {
                    eprintln!("{:?} {n} event {text}", self.now);
                }
                self.trace.record(self.now, n, Kind::Event, text.as_bytes());
                Trace::count_kind(&mut self.trace.events, &text);
                match event {
                    Event::Download { .. } => self.trace.blocks_delivered += 1,
                    Event::Invalid { peer, .. } => {
                        self.trace.invalid += 1;
                        if self
                            .index
                            .get(&peer)
                            .is_some_and(|q| self.nodes[*q].hostile.is_some())
                        {
                            self.blamed += 1;
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends `msg` on node `n`'s channel `ch` (as a hostile node rewrites it).
    fn send(&mut self, n: usize, ch: u64, msg: Message) {
        if !self.pipes.contains_key(&(n, ch)) {
            return;
        }
        let msgs: Vec<(u64, Message)> = match &mut self.nodes[n].hostile {
            Some(Hostile {
                script: Some(script),
                lies,
                ..
            }) => {
                let channels: Vec<u64> = self
                    .pipes
                    .range((n, 0)..=(n, u64::MAX))
                    .map(|((_, c), _)| *c)
                    .collect();
                let done = script.is_done();
                let out = script.rewrite(ch, msg, &channels);
                if !done {
                    *lies += 1;
                }
                out
            }
            Some(h) => h
                .rewrite(msg, &mut self.rng)
                .into_iter()
                .map(|m| (ch, m))
                .collect(),
            None => {
                self.trace.honest_messages += 1;
                vec![(ch, msg)]
            }
        };
        for (ch, msg) in msgs {
            let Some((q, theirs, epoch)) = self.pipes.get(&(n, ch)).copied() else {
                continue;
            };
            let Ok(frame) = encode_frame(&msg) else {
                continue;
            };
            self.trace.record(self.now, n, Kind::Message, &frame);
            self.trace.messages += 1;
            Trace::count_kind(&mut self.trace.message_kinds, message_name(&msg));
            if std::env::var("SIM_DEBUG").is_ok() {
                eprintln!("{:?} {n}->{q} {msg:?}", self.now);
            }
            self.trace.message_bytes += frame.len() as u64;
            let input = Input::Message(self.nodes[n].id, theirs, msg);
            self.transmit(n, q, epoch, frame.len(), input);
        }
    }

    /// Puts `input` on the connection `epoch` from `from` to `to`.
    fn transmit(&mut self, from: usize, to: usize, epoch: u64, bytes: usize, input: Input) {
        if let Some((at, _)) = self.links.send(from, to, bytes, self.now, &mut self.rng) {
            self.deliver_at(at, from, to, epoch, input);
        }
    }

    /// Queues `input` for node `to` at `at`, from `from` on the connection `epoch`: dropped
    /// then if that connection or `to`'s engine is gone by then.
    fn deliver_at(&mut self, at: Duration, from: usize, to: usize, epoch: u64, input: Input) {
        let incarnation = self.nodes[to].incarnation;
        let ev = Ev::Deliver {
            to,
            incarnation,
            from,
            epoch,
            input,
        };
        self.queue.push(at, ev);
    }

    /// Connects nodes `a` and `b` if both are online and can reach each other.
    async fn connect(&mut self, a: usize, b: usize) {
        if !self.nodes[a].online() || !self.nodes[b].online() {
            return;
        }
        let Some(epoch) = self.links.connect(a, b, &mut self.rng) else {
            return;
        };
        self.action(a, format!("connect {b}"));
        let latency = self.links.latency(a, b).unwrap_or_default();
        // The dialer found `b` as a peer of the core (a ticket's node, a gossip neighbour):
        // it opens the channel; `b` learns of `a` when it does.
        let known = Input::Peers(self.nodes[a].core.key(), vec![self.nodes[b].id]);
        self.deliver_at(self.now + latency, b, a, epoch, known);
        for (to, from) in [(a, b), (b, a)] {
            let input = Input::PeerConnected(self.nodes[from].id);
            self.deliver_at(self.now + latency, from, to, epoch, input);
        }
    }

    /// Drops the connection of `a` and `b`; each online end learns at once, and one left with
    /// fewer than `min_degree` connections makes a new one.
    async fn disconnect(&mut self, a: usize, b: usize) {
        if self.links.disconnect(a, b) {
            self.disconnect_cut(a, b).await;
            self.repair(a).await;
            self.repair(b).await;
        }
    }

    /// After the link of `a` and `b` is gone: their streams end, and their engines learn.
    async fn disconnect_cut(&mut self, a: usize, b: usize) {
        self.action(a, format!("disconnect {b}"));
        self.pipes
            .retain(|(p, _), (q, _, _)| !((*p == a && *q == b) || (*p == b && *q == a)));
        for (x, y) in [(a, b), (b, a)] {
            let id = self.nodes[y].id;
            self.handle(x, Input::PeerDisconnected(id)).await;
        }
    }

    /// Node `n`, if online with fewer than `min_degree` connections, connects to a random
    /// node it can reach.
    async fn repair(&mut self, n: usize) {
        if !self.nodes[n].online() || self.links.degree(n) >= self.cfg.min_degree {
            return;
        }
        for _ in 0..8 {
            let q = self.rng.random_range(0..self.nodes.len());
            if self.nodes[q].online() && self.links.reachable(n, q) {
                self.connect(n, q).await;
                return;
            }
        }
    }

    /// Node `n` connects to random nodes until it has `min_degree..=max_degree` connections.
    async fn connect_to_random(&mut self, n: usize) {
        if self.nodes.len() < 2 {
            return;
        }
        let target = self
            .rng
            .random_range(self.cfg.min_degree..=self.cfg.max_degree)
            .min(self.nodes.len() - 1);
        let mut tries = 0;
        while self.links.degree(n) < target && tries < 4 * target {
            tries += 1;
            let q = self.rng.random_range(0..self.nodes.len());
            if self.links.degree(q) < self.cfg.max_degree + 4 {
                self.connect(n, q).await;
            }
        }
    }

    fn churn_interval(&self) -> Duration {
        let readers = self.nodes.len().saturating_sub(1).max(1) as f64;
        Duration::from_secs(60).div_f64(self.cfg.churn_per_minute * readers)
    }

    /// A random online reader leaves, and comes back 5 to 20 s later.
    async fn churn_one(&mut self) {
        if !self.churn {
            return;
        }
        let next = self.now + self.churn_interval();
        self.queue.push(next, Ev::Churn);
        if self.nodes.len() < 2 {
            return;
        }
        let n = self.rng.random_range(1..self.nodes.len());
        if !self.nodes[n].online() {
            return;
        }
        self.churned.insert(n);
        self.set_online(n, false).await;
        let back = self.now + Duration::from_millis(self.rng.random_range(5_000..20_000));
        self.queue.push(back, Ev::Rejoin(n));
    }
}

impl Ev {
    /// The node whose state the event may change, if one.
    fn node(&self) -> Option<usize> {
        match self {
            Ev::Deliver { to, .. } | Ev::Local { to, .. } => Some(*to),
            Ev::Timer { node, .. } => Some(*node),
            Ev::Rejoin(n) => Some(*n),
            Ev::Churn => None,
        }
    }
}

/// A short description of a storage operation for the trace (the data it carries is in the
/// messages' records).
fn describe(task: &Task) -> String {
    match task {
        Task::CreateProof { request, .. } => format!("create proof {request:?}"),
        Task::CreateRun {
            fork,
            start,
            end,
            length,
            max_bytes,
            ..
        } => format!("create run {fork} {start}..{end} of {length} within {max_bytes}"),
        Task::ApplyProof { proof: p, .. } => format!(
            "apply proof fork {} block {:?} upgrade {:?}",
            p.fork,
            p.block.as_ref().map(|b| b.index),
            p.upgrade.as_ref().map(|u| (u.start, u.length))
        ),
        Task::ApplyRun { proofs, .. } => format!(
            "apply run {:?}",
            proofs
                .iter()
                .map(|p| p.block.as_ref().map(|b| b.index))
                .collect::<Vec<_>>()
        ),
    }
}

/// The name of a message's kind.
fn message_name(msg: &Message) -> &'static str {
    match msg {
        Message::Open { .. } => "Open",
        Message::Accept { .. } => "Accept",
        Message::Close { .. } => "Close",
        Message::Sync(_) => "Sync",
        Message::Request { .. } => "Request",
        Message::RequestRun { .. } => "RequestRun",
        Message::Data { .. } => "Data",
        Message::NoData { .. } => "NoData",
        Message::Want { .. } => "Want",
        Message::Unwant { .. } => "Unwant",
        Message::Range { .. } => "Range",
        Message::Cancel { .. } => "Cancel",
        Message::Extension { .. } => "Extension",
        Message::Push { .. } => "Push",
    }
}

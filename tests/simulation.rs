//! Test network 10: a simulation of the sans-IO engine. 100 peers in one process, a fake
//! clock, random link failures; storage tasks run on real memory stores. Every peer must end
//! with the full verified log, and then follow it live as the writer appends.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use iroh_hypercore::{
    Corestore, Hypercore, KeyPair,
    net::{local_info, run_task},
    replication::{Engine, EngineConfig, Input, Mode, Output, engine::ChannelId},
};
use rand::{RngExt, SeedableRng, rngs::StdRng};

const PEERS: usize = 100;
const BLOCKS: u64 = 300;
/// Blocks appended one at a time once every peer holds the first `BLOCKS`.
const LIVE: u64 = 10;
const STEP: Duration = Duration::from_millis(1);

struct Peer {
    engine: Engine,
    core: Hypercore,
    next_incoming: ChannelId,
}

struct Sim {
    peers: Vec<Peer>,
    ids: Vec<[u8; 32]>,
    index: HashMap<[u8; 32], usize>,
    /// Open streams, by either end.
    pipes: HashMap<(usize, ChannelId), (usize, ChannelId)>,
    links: HashSet<(usize, usize)>,
    queue: VecDeque<(usize, Input)>,
    now: Instant,
}

fn link(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    fn connect(&mut self, a: usize, b: usize) {
        if a == b || !self.links.insert(link(a, b)) {
            return;
        }
        self.queue.push_back((a, Input::PeerConnected(self.ids[b])));
        self.queue.push_back((b, Input::PeerConnected(self.ids[a])));
    }

    fn disconnect(&mut self, a: usize, b: usize) {
        if !self.links.remove(&link(a, b)) {
            return;
        }
        self.pipes
            .retain(|(p, _), (q, _)| !((*p == a && *q == b) || (*p == b && *q == a)));
        // Messages in flight on the link are lost.
        let (ia, ib) = (self.ids[a], self.ids[b]);
        self.queue.retain(|(to, input)| match input {
            Input::Message(from, ..) | Input::ChannelClosed(from, _) => {
                !((*to == a && *from == ib) || (*to == b && *from == ia))
            }
            _ => true,
        });
        self.queue.push_back((a, Input::PeerDisconnected(ib)));
        self.queue.push_back((b, Input::PeerDisconnected(ia)));
    }

    /// Carries out everything peer `p` asked for.
    async fn drain(&mut self, p: usize) {
        while let Some(out) = self.peers[p].engine.poll_output() {
            match out {
                Output::Connect(peer) => {
                    let q = self.index[&peer];
                    self.connect(p, q);
                }
                Output::OpenChannel(peer, ch, first) => {
                    let q = self.index[&peer];
                    if !self.links.contains(&link(p, q)) {
                        self.queue.push_back((p, Input::ChannelClosed(peer, ch)));
                        continue;
                    }
                    let theirs = self.peers[q].next_incoming;
                    self.peers[q].next_incoming += 2;
                    self.pipes.insert((p, ch), (q, theirs));
                    self.pipes.insert((q, theirs), (p, ch));
                    self.queue
                        .push_back((q, Input::Message(self.ids[p], theirs, first)));
                }
                Output::Send(_, ch, msg) => {
                    if let Some((q, theirs)) = self.pipes.get(&(p, ch)).copied() {
                        self.queue
                            .push_back((q, Input::Message(self.ids[p], theirs, msg)));
                    }
                }
                Output::CloseChannel(_, ch) => {
                    if let Some((q, theirs)) = self.pipes.remove(&(p, ch)) {
                        self.pipes.remove(&(q, theirs));
                        self.queue
                            .push_back((q, Input::ChannelClosed(self.ids[p], theirs)));
                    }
                }
                Output::Task(id, _, task) => {
                    let result = run_task(self.peers[p].core.clone(), task).await;
                    self.queue.push_back((p, Input::TaskDone(id, result)));
                }
                Output::JoinGossip(..) | Output::Broadcast(..) | Output::Event(_) => {}
            }
        }
    }

    /// Runs the network until every peer holds `length` blocks and nothing is in flight, with
    /// random link failures in the first 3,000 steps if `with_failures`. Returns how many links
    /// failed.
    async fn run_until_all_hold(
        &mut self,
        length: u64,
        rng: &mut StdRng,
        with_failures: bool,
    ) -> u64 {
        let mut steps = 0u64;
        let mut failures = 0;
        loop {
            steps += 1;
            assert!(steps < 2_000_000, "simulation did not converge");
            self.now += STEP;
            // Random link failures for the first part of the run; links come back later.
            if with_failures && steps < 3_000 && rng.random_bool(0.2) {
                let all: Vec<(usize, usize)> = self.links.iter().copied().collect();
                if !all.is_empty() {
                    let (a, b) = all[rng.random_range(0..all.len())];
                    self.disconnect(a, b);
                    failures += 1;
                }
            }
            if steps.is_multiple_of(25) {
                let a = rng.random_range(0..PEERS);
                let b = rng.random_range(0..PEERS);
                self.connect(a, b);
            }
            // Deliver a batch of messages, then fire due timers.
            for _ in 0..64 {
                let Some((p, input)) = self.queue.pop_front() else {
                    break;
                };
                let now = self.now;
                self.peers[p].engine.handle(input, now);
                self.drain(p).await;
            }
            if self.queue.is_empty() || steps.is_multiple_of(64) {
                // Nothing to deliver: jump the clock to the next timer.
                if self.queue.is_empty()
                    && let Some(t) = self
                        .peers
                        .iter()
                        .filter_map(|p| p.engine.poll_timeout())
                        .min()
                {
                    self.now = self.now.max(t);
                }
                for p in 0..PEERS {
                    if self.peers[p]
                        .engine
                        .poll_timeout()
                        .is_some_and(|t| t <= self.now)
                    {
                        let now = self.now;
                        self.peers[p].engine.handle_timeout(now);
                        self.drain(p).await;
                    }
                }
            }
            if self.queue.is_empty()
                && self
                    .peers
                    .iter()
                    .all(|p| p.core.info().contiguous_length == length)
            {
                break;
            }
        }
        failures
    }
}

#[tokio::test(flavor = "current_thread")]
async fn hundred_peers_with_link_failures_all_get_the_verified_log() {
    let mut rng = StdRng::seed_from_u64(7);
    let start = Instant::now();
    let cfg = EngineConfig {
        fetch: iroh_hypercore::replication::FetchConfig {
            run_bytes: 16 * 1024,
            timeout: Duration::from_millis(200),
            ..Default::default()
        },
        upgrade_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    // The writer and 99 readers, each with its own memory store.
    let writer_store = Corestore::memory().await.unwrap();
    let writer = writer_store.get_named("sim").await.unwrap();
    writer
        .append_batch((0..BLOCKS).map(|i| format!("sim block {i}").into_bytes()))
        .await
        .unwrap();
    let mut peers = Vec::new();
    let mut ids = Vec::new();
    for p in 0..PEERS {
        let core = if p == 0 {
            writer.clone()
        } else {
            Corestore::memory()
                .await
                .unwrap()
                .get_remote(writer.key())
                .await
                .unwrap()
        };
        let id = KeyPair::generate().public_key();
        let mut engine = Engine::new(id, cfg.clone());
        engine.add_core(core.key(), local_info(&core), Mode::Full, start);
        ids.push(id);
        peers.push(Peer {
            engine,
            core,
            next_incoming: 1,
        });
    }
    let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut sim = Sim {
        peers,
        ids,
        index,
        pipes: HashMap::new(),
        links: HashSet::new(),
        queue: VecDeque::new(),
        now: start,
    };
    // A sparse random mesh: everyone links to three random others.
    for p in 0..PEERS {
        for _ in 0..3 {
            let q = rng.random_range(0..PEERS);
            sim.connect(p, q);
        }
    }
    let failures = sim.run_until_all_hold(BLOCKS, &mut rng, true).await;
    assert!(failures > 50, "the run had {failures} link failures");
    for p in &sim.peers {
        assert_eq!(p.core.tree_hash(), writer.tree_hash());
        assert_eq!(p.core.info().contiguous_length, BLOCKS);
    }
    let last = sim.peers[PEERS - 1]
        .core
        .get(BLOCKS - 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&last[..], format!("sim block {}", BLOCKS - 1).as_bytes());

    // Then live: the writer appends one block at a time and every peer follows, the writer's
    // neighbours by push, the others through them.
    for i in BLOCKS..BLOCKS + LIVE {
        writer
            .append(format!("sim block {i}").into_bytes())
            .await
            .unwrap();
        let now = sim.now;
        sim.peers[0]
            .engine
            .handle(Input::LocalChanged(writer.key(), local_info(&writer)), now);
        sim.drain(0).await;
        sim.run_until_all_hold(i + 1, &mut rng, false).await;
    }
    for p in &sim.peers {
        assert_eq!(p.core.tree_hash(), writer.tree_hash());
    }
    let pushed: u64 = sim.peers[0]
        .engine
        .peer_stats()
        .iter()
        .map(|s| s.pushes_sent)
        .sum();
    assert!(pushed > 0, "the writer pushed no live block");
}

//! Test network 10: a simulation of the sans-IO engine. 100 peers in one process, a fake
//! clock, random link failures; storage tasks run on real memory stores. Every peer must end
//! with the full verified log, and then follow it live as the writer appends; and with five
//! hostile peers among them, every honest peer must still end with the verified log.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use iroh_hypercore::{
    Corestore, Hypercore, KeyPair,
    net::{local_info, run_task},
    replication::{Engine, EngineConfig, Event, Input, Message, Mode, Output, engine::ChannelId},
    tree::{Proof, ProofRequest, UpgradeRequest},
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

/// How a hostile peer rewrites what it sends.
struct Liar {
    /// A signed state of the log at an older length, replayed as answers to upgrades.
    old_state: Proof,
    /// Messages it rewrote.
    lies: u64,
}

impl Liar {
    /// Rewrites one outgoing message: lengths inflated, upgrades replayed from an old state or
    /// answered with nothing, block values flipped, pushes forged.
    fn rewrite(&mut self, msg: Message, rng: &mut StdRng) -> Message {
        // Ids of upgrade requests have the top bit set (the engine's convention).
        const UPGRADE_ID_BIT: u64 = 1 << 63;
        self.lies += 1;
        match msg {
            Message::Sync(mut info) => {
                info.length += 1000;
                info.contiguous += 1000;
                Message::Sync(info)
            }
            Message::Data { id, mut proof } => {
                if proof.upgrade.is_some() {
                    proof = if rng.random_bool(0.5) {
                        self.old_state.clone()
                    } else {
                        Proof::default()
                    };
                } else if let Some(b) = &mut proof.block {
                    b.value.push(b'!');
                }
                Message::Data { id, proof }
            }
            Message::Push { .. } => Message::Push {
                proof: self.old_state.clone(),
            },
            // It cannot prove the length it claimed: it answers the upgrade anyway.
            Message::NoData { id, .. } if id & UPGRADE_ID_BIT != 0 => Message::Data {
                id,
                proof: self.old_state.clone(),
            },
            other => {
                self.lies -= 1;
                other
            }
        }
    }
}

struct Sim {
    peers: Vec<Peer>,
    /// Hostile peers, by index: their engines are honest, what they send is not.
    liars: HashMap<usize, Liar>,
    /// Times an honest peer rejected and blamed data from a liar.
    blamed: u64,
    /// The longest log each peer held so far.
    lengths: Vec<u64>,
    rng: StdRng,
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
                    let msg = match self.liars.get_mut(&p) {
                        Some(liar) => liar.rewrite(msg, &mut self.rng),
                        None => msg,
                    };
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
                    // A signed state only moves forward: no peer's log ever gets shorter.
                    let length = self.peers[p].core.info().length;
                    assert!(length >= self.lengths[p], "peer {p} went back to {length}");
                    self.lengths[p] = length;
                    self.queue.push_back((p, Input::TaskDone(id, result)));
                }
                Output::Event(Event::Invalid { peer, .. })
                    if self.liars.contains_key(&self.index[&peer]) =>
                {
                    self.blamed += 1;
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

fn config() -> EngineConfig {
    EngineConfig {
        fetch: iroh_hypercore::replication::FetchConfig {
            run_bytes: 16 * 1024,
            timeout: Duration::from_millis(200),
            ..Default::default()
        },
        upgrade_timeout: Duration::from_millis(200),
        ..Default::default()
    }
}

/// The writer (peer 0) with `BLOCKS` blocks and 99 readers, each with its own memory store, on
/// a sparse random mesh (everyone links to three random others). Peers `1..=liars` are
/// hostile: they replay the writer's signed state at length 5, answer upgrades with nothing,
/// flip block values and inflate their lengths.
async fn setup(rng: &mut StdRng, liars: usize) -> (Sim, Hypercore) {
    let start = Instant::now();
    let writer_store = Corestore::memory().await.unwrap();
    let writer = writer_store.get_named("sim").await.unwrap();
    writer
        .append_batch((0..5).map(|i| format!("sim block {i}").into_bytes()))
        .await
        .unwrap();
    let old_state = writer
        .create_proof(ProofRequest {
            upgrade: Some(UpgradeRequest {
                start: 0,
                length: 5,
            }),
            manifest: true,
            ..Default::default()
        })
        .await
        .unwrap();
    writer
        .append_batch((5..BLOCKS).map(|i| format!("sim block {i}").into_bytes()))
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
        let mut engine = Engine::new(id, config());
        engine.add_core(core.key(), local_info(&core), Mode::Full, start);
        ids.push(id);
        peers.push(Peer {
            engine,
            core,
            next_incoming: 1,
        });
    }
    let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let liars = (1..=liars)
        .map(|p| {
            let liar = Liar {
                old_state: old_state.clone(),
                lies: 0,
            };
            (p, liar)
        })
        .collect();
    let mut sim = Sim {
        peers,
        liars,
        blamed: 0,
        lengths: vec![0; PEERS],
        rng: StdRng::seed_from_u64(rng.random()),
        ids,
        index,
        pipes: HashMap::new(),
        links: HashSet::new(),
        queue: VecDeque::new(),
        now: start,
    };
    for p in 0..PEERS {
        for _ in 0..3 {
            let q = rng.random_range(0..PEERS);
            sim.connect(p, q);
        }
    }
    (sim, writer)
}

/// Every honest peer holds the writer's verified log.
fn assert_honest_peers_hold(sim: &Sim, writer: &Hypercore, length: u64) {
    for (p, peer) in sim.peers.iter().enumerate() {
        if sim.liars.contains_key(&p) {
            continue;
        }
        assert_eq!(peer.core.tree_hash(), writer.tree_hash(), "peer {p}");
        assert_eq!(peer.core.info().contiguous_length, length, "peer {p}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn hundred_peers_with_link_failures_all_get_the_verified_log() {
    let mut rng = StdRng::seed_from_u64(7);
    let (mut sim, writer) = setup(&mut rng, 0).await;
    let failures = sim.run_until_all_hold(BLOCKS, &mut rng, true).await;
    assert!(failures > 50, "the run had {failures} link failures");
    assert_honest_peers_hold(&sim, &writer, BLOCKS);
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
    assert_honest_peers_hold(&sim, &writer, BLOCKS + LIVE);
    let pushed: u64 = sim.peers[0]
        .engine
        .peer_stats()
        .iter()
        .map(|s| s.pushes_sent)
        .sum();
    assert!(pushed > 0, "the writer pushed no live block");
}

/// Five of the hundred peers lie in everything they send (see [`Liar`]). The honest peers
/// still all get the verified log, nothing the liars sent is stored, and the liars are blamed.
#[tokio::test(flavor = "current_thread")]
async fn hundred_peers_with_five_liars_all_get_the_verified_log() {
    let mut rng = StdRng::seed_from_u64(11);
    let (mut sim, writer) = setup(&mut rng, 5).await;
    sim.run_until_all_hold(BLOCKS, &mut rng, true).await;
    assert_honest_peers_hold(&sim, &writer, BLOCKS);
    let lies: u64 = sim.liars.values().map(|l| l.lies).sum();
    let blamed = sim.blamed;
    println!("liars rewrote {lies} messages; honest peers blamed them {blamed} times");
    assert!(lies > 0 && blamed > 0, "lies {lies}, blamed {blamed}");
}

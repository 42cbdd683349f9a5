//! Scenarios over the crate's simulator (`iroh_hypercore::sim`): real engines and real memory
//! stores, simulated time, links with latency, bandwidth and loss, churn, partitions,
//! hostile nodes, stores that serve without replicating, and nodes that leave. Every honest node must end with the writer's verified log, and nothing any
//! hostile node sent may be stored.
//!
//! Each scenario prints its seed, the digest of its whole trace and its figures.
//! `SIM_SEED=<n>` replays a run exactly; `SIM_PEERS=<n>` sets the swarm size (1,000 in
//! release builds, 100 in debug builds, where each step costs ten times more).

use std::{collections::BTreeSet, time::Duration};

use iroh_hypercore::sim::{Hostility, Serving, Sim, SimConfig};

/// The swarm size of the large scenarios.
fn peers() -> usize {
    std::env::var("SIM_PEERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 100 } else { 1000 })
}

/// `SIM_SEED` if set, else the scenario's own seed.
fn seed(default: u64) -> u64 {
    std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Longest simulated time a scenario waits for every honest node to hold the log.
const SYNC_LIMIT: Duration = Duration::from_secs(600);

fn swarm(seed: u64, hostile_share: f64) -> SimConfig {
    let nodes = peers();
    SimConfig {
        seed,
        nodes,
        blocks: 200,
        churn_per_minute: 0.05,
        hostile: (nodes as f64 * hostile_share) as usize,
        ..Default::default()
    }
}

/// Prints the run's seed, digest and figures.
fn report(name: &str, sim: &Sim, wall: Duration) {
    let t = sim.trace();
    println!("{name}: seed {}", sim.config().seed);
    println!("{name}: trace digest {}", sim.digest());
    println!(
        "{name}: {} nodes, simulated {:.1} s, wall {:.1} s, {} messages ({:.1} MB), {} blocks \
         delivered, {:.2} honest messages per block, {} storage ops, {} retransmissions, {} rejected",
        sim.nodes().len(),
        sim.now().as_secs_f64(),
        wall.as_secs_f64(),
        t.messages,
        t.message_bytes as f64 / 1e6,
        t.blocks_delivered,
        t.messages_per_block(),
        t.storage_ops,
        sim.links().retransmissions,
        t.invalid,
    );
}

/// The full log, then 100 live appends (one every 500 ms), with readers leaving and coming
/// back from their stores all along; every honest node ends with the whole verified log.
async fn full_log_then_live(name: &str, cfg: SimConfig) -> Sim {
    let wall = std::time::Instant::now();
    let mut sim = Sim::new(cfg).await.unwrap();
    // Nodes keep leaving: the first phase ends when every online honest node holds the log.
    let first = sim.run_until_online_synced(SYNC_LIMIT).await;
    report(name, &sim, wall.elapsed());
    let first = first.unwrap();
    println!(
        "{name}: {} blocks on every online node after {first:?}",
        sim.config().blocks
    );
    for _ in 0..100 {
        sim.append(1).await.unwrap();
        sim.run_for(Duration::from_millis(500)).await.unwrap();
    }
    sim.stop_churn();
    let live = sim.run_until_synced(SYNC_LIMIT).await;
    report(name, &sim, wall.elapsed());
    println!("{name}: synced {:?} after the last append", live.unwrap());
    sim.check_honest_logs().await.unwrap();
    assert_eq!(sim.writer().info().length, sim.config().blocks + 100);
    sim
}

#[tokio::test(flavor = "current_thread")]
async fn swarm_with_loss_and_churn_gets_the_log_and_follows_it_live() {
    let sim = full_log_then_live("swarm", swarm(seed(7), 0.0)).await;
    let writer = sim.nodes()[0]
        .engine
        .as_ref()
        .expect("the writer is online");
    let pushed: u64 = writer.peer_stats().iter().map(|s| s.pushes_sent).sum();
    assert!(pushed > 0, "the writer pushed no live block");
    assert!(sim.links().retransmissions > 0, "no message was lost");
}

/// A tenth of the swarm is hostile: liars (old signed states, empty answers, flipped blocks,
/// forged pushes, inflated lengths), silent nodes and flooders.
#[tokio::test(flavor = "current_thread")]
async fn swarm_with_a_tenth_hostile_gets_the_verified_log() {
    let sim = full_log_then_live("hostile", swarm(seed(11), 0.1)).await;
    let kinds: BTreeSet<_> = sim
        .nodes()
        .iter()
        .filter_map(|n| n.hostile.as_ref().map(|h| format!("{:?}", h.kind)))
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    let (lies, blamed) = (sim.lies(), sim.blamed());
    println!("hostile: hostile nodes lied {lies} times; honest nodes blamed them {blamed} times");
    assert!(lies > 0 && blamed > 0, "lies {lies}, blamed {blamed}");
    assert!(sim.nodes().iter().any(|n| {
        n.hostile
            .as_ref()
            .is_some_and(|h| h.kind == Hostility::Silent)
    }));
}

/// A fifth of the readers restart every minute for three minutes, each back 5 to 20 s later
/// from its store, while the writer appends a block every 2 s. A node that comes back finds
/// the swarm only through the peers it remembers (its engine dials them at once, then with
/// back-off while none answers) and those that remember it: nobody hands it random
/// connections. Every node ends with the whole log.
#[tokio::test(flavor = "current_thread")]
async fn a_fifth_restarting_every_minute_find_their_peers_again() {
    let name = "restarts";
    let wall = std::time::Instant::now();
    let cfg = SimConfig {
        churn_per_minute: 0.2,
        rejoin_by_redial: true,
        ..swarm(seed(13), 0.0)
    };
    let mut sim = Sim::new(cfg).await.unwrap();
    sim.run_until_online_synced(SYNC_LIMIT).await.unwrap();
    for _ in 0..90 {
        sim.append(1).await.unwrap();
        sim.run_for(Duration::from_secs(2)).await.unwrap();
    }
    sim.stop_churn();
    let synced = sim.run_until_synced(SYNC_LIMIT).await;
    report(name, &sim, wall.elapsed());
    println!(
        "{name}: {} restarts, {} connections made by redials, synced {:?} after the last \
         append",
        sim.rejoins(),
        sim.dials_connected(),
        synced.unwrap()
    );
    sim.check_honest_logs().await.unwrap();
    assert_eq!(sim.writer().info().length, sim.config().blocks + 90);
    let readers = sim.nodes().len() as u64 - 1;
    assert!(sim.rejoins() >= readers / 2, "{} restarts", sim.rejoins());
    assert!(
        sim.dials_connected() >= sim.rejoins(),
        "each restarted node dials the peers it knows"
    );
}

fn small(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        nodes: 100,
        blocks: 100,
        ..Default::default()
    }
}

/// A [`small`] network on the scenario's seed, run until every node holds the log, and the
/// wall-clock time it started at.
async fn small_synced(default_seed: u64) -> (std::time::Instant, Sim) {
    let wall = std::time::Instant::now();
    let mut sim = Sim::new(small(seed(default_seed))).await.unwrap();
    sim.run_until_synced(SYNC_LIMIT).await.unwrap();
    (wall, sim)
}

/// Runs `sim` until every honest node holds the log, reports the run as `name` (from `wall`)
/// and checks the honest logs; returns the simulated time it took.
async fn sync_and_check(sim: &mut Sim, name: &str, wall: std::time::Instant) -> Duration {
    let synced = sim.run_until_synced(SYNC_LIMIT).await.unwrap();
    report(name, sim, wall.elapsed());
    sim.check_honest_logs().await.unwrap();
    synced
}

/// The writer is offline half the time (5 s on, 5 s off) while it appends a block every
/// 500 ms: what it wrote offline reaches everyone once it is back.
#[tokio::test(flavor = "current_thread")]
async fn writer_offline_half_the_time() {
    let (wall, mut sim) = small_synced(21).await;
    for step in 0..120 {
        if step % 10 == 0 {
            sim.set_online(0, (step / 10) % 2 == 1).await;
        }
        sim.append(1).await.unwrap();
        sim.run_for(Duration::from_millis(500)).await.unwrap();
    }
    sim.set_online(0, true).await;
    let synced = sync_and_check(&mut sim, "writer offline", wall).await;
    println!("writer offline: synced {synced:?} after the writer came back");
    assert_eq!(sim.writer().info().length, 220);
}

/// The writer truncates 30 blocks and appends 10 on the new fork: every node follows it to the
/// new fork and holds the new blocks, none of the old ones.
#[tokio::test(flavor = "current_thread")]
async fn a_truncate_reaches_every_node() {
    let (wall, mut sim) = small_synced(31).await;
    sim.truncate(70).await.unwrap();
    sim.append(10).await.unwrap();
    let synced = sync_and_check(&mut sim, "truncate", wall).await;
    println!("truncate: every node on the new fork after {synced:?}");
    assert_eq!(sim.writer().info().fork, 1);
}

/// Half the network is cut off while the writer appends; the cut-off half stays behind, then
/// catches up once the partition heals.
#[tokio::test(flavor = "current_thread")]
async fn a_partition_heals() {
    let (wall, mut sim) = small_synced(41).await;
    let side: BTreeSet<usize> = (50..100).collect();
    sim.partition(side.clone()).await;
    sim.append(20).await.unwrap();
    sim.run_for(Duration::from_secs(20)).await.unwrap();
    let length = sim.writer().info().length;
    for n in &side {
        let info = sim.nodes()[*n].core.info();
        assert!(info.length < length, "node {n} crossed the partition");
    }
    sim.heal().await;
    let synced = sync_and_check(&mut sim, "partition", wall).await;
    println!("partition: healed and synced after {synced:?}");
}

/// Whole-store serving and leave. After the log spread, a third of the nodes keep it in
/// their stores without replicating it (they serve whoever proves its key), a fifth lose
/// their stores, and everyone else, the writer included, goes offline. The wiped nodes come
/// back knowing only the key: the stores alone give them the whole log. Then one of them
/// leaves the core: its channels close and no peer keeps one with it.
#[tokio::test(flavor = "current_thread")]
async fn stores_serve_what_they_hold_and_a_node_that_leaves_gets_nothing() {
    let (wall, mut sim) = small_synced(51).await;
    let n = sim.nodes().len();
    let stores: Vec<usize> = (1..=n / 3).collect();
    let wiped: Vec<usize> = (n - n / 5..n).collect();
    for &s in &stores {
        sim.set_serving(s, Serving::StoreOnly).await;
    }
    for node in 0..n {
        if !stores.contains(&node) {
            sim.set_online(node, false).await;
        }
    }
    for &w in &wiped {
        sim.wipe(w).await.unwrap();
        assert_eq!(sim.nodes()[w].core.info().length, 0);
    }
    for &w in &wiped {
        sim.set_online(w, true).await;
    }
    let synced = sim.run_until_online_synced(SYNC_LIMIT).await.unwrap();
    report("store serving", &sim, wall.elapsed());
    println!(
        "store serving: {} wiped nodes got the log from {} stores in {synced:?}",
        wiped.len(),
        stores.len()
    );
    let blocks = sim.config().blocks;
    for &w in &wiped {
        assert_eq!(sim.nodes()[w].core.info().contiguous_length, blocks);
    }
    sim.check_honest_logs().await.unwrap();

    // One of them leaves the core.
    let leaver = wiped[0];
    let key = sim.writer().key();
    sim.set_serving(leaver, Serving::Left).await;
    sim.run_for(Duration::from_secs(15)).await.unwrap();
    let left = &sim.nodes()[leaver];
    let engine = left.engine.as_ref().unwrap();
    assert!(!engine.has_core(&key));
    assert!(engine.core_peers(&key).is_empty());
    for (q, node) in sim.nodes().iter().enumerate() {
        if let Some(engine) = &node.engine {
            assert!(
                !engine.core_peers(&key).contains(&left.id),
                "node {q} keeps a channel with the node that left"
            );
        }
    }
    assert_eq!(left.core.info().length, blocks, "what it stored stays");
}

/// A seed replays a run exactly (redials' back-off and jitter included); another seed makes
/// another run.
#[tokio::test(flavor = "current_thread")]
async fn one_seed_replays_the_same_trace() {
    let run = |seed| async move {
        let mut sim = Sim::new(SimConfig {
            seed,
            nodes: 40,
            blocks: 60,
            churn_per_minute: 0.5,
            rejoin_by_redial: true,
            hostile: 4,
            ..Default::default()
        })
        .await
        .unwrap();
        sim.run_until_synced(SYNC_LIMIT).await.unwrap();
        sim.append(5).await.unwrap();
        sim.run_for(Duration::from_secs(5)).await.unwrap();
        (sim.digest(), sim.trace().records)
    };
    let s = seed(3);
    let (a, records) = run(s).await;
    let (b, _) = run(s).await;
    let (c, _) = run(s + 1).await;
    println!("replay: seed {s}: trace digest {a} over {records} records");
    assert_eq!(a, b, "one seed, two traces");
    assert_ne!(a, c, "two seeds, one trace");
}

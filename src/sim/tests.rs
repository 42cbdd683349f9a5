//! Engine behaviours checked on small simulated networks: the real engine and stores, exact
//! and replayable, without hand-built message sequences.

use std::{collections::BTreeMap, time::Duration};

use super::{Hostility, LinkConfig, Sim, SimConfig};
use crate::replication::fetch::FetchConfig;

const LIMIT: Duration = Duration::from_secs(120);

/// `nodes` nodes, each connected to every other, on lossless links.
fn mesh(nodes: usize, blocks: u64, seed: u64) -> SimConfig {
    SimConfig {
        seed,
        nodes,
        blocks,
        min_degree: nodes - 1,
        max_degree: nodes - 1,
        links: LinkConfig {
            loss: 0.0,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn pushes_sent(sim: &Sim) -> u64 {
    let writer = sim.nodes()[0]
        .engine
        .as_ref()
        .expect("the writer is online");
    writer.peer_stats().iter().map(|s| s.pushes_sent).sum()
}

/// A reader that holds the whole log is pushed each new block: no request round trip.
#[tokio::test(flavor = "current_thread")]
async fn a_caught_up_reader_is_pushed_each_append() {
    let mut sim = Sim::new(mesh(2, 50, 1)).await.unwrap();
    sim.run_until_synced(LIMIT).await.unwrap();
    // The reader's last `Sync` (it holds the whole log) reaches the writer.
    sim.run_for(Duration::from_secs(1)).await.unwrap();
    for _ in 0..10 {
        let kinds = sim.trace().message_kinds.clone();
        sim.append(1).await.unwrap();
        sim.run_until_synced(LIMIT).await.unwrap();
        sim.run_for(Duration::from_secs(1)).await.unwrap();
        let sent: BTreeMap<String, u64> = sim
            .trace()
            .message_kinds
            .iter()
            .map(|(k, n)| (k.clone(), n - kinds.get(k).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        // The push, the writer's `Sync` behind it and the reader's `Sync` after it; an
        // announcement that overtakes the push may add an ask and its answer. Never the
        // request round trip.
        assert_eq!(sent.get("Push"), Some(&1), "{sent:?}");
        assert!(
            !sent.contains_key("Request") && !sent.contains_key("Data"),
            "{sent:?}"
        );
        assert!(sent.values().sum::<u64>() <= 5, "{sent:?}");
    }
    assert_eq!(pushes_sent(&sim), 10);
    sim.check_honest_logs().await.unwrap();
}

/// A peer that says it has the log and then answers nothing: the reader's requests to it time
/// out, it is backed off, and the writer serves the rest.
#[tokio::test(flavor = "current_thread")]
async fn requests_to_a_silent_peer_time_out_and_others_serve_them() {
    let mut sim = Sim::new(mesh(3, 400, 2)).await.unwrap();
    sim.set_online(2, false).await;
    sim.run_for(Duration::from_secs(30)).await.unwrap();
    assert_eq!(sim.nodes()[1].core.info().contiguous_length, 400);
    sim.set_hostile(1, Some(Hostility::Silent));
    sim.set_online(2, true).await;
    let took = sim.run_until_synced(LIMIT).await.unwrap();
    sim.check_honest_logs().await.unwrap();
    let backoffs = sim.trace().events.get("Backoff").copied().unwrap_or(0);
    assert!(backoffs > 0, "the silent peer was never backed off");
    let timeout = sim.config().engine.fetch.timeout;
    assert!(
        took >= timeout,
        "synced in {took:?}, before any request could time out"
    );
}

/// A reader behind a link slower than its window (the real fetch defaults: 8 MiB in flight and
/// a 5 s timeout, over 1 MiB/s) gets the log at the link's speed without one request timing
/// out: the writer answers its requests in turn, so the last of a window start 8 s after they
/// were sent.
#[tokio::test(flavor = "current_thread")]
async fn a_link_slower_than_the_window_is_served_at_its_speed() {
    let mut cfg = mesh(2, 1024, 4);
    cfg.block_size = 16 * 1024;
    cfg.links.bandwidth = 1024 * 1024;
    cfg.engine.fetch = FetchConfig::default();
    let mut sim = Sim::new(cfg).await.unwrap();
    let took = sim.run_until_synced(LIMIT).await.unwrap();
    sim.check_honest_logs().await.unwrap();
    let events = &sim.trace().events;
    assert_eq!(events.get("Backoff"), None, "{events:?}");
    assert_eq!(events.get("Penalized"), None, "{events:?}");
    // 16 MiB at 1 MiB/s, with the proofs and the first round trips.
    assert!(took < Duration::from_secs(20), "synced in {took:?}");
}

/// A liar replaying the writer's old signed state and flipping block values: the reader
/// rejects and blames it, never goes back, and gets the log from the writer.
#[tokio::test(flavor = "current_thread")]
async fn a_liar_is_blamed_and_the_reader_never_goes_back() {
    let mut cfg = mesh(3, 200, 3);
    cfg.hostile = 1;
    let mut sim = Sim::new(cfg).await.unwrap();
    sim.run_until_synced(LIMIT).await.unwrap();
    sim.append(20).await.unwrap();
    sim.run_until_synced(LIMIT).await.unwrap();
    sim.check_honest_logs().await.unwrap();
    assert!(sim.lies() > 0);
    assert!(sim.blamed() > 0, "the liar was never blamed");
}

/// Readers leave and come back all along. A run is synced only when every honest node is
/// online and holds the log: a reader that held it and left meanwhile is not synced.
#[tokio::test(flavor = "current_thread")]
async fn synced_means_every_honest_node_is_online() {
    let mut cfg = mesh(6, 20, 5);
    cfg.churn_per_minute = 3.0;
    let mut sim = Sim::new(cfg).await.unwrap();
    for round in 0..30 {
        sim.run_for(Duration::from_secs(5)).await.unwrap();
        sim.append(1).await.unwrap();
        sim.run_until_synced(Duration::from_secs(600))
            .await
            .unwrap();
        let offline: Vec<usize> = (0..sim.nodes().len())
            .filter(|n| !sim.nodes()[*n].online())
            .collect();
        assert!(
            offline.is_empty(),
            "round {round}: synced at {:?} with nodes {offline:?} offline",
            sim.now()
        );
    }
}

/// One node sends whatever its script says (each message its engine would send passed,
/// dropped, mutated, replayed, made up, sent on another channel or many times), beside a
/// writer and two honest readers: every honest node holds only what the writer signed at
/// every step, within its bounds, and converges once the hostile node is gone. The
/// `hostile_node` fuzz target runs the same scenario on its inputs.
mod scripted {
    use proptest::prelude::*;

    use super::super::scripted_run;

    fn run(seed: u64, script: &[u8]) -> super::super::ScriptedRun {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
            .block_on(scripted_run(seed, script))
            .unwrap_or_else(|e| panic!("seed {seed}, script {script:?}: {e}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn a_scripted_hostile_node_breaks_no_invariant(
            seed in any::<u64>(),
            script in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            run(seed, &script);
        }
    }

    /// A script that mutates every message (op 4) lies, and the honest nodes still converge.
    #[test]
    fn a_mutating_script_lies_and_is_survived() {
        let script: Vec<u8> = (0..4096u32)
            .map(|i| if i % 6 == 0 { 4 } else { (i * 37 % 251) as u8 })
            .collect();
        let done = run(7, &script);
        assert!(done.lies > 0, "{done:?}");
    }
}

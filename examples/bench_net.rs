//! Benchmark of replication over iroh on loopback (direct QUIC), with a raw iroh stream and an
//! iroh-blobs fetch of the same bytes as baselines, measured in the same run. Release mode:
//!
//! ```text
//! cargo run --release --example bench_net -- [runs] [filter] [workers]
//! ```
//!
//! Prints medians of `runs` runs (default 3) of: 100,000 × 1 KiB and 256 × 1 MiB blocks
//! replicated between two nodes (file-backed stores, default durability), beside the floor of
//! the stores' side (the writer's run proofs of the same blocks handed to a reader that
//! verifies and stores them, with no network and no engine); the live latency
//! from `append` on the writer to a waiting `get` resolving and to the block being stored on a
//! connected reader (p50/p99 over 1,000 appends, with a durable and with a relaxed writer),
//! beside the floor of that path measured in the same run (hash, signature and verification,
//! the writer's redb commit, a raw iroh stream's one-way latency); and one seeder against
//! three seeders for the same download. With `filter`,
//! only the parts whose name contains it run: `1kib`, `1mib`, `live` or `seeders` (`all` for
//! every part).
//!
//! With `workers`, a comma-separated list such as `1,2`, the selected parts run once for each
//! number of the tokio runtime's worker threads, each in a runtime of its own, and a table of
//! the replication parts' throughput for each number ends the output: how each of hypercore,
//! the raw stream and iroh-blobs grows with cores. (Threads outside the workers are not
//! limited: each store's storage thread, and the blocking pool that verifies proofs and reads
//! blocks.) Without it, one runtime with a worker per core.

use std::time::{Duration, Instant};

use iroh_hypercore::{
    CoreEvent, CoreTicket, Durability, Hypercore, StoreOptions,
    core::{MAX_RUN, RunItem},
    testnet::{Node, TestNet, Transport},
};
use n0_future::StreamExt;

#[path = "common/baseline.rs"]
mod baseline;
use baseline::{Phase, blobs_fetch, first_upgrade, human, median, raw_one_way, raw_stream, row};

/// The replication parts: block count and size.
const PARTS: [(u64, usize); 2] = [(100_000, 1024), (256, 1 << 20)];

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let workers: Vec<Option<usize>> = match std::env::args().nth(3) {
        Some(list) => list
            .split(',')
            .map(|w| w.trim().parse().map(Some))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("workers: a comma-separated list of numbers: {e}"))?,
        None => vec![None],
    };
    let mut sweep = Vec::new();
    for threads in workers {
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = threads {
            rt.worker_threads(n);
            println!("== tokio worker threads: {n}");
        }
        let parts = rt.enable_all().build()?.block_on(run_parts(runs))?;
        sweep.push((threads, parts));
    }
    if sweep.len() > 1 {
        print_sweep(&sweep);
    }
    Ok(())
}

/// Medians of one replication part: hypercore, raw stream and iroh-blobs, wall-clock.
struct PartTimes {
    count: u64,
    size: usize,
    times: [Duration; 3],
}

/// Runs the selected parts in the current runtime; the replication parts' medians.
async fn run_parts(runs: usize) -> anyhow::Result<Vec<PartTimes>> {
    let net = TestNet::new().await?;
    println!("median of {runs} runs, loopback, direct QUIC\n");
    println!(
        "{:<44} {:>12} {:>12} {:>10}",
        "scenario", "blocks/s", "MB/s", "time"
    );
    let mut parts = Vec::new();
    for (count, size) in PARTS {
        if !selected(&human(size).replace(' ', "").to_lowercase()) {
            continue;
        }
        let total = count * size as u64;
        // Hypercore, raw stream, iroh-blobs, the same without the network: wall-clock and CPU
        // time of each run.
        let (mut wall, mut cpu) = ([(); 4].map(|()| Vec::new()), [(); 4].map(|()| Vec::new()));
        for _ in 0..runs {
            let timed = [
                replicate(&net, count, size, 1).await?,
                raw_stream(&net, total).await?,
                blobs_fetch(&net, total).await?,
                reader_alone(&net, count, size).await?,
            ];
            for (i, (w, c)) in timed.into_iter().enumerate() {
                wall[i].push(w);
                cpu[i].push(c);
            }
        }
        let [h, r, b, a] = wall.map(median);
        let label = format!("{count} x {}", human(size));
        row(&format!("hypercore replicate {label}"), count, total, h);
        row("raw iroh stream, same bytes", count, total, r);
        row("iroh-blobs fetch, same bytes", count, total, b);
        row(
            "no network: the writer's proofs to the reader",
            count,
            total,
            a,
        );
        println!(
            "  -> hypercore at {:.0}% of raw stream, {:.0}% of iroh-blobs",
            100.0 * r.as_secs_f64() / h.as_secs_f64(),
            100.0 * b.as_secs_f64() / h.as_secs_f64()
        );
        println!(
            "  -> without the network (the writer's proofs verified and stored by the reader) at {:.0}% of iroh-blobs",
            100.0 * b.as_secs_f64() / a.as_secs_f64()
        );
        let [hc, rc, bc, ac] = cpu.map(median);
        println!(
            "  -> CPU time of the process: hypercore {:.2} s, raw stream {:.2} s, iroh-blobs {:.2} s, without the network {:.2} s\n",
            hc.as_secs_f64(),
            rc.as_secs_f64(),
            bc.as_secs_f64(),
            ac.as_secs_f64()
        );
        parts.push(PartTimes {
            count,
            size,
            times: [h, r, b],
        });
    }

    if selected("live") {
        live(&net, runs).await?;
    }
    if selected("seeders") {
        seeders(&net, runs).await?;
    }
    Ok(parts)
}

/// The replication parts' throughput (MB/s) for each number of worker threads, and each as a
/// multiple of the first number's.
fn print_sweep(sweep: &[(Option<usize>, Vec<PartTimes>)]) {
    println!("throughput by tokio worker threads, MB/s (x the first row's)");
    println!(
        "{:<10} {:<10} {:>18} {:>18} {:>18} {:>10}",
        "part", "workers", "hypercore", "raw stream", "iroh-blobs", "% blobs"
    );
    let Some((_, first)) = sweep.first() else {
        return;
    };
    for (i, base) in first.iter().enumerate() {
        for (threads, parts) in sweep {
            let Some(p) = parts.get(i) else { continue };
            let mb_s = |d: Duration| (p.count * p.size as u64) as f64 / d.as_secs_f64() / 1e6;
            let cell = |k: usize| {
                let x = base.times[k].as_secs_f64() / p.times[k].as_secs_f64();
                format!("{:.1} ({x:.2}x)", mb_s(p.times[k]))
            };
            println!(
                "{:<10} {:<10} {:>18} {:>18} {:>18} {:>9.0}%",
                format!("{} x {}", p.count, human(p.size).replace(' ', "")),
                threads.map_or("default".into(), |n| n.to_string()),
                cell(0),
                cell(1),
                cell(2),
                100.0 * p.times[2].as_secs_f64() / p.times[0].as_secs_f64()
            );
        }
    }
}

/// Whether a part is selected by the optional second argument.
fn selected(name: &str) -> bool {
    std::env::args()
        .nth(2)
        .is_none_or(|f| f == "all" || name.contains(&f))
}

/// Live latency with a durable writer (each append fsynced before it is announced), then with a
/// relaxed writer (non-durable commits, as JS Hypercore, which never fsyncs an append); then
/// the floor of that path, measured in the same run.
async fn live(net: &TestNet, runs: usize) -> anyhow::Result<()> {
    let mut get_p50 = Vec::new();
    for writer in [Durability::Durable, Durability::Relaxed] {
        let (mut got, mut stored) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (g, s) = live_latency(net, writer, 1000).await?;
            got.push(g);
            stored.push(s);
        }
        get_p50.push(median(got.iter().map(|p| p.0).collect()));
        for (what, runs) in [("get resolved", got), ("stored", stored)] {
            let p50 = median(runs.iter().map(|p| p.0).collect());
            let p99 = median(runs.iter().map(|p| p.1).collect());
            println!(
                "live, {:<7} writer: append -> {what:<12} on reader, 1,000 appends: p50 {:.2} ms, p99 {:.2} ms",
                format!("{writer:?}").to_lowercase(),
                ms(p50),
                ms(p99)
            );
        }
    }
    let floor = LiveFloor::measure(net, 1000).await?;
    floor.print(get_p50[0], get_p50[1]);
    println!();
    Ok(())
}

/// What a live block's path cannot avoid, each part timed alone in the same run (p50 of each):
/// the writer's leaf hash, tree hash and signature and the reader's verification of it, the
/// writer's commit (fsynced when durable), and the message from one endpoint to the other.
struct LiveFloor {
    crypto: Duration,
    fsynced_commit: Duration,
    unsynced_commit: Duration,
    one_way: Duration,
}

impl LiveFloor {
    async fn measure(net: &TestNet, rounds: usize) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let fsynced_commit = p50(redb_commits(
            &dir.path().join("fsynced.redb"),
            rounds,
            true,
        )?);
        let unsynced_commit = p50(redb_commits(
            &dir.path().join("unsynced.redb"),
            rounds,
            false,
        )?);
        Ok(Self {
            crypto: p50(sign_and_verify(rounds)?),
            fsynced_commit,
            unsynced_commit,
            one_way: p50(raw_one_way(net, rounds).await?),
        })
    }

    /// Prints each part and the floors of a durable and a relaxed writer against the `get`
    /// p50s measured.
    fn print(&self, durable_get: Duration, relaxed_get: Duration) {
        println!(
            "live floor, p50 of 1,000 each: hash + sign + verify {:.3} ms, redb commit of one \
             1 KiB row fsynced {:.3} ms / unsynced {:.3} ms, raw iroh stream 1.25 KiB one way {:.3} ms",
            ms(self.crypto),
            ms(self.fsynced_commit),
            ms(self.unsynced_commit),
            ms(self.one_way)
        );
        for (writer, commit, got) in [
            ("durable", self.fsynced_commit, durable_get),
            ("relaxed", self.unsynced_commit, relaxed_get),
        ] {
            let floor = self.crypto + commit + self.one_way;
            println!(
                "  -> {writer} writer: floor {:.3} ms, get p50 {:.3} ms ({:.2}x the floor, {:.3} ms above it)",
                ms(floor),
                ms(got),
                got.as_secs_f64() / floor.as_secs_f64(),
                ms(got.saturating_sub(floor))
            );
        }
    }
}

/// `rounds` times: one block's leaf hash, the tree's new root and hash, the signature of the
/// signable (as an append), and its verification (as a reader): the time of each round.
fn sign_and_verify(rounds: usize) -> anyhow::Result<Vec<Duration>> {
    use iroh_hypercore::{
        CoreKind, KeyPair,
        crypto::{Manifest, Verifier, hash::leaf_hashes},
        tree::{Node, TreeState},
    };
    let kp = KeyPair::generate();
    let key = kp.core_key(CoreKind::Default);
    let verifier = Verifier::from_manifest(key, Manifest::single(kp.public_key()))?;
    let mut tree = TreeState::default();
    let mut nodes: Vec<Node> = Vec::new();
    let block = vec![7u8; 1024];
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        nodes.clear();
        for leaf in leaf_hashes([block.as_slice()]) {
            tree.append_hashed(block.len(), leaf, &mut nodes)?;
        }
        let hash = tree.hash();
        let signature = kp.sign_tree(CoreKind::Default, &key, &hash, tree.length, tree.fork);
        verifier.verify(&signature, &hash, tree.length, tree.fork)?;
        samples.push(start.elapsed());
    }
    Ok(samples)
}

/// `rounds` commits of one 1 KiB row each with redb alone, fsynced or not, in a new file at
/// `path`: the time of each.
fn redb_commits(
    path: &std::path::Path,
    rounds: usize,
    durable: bool,
) -> anyhow::Result<Vec<Duration>> {
    const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
    let db = redb::Database::create(path)?;
    let block = vec![7u8; 1024];
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds as u64 {
        let start = Instant::now();
        let mut txn = db.begin_write()?;
        if !durable {
            txn.set_durability(redb::Durability::None)?;
        }
        txn.open_table(T)?.insert(i, block.as_slice())?;
        txn.commit()?;
        samples.push(start.elapsed());
    }
    Ok(samples)
}

fn p50(samples: Vec<Duration>) -> Duration {
    percentiles(samples).0
}

async fn seeders(net: &TestNet, runs: usize) -> anyhow::Result<()> {
    let (count, size) = (50_000u64, 1024usize);
    let mut one = Vec::new();
    let mut three = Vec::new();
    for _ in 0..runs {
        one.push(replicate(net, count, size, 1).await?.0);
        three.push(replicate(net, count, size, 3).await?.0);
    }
    let (o, t) = (median(one), median(three));
    row("one seeder, 50,000 x 1 KiB", count, count * 1024, o);
    row("three seeders, same download", count, count * 1024, t);
    println!(
        "  -> three seeders take {:.2}x the time of one",
        t.as_secs_f64() / o.as_secs_f64()
    );
    Ok(())
}

/// Seeds `count` blocks on `seeders` nodes, then times a fresh reader downloading them all:
/// wall-clock and CPU time.
async fn replicate(
    net: &TestNet,
    count: u64,
    size: usize,
    seeders: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let dir = tempfile::tempdir()?;
    let (writer, log) = seeded_writer(net, &dir, count, size).await?;
    writer.proto.replicate(&log).await?;
    let mut nodes = vec![writer.clone()];
    for i in 1..seeders {
        let s = file_node(net, &dir, &format!("s{i}"), Durability::Durable).await?;
        let core = s.proto.open_ticket(&writer.proto.ticket(&log)).await?;
        core.download(0..count)
            .done(Duration::from_secs(600))
            .await?;
        nodes.push(s);
    }
    let addrs = nodes.iter().map(Node::addr).collect();
    let reader = file_node(net, &dir, "r", Durability::Durable).await?;
    let phase = Phase::start();
    let core = reader
        .proto
        .open_ticket(&CoreTicket::new(log.key(), addrs))
        .await?;
    core.download(0..count)
        .done(Duration::from_secs(600))
        .await?;
    let elapsed = phase.end();
    anyhow::ensure!(core.tree_hash() == log.tree_hash());
    reader.shutdown().await;
    for n in nodes {
        n.shutdown().await;
    }
    Ok(elapsed)
}

/// A durable file node `dir/w` whose log holds `count` blocks of `size` bytes.
async fn seeded_writer(
    net: &TestNet,
    dir: &tempfile::TempDir,
    count: u64,
    size: usize,
) -> anyhow::Result<(Node, Hypercore)> {
    let writer = file_node(net, dir, "w", Durability::Durable).await?;
    let log = writer.store.get_named("bench").await?;
    let block = vec![7u8; size];
    let batch = (1 << 20) / size.max(1) + 1;
    let mut left = count;
    while left > 0 {
        let n = left.min(batch as u64);
        log.append_batch((0..n).map(|_| block.clone())).await?;
        left -= n;
    }
    Ok((writer, log))
}

/// The same download without the network or the engine: the writer makes the run proofs in
/// turn (runs of at most 256 KiB, as the fetch queue asks), about 4 MiB at a time (a chosen
/// size: the download's applies were 2–5 MiB of 1 MiB blocks and 7–21 MiB of 1 KiB ones when
/// counted, and 10 MiB batches timed the same for 1 KiB blocks), and hands each batch to a
/// fresh durable reader, which verifies and stores it while the writer makes the next:
/// wall-clock and CPU time. What the download cannot go below with this reader. (The reader's
/// upgrade is applied before the timing starts; the download's is timed, a signature's
/// worth.)
async fn reader_alone(
    net: &TestNet,
    count: u64,
    size: usize,
) -> anyhow::Result<(Duration, Duration)> {
    const RUN_BYTES: u64 = 256 * 1024;
    const BATCH_BYTES: u64 = 4 << 20;
    let dir = tempfile::tempdir()?;
    let (writer, log) = seeded_writer(net, &dir, count, size).await?;
    let upgrade = log.create_proof(first_upgrade(count)).await?;
    let reader = file_node(net, &dir, "r", Durability::Durable).await?;
    let core = reader.store.get_remote(log.key()).await?;
    core.verify_and_apply_proof(upgrade).await?;
    let phase = Phase::start();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let source = log.clone();
    let proofs = tokio::spawn(async move {
        let run = (RUN_BYTES / size.max(1) as u64).clamp(1, MAX_RUN);
        let per_batch = (BATCH_BYTES / size.max(1) as u64).max(1).div_ceil(run) * run;
        for first in (0..count).step_by(per_batch as usize) {
            let mut batch = Vec::new();
            for start in (first..count.min(first + per_batch)).step_by(run as usize) {
                let end = count.min(start + run);
                for item in source.create_run_proofs(0, start, end, count).await? {
                    let RunItem::Proof(proof) = item else {
                        anyhow::bail!("the writer lacks a block");
                    };
                    batch.push(proof);
                }
            }
            if tx.send(batch).await.is_err() {
                break;
            }
        }
        anyhow::Ok(())
    });
    while let Some(batch) = rx.recv().await {
        let applied = core.apply_block_proofs(batch).await?;
        anyhow::ensure!(applied.rejected.is_none(), "{:?}", applied.rejected);
    }
    let elapsed = phase.end();
    proofs.await??;
    anyhow::ensure!(core.tree_hash() == log.tree_hash() && core.info().contiguous_length == count);
    reader.shutdown().await;
    writer.shutdown().await;
    Ok(elapsed)
}

/// Appends one block at a time and times each until a `get` waiting on the reader resolves,
/// and until the reader has stored it: (p50, p99) of each.
async fn live_latency(
    net: &TestNet,
    writer_durability: Durability,
    appends: u64,
) -> anyhow::Result<((Duration, Duration), (Duration, Duration))> {
    let dir = tempfile::tempdir()?;
    let writer = file_node(net, &dir, "w", writer_durability).await?;
    let log = writer.store.get_named("live").await?;
    log.append(b"0".to_vec()).await?;
    writer.proto.replicate(&log).await?;
    let reader = file_node(net, &dir, "r", Durability::Durable).await?;
    let core: Hypercore = reader.proto.open_ticket(&writer.proto.ticket(&log)).await?;
    core.download(0..1).done(Duration::from_secs(30)).await?;
    let mut events = core.subscribe();
    let (mut got, mut stored) = (Vec::new(), Vec::new());
    for i in 1..=appends {
        let start = Instant::now();
        let get = async {
            let value = core.get(i).wait(Duration::from_secs(10)).await;
            (value, start.elapsed())
        };
        let ((value, elapsed), appended) = tokio::join!(get, log.append(i.to_le_bytes().to_vec()));
        appended?;
        anyhow::ensure!(value?[..] == i.to_le_bytes(), "get returned another block");
        got.push(elapsed);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), events.next()).await? {
                Some(CoreEvent::Download { index, .. }) if index == i => break,
                Some(_) => {}
                None => anyhow::bail!("events ended"),
            }
        }
        stored.push(start.elapsed());
    }
    let out = (percentiles(got), percentiles(stored));
    reader.shutdown().await;
    writer.shutdown().await;
    Ok(out)
}

/// A direct node with a file store of the given durability in `dir/name`.
async fn file_node(
    net: &TestNet,
    dir: &tempfile::TempDir,
    name: &str,
    durability: Durability,
) -> anyhow::Result<Node> {
    let options = StoreOptions {
        durability,
        ..Default::default()
    };
    Ok(net
        .node_in(Transport::Direct, &dir.path().join(name), options)
        .await?)
}

/// p50 and p99.
fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (p(0.50), p(0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

//! Benchmark of local Hypercore writes and reads (1 KiB blocks), file-backed and in memory,
//! with raw redb commits as the baseline. Run in release mode:
//!
//! ```text
//! cargo run --release --example bench_core -- [runs]
//! ```
//!
//! Every figure is the median of `runs` runs (default 3); commits and fsyncs (durable commits)
//! are counted by the storage actor. The floor rows time the hashing and signing of the same
//! appends with no store at all, and the disk's own write and fsync of a batch's bytes: what no
//! append path can go below. With Node.js installed, JS Hypercore 11 appends the same blocks in
//! the same run (`interop/js/peer.js append`, a Corestore on disk: RocksDB, no fsync; its
//! pinned packages installed on the first run), and the run ends with our appends against it.

use std::time::{Duration, Instant};

use iroh_hypercore::{Corestore, Durability, Hypercore, StoreOptions};
use redb::{ReadableDatabase, TableDefinition};

#[path = "common/js.rs"]
mod js;

const BLOCK: usize = 1024;

/// A named append workload: its name, the store's durability, and the work on a fresh core.
type Scenario = (
    &'static str,
    Durability,
    fn(Hypercore) -> n0_future::boxed::BoxFuture<u64>,
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Backend {
    File,
    Memory,
    /// No store: the hashing and signing alone (the floor rows).
    None,
    /// JS Hypercore 11 with its own store on disk.
    Js,
}

struct Sample {
    blocks: u64,
    elapsed: Duration,
    commits: u64,
    fsyncs: u64,
}

async fn store(
    backend: Backend,
    durability: Durability,
    cache_bytes: Option<usize>,
    dir: &std::path::Path,
) -> Corestore {
    let opts = StoreOptions {
        durability,
        cache_bytes,
        ..Default::default()
    };
    match backend {
        Backend::File => Corestore::persistent_with(dir, opts).await.unwrap(),
        Backend::Memory | Backend::None | Backend::Js => {
            Corestore::memory_with(opts).await.unwrap()
        }
    }
}

async fn measure<F, Fut>(backend: Backend, durability: Durability, run: F) -> Sample
where
    F: FnOnce(Hypercore) -> Fut,
    Fut: Future<Output = u64>,
{
    let dir = tempfile::tempdir().unwrap();
    let store = store(backend, durability, None, dir.path()).await;
    let core = store.get_named("bench").await.unwrap();
    let before = store.stats();
    let start = Instant::now();
    let blocks = run(core).await;
    let elapsed = start.elapsed();
    let after = store.stats();
    store.close().await.unwrap();
    Sample {
        blocks,
        elapsed,
        commits: after.commits - before.commits,
        fsyncs: after.durable_commits - before.durable_commits,
    }
}

async fn one_at_a_time(core: Hypercore, n: u64) -> u64 {
    let block = vec![7u8; BLOCK];
    for _ in 0..n {
        core.append(block.clone()).await.unwrap();
    }
    n
}

async fn concurrent(core: Hypercore, tasks: u64, each: u64) -> u64 {
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let core = core.clone();
        handles.push(tokio::spawn(async move {
            let block = vec![7u8; BLOCK];
            for _ in 0..each {
                core.append(block.clone()).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    tasks * each
}

async fn batches(core: Hypercore, batches: u64, size: u64) -> u64 {
    let block = bytes::Bytes::from(vec![7u8; BLOCK]);
    for _ in 0..batches {
        core.append_batch((0..size).map(|_| block.clone()))
            .await
            .unwrap();
    }
    batches * size
}

fn median(mut xs: Vec<Sample>) -> Sample {
    xs.sort_by(|a, b| {
        let ra = a.blocks as f64 / a.elapsed.as_secs_f64();
        let rb = b.blocks as f64 / b.elapsed.as_secs_f64();
        ra.total_cmp(&rb)
    });
    xs.swap_remove(xs.len() / 2)
}

/// Whether a scenario is selected by the optional second argument (a substring of its name).
fn selected(name: &str) -> bool {
    std::env::args().nth(2).is_none_or(|f| name.contains(&f))
}

/// Prints a row; returns its blocks per second.
fn row(name: &str, backend: Backend, s: &Sample) -> f64 {
    let rate = s.blocks as f64 / s.elapsed.as_secs_f64();
    println!(
        "| {name:<34} | {:<6} | {:>8} | {:>8.3} | {:>12.0} | {:>8} | {:>8} |",
        format!("{backend:?}").to_lowercase(),
        s.blocks,
        s.elapsed.as_secs_f64(),
        rate,
        s.commits,
        s.fsyncs
    );
    rate
}

/// The disk alone: `batches` writes of `bytes` each, appended to a file, each followed by an
/// fsync (what a durable commit of a batch must at least do).
fn disk_floor(batches: u64, bytes: usize) -> Sample {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::create(dir.path().join("floor")).unwrap();
    let chunk = vec![7u8; bytes];
    let start = Instant::now();
    for _ in 0..batches {
        file.write_all(&chunk).unwrap();
        file.sync_data().unwrap();
    }
    Sample {
        blocks: batches * (bytes / BLOCK) as u64,
        elapsed: start.elapsed(),
        commits: batches,
        fsyncs: batches,
    }
}

/// JS Hypercore 11 appending `count` blocks of 1 KiB, `batch` at a time, into a fresh
/// Corestore on disk; `None` when Node.js is not installed or its packages cannot be.
fn js_appends(count: u64, batch: u64) -> Option<Sample> {
    match js::js_ready() {
        Ok(true) => {}
        Ok(false) => return None,
        Err(e) => {
            eprintln!("JS Hypercore not measured: {e}");
            return None;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (_js, line) = js::Js::start(
        "append",
        dir.path(),
        serde_json::json!({"count": count, "batch": batch, "size": BLOCK}),
    )
    .unwrap();
    assert_eq!(line["length"].as_u64(), Some(count), "JS appended {line}");
    let ms = line["ms"].as_f64().unwrap();
    Some(Sample {
        blocks: count,
        elapsed: Duration::from_secs_f64(ms / 1000.0),
        commits: 0,
        fsyncs: 0,
    })
}

/// The floor of appending, with no store and no task: what every append computes, for
/// `appends` appends of `per_append` blocks each: a leaf hash per block and the parents it
/// completes (BLAKE2b), the tree hash of the roots, and the Ed25519 signature of the
/// signable, as `Hypercore::append_batch` does.
fn crypto_floor(appends: u64, per_append: u64) -> Sample {
    use iroh_hypercore::{
        CoreKind, KeyPair,
        crypto::hash::leaf_hashes,
        tree::{Node, TreeState},
    };
    let kp = KeyPair::generate();
    let key = kp.core_key(CoreKind::Default);
    let mut tree = TreeState::default();
    let mut nodes: Vec<Node> = Vec::new();
    let block = vec![7u8; BLOCK];
    let start = Instant::now();
    for _ in 0..appends {
        nodes.clear();
        let leaves = leaf_hashes((0..per_append).map(|_| block.as_slice()));
        for leaf in leaves {
            tree.append_hashed(block.len(), leaf, &mut nodes).unwrap();
        }
        let signature = kp.sign_tree(
            CoreKind::Default,
            &key,
            &tree.hash(),
            tree.length,
            tree.fork,
        );
        std::hint::black_box((&nodes, signature));
    }
    Sample {
        blocks: appends * per_append,
        elapsed: start.elapsed(),
        commits: 0,
        fsyncs: 0,
    }
}

/// Raw redb: one 1 KiB insert per transaction, durable or not (the baseline).
fn redb_commits(n: u64, durable: bool) -> Sample {
    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("raw.redb")).unwrap();
    let block = vec![7u8; BLOCK];
    let start = Instant::now();
    for i in 0..n {
        let mut txn = db.begin_write().unwrap();
        if !durable {
            txn.set_durability(redb::Durability::None).unwrap();
        }
        txn.open_table(T)
            .unwrap()
            .insert(i, block.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let elapsed = start.elapsed();
    let _ = db.begin_read();
    Sample {
        blocks: n,
        elapsed,
        commits: n,
        fsyncs: if durable { n } else { 0 },
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    println!("median of {runs} runs, 1 KiB blocks");
    println!(
        "| scenario                           | store  |   blocks |     secs |     blocks/s |  commits |   fsyncs |"
    );
    println!(
        "|------------------------------------|--------|----------|----------|--------------|----------|----------|"
    );

    let name = "baseline: raw redb, 1 insert/commit, fsync";
    if selected(name) {
        row(
            name,
            Backend::File,
            &median((0..runs).map(|_| redb_commits(2000, true)).collect()),
        );
    }
    let name = "baseline: raw redb, 1 insert/commit, no fsync";
    if selected(name) {
        row(
            name,
            Backend::File,
            &median((0..runs).map(|_| redb_commits(20_000, false)).collect()),
        );
    }

    let name = "floor: disk, 1 MiB written + fsync";
    if selected(name) {
        let samples = (0..runs).map(|_| disk_floor(200, 1000 * BLOCK)).collect();
        row(name, Backend::File, &median(samples));
    }

    for (name, appends, per_append) in [
        ("floor: hash + sign, 1 block/append", 30_000, 1),
        ("floor: hash + sign, 1000/append", 200, 1000),
    ] {
        if selected(name) {
            let samples = (0..runs)
                .map(|_| crypto_floor(appends, per_append))
                .collect();
            row(name, Backend::None, &median(samples));
        }
    }

    // JS Hypercore appending the same blocks, measured when it or one of the rows compared
    // with it is selected: (JS row, blocks, per append, our rows compared with it).
    let mut ours = std::collections::HashMap::new();
    let mut js_rates = Vec::new();
    let js_rows: [(&str, u64, u64, &[&str]); 2] = [
        (
            "JS Hypercore: append one at a time",
            10_000,
            1,
            &["append one at a time, relaxed"],
        ),
        (
            "JS Hypercore: batches of 1000",
            50_000,
            1000,
            &["batches of 1000, durable", "batches of 1000, relaxed"],
        ),
    ];
    for (name, count, batch, mine) in js_rows {
        if !selected(name) && !mine.iter().any(|m| selected(m)) {
            continue;
        }
        let samples: Option<Vec<Sample>> = (0..runs).map(|_| js_appends(count, batch)).collect();
        match samples {
            Some(samples) => {
                let rate = row(name, Backend::Js, &median(samples));
                js_rates.extend(mine.iter().map(|m| (*m, rate)));
            }
            None => println!("| {name:<34} | JS Hypercore could not run: not measured |"),
        }
    }

    for backend in [Backend::File, Backend::Memory] {
        let scenarios: [Scenario; 5] = [
            ("append one at a time, durable", Durability::Durable, |c| {
                Box::pin(one_at_a_time(c, 3000))
            }),
            ("append one at a time, relaxed", Durability::Relaxed, |c| {
                Box::pin(one_at_a_time(c, 30_000))
            }),
            ("100 tasks appending, durable", Durability::Durable, |c| {
                Box::pin(concurrent(c, 100, 500))
            }),
            ("batches of 1000, durable", Durability::Durable, |c| {
                Box::pin(batches(c, 200, 1000))
            }),
            ("batches of 1000, relaxed", Durability::Relaxed, |c| {
                Box::pin(batches(c, 200, 1000))
            }),
        ];
        for (name, durability, run) in scenarios {
            if !selected(name) {
                continue;
            }
            let mut s = Vec::new();
            for _ in 0..runs {
                s.push(measure(backend, durability, run).await);
            }
            ours.insert((name, backend), row(name, backend, &median(s)));
        }
        for (name, random) in [
            ("random get, one at a time", true),
            ("get in order, one at a time", false),
        ] {
            if selected(name) {
                let mut s = Vec::new();
                for _ in 0..runs {
                    s.push(gets(backend, None, random).await);
                }
                row(name, backend, &median(s));
            }
        }
    }
    // The same on the file with a page cache smaller than the 100 MiB read.
    let name = "random get, 64 MiB page cache";
    if selected(name) {
        let mut s = Vec::new();
        for _ in 0..runs {
            s.push(gets(Backend::File, Some(64 << 20), true).await);
        }
        row(name, Backend::File, &median(s));
    }

    for (mine, js) in js_rates {
        for backend in [Backend::File, Backend::Memory] {
            if let Some(rate) = ours.get(&(mine, backend)) {
                println!(
                    "  -> {mine} ({}): {:.1}x JS Hypercore",
                    format!("{backend:?}").to_lowercase(),
                    rate / js
                );
            }
        }
    }

    if selected("open store") {
        let mut s = Vec::new();
        for _ in 0..runs {
            s.push(open_many().await);
        }
        let m = median(s);
        println!(
            "| open store of 10,000 cores + list  | file   | {:>8} | {:>8.3} | {:>12.0} |        - |        - |",
            m.blocks,
            m.elapsed.as_secs_f64(),
            m.blocks as f64 / m.elapsed.as_secs_f64()
        );
    }
}

/// Times 100,000 gets of 100,000 blocks (100 MiB), at random or in order, with a page cache
/// of `cache_bytes`.
async fn gets(backend: Backend, cache_bytes: Option<usize>, random: bool) -> Sample {
    let dir = tempfile::tempdir().unwrap();
    let store = store(backend, Durability::Relaxed, cache_bytes, dir.path()).await;
    let core = store.get_named("bench").await.unwrap();
    batches(core.clone(), 100, 1000).await;
    core.flush().await.unwrap();
    let before = store.stats();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let n = 100_000;
    let start = Instant::now();
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let index = if random { x % 100_000 } else { i };
        let v = core.get(index).await.unwrap().unwrap();
        assert_eq!(v.len(), BLOCK);
    }
    let elapsed = start.elapsed();
    let after = store.stats();
    Sample {
        blocks: n,
        elapsed,
        commits: after.commits - before.commits,
        fsyncs: after.durable_commits - before.durable_commits,
    }
}

/// Creates a store of 10,000 cores (one block each), then times reopening it and listing them.
async fn open_many() -> Sample {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        durability: Durability::Relaxed,
        ..Default::default()
    };
    {
        let store = Corestore::persistent_with(dir.path(), opts.clone())
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..10_000 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let core = store.get_named(&format!("c{i}")).await.unwrap();
                core.append(b"x".to_vec()).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        store.close().await.unwrap();
    }
    let start = Instant::now();
    let store = Corestore::persistent_with(dir.path(), opts).await.unwrap();
    let keys = store.list().await.unwrap();
    let one = store.get(keys[5000]).await.unwrap().unwrap();
    assert_eq!(one.info().length, 1);
    let elapsed = start.elapsed();
    assert_eq!(keys.len(), 10_000);
    Sample {
        blocks: keys.len() as u64,
        elapsed,
        commits: 0,
        fsyncs: 0,
    }
}

//! Benchmark of whole-store replication: a writer's store holds `cores` logs of 10 blocks of
//! 100 bytes; a reader that knows their keys follows its whole store (`replicate_store`) and
//! the time until it holds every block is measured, with the process's peak RSS. Baseline in
//! the same run: one raw iroh connection carrying the same bytes on one stream per core.
//! Measured too: the same download when the reader opens the cores only after its connection
//! to the writer is up (it joins with one core, then opens the others), and when it does not
//! follow the whole store but joins each core by itself, one after another, as an
//! application naming its cores would.
//! Measured too, as the floor of the stores' side: each core's signed upgrade and block proofs
//! made by the writer and verified and stored by the reader, with no network and no engine.
//! Release mode, one size per process (peak RSS is the process's):
//!
//! ```text
//! cargo run --release --example bench_store -- <cores> [runs] [store]
//! ```
//!
//! With `store`, only `replicate_store` and its baseline run, so the peak RSS is theirs.

use std::time::{Duration, Instant};

use anyhow::Context;
use iroh::{
    endpoint::Connection,
    protocol::{AcceptError, ProtocolHandler, Router},
};
use iroh_hypercore::{
    CoreKey, Corestore, Mode,
    core::RunItem,
    testnet::{Node, TestNet, Transport},
};
use n0_future::{FuturesUnordered, StreamExt};

#[path = "common/baseline.rs"]
mod baseline;
use baseline::{Phase, first_upgrade, median};

const BLOCKS: u64 = 10;
const BLOCK_BYTES: usize = 100;
const RAW_ALPN: &[u8] = b"/bench-raw-streams/1";
/// Longest a run may take before it counts as failed.
const LIMIT: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cores: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let store_only = args.next().as_deref() == Some("store");
    let net = TestNet::new().await?;
    let mut hyper = Vec::new();
    let mut cpu = Vec::new();
    let mut raw = Vec::new();
    let mut opening = Vec::new();
    let mut late = Vec::new();
    let mut joined = Vec::new();
    for _ in 0..runs {
        let first = replicate_store(&net, cores, Opening::First).await?;
        hyper.push(first.wall);
        cpu.push(first.cpu);
        opening.push(first.opened);
        raw.push(raw_streams(&net, cores).await?);
        if store_only {
            continue;
        }
        late.push(
            replicate_store(&net, cores, Opening::AfterConnecting)
                .await?
                .wall,
        );
        joined.push(
            replicate_store(&net, cores, Opening::EachJoined)
                .await?
                .wall,
        );
    }
    // The peak RSS of the replications, before the floor's runs (which hold every core's
    // proofs at once) raise it.
    let peak_rss = peak_rss_kib();
    let mut alone = Vec::new();
    for _ in 0..runs {
        alone.push(stores_alone(&net, cores).await?);
    }
    let samples: Vec<String> = hyper.iter().map(|d| format!("{d:.2?}")).collect();
    let (h, r) = (median(hyper), median(raw));
    println!("{cores} cores x {BLOCKS} blocks x {BLOCK_BYTES} B, median of {runs} runs, loopback");
    println!("replicate_store (reader follows the writer's whole store): {h:.2?}");
    println!("raw iroh, one stream per core, same bytes:                 {r:.2?}");
    println!("ratio: {:.1}x", h.as_secs_f64() / r.as_secs_f64());
    let (a, a_cpu): (Vec<_>, Vec<_>) = alone.into_iter().unzip();
    let a = median(a);
    println!(
        "no network: each core's proofs made by the writer, verified and stored by the reader: \
         {a:.2?} (CPU {:.2?}; replicate_store at {:.2}x it)",
        median(a_cpu),
        h.as_secs_f64() / a.as_secs_f64()
    );
    if !store_only {
        let l = median(late);
        let o = median(opening);
        println!(
            "the cores opened after the connection is up:            {l:.2?} ({:.2}x the \
             opening of the cores, {o:.2?}, and their replication)",
            l.as_secs_f64() / (h + o).as_secs_f64()
        );
        let j = median(joined);
        println!(
            "each core joined by itself after the connection is up:  {j:.2?} ({:.2}x)",
            j.as_secs_f64() / (h + o).as_secs_f64()
        );
    }
    println!(
        "CPU time of the process while replicate_store ran (both nodes), median: {:.2?}",
        median(cpu)
    );
    println!("replicate_store runs (in order): {}", samples.join(", "));
    println!(
        "peak RSS of the process while it replicated: {} MiB",
        peak_rss / 1024
    );
    Ok(())
}

/// When the reader opens its cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// All of them, then it joins with the first, following the whole store.
    First,
    /// It joins with the first, following the whole store, and opens the others once it
    /// holds that one.
    AfterConnecting,
    /// Like `AfterConnecting`, but not following the whole store: each other core is opened
    /// and joined with the writer by itself, one after another.
    EachJoined,
}

/// One replication of the whole store.
struct Replicated {
    /// From the reader's join until it holds every block of every core; for cores opened
    /// after connecting (see [`Opening`]), from their opening.
    wall: Duration,
    /// The CPU time the process spent meanwhile.
    cpu: Duration,
    /// How long the reader took to open the cores it opened before joining.
    opened: Duration,
}

/// Replicates the writer's `cores` cores to a reader that opens them as `opening` says.
async fn replicate_store(
    net: &TestNet,
    cores: usize,
    opening: Opening,
) -> anyhow::Result<Replicated> {
    let late = opening != Opening::First;
    let writer = net.node(Transport::Direct).await?;
    let reader = net.node(Transport::Direct).await?;
    let keys = seeded(&writer.store, cores).await?;
    let mut remotes = Vec::with_capacity(cores);
    let opened_first = if late { 1 } else { cores };
    let started = Instant::now();
    for key in &keys[..opened_first] {
        remotes.push(reader.store.get_remote(*key).await?);
    }
    let opened = started.elapsed();
    if opening != Opening::EachJoined {
        reader.proto.replicate_store(Mode::Full).await?;
    }
    let mut phase = Phase::start();
    reader.proto.join(&remotes[0], &[writer.addr()]).await?;
    if late {
        remotes[0].download(0..BLOCKS).done(LIMIT).await?;
        // The time from the join is not counted: a part ends before the next starts, so that
        // callgrind's dumps alternate between setup and parts.
        phase.end();
        phase = Phase::start();
        for key in &keys[1..] {
            let core = reader.store.get_remote(*key).await?;
            if opening == Opening::EachJoined {
                reader.proto.join(&core, &[writer.addr()]).await?;
            }
            remotes.push(core);
        }
    }
    // A task per core, as an application following many cores would wait for them.
    let mut downloads = tokio::task::JoinSet::new();
    for core in &remotes {
        downloads.spawn(core.download(0..BLOCKS).done(LIMIT));
    }
    let done = downloads.join_all().await;
    let (elapsed, cpu) = phase.end();
    for r in done {
        r?;
    }
    close(writer, reader).await;
    Ok(Replicated {
        wall: elapsed,
        cpu,
        opened,
    })
}

/// The keys of `cores` logs named `log 0`, `log 1`… in `store`, each of [`BLOCKS`] blocks of
/// [`BLOCK_BYTES`]. Each is let go once written, as a writer's cores are until a peer asks.
async fn seeded(store: &Corestore, cores: usize) -> anyhow::Result<Vec<CoreKey>> {
    let mut keys = Vec::with_capacity(cores);
    for i in 0..cores {
        let log = store.get_named(&format!("log {i}")).await?;
        let blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|_| vec![7u8; BLOCK_BYTES]).collect();
        log.append_batch(blocks).await?;
        keys.push(log.key());
    }
    Ok(keys)
}

/// The same work without the network or the engine: for each of `cores` cores of a writer's
/// store (a task per core, all at once), the writer makes the signed upgrade and the proofs of
/// its blocks, and the reader (its cores opened beforehand, as `replicate_store`'s are)
/// verifies and stores them. Wall-clock and CPU time: what the stores alone cost, one signature
/// verified per core included. The writer's cores are open beforehand too, where
/// `replicate_store`'s writer looks each up when a peer asks (part of what the floor leaves
/// out).
async fn stores_alone(net: &TestNet, cores: usize) -> anyhow::Result<(Duration, Duration)> {
    let writer = net.node(Transport::Direct).await?;
    let reader = net.node(Transport::Direct).await?;
    let mut pairs = Vec::with_capacity(cores);
    for key in seeded(&writer.store, cores).await? {
        let log = writer.store.get(key).await?.context("a seeded log")?;
        pairs.push((log, reader.store.get_remote(key).await?));
    }
    let phase = Phase::start();
    let mut tasks = tokio::task::JoinSet::new();
    for (w, r) in pairs {
        tasks.spawn(async move {
            let upgrade = w.create_proof(first_upgrade(BLOCKS)).await?;
            r.verify_and_apply_proof(upgrade).await?;
            let mut proofs = Vec::new();
            for item in w.create_run_proofs(0, 0, BLOCKS, BLOCKS).await? {
                let RunItem::Proof(proof) = item else {
                    anyhow::bail!("the writer lacks a block");
                };
                proofs.push(proof);
            }
            let applied = r.apply_block_proofs(proofs).await?;
            anyhow::ensure!(applied.rejected.is_none() && r.info().contiguous_length == BLOCKS);
            anyhow::Ok(())
        });
    }
    let done = tasks.join_all().await;
    let timed = phase.end();
    for d in done {
        d?;
    }
    close(writer, reader).await;
    Ok(timed)
}

/// Shuts both nodes down and closes their stores.
async fn close(writer: Node, reader: Node) {
    writer.shutdown().await;
    reader.shutdown().await;
    let _ = writer.store.close().await;
    let _ = reader.store.close().await;
}

/// Serves `BLOCKS * BLOCK_BYTES` bytes on every stream the client opens.
#[derive(Debug, Clone)]
struct RawStreams;

impl ProtocolHandler for RawStreams {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let body = vec![7u8; BLOCKS as usize * BLOCK_BYTES];
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let body = body.clone();
            tokio::spawn(async move {
                let _ = recv.read_to_end(16).await;
                let _ = send.write_all(&body).await;
                let _ = send.finish();
            });
        }
        Ok(())
    }
}

/// The same bytes over one raw connection, one stream per core, at most as many at once as
/// the replication transport allows.
async fn raw_streams(net: &TestNet, cores: usize) -> anyhow::Result<Duration> {
    let server = net.endpoint(Transport::Direct).await?;
    let router = Router::builder(server.clone())
        .accept(RAW_ALPN, RawStreams)
        .spawn();
    let client = net.endpoint(Transport::Direct).await?;
    let start = Instant::now();
    let conn = client.connect(server.addr(), RAW_ALPN).await?;
    let fetches = (0..cores).map(|_| {
        let conn = conn.clone();
        async move {
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(b"go").await?;
            send.finish()?;
            let got = recv.read_to_end(1 << 20).await?;
            anyhow::ensure!(got.len() == BLOCKS as usize * BLOCK_BYTES);
            anyhow::Ok(())
        }
    });
    let results: Vec<_> = fetches.collect::<FuturesUnordered<_>>().collect().await;
    for r in results {
        r?;
    }
    let elapsed = start.elapsed();
    conn.close(0u32.into(), b"done");
    client.close().await;
    router.shutdown().await?;
    Ok(elapsed)
}

/// The process's peak resident set (VmHWM), in KiB; 0 where /proc is not there.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

//! Baselines the benchmarks measure in the same run as what they benchmark: the same bytes
//! over one raw iroh stream and through an iroh-blobs fetch, between two endpoints of a test
//! network; and the helpers that print the figures.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use iroh::{
    endpoint::Connection,
    protocol::{AcceptError, ProtocolHandler, Router},
};
use iroh_blobs::{BlobsProtocol, store::mem::MemStore};
use iroh_hypercore::{
    testnet::{TestNet, Transport},
    tree::{ProofRequest, UpgradeRequest},
};

const RAW_ALPN: &[u8] = b"/bench-raw/1";

/// A timed part of a benchmark: its wall-clock time and the CPU time the process spent
/// meanwhile. Its start and end are calls that callgrind can hook, so that
/// `valgrind --tool=callgrind --dump-before='*phase_start' --dump-before='*phase_end'` counts
/// the instructions of each timed part alone: dumps 2, 4, 6… are the parts, the odd ones
/// what came before each (setup), and all of them add up to the whole run.
///
/// Not `--zero-before='*phase_start'`: that left most of the setup's instructions in the
/// part's dump (at 1,000 cores `bench_store` counted 3,319 M for a download of 1,518 M),
/// apparently because it zeroes only the counts of the thread that calls the hook.
///
/// For a wall-clock profile of the timed parts alone, `perf record` can be started paused
/// and told by each part when to sample: with `BENCH_PERF_CTL` naming its control FIFO,
/// a part writes `enable` at its start and `disable` at its end.
///
/// ```text
/// mkfifo /tmp/ctl; BENCH_PERF_CTL=/tmp/ctl perf record --delay=-1 --control=fifo:/tmp/ctl -- BIN ...
/// ```
pub struct Phase {
    wall: Instant,
    cpu: Duration,
}

impl Phase {
    /// Starts timing.
    pub fn start() -> Self {
        phase_start();
        perf_control("enable");
        Self {
            wall: Instant::now(),
            cpu: cpu_time(),
        }
    }

    /// Stops timing: the time since the start, and the CPU time spent meanwhile.
    pub fn end(self) -> (Duration, Duration) {
        let elapsed = self.wall.elapsed();
        let cpu = cpu_time().saturating_sub(self.cpu);
        perf_control("disable");
        phase_end();
        (elapsed, cpu)
    }
}

/// User and system CPU time of the process so far (in clock ticks of 10 ms; zero where
/// /proc is not there).
pub fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // The fields after the command's closing parenthesis; utime and stime are the
            // 12th and 13th of them.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<u64> = rest
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|x| x.parse().ok())
                .collect();
            Some(f.iter().sum::<u64>())
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// What a fresh reader asks first: a signed upgrade from nothing to `length` blocks, with the
/// manifest (the floors' readers take it directly from the writer).
pub fn first_upgrade(length: u64) -> ProofRequest {
    ProofRequest {
        upgrade: Some(UpgradeRequest { start: 0, length }),
        manifest: true,
        ..Default::default()
    }
}

/// Tells `perf record` to sample or not, through the control FIFO `BENCH_PERF_CTL` names (if
/// it is set). Blocks until perf reads it, so a part starts with perf sampling.
fn perf_control(command: &str) {
    if let Some(fifo) = std::env::var_os("BENCH_PERF_CTL") {
        use std::io::Write;
        if let Ok(mut ctl) = std::fs::OpenOptions::new().write(true).open(fifo) {
            let _ = writeln!(ctl, "{command}");
        }
    }
}

#[inline(never)]
fn phase_start() {
    std::hint::black_box("phase start");
}

#[inline(never)]
fn phase_end() {
    std::hint::black_box("phase end");
}

/// Serves `len` bytes on one stream per connection.
#[derive(Debug, Clone)]
struct RawServe(Bytes);

impl ProtocolHandler for RawServe {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let (mut send, _recv) = conn.accept_bi().await?;
        send.write_chunk(self.0.clone())
            .await
            .map_err(AcceptError::from_err)?;
        send.finish()?;
        conn.closed().await;
        Ok(())
    }
}

/// `len` bytes over one raw iroh stream: connect, ask, read to the end. Wall-clock and CPU
/// time.
pub async fn raw_stream(net: &TestNet, len: u64) -> anyhow::Result<(Duration, Duration)> {
    let server = net.endpoint(Transport::Direct).await?;
    let router = Router::builder(server.clone())
        .accept(RAW_ALPN, RawServe(Bytes::from(vec![7u8; len as usize])))
        .spawn();
    let client = net.endpoint(Transport::Direct).await?;
    let phase = Phase::start();
    let conn = client.connect(server.addr(), RAW_ALPN).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(b"go").await?;
    let mut got = 0u64;
    while let Some(chunk) = recv.read_chunk(1 << 20).await? {
        got += chunk.len() as u64;
    }
    let elapsed = phase.end();
    anyhow::ensure!(got == len);
    conn.close(0u32.into(), b"done");
    client.close().await;
    router.shutdown().await?;
    Ok(elapsed)
}

const ONE_WAY_ALPN: &[u8] = b"/bench-one-way/1";

/// Reads messages of [`ONE_WAY_LEN`] bytes off one stream and reports when each arrived.
#[derive(Debug, Clone)]
struct OneWay(tokio::sync::mpsc::UnboundedSender<Instant>);

/// Size of a message of [`raw_one_way`]: a live block of the benchmarks with its proof.
const ONE_WAY_LEN: usize = 1024 + 256;

impl ProtocolHandler for OneWay {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let (_send, mut recv) = conn.accept_bi().await?;
        let mut buf = vec![0u8; ONE_WAY_LEN];
        while recv.read_exact(&mut buf).await.is_ok() {
            if self.0.send(Instant::now()).is_err() {
                break;
            }
        }
        conn.closed().await;
        Ok(())
    }
}

/// The latency of a message from one endpoint to another over an open raw iroh stream:
/// `rounds` messages of a live block's size, each written once the one before arrived, timed
/// from the start of its write until the receiving task has read all of it (both endpoints in
/// this process, so one clock). The floor of the network's share of a live block's path.
pub async fn raw_one_way(net: &TestNet, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let server = net.endpoint(Transport::Direct).await?;
    let router = Router::builder(server.clone())
        .accept(ONE_WAY_ALPN, OneWay(arrived))
        .spawn();
    let client = net.endpoint(Transport::Direct).await?;
    let conn = client.connect(server.addr(), ONE_WAY_ALPN).await?;
    let (mut send, _recv) = conn.open_bi().await?;
    let message = vec![7u8; ONE_WAY_LEN];
    let mut samples = Vec::with_capacity(rounds);
    // The first message opens the stream on the other side: not timed.
    for round in 0..=rounds {
        let start = Instant::now();
        send.write_all(&message).await?;
        let at = arrivals
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("the receiving side stopped"))?;
        if round > 0 {
            samples.push(at.saturating_duration_since(start));
        }
    }
    conn.close(0u32.into(), b"done");
    client.close().await;
    router.shutdown().await?;
    Ok(samples)
}

/// A blob of `len` bytes served with iroh-blobs from a memory store, and an endpoint to fetch
/// it from.
struct BlobServer {
    hash: iroh_blobs::Hash,
    server: iroh::Endpoint,
    client: iroh::Endpoint,
    router: Router,
    _store: MemStore,
}

impl BlobServer {
    async fn start(net: &TestNet, len: u64) -> anyhow::Result<Self> {
        let store = MemStore::new();
        let tag = store.add_bytes(vec![7u8; len as usize]).await?;
        let server = net.endpoint(Transport::Direct).await?;
        let router = Router::builder(server.clone())
            .accept(iroh_blobs::ALPN, BlobsProtocol::new(&store, None))
            .spawn();
        let client = net.endpoint(Transport::Direct).await?;
        Ok(Self {
            hash: tag.hash,
            server,
            client,
            router,
            _store: store,
        })
    }

    async fn connect(&self) -> anyhow::Result<Connection> {
        Ok(self
            .client
            .connect(self.server.addr(), iroh_blobs::ALPN)
            .await?)
    }

    async fn stop(self, conn: Connection) -> anyhow::Result<()> {
        conn.close(0u32.into(), b"done");
        self.client.close().await;
        self.router.shutdown().await?;
        Ok(())
    }
}

/// `len` bytes as one blob, fetched with iroh-blobs from a memory store into another.
/// Wall-clock and CPU time.
pub async fn blobs_fetch(net: &TestNet, len: u64) -> anyhow::Result<(Duration, Duration)> {
    let served = BlobServer::start(net, len).await?;
    let store = MemStore::new();
    let phase = Phase::start();
    let conn = served.connect().await?;
    store.remote().fetch(conn.clone(), served.hash).await?;
    let elapsed = phase.end();
    anyhow::ensure!(store.remote().local(served.hash).await?.is_complete());
    served.stop(conn).await?;
    Ok(elapsed)
}

/// The same blob fetched with iroh-blobs into a file store (an `FsStore` in `dir`), then
/// exported to a file there and synced, as `hyper get-blob` stores and writes it: the time of
/// the fetch, and of the fetch and the export.
pub async fn blobs_fetch_to_file(
    net: &TestNet,
    len: u64,
    dir: &std::path::Path,
) -> anyhow::Result<(Duration, Duration)> {
    let served = BlobServer::start(net, len).await?;
    let store = iroh_blobs::store::fs::FsStore::load(dir.join("blobs")).await?;
    let target = dir.join("exported.bin");
    let start = Instant::now();
    let conn = served.connect().await?;
    store.remote().fetch(conn.clone(), served.hash).await?;
    let fetched = start.elapsed();
    store.export(served.hash, &target).finish().await?;
    std::fs::File::open(&target)?.sync_all()?;
    let exported = start.elapsed();
    anyhow::ensure!(std::fs::metadata(&target)?.len() == len);
    served.stop(conn).await?;
    store.shutdown().await?;
    std::fs::remove_dir_all(dir.join("blobs"))?;
    std::fs::remove_file(&target)?;
    Ok((fetched, exported))
}

/// The median.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `N KiB` or `N MiB`.
pub fn human(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{} MiB", size >> 20)
    } else {
        format!("{} KiB", size >> 10)
    }
}

/// One line of figures: blocks/s, MB/s and seconds.
pub fn row(name: &str, blocks: u64, bytes: u64, d: Duration) {
    let s = d.as_secs_f64();
    println!(
        "{name:<44} {:>12.0} {:>12.1} {:>9.2}s",
        blocks as f64 / s,
        bytes as f64 / 1e6 / s,
        s
    );
}

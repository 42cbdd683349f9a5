//! Blob fetch through a core ticket against a plain iroh-blobs fetch of the same blob, in the
//! same run, and from three providers against one.
//!
//! `cargo run --release --example bench_blobs -- [runs] [MiB]` (defaults: 5 runs, 256 MiB).
//! Every node runs on loopback with a memory store, in this one process.
//!
//! - core ticket: a fresh reader opens the writer's ticket and waits for
//!   `get_blob(index).fetch(..)`: the connection, the block (verified against the log's
//!   signature) and the blob, stored (`wait` would then copy it out of the store);
//! - iroh-blobs: a fresh endpoint and memory store connect to the writer and fetch the same
//!   hash with `remote().fetch`;
//! - one against three providers: a fresh reader that holds the block and has a channel with
//!   the writer (or with the writer and two readers that hold the blob) fetches the blob
//!   alone; with three, iroh-blobs' downloader splits the ranges between them.

use std::time::{Duration, Instant};

use iroh_blobs::store::mem::MemStore;
use iroh_hypercore::testnet::{Node, TestNet, Transport};

const WAIT: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    let mib: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(256);
    let len = mib << 20;
    let net = TestNet::new().await?;

    let writer = net.node(Transport::Direct).await?;
    let log = writer.store.get_named("blobs").await?;
    let content: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31)).collect();
    let index = log.append_blob(content).await?;
    writer.proto.replicate(&log).await?;
    let ticket = writer.proto.ticket(&log);
    let block = log.get(index).await?.expect("the blob block");
    let blob = iroh_hypercore::blobs::BlobRef::from_block(&block).expect("a blob block");

    println!("{mib} MiB blob, loopback, direct QUIC, memory stores; {runs} runs each, in turn");
    let (mut ticket_runs, mut plain_runs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        ticket_runs.push(through_ticket(&net, &ticket, index, len).await?);
        plain_runs.push(plain_fetch(&net, &writer, blob.hash).await?);
    }
    report("core ticket, one provider", len, &ticket_runs);
    report("iroh-blobs remote().fetch, same provider", len, &plain_runs);
    println!(
        "  -> core ticket at {:.0}% of the plain iroh-blobs fetch (medians)",
        100.0 * median(&plain_runs).as_secs_f64() / median(&ticket_runs).as_secs_f64()
    );

    // Two readers that hold the blob join the writer as providers.
    let mut providers = Vec::new();
    for _ in 0..2 {
        let node = net.node(Transport::Direct).await?;
        let core = node.proto.open_ticket(&ticket).await?;
        core.get_blob(index).wait(WAIT).await?;
        providers.push((node, core));
    }
    let all: Vec<_> = std::iter::once(writer.addr())
        .chain(providers.iter().map(|(n, _)| n.addr()))
        .collect();
    let (mut one, mut three) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        one.push(from_providers(&net, log.key(), &all[..1], index, len).await?);
        three.push(from_providers(&net, log.key(), &all, index, len).await?);
    }
    report("blob only, one provider", len, &one);
    report("blob only, three providers", len, &three);
    println!(
        "  -> three providers at {:.0}% of one (medians)",
        100.0 * median(&one).as_secs_f64() / median(&three).as_secs_f64()
    );
    for (node, _) in providers {
        node.shutdown().await;
    }
    writer.shutdown().await;
    Ok(())
}

/// A fresh reader with the ticket: the time until `get_blob(index)` resolves.
async fn through_ticket(
    net: &TestNet,
    ticket: &iroh_hypercore::CoreTicket,
    index: u64,
    len: usize,
) -> anyhow::Result<Duration> {
    let reader = net.node(Transport::Direct).await?;
    let start = Instant::now();
    let core = reader.proto.open_ticket(ticket).await?;
    let got = core.get_blob(index).fetch(WAIT).await?;
    let elapsed = start.elapsed();
    anyhow::ensure!(got.size == len as u64, "got {} bytes", got.size);
    reader.shutdown().await;
    Ok(elapsed)
}

/// A fresh endpoint and memory store fetching `hash` from the writer with iroh-blobs alone.
async fn plain_fetch(
    net: &TestNet,
    writer: &Node,
    hash: iroh_blobs::Hash,
) -> anyhow::Result<Duration> {
    let client = net.endpoint(Transport::Direct).await?;
    let store = MemStore::new();
    let start = Instant::now();
    let conn = client.connect(writer.addr(), iroh_blobs::ALPN).await?;
    store.remote().fetch(conn.clone(), hash).await?;
    let elapsed = start.elapsed();
    anyhow::ensure!(store.remote().local(hash).await?.is_complete());
    conn.close(0u32.into(), b"done");
    client.close().await;
    Ok(elapsed)
}

/// A fresh reader joined to `addrs`: the time `get_blob(index)` takes once the block is
/// stored and the reader has a channel with every one of them.
async fn from_providers(
    net: &TestNet,
    key: iroh_hypercore::CoreKey,
    addrs: &[iroh::EndpointAddr],
    index: u64,
    len: usize,
) -> anyhow::Result<Duration> {
    let reader = net.node(Transport::Direct).await?;
    let core = reader.store.get_remote(key).await?;
    reader.proto.join(&core, addrs).await?;
    core.get(index).wait(WAIT).await?;
    tokio::time::timeout(WAIT, async {
        while reader
            .proto
            .peers(&core)
            .await
            .map(|p| p.len())
            .unwrap_or(0)
            < addrs.len()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    let start = Instant::now();
    let got = core.get_blob(index).fetch(WAIT).await?;
    let elapsed = start.elapsed();
    anyhow::ensure!(got.size == len as u64, "got {} bytes", got.size);
    reader.shutdown().await;
    Ok(elapsed)
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn report(name: &str, len: usize, runs: &[Duration]) {
    let mbs = |d: &Duration| len as f64 / 1e6 / d.as_secs_f64();
    let all: Vec<String> = runs.iter().map(|d| format!("{:.0}", mbs(d))).collect();
    let m = median(runs);
    println!(
        "{name:<44} median {:>7.1} ms {:>7.0} MB/s   (runs, MB/s: {})",
        m.as_secs_f64() * 1000.0,
        mbs(&m),
        all.join(", ")
    );
}

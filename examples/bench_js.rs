//! Benchmark of replication with real JS Hypercore 11 over TCP on loopback, with JS ← JS over
//! the same kind of stream as the baseline, measured in the same run. Release mode, Node.js 20
//! and npm needed (the pinned packages of `interop/js` are installed on the first run):
//!
//! ```text
//! cargo run --release --example bench_js -- [runs] [count]
//! ```
//!
//! Prints medians of `runs` runs (default 3) of `count` (default 100,000) blocks of 1 KiB:
//!
//! - JS ← JS: a JS reader downloads from a JS writer (the reader's own clock, from its
//!   connection to the end of the download);
//! - Rust ← JS: a node downloads from the same JS writer (from the TCP connection to the
//!   download done, every block verified and stored, file-backed store, default durability);
//! - JS ← Rust: a JS reader downloads from a node's log (the reader's clock);
//! - the bridge: a node fetches from the JS writer over TCP while an iroh follower fetches
//!   from it over QUIC (direct), both started at once: the follower's time against the
//!   bridge's own.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use iroh_hypercore::{
    Durability, Hypercore, StoreOptions,
    testnet::{Node, TestNet, Transport},
};

#[path = "common/baseline.rs"]
mod baseline;
use baseline::{median, row};
#[path = "common/js.rs"]
mod js;
use js::{Js, js_ready};

const SIZE: usize = 1024;

/// Runs a JS reader of `key` from `port` to its end, off the runtime's threads: its download
/// time.
async fn js_reader(key: &str, port: u16, count: u64) -> anyhow::Result<Duration> {
    let key = key.to_string();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir()?;
        let (_js, line) = Js::start(
            "read",
            dir.path(),
            serde_json::json!({"keys": [key], "port": port, "count": count}),
        )?;
        anyhow::ensure!(line["length"].as_u64() == Some(count), "read {line}");
        let ms = line["downloadMs"].as_f64().unwrap_or(f64::NAN);
        Ok(Duration::from_secs_f64(ms / 1000.0))
    })
    .await?
}

async fn file_node(net: &TestNet, dir: &Path) -> anyhow::Result<Node> {
    let options = StoreOptions {
        durability: Durability::Durable,
        ..Default::default()
    };
    Ok(net.node_in(Transport::Direct, dir, options).await?)
}

/// A node downloading `key` from the JS peer at `port`: the time from the connection on.
async fn rust_reader(
    net: &TestNet,
    key: [u8; 32],
    port: u16,
    count: u64,
) -> anyhow::Result<Duration> {
    let dir = tempfile::tempdir()?;
    let node = file_node(net, dir.path()).await?;
    let core = node.store.get_remote(key).await?;
    node.proto.replicate(&core).await?;
    let start = Instant::now();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    node.proto.replicate_stream(tcp, true).await?;
    core.download(0..count)
        .done(Duration::from_secs(600))
        .await?;
    let took = start.elapsed();
    node.shutdown().await;
    Ok(took)
}

/// A node with a log of `count` blocks, served to JS readers on a TCP port.
async fn rust_writer(
    net: &TestNet,
    dir: &Path,
    count: u64,
) -> anyhow::Result<(Node, Hypercore, u16)> {
    let node = file_node(net, dir).await?;
    let log = node.store.get_named("bench").await?;
    let mut i = 0;
    while i < count {
        let n = (count - i).min(1000);
        log.append_batch((i..i + n).map(block)).await?;
        i += n;
    }
    node.proto.replicate(&log).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let proto = node.proto.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let proto = proto.clone();
            tokio::spawn(async move { proto.replicate_stream(tcp, false).await });
        }
    });
    Ok((node, log, port))
}

/// A bridge fetching from the JS writer while an iroh follower fetches from the bridge: the
/// bridge's time and the follower's, from the same start.
async fn bridge(
    net: &TestNet,
    key: [u8; 32],
    port: u16,
    count: u64,
) -> anyhow::Result<(Duration, Duration)> {
    let (b, f) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let bridge = file_node(net, b.path()).await?;
    let follower = file_node(net, f.path()).await?;
    let core = bridge.store.get_remote(key).await?;
    bridge.proto.replicate(&core).await?;
    let start = Instant::now();
    let copy = follower
        .proto
        .open_ticket(&bridge.proto.ticket(&core))
        .await?;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    bridge.proto.replicate_stream(tcp, true).await?;
    let wait = Duration::from_secs(600);
    let (bridged, followed) = tokio::join!(
        async {
            core.download(0..count).done(wait).await?;
            Ok::<_, iroh_hypercore::Error>(start.elapsed())
        },
        async {
            copy.download(0..count).done(wait).await?;
            Ok::<_, iroh_hypercore::Error>(start.elapsed())
        }
    );
    let times = (bridged?, followed?);
    follower.shutdown().await;
    bridge.shutdown().await;
    Ok(times)
}

/// A block as `peer.js` writes and checks it.
fn block(i: u64) -> Vec<u8> {
    let mut b = format!("block {i} ").into_bytes();
    b.resize(SIZE, b'x');
    b
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let count: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    if !js_ready()? {
        println!("node is not installed: nothing to measure");
        return Ok(());
    }
    let net = TestNet::new().await?;
    let total = count * SIZE as u64;

    // One JS writer serves every run that reads from JS.
    let w = tempfile::tempdir()?;
    let (_writer, line) = tokio::task::spawn_blocking({
        let dir = w.path().to_path_buf();
        move || {
            Js::start(
                "write",
                &dir,
                serde_json::json!({"count": count, "size": SIZE}),
            )
        }
    })
    .await??;
    let js_key = line["key"].as_str().expect("key").to_string();
    let js_port = line["port"].as_u64().expect("port") as u16;
    let key: [u8; 32] = data_encoding::HEXLOWER
        .decode(js_key.as_bytes())?
        .try_into()
        .map_err(|_| anyhow::anyhow!("key"))?;
    // One Rust writer serves every JS reader of a Rust log.
    let r = tempfile::tempdir()?;
    let (rust_node, log, rust_port) = rust_writer(&net, r.path(), count).await?;
    let rust_key = data_encoding::HEXLOWER.encode(&log.key());

    println!("median of {runs} runs, {count} x 1 KiB, TCP on loopback\n");
    println!(
        "{:<44} {:>12} {:>12} {:>10}",
        "scenario", "blocks/s", "MB/s", "time"
    );
    let (mut js_js, mut rust_js, mut js_rust, mut bridged, mut followed) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        js_js.push(js_reader(&js_key, js_port, count).await?);
        rust_js.push(rust_reader(&net, key, js_port, count).await?);
        js_rust.push(js_reader(&rust_key, rust_port, count).await?);
        let (b, f) = bridge(&net, key, js_port, count).await?;
        bridged.push(b);
        followed.push(f);
    }
    let (jj, rj, jr) = (median(js_js), median(rust_js), median(js_rust));
    row("JS reader <- JS writer (baseline)", count, total, jj);
    row("Rust reader <- JS writer", count, total, rj);
    row("JS reader <- Rust writer", count, total, jr);
    println!(
        "  -> Rust <- JS at {:.2}x the speed of JS <- JS; JS <- Rust at {:.2}x\n",
        jj.as_secs_f64() / rj.as_secs_f64(),
        jj.as_secs_f64() / jr.as_secs_f64()
    );
    let ratios: Vec<f64> = bridged
        .iter()
        .zip(&followed)
        .map(|(b, f)| f.as_secs_f64() / b.as_secs_f64())
        .collect();
    let (b, f) = (median(bridged), median(followed));
    row("bridge <- JS writer (TCP)", count, total, b);
    row(
        "iroh follower <- bridge (QUIC), same start",
        count,
        total,
        f,
    );
    let mut ratios = ratios;
    ratios.sort_by(f64::total_cmp);
    println!(
        "  -> the follower ends {:.1}% after the bridge (median of the runs' ratios; runs: {})",
        100.0 * (ratios[ratios.len() / 2] - 1.0),
        ratios
            .iter()
            .map(|r| format!("{:.3}", r))
            .collect::<Vec<_>>()
            .join(", ")
    );
    rust_node.shutdown().await;
    Ok(())
}

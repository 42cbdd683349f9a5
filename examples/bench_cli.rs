//! Benchmark of the `hyper` command line as a user runs it: separate processes with file
//! stores, on loopback with `--relay disabled`. Baselines measured in the same run: the same
//! bytes over one raw iroh stream and through an iroh-blobs fetch, between two in-process
//! endpoints. Release mode, after building the binary:
//!
//! ```text
//! cargo build --release --bin hyper && cargo run --release --example bench_cli -- [runs] [blocks]
//! ```
//!
//! A writer appends `blocks` (default 100,000) lines of 1 KiB from stdin and a 256 MiB blob,
//! then shares the log. Each run times, as wall time of whole processes (start-up included):
//! `follow --exit-when-synced` into a fresh directory (every block downloaded, verified,
//! stored and printed), `cat` of the followed log (printing alone), `get-blob` of the blob
//! into a fresh directory (fetched into its file store, then copied out and synced), and
//! `get-blob` again from there (the copy alone). Prints medians of `runs` (default 3).

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use iroh_hypercore::testnet::TestNet;

#[path = "common/baseline.rs"]
mod baseline;
use baseline::{blobs_fetch, blobs_fetch_to_file, median, raw_stream, row};

const BLOCK: usize = 1024;
const BLOB: u64 = 256 << 20;
const LOOPBACK: [&str; 4] = ["--relay", "disabled", "--bind", "127.0.0.1:0"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let blocks: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let hyper = hyper_binary()?;
    let dir = tempfile::tempdir()?;
    let writer = dir.path().join("writer");
    let net = TestNet::new().await?;

    output(&hyper, &writer, &["create", "log"])?;
    let started = Instant::now();
    append_lines(&hyper, &writer, blocks)?;
    let append = started.elapsed();
    let blob_file = dir.path().join("blob.bin");
    std::fs::write(&blob_file, vec![7u8; BLOB as usize])?;
    let index = output(
        &hyper,
        &writer,
        &["append", "log", "--blob", path_str(&blob_file)?],
    )?;
    let key = output(&hyper, &writer, &["info", "log", "--json"])?;
    let key: serde_json::Value = serde_json::from_str(&key)?;
    let key = key["key"].as_str().unwrap_or_default().to_string();

    let mut sharer = Command::new(&hyper)
        .arg("--data")
        .arg(&writer)
        .args(LOOPBACK)
        .args(["share", "log"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut ticket = String::new();
    BufReader::new(sharer.stdout.take().expect("piped")).read_line(&mut ticket)?;
    let ticket = ticket.trim().to_string();

    let (mut follow, mut cat, mut get_blob) = (Vec::new(), Vec::new(), Vec::new());
    let (mut raw, mut blobs, mut start_up) = (Vec::new(), Vec::new(), Vec::new());
    let (mut blobs_to_store, mut blobs_to_file) = (Vec::new(), Vec::new());
    let mut export = Vec::new();
    let bytes = blocks * BLOCK as u64;
    for run in 0..runs {
        let reader = dir.path().join(format!("reader{run}"));
        follow.push(timed(
            &hyper,
            &reader,
            &["follow", &ticket, "--exit-when-synced"],
        )?);
        cat.push(timed(&hyper, &reader, &["cat", &key])?);
        let fetcher = dir.path().join(format!("fetcher{run}"));
        let out = fetcher.join("out.bin");
        std::fs::create_dir_all(&fetcher)?;
        get_blob.push(timed(
            &hyper,
            &fetcher,
            &["get-blob", &ticket, index.trim(), "-o", path_str(&out)?],
        )?);
        anyhow::ensure!(std::fs::metadata(&out)?.len() == BLOB, "the whole blob");
        let copy = fetcher.join("again.bin");
        export.push(timed(
            &hyper,
            &fetcher,
            &["get-blob", &ticket, index.trim(), "-o", path_str(&copy)?],
        )?);
        // A store with one empty log (`list` makes none: a read-only command creates nothing).
        let small = dir.path().join(format!("small{run}"));
        output(&hyper, &small, &["create", "empty"])?;
        start_up.push(timed(&hyper, &small, &["list"])?);
        raw.push(raw_stream(&net, bytes).await?.0);
        blobs.push(blobs_fetch(&net, BLOB).await?.0);
        let (fetched, exported) = blobs_fetch_to_file(&net, BLOB, dir.path()).await?;
        blobs_to_store.push(fetched);
        blobs_to_file.push(exported);
    }
    let _ = Command::new("kill")
        .args(["-INT", &sharer.id().to_string()])
        .status();
    sharer.wait()?;

    println!("median of {runs} runs, loopback, separate processes, file stores\n");
    println!(
        "{:<44} {:>12} {:>12} {:>10}",
        "scenario", "blocks/s", "MB/s", "time"
    );
    row(
        &format!("hyper append, {blocks} lines of 1 KiB"),
        blocks,
        bytes,
        append,
    );
    let (f, r) = (median(follow), median(raw));
    row("hyper follow --exit-when-synced", blocks, bytes, f);
    row("hyper cat of the followed log", blocks, bytes, median(cat));
    row("raw iroh stream, same bytes", blocks, bytes, r);
    println!(
        "  -> follow at {:.0}% of a raw stream\n",
        100.0 * r.as_secs_f64() / f.as_secs_f64()
    );
    let (g, b) = (median(get_blob), median(blobs));
    row("hyper get-blob, 256 MiB", 1, BLOB, g);
    row(
        "hyper get-blob again (stored: the file copy)",
        1,
        BLOB,
        median(export),
    );
    row("iroh-blobs fetch, same bytes (memory)", 1, BLOB, b);
    let (bs, bf) = (median(blobs_to_store), median(blobs_to_file));
    row("iroh-blobs fetch into a file store", 1, BLOB, bs);
    row("  the same, then exported to a file, synced", 1, BLOB, bf);
    println!(
        "  -> get-blob at {:.0}% of an iroh-blobs fetch (memory), {:.0}% of one into a file \
         store and out to a file as get-blob does\n",
        100.0 * b.as_secs_f64() / g.as_secs_f64(),
        100.0 * bf.as_secs_f64() / g.as_secs_f64()
    );
    println!(
        "start-up and shut-down of one process (hyper list, a store of one empty log): {:.1} ms",
        median(start_up).as_secs_f64() * 1000.0
    );
    Ok(())
}

/// The release `hyper` beside this example's directory.
fn hyper_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("hyper"))
        .filter(|p| p.exists());
    bin.ok_or_else(|| anyhow::anyhow!("build the binary first: cargo build --release --bin hyper"))
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .ok_or_else(|| anyhow::anyhow!("not UTF-8: {}", path.display()))
}

/// Runs `hyper --data dir LOOPBACK args…` to its end; its stdout.
fn output(hyper: &Path, dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(hyper)
        .arg("--data")
        .arg(dir)
        .args(LOOPBACK)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "hyper {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The wall time of `hyper --data dir LOOPBACK args…`, its stdout thrown away.
fn timed(hyper: &Path, dir: &Path, args: &[&str]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = Command::new(hyper)
        .arg("--data")
        .arg(dir)
        .args(LOOPBACK)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let elapsed = started.elapsed();
    anyhow::ensure!(status.success(), "hyper {args:?} failed");
    Ok(elapsed)
}

/// `hyper append log` fed `blocks` lines of 1 KiB (newline included) on stdin.
fn append_lines(hyper: &Path, dir: &Path, blocks: u64) -> anyhow::Result<()> {
    let mut child = Command::new(hyper)
        .arg("--data")
        .arg(dir)
        .args(["append", "log"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let mut stdin = std::io::BufWriter::new(child.stdin.take().expect("piped"));
    for i in 0..blocks {
        let line = format!("{i:0width$}\n", width = BLOCK - 1);
        stdin.write_all(line.as_bytes())?;
    }
    drop(stdin);
    anyhow::ensure!(child.wait()?.success(), "append failed");
    Ok(())
}

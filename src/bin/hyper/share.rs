//! `hyper share`: serve logs to whoever holds their tickets, until Ctrl-C.

use std::{io::Write, path::Path};

use clap::Args;
use iroh_hypercore::{Corestore, Hypercore, core::MAX_BLOCK_SIZE};
use tokio::sync::mpsc;

use crate::{
    fail, local,
    node::{NetOptions, Node},
    peers::PeerTracker,
    signals::Interrupts,
    stdin_lines,
};

/// `hyper share` arguments.
#[derive(Debug, Args)]
pub struct ShareArgs {
    /// The logs to share: names made here or keys (64 hex characters).
    #[arg(required = true)]
    logs: Vec<String>,
    /// Append each line read from stdin to the first log as one block, while sharing.
    #[arg(long)]
    stdin: bool,
}

/// Lines of stdin appended (and signed) together at most.
const BATCH: usize = 1000;

/// Shares the logs: prints their tickets, then serves until Ctrl-C (or SIGTERM).
pub async fn run(
    store: &Corestore,
    dir: &Path,
    net: &NetOptions,
    args: ShareArgs,
) -> Result<(), String> {
    let mut interrupts = Interrupts::install()?;
    let mut cores = Vec::new();
    for log in &args.logs {
        cores.push(local::resolve(store, dir, log).await?.0);
    }
    if args.stdin && !cores[0].writable() {
        return Err(format!(
            "--stdin appends to {}, which is not writable here (it was made elsewhere)",
            args.logs[0]
        ));
    }
    let mut lines = args.stdin.then(stdin_lines::read);
    let node = Node::start(store, net).await?;
    let keys: Vec<_> = cores.iter().map(Hypercore::key).collect();
    let tracker = PeerTracker::start(dir, &node.proto, &keys);
    let mut result = tokio::select! {
        r = share(&node, net, &cores, lines.as_mut()) => r,
        () = interrupts.first() => Ok(()),
    };
    interrupts.exit_on_next();
    // Lines read before the interrupt are appended, not dropped.
    if let Some(lines) = lines.as_mut()
        && result.is_ok()
    {
        // Taken before and after closing: a reader waiting for room sends once some is made.
        let mut rest = Vec::new();
        while let Ok(line) = lines.try_recv() {
            rest.extend(line.ok());
        }
        lines.close();
        while let Ok(line) = lines.try_recv() {
            rest.extend(line.ok());
        }
        if !rest.is_empty() {
            result = append(&cores[0], rest).await;
        }
    }
    tracker.finish().await;
    node.shutdown().await;
    result
}

/// Replicates the cores, prints their tickets and serves; with `lines`, appends them to the
/// first core. Returns only on an error.
async fn share(
    node: &Node,
    net: &NetOptions,
    cores: &[Hypercore],
    lines: Option<&mut mpsc::Receiver<std::io::Result<String>>>,
) -> Result<(), String> {
    for core in cores {
        node.proto
            .replicate(core)
            .await
            .map_err(|e| format!("sharing {}: {e}", crate::names::hex(&core.key())))?;
    }
    node.ready(&net.relay).await;
    let tickets: String = cores
        .iter()
        .map(|core| format!("{}\n", node.proto.ticket(core)))
        .collect();
    let mut out = std::io::stdout().lock();
    out.write_all(tickets.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| fail::describe("writing the tickets", e))?;
    drop(out);
    eprintln!(
        "sharing {} log{} as {} (relay: {}); Ctrl-C stops",
        cores.len(),
        if cores.len() == 1 { "" } else { "s" },
        node.endpoint.id(),
        net.relay
    );
    if let Some(lines) = lines {
        loop {
            let batch = stdin_lines::next_batch(lines, BATCH).await?;
            if batch.is_empty() {
                break;
            }
            append(&cores[0], batch).await?;
        }
        eprintln!("stdin closed; still sharing");
    }
    std::future::pending().await
}

/// Appends lines to `core`, each one block.
async fn append(core: &Hypercore, lines: Vec<String>) -> Result<(), String> {
    if let Some(line) = lines.iter().find(|l| l.len() > MAX_BLOCK_SIZE) {
        return Err(format!(
            "a line of {} bytes is over the {MAX_BLOCK_SIZE} of a block",
            line.len()
        ));
    }
    core.append_batch(lines.into_iter().map(String::into_bytes))
        .await
        .map(|_| ())
        .map_err(|e| fail::describe("appending a line", e))
}

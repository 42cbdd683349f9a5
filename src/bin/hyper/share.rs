//! `hyper share`: serve logs to whoever holds their tickets, until Ctrl-C.

use std::{
    io::{BufRead, Write},
    path::Path,
};

use clap::Args;
use iroh_hypercore::{Corestore, Hypercore};
use tokio::sync::mpsc;

use crate::{
    fail, local,
    node::{self, NetOptions, Node},
    peers::PeerTracker,
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

/// Lines read from stdin and not yet appended.
const STDIN_BACKLOG: usize = 64;

/// Shares the logs: prints their tickets, then serves until Ctrl-C (or SIGTERM).
pub async fn run(
    store: &Corestore,
    dir: &Path,
    net: &NetOptions,
    args: ShareArgs,
) -> Result<(), String> {
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
    let node = Node::start(store, net).await?;
    let keys: Vec<_> = cores.iter().map(Hypercore::key).collect();
    let tracker = PeerTracker::start(dir, &node.proto, &keys);
    let result = tokio::select! {
        r = share(&node, net, &cores, args.stdin) => r,
        () = node::interrupted() => Ok(()),
    };
    tracker.finish();
    node.shutdown().await;
    result
}

/// Replicates the cores, prints their tickets and serves; with `stdin`, appends its lines to
/// the first core. Returns only on an error.
async fn share(
    node: &Node,
    net: &NetOptions,
    cores: &[Hypercore],
    stdin: bool,
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
    if stdin {
        append_lines(&cores[0]).await?;
        eprintln!("stdin closed; still sharing");
    }
    std::future::pending().await
}

/// Appends each line of stdin to `core` as it is read, until stdin closes.
async fn append_lines(core: &Hypercore) -> Result<(), String> {
    let (tx, mut rx) = mpsc::channel::<std::io::Result<String>>(STDIN_BACKLOG);
    // A plain thread: a read blocked on a terminal must not hold the runtime's shutdown.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let line = line.map_err(|e| format!("reading stdin: {e}"))?;
        core.append(line.into_bytes())
            .await
            .map_err(|e| fail::describe("appending a line", e))?;
    }
    Ok(())
}

//! `hyper share`: serve logs to whoever holds their tickets, until Ctrl-C.

use std::{io::Write, path::Path};

use clap::Args;
use iroh_hypercore::{Corestore, Hypercore};

use crate::{
    append, fail, local,
    node::{NetOptions, Node},
    peers::PeerTracker,
    signals::Interrupts,
    stdin_lines,
};

/// `hyper share` arguments.
#[derive(Debug, Args)]
pub struct ShareArgs {
    /// The logs to share: names made here or keys (64 hex characters). Only these are
    /// served: a peer asking for another log of the store gets nothing, even with an old
    /// ticket for it.
    #[arg(required_unless_present = "all")]
    logs: Vec<String>,
    /// Serve every log of the store to a peer that knows its key (Corestore's
    /// `store.replicate`); with no LOGS, print a ticket for each.
    #[arg(long)]
    all: bool,
    /// Append each line read from stdin to the first log as one block, while sharing.
    #[arg(long)]
    stdin: bool,
    /// Also serve the logs to JS Hypercore peers (`core.replicate(socket)`,
    /// `store.replicate(socket)`) connecting to ADDR over TCP, on Hypercore's own wire, e.g.
    /// 0.0.0.0:4977.
    #[arg(long, value_name = "ADDR")]
    tcp: Option<std::net::SocketAddr>,
    /// Also replicate the logs with the JS Hypercore peer at HOST:PORT over TCP (dialed
    /// again when it goes): with a log's key that is not in the store yet, this fetches the
    /// log from it and serves it to iroh peers (a bridge).
    #[arg(long, value_name = "HOST:PORT")]
    tcp_connect: Vec<String>,
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
        let core = match crate::names::parse_key(log) {
            // A log to fetch from the peers (a JS peer with --tcp-connect) and serve.
            Some(key) if !args.tcp_connect.is_empty() => store
                .get_remote(key)
                .await
                .map_err(|e| fail::describe("opening the log", e))?,
            _ => local::resolve(store, dir, log).await?.0,
        };
        cores.push(core);
    }
    if cores.is_empty() {
        for key in store.list().await.map_err(|e| fail::describe("list", e))? {
            if let Some(core) = store
                .get(key)
                .await
                .map_err(|e| fail::describe("list", e))?
            {
                cores.push(core);
            }
        }
        if cores.is_empty() {
            return Err(format!("the store in {} holds no log", dir.display()));
        }
    }
    if args.stdin && args.logs.is_empty() {
        return Err("--stdin appends to the first log named: name it".into());
    }
    if args.stdin && !cores[0].writable() {
        return Err(format!(
            "--stdin appends to {}, which is not writable here (it was made elsewhere)",
            args.logs[0]
        ));
    }
    let mut lines = args.stdin.then(stdin_lines::read);
    let node = Node::start(store, net, args.all).await?;
    let _tcp_listen = match args.tcp {
        Some(addr) => Some(crate::tcp::listen(&node.proto, addr).await?),
        None => None,
    };
    let _tcp_dials: Vec<_> = args
        .tcp_connect
        .iter()
        .map(|addr| crate::tcp::dial(&node.proto, addr.clone()))
        .collect();
    // `append` and `truncate` from another terminal, while this holds the store.
    #[cfg(unix)]
    let _control = crate::control::Server::start(store, dir);
    let keys: Vec<_> = cores.iter().map(Hypercore::key).collect();
    let tracker = PeerTracker::start(dir, &node.proto, &keys);
    let mut appended = 0;
    let mut result = tokio::select! {
        r = share(&node, net, &cores, lines.as_mut(), &mut appended) => r,
        () = interrupts.first() => Ok(()),
    };
    interrupts.exit_on_next();
    // Lines read before the interrupt are appended, not dropped.
    if let Some(lines) = lines.as_mut()
        && result.is_ok()
    {
        let rest = lines.rest();
        if !rest.is_empty() {
            result = append::append_lines(&cores[0], rest, appended)
                .await
                .map(|_| ());
        }
    }
    tracker.finish().await;
    node.shutdown().await;
    result
}

/// Replicates the cores, prints their tickets and serves; with `lines`, appends them to the
/// first core (counted in `appended`). Returns only on an error.
async fn share(
    node: &Node,
    net: &NetOptions,
    cores: &[Hypercore],
    lines: Option<&mut stdin_lines::StdinLines>,
    appended: &mut usize,
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
            let batch = lines.next_batch(BATCH).await?;
            if batch.is_empty() {
                break;
            }
            *appended += append::append_lines(&cores[0], batch, *appended).await?;
        }
        eprintln!("stdin closed; still sharing");
    }
    std::future::pending().await
}

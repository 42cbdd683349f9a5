//! `hyper follow`: replicate the log a ticket names and print its blocks in order, live.

use std::{
    io::{IsTerminal, Write},
    path::Path,
    time::Duration,
};

use clap::Args;
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use iroh_hypercore::{CoreTicket, Corestore, Error, Hypercore};

use crate::{
    fail, names,
    node::{self, NetOptions, Node},
    peers::PeerTracker,
};

/// `hyper follow` arguments.
#[derive(Debug, Args)]
pub struct FollowArgs {
    /// The `core…` ticket `hyper share` printed.
    pub ticket: String,
    /// Download only the blocks printed: from --start, or else from the log's length once
    /// synced (only new blocks, like `tail -f`).
    #[arg(long)]
    sparse: bool,
    /// The first block to print (default: 0; with --sparse, the log's length).
    #[arg(long)]
    start: Option<u64>,
    /// Exit (code 0) once every block the peers had when we connected is printed, instead
    /// of following live.
    #[arg(long)]
    exit_when_synced: bool,
    /// Seconds to wait for a peer before giving up.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Write the blocks' bytes as they are, with no newline between them.
    #[arg(long)]
    raw: bool,
}

/// How long one wait for the next block lasts before it is asked again (following live).
const BLOCK_WAIT: Duration = Duration::from_secs(3600);
/// How long printed blocks may take to be written at the end.
const STORE_WAIT: Duration = Duration::from_secs(10);
/// How long the first update from the peers may take.
const UPDATE_WAIT: Duration = Duration::from_secs(30);

/// Follows the ticket's log until it is synced (`--exit-when-synced`) or Ctrl-C.
pub async fn run(
    store: &Corestore,
    dir: &Path,
    net: &NetOptions,
    ticket: &CoreTicket,
    args: FollowArgs,
) -> Result<(), String> {
    // Blocks stored before this run: what it downloads is counted against them.
    let stored_before = match store.get(ticket.key()).await {
        Ok(Some(core)) => core.info().contiguous_length,
        _ => 0,
    };
    let node = Node::start(store, net).await?;
    let tracker = PeerTracker::start(dir, &node.proto, &[ticket.key()]);
    let mut seen = Seen::default();
    let result = tokio::select! {
        r = follow(&node, &tracker, ticket, &args, &mut seen) => r,
        () = node::interrupted() => Ok(()),
    };
    if let Some(core) = &seen.core
        && seen.next > seen.first
    {
        // Printed blocks were verified, not necessarily written yet: let the writes land, so
        // that a restart finds them.
        let _ = core.download(seen.first..seen.next).done(STORE_WAIT).await;
    }
    let downloaded = match (&seen.core, args.sparse) {
        (Some(core), false) => core.info().contiguous_length.saturating_sub(stored_before),
        _ => tracker.downloaded().0,
    };
    tracker.finish();
    node.shutdown().await;
    if result.is_ok() {
        eprintln!(
            "{}: {} blocks printed, {downloaded} downloaded this run",
            names::hex(&ticket.key()),
            seen.printed,
        );
    }
    result
}

/// What a follow did, for its summary.
#[derive(Debug, Default)]
struct Seen {
    /// The log, once opened.
    core: Option<Hypercore>,
    /// Blocks printed.
    printed: u64,
    /// Their bytes.
    bytes: u64,
    /// The first block printed after the stored ones.
    first: u64,
    /// The block after the last one printed.
    next: u64,
}

/// Prints the stored blocks, waits for a peer, catches up with a progress bar, then follows
/// live (or returns once synced).
async fn follow(
    node: &Node,
    tracker: &PeerTracker,
    ticket: &CoreTicket,
    args: &FollowArgs,
    seen: &mut Seen,
) -> Result<(), String> {
    let core = node.open_ticket(ticket, args.sparse).await?;
    seen.core = Some(core.clone());
    let mut events = node.proto.events(&core);
    let mut out = Output::new(args.raw);
    let mut next = args.start.unwrap_or(0);
    // What is stored already is printed at once: a restart downloads nothing again.
    if !args.sparse || args.start.is_some() {
        while let Some(block) = local_block(&core, next).await? {
            out.write(&block, None)?;
            next += 1;
            seen.printed += 1;
        }
        out.flush()?;
    }
    let timeout = Duration::from_secs(args.timeout);
    node::wait_for_peer(&node.proto, &core, &mut events, ticket, timeout).await?;
    let synced = core
        .update()
        .wait(UPDATE_WAIT)
        .await
        .map_err(|e| format!("asking the peers for the log's length: {e}"))?;
    if args.sparse && args.start.is_none() {
        next = next.max(synced);
    }
    (seen.first, seen.next) = (next, next);
    // In sparse mode the catch-up range is asked for at once, not block by block.
    let _download = (args.sparse && next < synced).then(|| core.download(next..synced));
    let bar = catch_up_bar(next, synced);
    let mut live = false;
    loop {
        if next >= synced && !live {
            bar.finish_and_clear();
            if args.exit_when_synced {
                return out.flush();
            }
            eprintln!("synced at {synced} blocks; following live (Ctrl-C stops)");
            live = true;
        }
        let block = match local_block(&core, next).await? {
            Some(block) => block,
            None => {
                out.flush()?;
                bar.set_message(status(seen.bytes, tracker));
                match core.get(next).wait(BLOCK_WAIT).await {
                    Ok(block) => block,
                    Err(Error::Timeout(_)) => continue,
                    Err(e) => return Err(format!("block {next}: {e}")),
                }
            }
        };
        out.write(&block, (!live).then_some(&bar))?;
        next += 1;
        seen.printed += 1;
        seen.bytes += block.len() as u64;
        seen.next = next;
        if !live {
            bar.inc(1);
            if next.is_multiple_of(64) {
                bar.set_message(status(seen.bytes, tracker));
            }
        }
    }
}

/// The block if it is stored here.
async fn local_block(core: &Hypercore, index: u64) -> Result<Option<bytes::Bytes>, String> {
    match core.get(index).await {
        Ok(block) => Ok(block),
        Err(Error::OutOfRange { .. }) => Ok(None),
        Err(e) => Err(fail::describe(&format!("reading block {index}"), e)),
    }
}

/// A bar for the blocks `next..synced` on stderr (hidden when stderr is not a terminal).
fn catch_up_bar(next: u64, synced: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(synced.saturating_sub(next)),
        ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {bar:30} {pos}/{len} blocks, {rate} blocks/s, {msg} [{elapsed}]",
        )
        .map(|style| {
            style.with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}", state.per_sec());
                },
            )
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Bytes printed and peers connected, for the bar.
fn status(bytes: u64, tracker: &PeerTracker) -> String {
    let peers = tracker.peers();
    format!(
        "{}, {peers} peer{}",
        HumanBytes(bytes),
        if peers == 1 { "" } else { "s" }
    )
}

/// Stdout, buffered: blocks as lines (or raw), kept clear of the progress bar.
struct Output {
    out: std::io::BufWriter<std::io::Stdout>,
    raw: bool,
    terminal: bool,
}

impl Output {
    fn new(raw: bool) -> Self {
        Self {
            out: std::io::BufWriter::new(std::io::stdout()),
            raw,
            terminal: std::io::stdout().is_terminal(),
        }
    }

    /// Writes a block; on a terminal shared with `bar`, the bar steps aside.
    fn write(&mut self, block: &[u8], bar: Option<&ProgressBar>) -> Result<(), String> {
        let bar = bar.filter(|_| self.terminal);
        let (out, raw) = (&mut self.out, self.raw);
        let mut write = || -> std::io::Result<()> {
            if raw {
                out.write_all(block)?;
            } else {
                out.write_all(String::from_utf8_lossy(block).as_bytes())?;
                out.write_all(b"\n")?;
            }
            if bar.is_some() {
                out.flush()?;
            }
            Ok(())
        };
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
        .map_err(|e| fail::describe("writing to stdout", e))
    }

    fn flush(&mut self) -> Result<(), String> {
        self.out
            .flush()
            .map_err(|e| fail::describe("writing to stdout", e))
    }
}

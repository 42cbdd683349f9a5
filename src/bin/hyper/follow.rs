//! `hyper follow`: replicate the log a ticket names and print its blocks in order, live.

use std::{
    collections::VecDeque,
    io::{IsTerminal, Write},
    path::Path,
    time::Duration,
};

use clap::Args;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use iroh_hypercore::{CoreTicket, Corestore, Error, Hypercore};

use crate::{
    fail,
    fork_watch::ForkWatch,
    names,
    node::{self, NetOptions, Node},
    peers::PeerTracker,
    signals::Interrupts,
    text,
};

/// `hyper follow` arguments.
#[derive(Debug, Args)]
pub struct FollowArgs {
    /// The `core…` ticket `hyper share` printed (or, with --tcp, the log's key in hex).
    pub ticket: String,
    /// Also follow the log from a JS Hypercore peer (`core.replicate(socket)`) at
    /// HOST:PORT, over TCP on Hypercore's own wire; dialed again when it goes. With it,
    /// TICKET may be the log's key (64 hex characters).
    #[arg(long, value_name = "HOST:PORT")]
    pub tcp: Option<String>,
    /// Serve the log to JS Hypercore peers connecting to ADDR over TCP while following it
    /// (a bridge: what the iroh peers write, JS readers get).
    #[arg(long, value_name = "ADDR")]
    tcp_listen: Option<std::net::SocketAddr>,
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
    /// Seconds to wait for a peer before giving up (and, with --exit-when-synced, for one
    /// to come back when every peer went away).
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Write the blocks' bytes as they are, with no newline between them (else one line per
    /// block, control characters escaped).
    #[arg(long)]
    raw: bool,
}

/// How long one wait for the next block lasts before it is asked again (following live).
const BLOCK_WAIT: Duration = Duration::from_secs(3600);
/// Bytes of stored blocks read from the database at once.
const READ_BATCH: u64 = 1 << 20;
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
    let mut interrupts = Interrupts::install()?;
    // Blocks stored before this run: what it downloads is counted against them.
    let stored_before = match store.get(ticket.key()).await {
        Ok(Some(core)) => core.info().contiguous_length,
        _ => 0,
    };
    let node = Node::start(store, net, false).await?;
    let _tcp_dial = args
        .tcp
        .clone()
        .map(|addr| crate::tcp::dial(&node.proto, addr));
    let _tcp_listen = match args.tcp_listen {
        Some(addr) => Some(crate::tcp::listen(&node.proto, addr).await?),
        None => None,
    };
    let tracker = PeerTracker::start(dir, &node.proto, &[ticket.key()]);
    let mut seen = Seen::default();
    let result = tokio::select! {
        r = follow(&node, net, &tracker, ticket, &args, &mut seen) => r,
        () = interrupts.first() => Ok(()),
        // Noticed while no block is written (a write would fail with a broken pipe).
        () = crate::reader_gone::stdout_closed() => Err(Stop::ReaderGone),
    };
    interrupts.exit_on_next();
    if let Some(core) = &seen.core
        && seen.next > seen.first
    {
        // Printed blocks were verified, not necessarily written yet: let the writes land, so
        // that a restart finds them.
        let _ = core.download(seen.first..seen.next).done(STORE_WAIT).await;
    }
    let downloaded = match (&seen.core, args.sparse) {
        (Some(core), false) => Some(core.info().contiguous_length.saturating_sub(stored_before)),
        _ => None,
    };
    tracker.finish().await;
    node.shutdown().await;
    match result {
        Ok(()) | Err(Stop::ReaderGone) => {
            eprintln!(
                "{}: {} printed{}",
                names::hex(&ticket.key()),
                blocks(seen.printed),
                downloaded.map_or(String::new(), |n| format!(", {n} downloaded this run")),
            );
            Ok(())
        }
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// `1 block`, `2 blocks`.
fn blocks(n: u64) -> String {
    format!("{n} block{}", if n == 1 { "" } else { "s" })
}

/// Why following stopped before Ctrl-C.
#[derive(Debug)]
enum Stop {
    /// Whoever read stdout went away (`hyper follow … | head`): a normal end.
    ReaderGone,
    /// An error to report.
    Failed(String),
}

impl From<String> for Stop {
    fn from(e: String) -> Self {
        Self::Failed(e)
    }
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
/// live (or returns once synced). A truncation (a new fork) below what was printed is said
/// on stderr and the blocks from there are printed again. (Where the old and new fork part
/// is known to the root of a subtree, so "from there" may be earlier than the writer's cut.)
async fn follow(
    node: &Node,
    net: &NetOptions,
    tracker: &PeerTracker,
    ticket: &CoreTicket,
    args: &FollowArgs,
    seen: &mut Seen,
) -> Result<(), Stop> {
    let core = node.open_ticket(ticket, args.sparse).await?;
    seen.core = Some(core.clone());
    let _reconnects = n0_future::task::AbortOnDropHandle::new(n0_future::task::spawn(
        node::say_reconnects(node.proto.clone(), core.clone()),
    ));
    let mut events = node.proto.events(&core);
    let mut forks = ForkWatch::new(&core);
    let mut out = Output::new(args.raw);
    let mut next = args.start.unwrap_or(0);
    // What is stored already is printed at once: a restart downloads nothing again.
    if !args.sparse || args.start.is_some() {
        loop {
            let run = stored(&core, next).await?;
            if run.is_empty() {
                break;
            }
            for block in run {
                out.write(&block, None)?;
                next += 1;
                seen.printed += 1;
            }
        }
        out.flush()?;
    }
    let timeout = Duration::from_secs(args.timeout);
    node::wait_for_peer(&node.proto, &core, &mut events, ticket, timeout).await?;
    let mut synced = core
        .update()
        .wait(UPDATE_WAIT)
        .await
        .map_err(|e| format!("asking the peers for the log's length: {e}"))?;
    if args.sparse && args.start.is_none() {
        next = next.max(synced);
    }
    // The first block this run prints: a fork never prints anything before it "again".
    let asked_from = args.start.unwrap_or(if args.sparse { next } else { 0 });
    (seen.first, seen.next) = (next, next);
    // In sparse mode the catch-up range is asked for at once, not block by block.
    let _download = (args.sparse && next < synced).then(|| core.download(next..synced));
    let bar = catch_up_bar(net, next, synced);
    // With --exit-when-synced, losing every peer for the timeout is an error, not a hang.
    let lost = node::no_peer_for(&node.proto, &core, timeout);
    tokio::pin!(lost);
    let mut live = false;
    // Blocks read from the store and not printed yet.
    let mut ready = VecDeque::new();
    loop {
        if let Some((cut, fork)) = forks.rewind(&core) {
            // The log may be shorter now: the blocks the peers had are not all to come.
            synced = synced.min(core.info().length);
            let cut = cut.max(asked_from);
            // Read from the old fork and not printed yet: dropped from the cut on.
            if let Some(keep) = cut.checked_sub(next) {
                ready.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
            }
            if cut < next {
                bar.suspend(|| {
                    eprintln!(
                        "the log moved to fork {fork}: blocks from {cut} on may differ from \
                         those printed, printing from block {cut} again"
                    );
                });
                next = cut;
                ready.clear();
                seen.first = seen.first.min(next);
                seen.next = next;
            }
        }
        if next >= synced && !live {
            bar.finish_and_clear();
            if args.exit_when_synced {
                return out.flush();
            }
            eprintln!("synced at {synced} blocks; following live (Ctrl-C stops)");
            live = true;
        }
        if ready.is_empty() {
            ready = stored(&core, next).await?;
        }
        let block = match ready.pop_front() {
            Some(block) => block,
            None => {
                out.flush()?;
                bar.set_message(status(seen.bytes, tracker));
                tokio::select! {
                    got = core.get(next).wait(BLOCK_WAIT) => match got {
                        Ok(block) => block,
                        Err(Error::Timeout(_)) => continue,
                        Err(e) => return Err(format!("block {next}: {e}").into()),
                    },
                    // Look at the fork again.
                    () = forks.changed() => continue,
                    e = &mut lost, if args.exit_when_synced => {
                        return Err(format!("{e}; {} of {synced} blocks printed", seen.printed).into());
                    }
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

/// Blocks from `index` on that are stored here, read together (up to [`READ_BATCH`] bytes).
async fn stored(core: &Hypercore, index: u64) -> Result<VecDeque<bytes::Bytes>, Stop> {
    core.get_stored(index..u64::MAX, READ_BATCH)
        .await
        .map(VecDeque::from)
        .map_err(|e| Stop::Failed(fail::describe(&format!("reading block {index}"), e)))
}

/// A bar for the blocks `next..synced` on stderr (hidden when stderr is not a terminal).
fn catch_up_bar(net: &NetOptions, next: u64, synced: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(synced.saturating_sub(next)), net.bar_target());
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
    fn write(&mut self, block: &[u8], bar: Option<&ProgressBar>) -> Result<(), Stop> {
        let bar = bar.filter(|_| self.terminal);
        let (out, raw) = (&mut self.out, self.raw);
        let mut write = || -> std::io::Result<()> {
            if raw {
                out.write_all(block)?;
            } else {
                out.write_all(text::block(block).as_bytes())?;
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
        .map_err(stdout_failed)
    }

    fn flush(&mut self) -> Result<(), Stop> {
        self.out.flush().map_err(stdout_failed)
    }
}

fn stdout_failed(e: std::io::Error) -> Stop {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Stop::ReaderGone
    } else {
        Stop::Failed(fail::describe("writing to stdout", e))
    }
}

//! `hyper`: create, write, share and follow Hypercore logs from the command line.
//!
//! Every command opens the store of one data directory. The local ones (`create`, `list`,
//! `info`, `append`, `cat`, `delete`) do their job and close it; the network ones (`share`,
//! `follow`, `get-blob`) start an iroh node with the store's persisted identity. Every error
//! is one line on stderr and exit code 1; Ctrl-C stops a node cleanly with exit code 0.

mod append;
mod blob_file;
#[cfg(unix)]
mod control;
mod data_dir;
mod fail;
mod follow;
mod fork_watch;
mod get_blob;
mod local;
mod metrics_http;
mod names;
mod node;
mod peers;
mod reader_gone;
mod share;
mod signals;
mod stdin_lines;
mod tcp;
mod text;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use iroh_hypercore::CoreTicket;

/// Create, write, share and follow signed append-only logs (Hypercore 11 compatible), stored
/// in one data directory and replicated peer to peer over iroh.
#[derive(Debug, Parser)]
#[command(name = "hyper", version)]
struct Cli {
    /// The data directory (default: the platform's data directory, e.g.
    /// ~/.local/share/iroh-hypercore).
    #[arg(long, global = true, env = "HYPER_DATA")]
    data: Option<PathBuf>,
    /// Relays for the network commands: "default" (iroh's public relays, and lookup of
    /// peers by id), "disabled" (direct addresses only: one machine or one LAN) or the URL
    /// of your own relay.
    #[arg(long, global = true, default_value = "default", value_parser = parse_relay)]
    relay: node::Relay,
    /// The local address the network commands listen on, e.g. 127.0.0.1:0 or 0.0.0.0:4433
    /// (default: every interface, a free port).
    #[arg(long, global = true)]
    bind: Option<SocketAddr>,
    /// Serve the node's metrics (iroh's and the replication's) for Prometheus at
    /// http://ADDR/metrics while a network command runs, e.g. 127.0.0.1:9090.
    #[arg(long, global = true, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Log output on stderr (RUST_LOG is honoured too).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

fn parse_relay(text: &str) -> Result<node::Relay, String> {
    text.parse()
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Local(local::LocalCommand),
    /// Serve logs to peers: prints one ticket per log (a line each, before anything else on
    /// stdout), then serves until Ctrl-C. While it runs, `append` and `truncate` from another
    /// terminal go through it.
    #[command(
        after_help = "Examples:\n  hyper share chat\n  hyper share chat --stdin     \
                            # each line typed is appended and sent\n  hyper share --all"
    )]
    Share(share::ShareArgs),
    /// Follow the log a ticket names: prints its blocks in order, one per line, as they
    /// arrive (with a progress bar on stderr while catching up), then new ones live.
    #[command(after_help = "Examples:\n  hyper follow core…\n  hyper follow core… \
                            --exit-when-synced > log.txt\n  hyper follow core… --sparse   \
                            # only new blocks, like tail -f")]
    Follow(follow::FollowArgs),
    /// Fetch the blob that block INDEX of a ticket's log names, into a file (with a progress
    /// bar on stderr).
    #[command(after_help = "Example:\n  hyper get-blob core… 1 -o photo.jpg")]
    GetBlob(get_blob::GetBlobArgs),
    /// Print a completion script for SHELL, e.g. `hyper completions bash >
    /// ~/.local/share/bash-completion/completions/hyper`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "hyper", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    if cli.verbose || std::env::var_os("RUST_LOG").is_some() {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hyper: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyper: {e}");
            ExitCode::FAILURE
        }
    };
    // A thread blocked reading stdin (share --stdin) must not hold the exit.
    runtime.shutdown_background();
    code
}

async fn run(cli: Cli) -> Result<(), String> {
    let net = node::NetOptions {
        relay: cli.relay,
        bind: cli.bind,
        metrics: cli.metrics,
        // Log lines would tear the progress bars apart.
        bars: !cli.verbose,
    };
    // A ticket is checked before the store is opened: a typo creates nothing.
    let job = Job::of(cli.command)?;
    let dir = data_dir::resolve(cli.data)?;
    let opened = match &job {
        Job::Local(command) if command.only_reads() => data_dir::open_read_only(&dir).await,
        _ => data_dir::open(&dir).await,
    };
    let store = match opened {
        Ok(store) => store,
        // A running share takes append and truncate through its control socket.
        #[cfg(unix)]
        Err(data_dir::OpenError::InUse(e)) => {
            return match job {
                Job::Local(command) => local::run_through(&dir, command, e).await,
                _ => Err(e),
            };
        }
        #[cfg(not(unix))]
        Err(data_dir::OpenError::InUse(e)) => return Err(e),
        Err(data_dir::OpenError::Failed(e)) => return Err(e),
    };
    // Names kept beside the database by an earlier version go into it.
    if !store.storage().is_read_only()
        && let Err(e) = names::import_legacy(&store, &dir).await
    {
        let _ = store.close().await;
        return Err(e);
    }
    let result = match job {
        Job::Local(command) => local::run(&store, &dir, command).await,
        Job::Share(args) => share::run(&store, &dir, &net, args).await,
        Job::Follow(ticket, args) => follow::run(&store, &dir, &net, &ticket, args).await,
        Job::GetBlob(ticket, args) => get_blob::run(&store, &dir, &net, &ticket, args).await,
    };
    let closed = store.close().await;
    result?;
    closed.map_err(|e| fail::describe(&format!("closing the store in {}", dir.display()), e))
}

/// A command with its ticket parsed.
enum Job {
    Local(local::LocalCommand),
    Share(share::ShareArgs),
    Follow(CoreTicket, follow::FollowArgs),
    GetBlob(CoreTicket, get_blob::GetBlobArgs),
}

impl Job {
    fn of(command: Command) -> Result<Self, String> {
        Ok(match command {
            Command::Local(command) => Self::Local(command),
            Command::Share(args) => Self::Share(args),
            Command::Follow(args) => {
                // A JS peer dialed over TCP is named by the log's key: no iroh ticket.
                let ticket = match (&args.tcp, names::parse_key(&args.ticket)) {
                    (Some(_), Some(key)) => CoreTicket::new(key, Vec::new()),
                    _ => node::parse_ticket(&args.ticket)?,
                };
                Self::Follow(ticket, args)
            }
            Command::GetBlob(args) => Self::GetBlob(node::parse_ticket(&args.ticket)?, args),
            Command::Completions { .. } => return Err("completions need no store".into()),
        })
    }
}

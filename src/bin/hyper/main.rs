//! `hyper`: create, write and read Hypercore logs from the command line.
//!
//! This first version has the local commands (`create`, `list`, `info`, `append`, `cat`,
//! `delete`); every error is one line on stderr and a non-zero exit code.

mod local;
mod names;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// Create, write and read signed append-only logs (Hypercore 11 compatible), stored in one
/// data directory.
#[derive(Debug, Parser)]
#[command(name = "hyper", version)]
struct Cli {
    /// The data directory (default: the platform's data directory, e.g.
    /// ~/.local/share/iroh-hypercore).
    #[arg(long, global = true, env = "HYPER_DATA")]
    data: Option<PathBuf>,
    /// Log output on stderr (RUST_LOG is honoured too).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Create the writable log NAME (derived from the store's primary key) and print its key.
    Create {
        /// The log's name.
        name: String,
    },
    /// List the logs of the store: key, name (if made here), length.
    List {
        /// One JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Show a log: key, length, byte length, fork, writable.
    Info {
        /// The log's key (64 hex characters) or name.
        log: String,
        /// A JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Append blocks to the writable log NAME: each TEXT one block; with no TEXT, one block
    /// per line of stdin.
    Append {
        /// The log's name.
        name: String,
        /// Blocks to append.
        texts: Vec<String>,
        /// Append the file's bytes as one block (at most 8 MiB).
        #[arg(long, conflicts_with_all = ["texts", "blob"])]
        file: Option<PathBuf>,
        /// Append the file as a blob (any size; the block names it).
        #[arg(long, conflicts_with = "texts")]
        blob: Option<PathBuf>,
    },
    /// Print blocks of a log, one per line.
    Cat {
        /// The log's key (64 hex characters) or name.
        log: String,
        /// First block.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// End (exclusive; default: the log's length).
        #[arg(long)]
        end: Option<u64>,
        /// Write the blocks' bytes as they are, with no newline between them.
        #[arg(long)]
        raw: bool,
    },
    /// Delete a log and everything stored for it.
    Delete {
        /// The log's key (64 hex characters) or name.
        log: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match runtime.block_on(local::run(cli.data, cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyper: {e}");
            ExitCode::FAILURE
        }
    }
}

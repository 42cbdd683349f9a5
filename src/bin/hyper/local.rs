//! The local commands: they open the data directory's store, do their job and close it.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use clap::Subcommand;
use iroh_hypercore::{Corestore, Hypercore};

use crate::{append, fail, names, peers, text};

/// The commands that work on the store alone.
#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Create the writable log NAME (derived from the store's primary key) and print its key.
    #[command(after_help = "Example:\n  hyper create chat")]
    Create {
        /// The log's name.
        name: String,
    },
    /// List the logs of the store: key, name (if made here), length.
    #[command(after_help = "Examples:\n  hyper list\n  hyper list --json")]
    List {
        /// One JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Show a log: key, length, byte length, fork, writable, and when each peer was last
    /// seen by share or follow.
    #[command(after_help = "Examples:\n  hyper info chat\n  hyper info 3f2a…(64 hex) --json")]
    Info {
        /// The log's key (64 hex characters) or name.
        log: String,
        /// A JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Append blocks to the writable log NAME (made by create): each TEXT one block; with no
    /// TEXT, one block per line of stdin, appended as the lines come. Prints the log's new
    /// length (with --blob, the block's index). While `hyper share` holds the store, it
    /// goes through the running share, and followers see it live.
    #[command(
        after_help = "Examples:\n  hyper append chat hello world   # two blocks\n  \
                            tail -f app.log | hyper append chat\n  hyper append chat --blob \
                            video.mp4"
    )]
    Append {
        /// The log's name.
        name: String,
        /// Blocks to append (their bytes as they are, UTF-8 or not).
        texts: Vec<std::ffi::OsString>,
        /// Append the file's bytes as one block (at most 8 MiB).
        #[arg(long, conflicts_with_all = ["texts", "blob"])]
        file: Option<PathBuf>,
        /// Append the file as a blob (any size; the block names it).
        #[arg(long, conflicts_with = "texts")]
        blob: Option<PathBuf>,
    },
    /// Truncate the writable log NAME to LENGTH blocks, on a new fork (followers see the
    /// fork and print the blocks after LENGTH again).
    #[command(after_help = "Example:\n  hyper truncate chat 10")]
    Truncate {
        /// The log's name (or key).
        name: String,
        /// The new length.
        length: u64,
    },
    /// Print blocks of a log, one per line (control characters escaped; a blob block as
    /// `blob <size> <hash>`).
    #[command(
        after_help = "Examples:\n  hyper cat chat\n  hyper cat chat --start 10 --end \
                            20\n  hyper cat chat --raw > all.bin"
    )]
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
        #[arg(long, conflicts_with = "json")]
        raw: bool,
        /// One JSON object per line: `{"index", "text"}`, or `{"index", "blob": {"hash",
        /// "size"}}` for a blob block.
        #[arg(long)]
        json: bool,
    },
    /// Delete a log and everything stored for it.
    #[command(after_help = "Example:\n  hyper delete chat")]
    Delete {
        /// The log's key (64 hex characters) or name.
        log: String,
    },
}

impl LocalCommand {
    /// Whether the command only reads the store (it is opened read-only for it).
    pub fn only_reads(&self) -> bool {
        matches!(
            self,
            Self::List { .. } | Self::Info { .. } | Self::Cat { .. }
        )
    }
}

/// Runs a local command on the store of `dir`.
pub async fn run(store: &Corestore, dir: &Path, command: LocalCommand) -> Result<(), String> {
    let failed = |what: &str, e: iroh_hypercore::Error| fail::describe(what, e);
    match command {
        LocalCommand::Create { name } => {
            println!("{}", names::hex(&create(store, dir, &name).await?));
        }
        LocalCommand::List { json } => {
            let keys = store.list().await.map_err(|e| failed("list", e))?;
            let known = names::load(store, dir).await?;
            let name_of = |key: &[u8; 32]| {
                known
                    .iter()
                    .find(|(_, k)| *k == key)
                    .map(|(n, _)| n.clone())
            };
            let mut rows = Vec::new();
            for key in keys {
                let Some(core) = store.get(key).await.map_err(|e| failed("list", e))? else {
                    continue;
                };
                rows.push(describe(dir, &core, name_of(&key), false).await);
            }
            if json {
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for row in rows {
                    println!(
                        "{}\t{}\t{}",
                        row["key"].as_str().unwrap_or_default(),
                        row["name"].as_str().unwrap_or("-"),
                        row["length"]
                    );
                }
            }
        }
        LocalCommand::Info { log, json } => {
            let (core, name) = resolve(store, dir, &log).await?;
            let row = describe(dir, &core, name, true).await;
            if json {
                println!("{row}");
            } else if let serde_json::Value::Object(fields) = row {
                for (field, value) in fields {
                    match value {
                        serde_json::Value::String(s) => println!("{field}: {s}"),
                        serde_json::Value::Array(peers) => {
                            for peer in peers {
                                println!(
                                    "peer: {} last seen {}",
                                    peer["id"].as_str().unwrap_or_default(),
                                    ago(peer["last_seen"].as_u64().unwrap_or_default())
                                );
                            }
                        }
                        other => println!("{field}: {other}"),
                    }
                }
            }
        }
        LocalCommand::Append {
            name,
            texts,
            file,
            blob,
        } => {
            append::run(store, dir, &name, source(texts, file, blob)).await?;
        }
        LocalCommand::Truncate { name, length } => {
            let (core, _) = resolve(store, dir, &name).await?;
            truncate(&core, &name, length).await?;
            let info = core.info();
            println!("{} (fork {})", info.length, info.fork);
        }
        LocalCommand::Cat {
            log,
            start,
            end,
            raw,
            json,
        } => {
            let (core, _) = resolve(store, dir, &log).await?;
            let length = core.info().length;
            let end = end.unwrap_or(length).min(length);
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut index = start;
            while index < end {
                let run = core
                    .get_stored(index..end, 1 << 20)
                    .await
                    .map_err(|e| failed(&format!("block {index}"), e))?;
                if run.is_empty() {
                    return Err(format!("block {index} is not stored here"));
                }
                for block in run {
                    let written = if raw {
                        out.write_all(&block)
                    } else if json {
                        serde_json::to_writer(&mut out, &text::json(index, &block))
                            .map_err(std::io::Error::from)
                            .and_then(|()| out.write_all(b"\n"))
                    } else {
                        out.write_all(text::block(&block).as_bytes())
                            .and_then(|()| out.write_all(b"\n"))
                    };
                    match written {
                        Ok(()) => {}
                        // The reader went away (a closed pipe): nothing more to do.
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                        Err(e) => return Err(fail::describe("writing to stdout", e)),
                    }
                    index += 1;
                }
            }
            match out.flush() {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(fail::describe("writing to stdout", e));
                }
                _ => {}
            }
        }
        LocalCommand::Delete { log } => {
            let (core, _) = resolve(store, dir, &log).await?;
            let key = core.key();
            drop(core);
            store.delete(key).await.map_err(|e| failed("delete", e))?;
            peers::forget(dir, &key).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Creates the writable log `name`; returns its key.
pub async fn create(store: &Corestore, dir: &Path, name: &str) -> Result<[u8; 32], String> {
    names::check(name)?;
    if names::load(store, dir).await?.contains_key(name) {
        return Err(format!(
            "a log named {name:?} exists in {} already",
            dir.display()
        ));
    }
    let core = store
        .get_named(name)
        .await
        .map_err(|e| fail::describe("create", e))?;
    Ok(core.key())
}

/// Truncates the writable log `core` (called `name`) to `length` blocks, on a new fork.
pub async fn truncate(core: &Hypercore, name: &str, length: u64) -> Result<(), String> {
    if !core.writable() {
        return Err(format!(
            "{name} is not writable here (it was made elsewhere)"
        ));
    }
    let had = core.info().length;
    if length > had {
        return Err(format!(
            "{name} has {had} blocks: it cannot grow to {length} by a truncate"
        ));
    }
    core.truncate(length)
        .await
        .map_err(|e| fail::describe(&format!("truncating {name}"), e))
}

/// Runs `append` or `truncate` through the running node that holds the store of `dir`;
/// any other command is refused with `in_use`.
#[cfg(unix)]
pub async fn run_through(dir: &Path, command: LocalCommand, in_use: String) -> Result<(), String> {
    let writes = matches!(
        command,
        LocalCommand::Append { .. } | LocalCommand::Truncate { .. } | LocalCommand::Create { .. }
    );
    let client = match writes {
        true => crate::control::Client::connect(dir).await,
        false => None,
    };
    let Some(mut client) = client else {
        return Err(in_use);
    };
    match command {
        LocalCommand::Append {
            name,
            texts,
            file,
            blob,
        } => append::run_through(client, &name, source(texts, file, blob)).await,
        LocalCommand::Create { name } => {
            match client
                .ask(&crate::control::Request::Create { log: name })
                .await?
            {
                crate::control::Reply::Created(key) => {
                    println!("{}", names::hex(&key));
                    Ok(())
                }
                other => Err(format!("unexpected answer {other:?}")),
            }
        }
        LocalCommand::Truncate { name, length } => {
            let request = crate::control::Request::Truncate { log: name, length };
            match client.ask(&request).await? {
                crate::control::Reply::Truncated(length, fork) => {
                    println!("{length} (fork {fork})");
                    Ok(())
                }
                other => Err(format!("unexpected answer {other:?}")),
            }
        }
        _ => Err(in_use),
    }
}

/// What `append` appends, from its arguments.
fn source(
    texts: Vec<std::ffi::OsString>,
    file: Option<PathBuf>,
    blob: Option<PathBuf>,
) -> append::Source {
    match (file, blob) {
        (Some(path), _) => append::Source::File(path),
        (None, Some(path)) => append::Source::Blob(path),
        (None, None) if texts.is_empty() => append::Source::Stdin,
        (None, None) => append::Source::Texts(texts.into_iter().map(bytes_of).collect()),
    }
}

/// The log `log` names: a key (64 hex characters) or a name made in this directory.
pub async fn resolve(
    store: &Corestore,
    dir: &Path,
    log: &str,
) -> Result<(Hypercore, Option<String>), String> {
    let known = names::load(store, dir).await?;
    let (key, name) = match names::parse_key(log) {
        Some(key) => {
            let name = known
                .iter()
                .find(|(_, k)| **k == key)
                .map(|(n, _)| n.clone());
            (key, name)
        }
        None => match known.get(log) {
            Some(key) => (*key, Some(log.to_string())),
            None => {
                return Err(format!(
                    "no log named {log:?} in {} (hyper list shows the logs)",
                    dir.display()
                ));
            }
        },
    };
    match store.get(key).await {
        Ok(Some(core)) => Ok((core, name)),
        Ok(None) => Err(format!(
            "no log with key {} in {}",
            names::hex(&key),
            dir.display()
        )),
        Err(e) => Err(format!("opening {log}: {e}")),
    }
}

/// What `list` and `info` show of a log; `info` also what is stored of it (for a sparse
/// follower, a pass over what it holds), and the stored figures are `null` if unreadable.
async fn describe(
    dir: &Path,
    core: &Hypercore,
    name: Option<String>,
    with_stored: bool,
) -> serde_json::Value {
    let info = core.info();
    let stored = match with_stored {
        true => core.stored().await.ok(),
        false => None,
    };
    let peers: Vec<serde_json::Value> = peers::last_seen(dir, &core.key())
        .into_iter()
        .map(|(id, at)| serde_json::json!({ "id": id, "last_seen": at }))
        .collect();
    let mut row = serde_json::json!({
        "key": names::hex(&core.key()),
        "name": name,
        "length": info.length,
        "byte_length": info.byte_length,
        "fork": info.fork,
        "writable": info.writable,
        "peers": peers,
    });
    if with_stored && let serde_json::Value::Object(fields) = &mut row {
        fields.insert("stored_blocks".into(), stored.map(|s| s.blocks).into());
        fields.insert("stored_bytes".into(), stored.map(|s| s.bytes).into());
    }
    row
}

/// The bytes of an argument as they are (on Unix; elsewhere, as UTF-8 with invalid parts
/// replaced).
fn bytes_of(arg: std::ffi::OsString) -> Vec<u8> {
    #[cfg(unix)]
    {
        std::os::unix::ffi::OsStringExt::into_vec(arg)
    }
    #[cfg(not(unix))]
    {
        arg.to_string_lossy().into_owned().into_bytes()
    }
}

/// How long ago the unix time `at` was, in words.
fn ago(at: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let secs = now.saturating_sub(at);
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86400 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}

//! `hyper append`: blocks from arguments, a file, stdin lines as they come, or a blob; into
//! the store, or through the control socket of the `share` that holds it.

use std::path::{Path, PathBuf};

use iroh_hypercore::{Corestore, Hypercore, core::MAX_BLOCK_SIZE};
#[cfg(unix)]
use serde_bytes::ByteBuf;

#[cfg(unix)]
use crate::control::{self, Client, Reply, Request};
use crate::{fail, names, stdin_lines};

/// Lines of stdin appended (and signed) together at most.
const BATCH: usize = 1000;

/// What to append.
pub enum Source {
    /// Each text one block (its bytes as they are, UTF-8 or not).
    Texts(Vec<Vec<u8>>),
    /// The file's bytes as one block.
    File(PathBuf),
    /// The file as a blob.
    Blob(PathBuf),
    /// One block per line of stdin, appended as the lines come.
    Stdin,
}

/// Where the blocks go: the log in the store this process opened, or the log of the store a
/// running `share` holds.
pub enum Target {
    /// The writable log, opened here.
    Here(Hypercore),
    /// The log `name` of the node on the other end.
    #[cfg(unix)]
    Node(Client, String),
}

impl Target {
    /// Appends `blocks`, all or none; returns the log's length.
    async fn append(&mut self, blocks: Vec<Vec<u8>>, name: &str) -> Result<u64, String> {
        match self {
            Self::Here(core) if blocks.is_empty() => Ok(core.info().length),
            Self::Here(core) => {
                core.append_batch(blocks)
                    .await
                    .map_err(|e| fail::describe(&format!("appending to {name}"), e))?;
                Ok(core.info().length)
            }
            #[cfg(unix)]
            Self::Node(client, log) => {
                // Requests of a bounded size: many lines go in several (and no block in
                // one, which asks the length).
                let mut blocks = blocks.into_iter().peekable();
                loop {
                    let mut bytes = 0;
                    let mut part = Vec::new();
                    while let Some(block) = blocks.next_if(|b| {
                        part.is_empty() || bytes + b.len() <= control::MAX_REQUEST_BYTES
                    }) {
                        bytes += block.len();
                        part.push(ByteBuf::from(block));
                    }
                    let request = Request::Append {
                        log: log.clone(),
                        blocks: part,
                    };
                    let length = match client.ask(&request).await? {
                        Reply::Appended(n) => n,
                        other => return Err(format!("unexpected answer {other:?}")),
                    };
                    if blocks.peek().is_none() {
                        return Ok(length);
                    }
                }
            }
        }
    }
}

/// Appends to the writable log `name` (made by `hyper create`) of the store opened here;
/// prints its new length (for a blob: the block's index).
pub async fn run(store: &Corestore, dir: &Path, name: &str, source: Source) -> Result<(), String> {
    let core = writable(store, dir, name).await?;
    run_on(Target::Here(core), name, source).await
}

/// The same, through the running node on the other end of `client`.
#[cfg(unix)]
pub async fn run_through(client: Client, name: &str, source: Source) -> Result<(), String> {
    run_on(Target::Node(client, name.to_string()), name, source).await
}

async fn run_on(mut target: Target, name: &str, source: Source) -> Result<(), String> {
    let mut length = None;
    match source {
        Source::Blob(path) => {
            let failed = |e| fail::describe(&format!("appending {} as a blob", path.display()), e);
            let index = match &mut target {
                Target::Here(core) => core.append_blob(path.as_path()).await.map_err(failed)?,
                #[cfg(unix)]
                Target::Node(client, log) => {
                    let path = std::path::absolute(&path)
                        .map_err(|e| fail::describe(&format!("reading {}", path.display()), e))?;
                    let request = Request::AppendBlob {
                        log: log.clone(),
                        path,
                    };
                    match client.ask(&request).await? {
                        Reply::AppendedBlob(index) => index,
                        other => return Err(format!("unexpected answer {other:?}")),
                    }
                }
            };
            println!("{index}");
            return Ok(());
        }
        Source::File(path) => {
            let bytes = std::fs::read(&path)
                .map_err(|e| fail::describe(&format!("reading {}", path.display()), e))?;
            if bytes.len() > MAX_BLOCK_SIZE {
                return Err(format!(
                    "{} has {} bytes, over the {MAX_BLOCK_SIZE} of a block: use --blob",
                    path.display(),
                    bytes.len()
                ));
            }
            length = Some(target.append(vec![bytes], name).await?);
        }
        Source::Texts(texts) => {
            check_sizes(&texts, 0)?;
            length = Some(target.append(texts, name).await?);
        }
        Source::Stdin => {
            let mut lines = stdin_lines::read();
            let mut appended = 0;
            loop {
                let batch = lines.next_batch(BATCH).await?;
                if batch.is_empty() {
                    break;
                }
                let n = batch.len();
                check_sizes(&batch, appended)?;
                length = Some(target.append(batch, name).await?);
                appended += n;
            }
        }
    }
    let length = match length {
        Some(length) => length,
        None => target.append(Vec::new(), name).await?,
    };
    println!("{length}");
    Ok(())
}

/// The writable log `name` of this directory.
pub async fn writable(store: &Corestore, dir: &Path, name: &str) -> Result<Hypercore, String> {
    if !names::load(store, dir).await?.contains_key(name) {
        return Err(format!(
            "no log named {name:?} in {} (hyper create {name} makes one)",
            dir.display()
        ));
    }
    store
        .get_named(name)
        .await
        .map_err(|e| fail::describe(&format!("opening {name}"), e))
}

/// Appends lines (read from stdin) as blocks, all or none; `before` lines were appended
/// earlier. Returns how many were appended.
pub async fn append_lines(
    core: &Hypercore,
    lines: Vec<Vec<u8>>,
    before: usize,
) -> Result<usize, String> {
    let n = lines.len();
    check_sizes(&lines, before)?;
    core.append_batch(lines)
        .await
        .map_err(|e| fail::describe("appending lines", e))?;
    Ok(n)
}

/// Checks that each block is within a block's size (else none is appended); `before` lines
/// were appended earlier.
pub fn check_sizes(blocks: &[Vec<u8>], before: usize) -> Result<(), String> {
    match blocks.iter().position(|b| b.len() > MAX_BLOCK_SIZE) {
        None => Ok(()),
        Some(i) => Err(format!(
            "line {} has {} bytes, over the {MAX_BLOCK_SIZE} of a block: use --blob \
             ({before} lines were appended before its batch)",
            before + i + 1,
            blocks[i].len(),
        )),
    }
}

//! `hyper append`: blocks from arguments, a file, stdin lines as they come, or a blob.

use std::path::{Path, PathBuf};

use iroh_hypercore::{Corestore, Hypercore, core::MAX_BLOCK_SIZE};

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

/// Appends to the writable log `name` (made by `hyper create`); prints its new length (for a
/// blob: the block's index).
pub async fn run(store: &Corestore, dir: &Path, name: &str, source: Source) -> Result<(), String> {
    let core = writable(store, dir, name).await?;
    let failed = |e| fail::describe(&format!("appending to {name}"), e);
    match source {
        Source::Blob(path) => {
            let index = core.append_blob(path.as_path()).await.map_err(|e| {
                fail::describe(&format!("appending {} as a blob", path.display()), e)
            })?;
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
            core.append(bytes).await.map_err(failed)?;
        }
        Source::Texts(texts) => {
            let blocks = checked(texts, 0)?;
            core.append_batch(blocks).await.map_err(failed)?;
        }
        Source::Stdin => {
            let mut lines = stdin_lines::read();
            let mut appended = 0;
            loop {
                let batch = stdin_lines::next_batch(&mut lines, BATCH).await?;
                if batch.is_empty() {
                    break;
                }
                appended += append_lines(&core, batch, appended).await?;
            }
        }
    }
    println!("{}", core.info().length);
    Ok(())
}

/// The writable log `name` of this directory.
async fn writable(store: &Corestore, dir: &Path, name: &str) -> Result<Hypercore, String> {
    let Some(key) = names::load(dir).get(name).copied() else {
        return Err(format!(
            "no log named {name:?} in {} (hyper create {name} makes one)",
            dir.display()
        ));
    };
    let core = store
        .get_named(name)
        .await
        .map_err(|e| fail::describe(&format!("opening {name}"), e))?;
    if core.key() != key {
        return Err(format!(
            "{name} in names.txt is the log {}, not this store's log of that name",
            names::hex(&key)
        ));
    }
    Ok(core)
}

/// Appends lines (read from stdin) as blocks, all or none; `before` lines were appended
/// earlier. Returns how many were appended.
pub async fn append_lines(
    core: &Hypercore,
    lines: Vec<Vec<u8>>,
    before: usize,
) -> Result<usize, String> {
    let n = lines.len();
    core.append_batch(checked(lines, before)?)
        .await
        .map_err(|e| fail::describe("appending lines", e))?;
    Ok(n)
}

/// The texts as blocks, each within a block's size (or none is appended); `before` lines
/// were appended earlier.
fn checked(texts: Vec<Vec<u8>>, before: usize) -> Result<Vec<Vec<u8>>, String> {
    texts
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            if text.len() > MAX_BLOCK_SIZE {
                Err(format!(
                    "line {} has {} bytes, over the {MAX_BLOCK_SIZE} of a block: use --blob \
                     ({before} lines were appended before its batch)",
                    before + i + 1,
                    text.len(),
                ))
            } else {
                Ok(text)
            }
        })
        .collect()
}

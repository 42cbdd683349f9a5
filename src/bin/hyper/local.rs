//! The local commands: they open the data directory's store, do their job and close it.

use std::{
    io::{BufRead, Write},
    path::{Path, PathBuf},
};

use iroh_hypercore::{Corestore, Hypercore, core::MAX_BLOCK_SIZE};

use crate::{Command, names};

/// Runs `command` on the store in `data` (or the platform's data directory).
pub async fn run(data: Option<PathBuf>, command: Command) -> Result<(), String> {
    let dir = data
        .or_else(default_data_dir)
        .ok_or("no data directory: pass --data DIR")?;
    let store = open(&dir).await?;
    let result = run_on(&store, &dir, command).await;
    let closed = store.close().await;
    result?;
    closed.map_err(|e| format!("closing the store in {}: {e}", dir.display()))
}

/// The platform's data directory for `hyper`: `$XDG_DATA_HOME/iroh-hypercore`, else
/// `~/.local/share/iroh-hypercore` (`~/Library/Application Support/…` on macOS,
/// `%APPDATA%\…` on Windows).
fn default_data_dir() -> Option<PathBuf> {
    const NAME: &str = "iroh-hypercore";
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(xdg).join(NAME));
    }
    if cfg!(windows) {
        return std::env::var_os("APPDATA").map(|a| PathBuf::from(a).join(NAME));
    }
    let home = PathBuf::from(std::env::var_os("HOME")?);
    Some(if cfg!(target_os = "macos") {
        home.join("Library/Application Support").join(NAME)
    } else {
        home.join(".local/share").join(NAME)
    })
}

/// Opens the store in `dir`, saying plainly when another process holds it.
async fn open(dir: &Path) -> Result<Corestore, String> {
    Corestore::persistent(dir).await.map_err(|e| {
        let text = e.to_string();
        if text.contains("already open") || text.contains("acquire lock") {
            format!(
                "the data directory {} is in use by another hyper process",
                dir.display()
            )
        } else {
            format!("cannot open the store in {}: {text}", dir.display())
        }
    })
}

async fn run_on(store: &Corestore, dir: &Path, command: Command) -> Result<(), String> {
    let fail = |what: &str, e: iroh_hypercore::Error| format!("{what}: {e}");
    match command {
        Command::Create { name } => {
            let core = store
                .get_named(&name)
                .await
                .map_err(|e| fail("create", e))?;
            names::remember(dir, &name, &core.key()).map_err(|e| e.to_string())?;
            println!("{}", names::hex(&core.key()));
        }
        Command::List { json } => {
            let keys = store.list().await.map_err(|e| fail("list", e))?;
            let known = names::load(dir);
            let name_of = |key: &[u8; 32]| {
                known
                    .iter()
                    .find(|(_, k)| *k == key)
                    .map(|(n, _)| n.clone())
            };
            let mut rows = Vec::new();
            for key in keys {
                let Some(core) = store.get(key).await.map_err(|e| fail("list", e))? else {
                    continue;
                };
                rows.push(describe(&core, name_of(&key)));
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
        Command::Info { log, json } => {
            let (core, name) = resolve(store, dir, &log).await?;
            let row = describe(&core, name);
            if json {
                println!("{row}");
            } else if let serde_json::Value::Object(fields) = row {
                for (field, value) in fields {
                    match value {
                        serde_json::Value::String(s) => println!("{field}: {s}"),
                        other => println!("{field}: {other}"),
                    }
                }
            }
        }
        Command::Append {
            name,
            texts,
            file,
            blob,
        } => {
            if let Some(path) = blob {
                let core = store
                    .get_named(&name)
                    .await
                    .map_err(|e| fail("append", e))?;
                names::remember(dir, &name, &core.key()).map_err(|e| e.to_string())?;
                let index = core
                    .append_blob(path.as_path())
                    .await
                    .map_err(|e| fail(&format!("appending {} as a blob", path.display()), e))?;
                println!("{index}");
                return Ok(());
            }
            // The blocks first: bad input creates no log.
            let blocks: Vec<Vec<u8>> = if let Some(path) = file {
                let bytes =
                    std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
                if bytes.len() > MAX_BLOCK_SIZE {
                    return Err(format!(
                        "{} has {} bytes, over the {MAX_BLOCK_SIZE} of a block: use --blob",
                        path.display(),
                        bytes.len()
                    ));
                }
                vec![bytes]
            } else if !texts.is_empty() {
                texts.into_iter().map(String::into_bytes).collect()
            } else {
                let mut lines = Vec::new();
                for line in std::io::stdin().lock().lines() {
                    lines.push(
                        line.map_err(|e| format!("reading stdin: {e}"))?
                            .into_bytes(),
                    );
                }
                lines
            };
            let core = store
                .get_named(&name)
                .await
                .map_err(|e| fail("append", e))?;
            names::remember(dir, &name, &core.key()).map_err(|e| e.to_string())?;
            for chunk in blocks.chunks(1000) {
                core.append_batch(chunk.to_vec())
                    .await
                    .map_err(|e| fail("append", e))?;
            }
            println!("{}", core.info().length);
        }
        Command::Cat {
            log,
            start,
            end,
            raw,
        } => {
            let (core, _) = resolve(store, dir, &log).await?;
            let length = core.info().length;
            let end = end.unwrap_or(length).min(length);
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for index in start..end {
                let block = core
                    .get(index)
                    .await
                    .map_err(|e| fail(&format!("block {index}"), e))?
                    .ok_or_else(|| format!("block {index} is not stored here"))?;
                let written = if raw {
                    out.write_all(&block)
                } else {
                    out.write_all(String::from_utf8_lossy(&block).as_bytes())
                        .and_then(|()| out.write_all(b"\n"))
                };
                if written.is_err() {
                    // The reader went away (a closed pipe): nothing more to do.
                    return Ok(());
                }
            }
            let _ = out.flush();
        }
        Command::Delete { log } => {
            let (core, _) = resolve(store, dir, &log).await?;
            let key = core.key();
            drop(core);
            store.delete(key).await.map_err(|e| fail("delete", e))?;
            names::forget(dir, &key).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The log `log` names: a key (64 hex characters) or a name made in this directory.
async fn resolve(
    store: &Corestore,
    dir: &Path,
    log: &str,
) -> Result<(Hypercore, Option<String>), String> {
    let known = names::load(dir);
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

/// What `list` and `info` show of a log.
fn describe(core: &Hypercore, name: Option<String>) -> serde_json::Value {
    let info = core.info();
    serde_json::json!({
        "key": names::hex(&core.key()),
        "name": name,
        "length": info.length,
        "byte_length": info.byte_length,
        "fork": info.fork,
        "writable": info.writable,
    })
}

//! The data directory: where it is, and opening its store.

use std::path::{Path, PathBuf};

use iroh_hypercore::Corestore;

use crate::fail;

/// The directory `--data` names, else the platform's data directory.
pub fn resolve(data: Option<PathBuf>) -> Result<PathBuf, String> {
    data.or_else(default_data_dir)
        .ok_or_else(|| "no data directory: pass --data DIR".to_string())
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

/// Opens the store in `dir`, saying plainly when another process holds it (at once: the
/// lock is not waited for).
pub async fn open(dir: &Path) -> Result<Corestore, OpenError> {
    Corestore::persistent(dir)
        .await
        .map_err(|e| classify(dir, e))
}

/// Opens the store in `dir` for a command that only reads (`list`, `info`, `cat`): nothing is
/// created (a mistyped `--data` is an error, not a new empty store) or written, so it works
/// in a read-only directory. A store that needs a repair (its writer died) or a migration
/// (an earlier schema) is opened for writing once, which does it.
pub async fn open_read_only(dir: &Path) -> Result<Corestore, OpenError> {
    if !dir.join(iroh_hypercore::store::DB_FILE).is_file() {
        return Err(OpenError::Failed(format!(
            "no store in {} (hyper create NAME makes one there; --data names another)",
            dir.display()
        )));
    }
    match Corestore::open_read_only(dir).await {
        Ok(store) => Ok(store),
        Err(e) => match classify(dir, e) {
            in_use @ OpenError::InUse(_) => Err(in_use),
            // A file to repair (a process that died writing it) or to migrate: opened for
            // writing once, which does it.
            OpenError::Failed(_) => open(dir).await,
        },
    }
}

/// The error of opening the store in `dir`: held by another process, or anything else.
fn classify(dir: &Path, e: iroh_hypercore::Error) -> OpenError {
    let text = e.to_string();
    if text.contains("already open") || text.contains("acquire lock") {
        OpenError::InUse(format!(
            "the data directory {} is in use by another hyper process (a running share \
             takes create, append and truncate; stop it for other commands)",
            dir.display()
        ))
    } else {
        OpenError::Failed(fail::describe(
            &format!("cannot open the store in {}", dir.display()),
            e,
        ))
    }
}

/// Why the store could not be opened.
pub enum OpenError {
    /// Another process holds it: the error line.
    InUse(String),
    /// Anything else: the error line.
    Failed(String),
}

/// Writes `text` to a new file beside `path`, syncs it, and renames it over `path` (the
/// directory synced too), so that a crash, a power loss or a full disk leaves the old file or
/// the new one whole, never half of one or an empty one.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let written = std::fs::File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    // The rename itself is durable once the directory is synced (where directories open).
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

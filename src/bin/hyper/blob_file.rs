//! Writing a fetched blob to the file `get-blob -o` names, never leaving half a file.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use iroh_hypercore::{Corestore, blobs::BlobRef};
use tokio::io::AsyncWriteExt;

use crate::fail;

/// Checks that `path` can be written before anything is fetched: `-`, or a file in a
/// directory that exists.
pub fn check_target(path: &Path) -> Result<(), String> {
    if path == Path::new("-") {
        return Ok(());
    }
    if path.is_dir() {
        return Err(format!("{} is a directory: name a file", path.display()));
    }
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
            Err(format!("the directory {} does not exist", dir.display()))
        }
        _ => Ok(()),
    }
}

/// The temporary directory a write under way uses (beside the target; on Unix only its owner
/// may write in it), removed with what it holds if the write is cut short (by Ctrl-C: the blob
/// store's export may still be writing in it until the store stops) or fails.
#[derive(Debug, Default, Clone)]
pub struct Leftover(Arc<Mutex<Option<tempfile::TempDir>>>);

impl Leftover {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<tempfile::TempDir>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the temporary directory, if a write left one.
    pub fn remove(&self) {
        // Dropping the directory removes it and the file in it.
        drop(self.lock().take());
    }

    /// Renames `partial` (in the temporary directory) to `target` and removes the directory:
    /// an error if a Ctrl-C removed it first.
    fn rename_into_place(&self, partial: &Path, target: &Path) -> std::io::Result<()> {
        let Some(dir) = self.lock().take() else {
            return Err(std::io::Error::other("the write was cut short"));
        };
        std::fs::rename(partial, target)?;
        // The file is in place: a directory that could not be removed is no failure of the
        // write (it is left behind, empty).
        if let Err(e) = dir.close() {
            tracing::warn!("removing the temporary directory: {e}");
        }
        Ok(())
    }
}

/// Copies the blob from the store into `path` (`-` for stdout). A file is written in a new
/// temporary directory beside it (through a symlink: beside its target) and renamed into
/// place once whole and synced, so that a full disk or Ctrl-C leaves neither half a file
/// nor a clobbered old one. Other targets (a device, a pipe) are written directly.
pub async fn write(
    store: &Corestore,
    blob: &BlobRef,
    path: &Path,
    leftover: &Leftover,
) -> Result<(), String> {
    let mut reader = store.blobs().reader(blob.hash);
    let failed = |e: std::io::Error| fail::describe(&format!("writing {}", path.display()), e);
    if path == Path::new("-") {
        let mut out = tokio::io::stdout();
        tokio::io::copy(&mut reader, &mut out)
            .await
            .map_err(failed)?;
        return out.flush().await.map_err(failed);
    }
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .await
            .map_err(failed)?;
        tokio::io::copy(&mut reader, &mut file)
            .await
            .map_err(failed)?;
        return file.flush().await.map_err(failed);
    }
    let target = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_symlink() => std::fs::canonicalize(path).map_err(failed)?,
        _ => std::path::absolute(path).map_err(failed)?,
    };
    // A new file beside the target (a rename stays on one file system), never one that
    // exists nor a link planted there.
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map_or_else(|| "blob".into(), |n| n.to_string_lossy().into_owned());
    // The file is made in a new directory of our own beside the target: a name nobody
    // else can plant a link at, and that does not exist yet, so that the blob store's
    // export may reflink its copy there (sharing its blocks, copy-on-write, where the file
    // system can: Btrfs, XFS, APFS) rather than write it again.
    // Named after the target for whoever sees it, within the longest name a directory may
    // have whatever the target's length.
    let label: String = name.chars().take(32).collect();
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{label}."))
        .suffix(".partial")
        .tempdir_in(dir)
        .map_err(failed)?;
    let partial = temp.path().join("blob");
    *leftover.lock() = Some(temp);
    let written = async {
        // The blob store's own export: a reflink, else a copy of the file whole. Its errors
        // do not say why, so a failed export is done again by hand, which names the cause
        // (a full disk) or succeeds.
        if store
            .blobs()
            .export(blob.hash, &partial)
            .finish()
            .await
            .is_err()
        {
            let mut file = tokio::fs::File::create(&partial).await?;
            tokio::io::copy(&mut reader, &mut file).await?;
            file.sync_all().await?;
        } else {
            // Opened for writing: Windows flushes only a handle that may write.
            let file = std::fs::OpenOptions::new().write(true).open(&partial)?;
            file.sync_all()?;
        }
        leftover.rename_into_place(&partial, &target)
    }
    .await;
    if written.is_err() {
        leftover.remove();
    }
    written.map_err(failed)
}

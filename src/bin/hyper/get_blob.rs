//! `hyper get-blob`: fetch the blob a block of a ticket's log names, into a file.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use iroh_blobs::api::proto::BlobStatus;
use iroh_hypercore::{CoreTicket, Corestore, Hypercore, blobs::BlobRef};
use n0_future::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::{
    fail,
    node::{self, NetOptions, Node},
    peers::PeerTracker,
    signals::Interrupts,
};

/// `hyper get-blob` arguments.
#[derive(Debug, Args)]
pub struct GetBlobArgs {
    /// The `core…` ticket `hyper share` printed.
    pub ticket: String,
    /// The index of the block that names the blob (`hyper append --blob` printed it).
    index: u64,
    /// The file to write (`-`: stdout).
    #[arg(short, long)]
    output: PathBuf,
    /// Seconds to wait for a peer before giving up.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// How long the fetch itself may take once a peer answered (Ctrl-C stops it sooner).
const FETCH_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long the first update from the peers may take.
const UPDATE_WAIT: Duration = Duration::from_secs(30);

/// Fetches the blob (resuming what an earlier run stored) and writes it to the file.
pub async fn run(
    store: &Corestore,
    dir: &std::path::Path,
    net: &NetOptions,
    ticket: &CoreTicket,
    args: GetBlobArgs,
) -> Result<(), String> {
    let mut interrupts = Interrupts::install()?;
    let node = Node::start(store, net).await?;
    let tracker = PeerTracker::start(dir, &node.proto, &[ticket.key()]);
    let result = tokio::select! {
        r = get_blob(&node, net, store, ticket, &args) => r,
        () = interrupts.first() => Err(
            "interrupted before the blob was written; what was fetched is kept, and \
             get-blob again resumes"
                .into(),
        ),
    };
    tracker.finish().await;
    node.shutdown().await;
    result
}

async fn get_blob(
    node: &Node,
    net: &NetOptions,
    store: &Corestore,
    ticket: &CoreTicket,
    args: &GetBlobArgs,
) -> Result<(), String> {
    // Only the blob's block is needed from the log.
    let core = node.open_ticket(ticket, true).await?;
    let mut events = node.proto.events(&core);
    let timeout = Duration::from_secs(args.timeout);
    let needs_peers = !stored_here(store, &core, args.index).await;
    if needs_peers {
        node::wait_for_peer(&node.proto, &core, &mut events, ticket, timeout).await?;
        let length = core
            .update()
            .wait(UPDATE_WAIT)
            .await
            .map_err(|e| format!("asking the peers for the log's length: {e}"))?;
        if args.index >= length {
            return Err(format!(
                "the log has {length} blocks: there is no block {}",
                args.index
            ));
        }
    }
    let get = core.get_blob(args.index);
    let bar = ProgressBar::with_draw_target(None, net.bar_target());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {bar:30} {bytes}/{total_bytes}, {binary_bytes_per_sec}, eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut progress = get.progress();
    let shown = bar.clone();
    let watch = tokio::spawn(async move {
        while let Some(p) = progress.next().await {
            if p.total > 0 {
                shown.set_length(p.total);
            }
            shown.set_position(p.done);
        }
    });
    // Losing every peer for the timeout ends the fetch, rather than a wait of days.
    let fetched = tokio::select! {
        fetched = get.fetch(FETCH_WAIT) => fetched.map_err(|e| {
            fail::describe(&format!("block {}", args.index), e)
        }),
        e = node::no_peer_for(&node.proto, &core, timeout), if needs_peers => Err(e),
    };
    watch.abort();
    bar.finish_and_clear();
    let blob = fetched?;
    write_file(store, &blob, &args.output).await?;
    eprintln!(
        "wrote {} ({} bytes) to {}",
        HumanBytes(blob.size),
        blob.size,
        args.output.display()
    );
    Ok(())
}

/// Copies the blob from the store into `path` (`-` for stdout). A file is written under a
/// temporary name beside it and renamed into place once whole, so that a full disk or a
/// Ctrl-C leaves neither half a file nor a clobbered old one. Other targets (a device, a
/// pipe) are written directly.
async fn write_file(store: &Corestore, blob: &BlobRef, path: &Path) -> Result<(), String> {
    let mut reader = store.blobs().reader(blob.hash);
    let failed = |e: std::io::Error| fail::describe(&format!("writing {}", path.display()), e);
    if path == Path::new("-") {
        let mut out = tokio::io::stdout();
        tokio::io::copy(&mut reader, &mut out)
            .await
            .map_err(failed)?;
        return out.flush().await.map_err(failed);
    }
    let special = std::fs::metadata(path).is_ok_and(|m| !m.is_file());
    if special {
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
    let partial = Partial::beside(path);
    // The blob store's own export copies the file whole (the fast way). Its errors do not
    // say why, so a failed export is done again by hand, which names the cause (a full
    // disk) or succeeds.
    let target = std::path::absolute(&partial.0).map_err(failed)?;
    let exported = store.blobs().export(blob.hash, &target).finish().await;
    if exported.is_err() {
        let mut file = tokio::fs::File::create(&partial.0).await.map_err(failed)?;
        tokio::io::copy(&mut reader, &mut file)
            .await
            .map_err(failed)?;
        file.sync_all().await.map_err(failed)?;
    } else {
        let file = std::fs::File::open(&partial.0).map_err(failed)?;
        file.sync_all().map_err(failed)?;
    }
    partial.rename_to(path).map_err(failed)
}

/// A file being written under a temporary name; removed unless renamed into place.
struct Partial(PathBuf);

impl Partial {
    /// `.NAME.partial` in the same directory (a rename stays on one file system).
    fn beside(path: &Path) -> Self {
        let name = path
            .file_name()
            .map_or_else(|| "blob".into(), |n| n.to_string_lossy().into_owned());
        Self(path.with_file_name(format!(".{name}.partial")))
    }

    fn rename_to(self, path: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.0, path)?;
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether the block and its whole blob are stored here already (no peer needed).
async fn stored_here(store: &Corestore, core: &Hypercore, index: u64) -> bool {
    let Ok(Some(block)) = core.get(index).await else {
        return false;
    };
    let Some(blob) = BlobRef::from_block(&block) else {
        // Not a blob: the export says so.
        return true;
    };
    matches!(
        store.blobs().status(blob.hash).await,
        Ok(BlobStatus::Complete { .. })
    )
}

//! `hyper get-blob`: fetch the blob a block of a ticket's log names, into a file.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use iroh_blobs::api::proto::BlobStatus;
use iroh_hypercore::{CoreTicket, Corestore, Hypercore, blobs::BlobRef};
use n0_future::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::{
    fail,
    node::{self, NetOptions, Node},
    peers::PeerTracker,
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
    let node = Node::start(store, net).await?;
    let tracker = PeerTracker::start(dir, &node.proto, &[ticket.key()]);
    let result = tokio::select! {
        r = get_blob(&node, store, ticket, &args) => r,
        () = node::interrupted() => Err(
            "interrupted before the blob was written; what was fetched is kept, and \
             get-blob again resumes"
                .into(),
        ),
    };
    tracker.finish();
    node.shutdown().await;
    result
}

async fn get_blob(
    node: &Node,
    store: &Corestore,
    ticket: &CoreTicket,
    args: &GetBlobArgs,
) -> Result<(), String> {
    // Only the blob's block is needed from the log.
    let core = node.open_ticket(ticket, true).await?;
    let mut events = node.proto.events(&core);
    if !stored_here(store, &core, args.index).await {
        let timeout = Duration::from_secs(args.timeout);
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
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
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
    let fetched = get.fetch(FETCH_WAIT).await;
    watch.abort();
    bar.finish_and_clear();
    let blob = fetched.map_err(|e| fail::describe(&format!("block {}", args.index), e))?;
    write_file(store, &blob, &args.output).await?;
    eprintln!(
        "wrote {} ({} bytes) to {}",
        HumanBytes(blob.size),
        blob.size,
        args.output.display()
    );
    Ok(())
}

/// Copies the blob from the store into `path` (`-` for stdout). A file this run created is
/// removed again if the copy fails (a full disk): no half file is left behind.
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
    let created = !path.exists();
    let copied = async {
        let mut file = tokio::fs::File::create(path).await?;
        tokio::io::copy(&mut reader, &mut file).await?;
        file.sync_all().await
    }
    .await;
    if let Err(e) = copied {
        if created && path.is_file() {
            let _ = std::fs::remove_file(path);
        }
        return Err(failed(e));
    }
    Ok(())
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

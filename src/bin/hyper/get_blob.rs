//! `hyper get-blob`: fetch the blob a block of a ticket's log names, into a file.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use iroh_blobs::api::proto::BlobStatus;
use iroh_hypercore::{CoreTicket, Corestore, Hypercore, blobs::BlobRef};
use n0_future::StreamExt;

use crate::{
    blob_file, fail,
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
    // A target that cannot be written is said before anything is fetched.
    blob_file::check_target(&args.output)?;
    let node = Node::start(store, net, false).await?;
    let tracker = PeerTracker::start(dir, &node.proto, &[ticket.key()]);
    let partial = blob_file::Leftover::default();
    let result = tokio::select! {
        r = get_blob(&node, net, store, ticket, &args, &partial) => r,
        () = interrupts.first() => Err(
            "interrupted before the blob was written; what was fetched is kept, and \
             get-blob again resumes"
                .into(),
        ),
    };
    interrupts.exit_on_next();
    tracker.finish().await;
    // Stops the blob store too: an export cut short by Ctrl-C writes no more after this.
    node.shutdown().await;
    partial.remove();
    result
}

async fn get_blob(
    node: &Node,
    net: &NetOptions,
    store: &Corestore,
    ticket: &CoreTicket,
    args: &GetBlobArgs,
    partial: &blob_file::Leftover,
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
    blob_file::write(store, &blob, &args.output, partial).await?;
    eprintln!(
        "wrote {} ({} bytes) to {}",
        HumanBytes(blob.size),
        blob.size,
        args.output.display()
    );
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

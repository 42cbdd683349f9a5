//! Demo: a local network replicating a log live.
//!
//! Starts an in-process iroh relay and three nodes. The writer appends to a log while two
//! followers, who know only its ticket, replicate it live: one over direct QUIC, one through
//! the relay only. Every block they store was verified against the writer's signature. Prints
//! progress and the throughput each follower saw; exits 0 when both hold the whole verified
//! log.
//!
//! ```text
//! cargo run --release --example demo
//! ```

use std::time::{Duration, Instant};

use iroh_hypercore::{
    CoreTicket, Hypercore, StoreOptions,
    replication::Event,
    testnet::{Node, TestNet, Transport},
};

/// Blocks the writer appends, in batches, while the followers follow.
const BLOCKS: u64 = 20_000;
const BATCH: u64 = 200;
const BLOCK_SIZE: usize = 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let net = TestNet::new().await?;
    println!("relay running at {}", net.relay_url());

    let writer = net
        .node_in(
            Transport::Direct,
            &dir.path().join("writer"),
            StoreOptions::default(),
        )
        .await?;
    let log = writer.store.get_named("demo").await?;
    log.append(b"hello from the writer".to_vec()).await?;
    writer.proto.replicate(&log).await?;
    let ticket: CoreTicket = writer.proto.ticket(&log);
    println!(
        "writer {}: ticket {ticket}",
        writer.endpoint.id().fmt_short()
    );

    // The followers get the ticket as a string, as they would over a chat message.
    let text = ticket.to_string();
    let direct = follower(&net, Transport::Direct, &dir.path().join("direct"), &text).await?;
    let relayed = follower(
        &net,
        Transport::RelayOnly,
        &dir.path().join("relayed"),
        &text,
    )
    .await?;
    println!(
        "followers: {} (direct), {} (relay only)",
        direct.0.endpoint.id().fmt_short(),
        relayed.0.endpoint.id().fmt_short()
    );

    let start = Instant::now();
    let appender = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut next = 1;
            while next < BLOCKS {
                let n = BATCH.min(BLOCKS - next);
                let batch: Vec<Vec<u8>> = (next..next + n).map(block).collect();
                log.append_batch(batch).await?;
                next += n;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            anyhow::Ok(())
        })
    };

    let mut last_print = Instant::now();
    loop {
        let (a, b) = (direct.1.info(), relayed.1.info());
        let done = |i: &iroh_hypercore::Info| i.length == BLOCKS && i.contiguous_length == BLOCKS;
        if last_print.elapsed() > Duration::from_millis(250) || (done(&a) && done(&b)) {
            println!(
                "{:>6.2}s  writer {:>6}  direct {:>6}/{:<6}  relayed {:>6}/{:<6}",
                start.elapsed().as_secs_f64(),
                log.info().length,
                a.contiguous_length,
                a.length,
                b.contiguous_length,
                b.length
            );
            last_print = Instant::now();
        }
        if done(&a) && done(&b) {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(120),
            "followers did not catch up in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    appender.await??;
    let secs = start.elapsed().as_secs_f64();

    for (name, (node, core)) in [("direct", &direct), ("relayed", &relayed)] {
        anyhow::ensure!(core.tree_hash() == log.tree_hash(), "{name}: tree differs");
        let last = core.get(BLOCKS - 1).await?.unwrap_or_default();
        anyhow::ensure!(last == block(BLOCKS - 1), "{name}: last block differs");
        let stats = node.proto.peer_stats().await?;
        let bytes: u64 = stats.iter().map(|s| s.bytes_down).sum();
        println!(
            "{name}: {BLOCKS} verified blocks, {:.1} MiB in {secs:.2}s ({:.0} blocks/s, connected to {} peer(s))",
            bytes as f64 / (1 << 20) as f64,
            BLOCKS as f64 / secs,
            stats.len()
        );
    }
    println!("both followers hold the verified log of {BLOCKS} blocks");
    for node in [&direct.0, &relayed.0, &writer] {
        node.shutdown().await;
    }
    Ok(())
}

/// A follower node with its own store, following the log named by `ticket`.
async fn follower(
    net: &TestNet,
    transport: Transport,
    dir: &std::path::Path,
    ticket: &str,
) -> anyhow::Result<(Node, Hypercore)> {
    let node = net.node_in(transport, dir, StoreOptions::default()).await?;
    let ticket: CoreTicket = ticket.parse()?;
    let core = node.proto.open_ticket(&ticket).await?;
    let mut events = node.proto.subscribe();
    tokio::spawn(async move {
        while let Some(ev) = n0_future::StreamExt::next(&mut events).await {
            if let Event::Invalid { reason, .. } = ev {
                eprintln!("rejected data: {reason}");
            }
        }
    });
    Ok((node, core))
}

fn block(i: u64) -> Vec<u8> {
    let mut v = format!("block {i} ").into_bytes();
    v.resize(BLOCK_SIZE, b'.');
    v
}

//! Blobs over real endpoints on the test relay, with file stores: values appended as blobs
//! reach a reader that has only the ticket (with progress up to the total), a second reader
//! gets them from the first while the writer is offline, a reference to a blob over the
//! reader's limit is refused before anything is downloaded, and garbage collection keeps
//! exactly the blobs the store's blocks name.

#[path = "common/net.rs"]
mod net;

use std::time::Duration;

use bytes::Bytes;
use iroh_hypercore::replication::Event;
use iroh_hypercore::{
    Corestore, Error, StoreOptions,
    blobs::{BlobPolicy, BlobProgress, BlobRef},
    net::ReplicaEvent,
    store::BlobOptions,
    testnet::{TestNet, Transport},
};
use n0_future::StreamExt;
use net::{WAIT, wait_event, wait_full};

/// `n` bytes that differ from one blob to the next.
fn content(n: usize, seed: u8) -> Bytes {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A writer node whose log `name` holds `blob` as block `index` (after the blocks `before`),
/// replicated: `(writer, log, index)`.
async fn writer_with_blob(
    net: &TestNet,
    name: &str,
    before: &[&[u8]],
    blob: Bytes,
) -> (
    iroh_hypercore::testnet::Node,
    iroh_hypercore::Hypercore,
    u64,
) {
    let writer = net.node(Transport::Direct).await.unwrap();
    let log = writer.store.get_named(name).await.unwrap();
    for block in before {
        log.append(block.to_vec()).await.unwrap();
    }
    let index = log.append_blob(blob).await.unwrap();
    writer.proto.replicate(&log).await.unwrap();
    (writer, log, index)
}

/// An endpoint that speaks only iroh-blobs, through `handler`: `(endpoint, router)`.
async fn blob_only_endpoint(
    net: &TestNet,
    handler: impl iroh::protocol::ProtocolHandler,
) -> (iroh::Endpoint, iroh::protocol::Router) {
    let ep = net.endpoint(Transport::Direct).await.unwrap();
    let router = iroh::protocol::Router::builder(ep.clone())
        .accept(iroh_blobs::ALPN, handler)
        .spawn();
    (ep, router)
}

/// Blobs of 0 B, 1 KiB and 10 MiB, appended by a writer, reach a reader holding only the
/// ticket, byte for byte; the progress of each ends at its total. With the writer gone, a
/// second reader gets them from the first one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_reach_a_reader_with_the_ticket_and_a_second_reader_from_the_first() {
    let net = net::test_net().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let writer = net::node_in_dir(&net, dirs[0].path()).await;
    let log = writer.store.get_named("files").await.unwrap();
    log.append(b"a plain block".to_vec()).await.unwrap();
    let blobs = [content(0, 1), content(1024, 2), content(10 << 20, 3)];
    let mut indices = Vec::new();
    for blob in &blobs {
        indices.push(log.append_blob(blob.clone()).await.unwrap());
    }
    assert_eq!(indices, [1, 2, 3]);
    writer.proto.replicate(&log).await.unwrap();
    let ticket = writer.proto.ticket(&log);

    let reader = net::node_in_dir(&net, dirs[1].path()).await;
    let core = reader.proto.open_ticket(&ticket).await.unwrap();
    for (blob, index) in blobs.iter().zip(&indices) {
        let get = core.get_blob(*index);
        let progress = get.progress();
        let got = get.wait(WAIT).await.unwrap();
        assert_eq!(got, *blob, "blob of block {index}");
        let seen: Vec<BlobProgress> = progress.collect().await;
        let last = seen.last().expect("progress was reported");
        assert_eq!(
            (last.done, last.total),
            (blob.len() as u64, blob.len() as u64)
        );
    }
    let err = core.get_blob(0).wait(WAIT).await.unwrap_err();
    assert!(
        matches!(&err, Error::Blob(m) if m.contains("names no blob")),
        "{err}"
    );
    writer.shutdown().await;

    let second = net::node_in_dir(&net, dirs[2].path()).await;
    let core2 = net::follow(&second, &reader, &core).await;
    wait_full(&core2, 4).await;
    let got = core2.get_blob(3).wait(WAIT).await.unwrap();
    assert_eq!(got, blobs[2], "the 10 MiB blob from the first reader");
    let file = dirs[2].path().join("exported");
    assert_eq!(core2.get_blob(2).export(&file, WAIT).await.unwrap(), 1024);
    assert_eq!(std::fs::read(&file).unwrap(), blobs[1]);
    net::shutdown(&[&reader, &second]).await;
}

/// A blob provider that answers every request with the encoding of another blob of the
/// same size: bytes that fail verification.
#[derive(Debug, Clone)]
struct LyingBlobs(Bytes);

impl iroh::protocol::ProtocolHandler for LyingBlobs {
    async fn accept(
        &self,
        conn: iroh::endpoint::Connection,
    ) -> Result<(), iroh::protocol::AcceptError> {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let _request = recv.read_to_end(64 * 1024).await;
            let _ = send.write_all(&self.0).await;
            let _ = send.finish();
        }
        Ok(())
    }
}

/// A blob provider that accepts every request and never answers.
#[derive(Debug, Clone)]
struct SilentBlobs;

impl iroh::protocol::ProtocolHandler for SilentBlobs {
    async fn accept(
        &self,
        conn: iroh::endpoint::Connection,
    ) -> Result<(), iroh::protocol::AcceptError> {
        let _streams = conn.accept_bi().await;
        conn.closed().await;
        Ok(())
    }
}

/// A provider that sends bytes failing verification is dropped for the others, the blob
/// arrives right, and the liar is blamed (an `Invalid` event, counted in its peer stats); a
/// provider that merely lacks the blob (a reader that holds only the block) is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_sending_bad_bytes_is_dropped_and_counted_invalid() {
    let net = net::test_net().await;
    let blob = content(2 << 20, 7);
    let (writer, log, index) = writer_with_blob(&net, "shared", &[], blob.clone()).await;
    let ticket = writer.proto.ticket(&log);

    // The encoding of another blob of the same size, as a provider sends it.
    let other = writer
        .store
        .blobs()
        .add_bytes(content(2 << 20, 8))
        .await
        .unwrap();
    let lie = writer
        .store
        .blobs()
        .export_bao(other.hash, iroh_blobs::protocol::ChunkRanges::all())
        .bao_to_vec()
        .await
        .unwrap();
    // The liar replicates the core like any peer (so it has a channel and stats), and
    // answers blob requests with the other blob's bytes.
    let liar_store = Corestore::memory().await.unwrap();
    let liar_ep = net
        .endpoint_with_key(Transport::Direct, Some(liar_store.endpoint_secret_key()))
        .await
        .unwrap();
    let liar_gossip = iroh_gossip::Gossip::builder().spawn(liar_ep.clone());
    let liar = iroh_hypercore::HypercoreProtocol::builder(liar_store)
        .spawn(liar_ep.clone(), liar_gossip.clone());
    let liar_router = iroh::protocol::Router::builder(liar_ep.clone())
        .accept(iroh_hypercore::ALPN, liar.clone())
        .accept(iroh_gossip::ALPN, liar_gossip)
        .accept(iroh_blobs::ALPN, LyingBlobs(lie.into()))
        .spawn();
    let liar_core = liar.open_ticket(&ticket).await.unwrap();
    wait_full(&liar_core, index + 1).await;
    // A reader with the block but not the blob: a provider without it.
    let (lacking, _lacking_core) = net::synced_follower(&net, &writer, &log).await;

    let reader = net.node(Transport::Direct).await.unwrap();
    let providers = [liar_ep.addr(), lacking.addr(), writer.addr()];
    let core = net::joined(&reader, log.key(), &providers).await;
    wait_full(&core, index + 1).await;
    tokio::time::timeout(WAIT, async {
        while reader.proto.peers(&core).await.unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("channels with the writer, the lacking reader and the liar");
    let mut events = reader.proto.subscribe();
    let got = core.get_blob(index).wait(WAIT).await.unwrap();
    assert_eq!(got, blob, "the right bytes, from the writer");
    let stats = reader.proto.peer_stats().await.unwrap();
    let invalid = |id: iroh::EndpointId| {
        stats
            .iter()
            .find(|s| s.peer == *id.as_bytes())
            .map_or(0, |s| s.invalid)
    };
    assert_eq!(
        invalid(lacking.endpoint.id()),
        0,
        "lacking the blob is no fault"
    );
    assert_eq!(invalid(writer.endpoint.id()), 0);
    // The liar has no channel (it speaks only iroh-blobs), so it has no stats row: its
    // blame shows as an `Invalid` event.
    let liar = *liar_ep.id().as_bytes();
    net::wait_blamed(&mut events, liar, "the liar blamed").await;
    let _ = liar_router.shutdown().await;
    for node in [writer, lacking, reader] {
        node.shutdown().await;
    }
}

/// A block naming a blob bigger than the reader's `max_blob_size` is refused with a clear
/// error before anything is downloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_over_the_size_limit_is_refused_before_downloading() {
    let net = net::test_net().await;
    let (writer, log, index) = writer_with_blob(&net, "big", &[], content(2 << 20, 9)).await;

    let opts = StoreOptions {
        blobs: BlobOptions {
            max_blob_size: 1 << 20,
            ..Default::default()
        },
        ..Default::default()
    };
    let store = Corestore::memory_with(opts).await.unwrap();
    let (reader, core) = net::follower_with(&net, &writer, &log, store).await;
    let err = core.get_blob(index).wait(WAIT).await.unwrap_err();
    assert!(
        matches!(&err, Error::Blob(m) if m.contains("over max_blob_size")),
        "{err}"
    );
    let block = core.get(index).wait(WAIT).await.unwrap();
    let blob = BlobRef::from_block(&block).unwrap();
    let status = reader.store.blobs().status(blob.hash).await.unwrap();
    assert!(
        matches!(status, iroh_blobs::api::proto::BlobStatus::NotFound),
        "nothing downloaded: {status:?}"
    );
    net::shutdown(&[&writer, &reader]).await;
}

/// A reference that understates its blob's size (a writer's lie) gets an error, and no more
/// than the size it states is downloaded: the blob stays incomplete. One that states the
/// size 0 for a blob that is not empty asks nobody for anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_that_understates_its_blob_downloads_no_more_than_it_states() {
    let net = net::test_net().await;
    let writer = net.node(Transport::Direct).await.unwrap();
    let big = content(3 << 20, 5);
    let tag = writer.store.blobs().add_bytes(big).await.unwrap();
    let log = writer.store.get_named("liar").await.unwrap();
    let lie = BlobRef {
        hash: tag.hash,
        size: 1000,
    };
    log.append(lie.to_block()).await.unwrap();
    // The tag `append_blob` would keep for block 0 (`hypercore/`, the key, the index): a node
    // serves only blobs a block of a served core names.
    let mut name = b"hypercore/".to_vec();
    name.extend_from_slice(&log.key());
    name.extend_from_slice(&0u64.to_be_bytes());
    writer
        .store
        .blobs()
        .tags()
        .set(name, iroh_blobs::HashAndFormat::raw(tag.hash))
        .await
        .unwrap();
    writer.proto.replicate(&log).await.unwrap();

    let (reader, core) = net::follower(&net, &writer, &log).await;
    let err = core.get_blob(0).wait(WAIT).await.unwrap_err();
    assert!(
        matches!(&err, Error::Blob(m) if m.contains("incomplete")),
        "{err}"
    );
    let status = reader.store.blobs().status(tag.hash).await.unwrap();
    assert!(
        !matches!(status, iroh_blobs::api::proto::BlobStatus::Complete { .. }),
        "only the stated size was fetched: {status:?}"
    );
    net::shutdown(&[&writer, &reader]).await;
}

/// Waits (up to `WAIT`) until `hash` is gone from `store`'s blobs.
async fn wait_collected(store: &Corestore, hash: iroh_blobs::Hash) {
    tokio::time::timeout(WAIT, async {
        while store.blobs().has(hash).await.unwrap() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("garbage collection took the blob");
}

/// Garbage collection keeps the blobs blocks name and takes the others; a truncate below a
/// blob block releases its blob, and a blob named by two cores stays until both let go.
#[tokio::test]
async fn garbage_collection_keeps_exactly_the_blobs_blocks_name() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        blobs: BlobOptions {
            gc_interval: Some(Duration::from_millis(50)),
            ..Default::default()
        },
        ..Default::default()
    };
    let store = Corestore::persistent_with(dir.path(), opts).await.unwrap();
    let log = store.get_named("log").await.unwrap();
    let other = store.get_named("other").await.unwrap();
    let kept = content(5000, 1);
    let cut = content(6000, 2);
    let shared = content(7000, 3);
    log.append_blob(kept.clone()).await.unwrap();
    let cut_at = log.append_blob(cut.clone()).await.unwrap();
    log.append_blob(shared.clone()).await.unwrap();
    other.append_blob(shared.clone()).await.unwrap();
    let hash = |b: &Bytes| iroh_blobs::Hash::new(b);

    // An unreferenced blob goes in the next run; the referenced ones stay.
    let stray = store
        .blobs()
        .add_bytes(content(3000, 4))
        .temp_tag()
        .await
        .unwrap();
    let stray_hash = stray.hash();
    drop(stray);
    wait_collected(&store, stray_hash).await;
    for b in [&kept, &cut, &shared] {
        assert!(store.blobs().has(hash(b)).await.unwrap());
    }

    // Truncating below a blob block releases its blob (and the shared one of this core).
    log.truncate(cut_at).await.unwrap();
    wait_collected(&store, hash(&cut)).await;
    assert!(store.blobs().has(hash(&kept)).await.unwrap());
    assert!(
        store.blobs().has(hash(&shared)).await.unwrap(),
        "still named by the other core"
    );
    store.delete(other.key()).await.unwrap();
    wait_collected(&store, hash(&shared)).await;
    assert!(store.blobs().has(hash(&kept)).await.unwrap());
    store.close().await.unwrap();
}

/// Whether two files hold the same bytes (read a MiB at a time).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = fa.read(&mut ba).unwrap();
        let mut nb = 0;
        while nb < na {
            let n = fb.read(&mut bb[nb..na]).unwrap();
            if n == 0 {
                return false;
            }
            nb += n;
        }
        if na == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
        if ba[..na] != bb[..na] {
            return false;
        }
    }
}

/// Writes a file of `mib` MiB of varied bytes.
fn write_file(path: &std::path::Path, mib: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..mib {
        f.write_all(&content(1 << 20, i as u8)).unwrap();
    }
    f.flush().unwrap();
}

/// A 200 MiB file appended as a blob by path is exported by a reader with the ticket to a
/// file with the same bytes, its progress reaching the total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_file_goes_from_file_to_file() {
    let net = net::test_net().await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    write_file(&source, 200);
    let writer = net::node_in_dir(&net, &dir.path().join("w")).await;
    let log = writer.store.get_named("big files").await.unwrap();
    let index = log.append_blob(source.as_path()).await.unwrap();
    writer.proto.replicate(&log).await.unwrap();

    let reader = net::node_in_dir(&net, &dir.path().join("r")).await;
    let core = net::follow(&reader, &writer, &log).await;
    let get = core.get_blob(index);
    let progress = get.progress();
    let target = dir.path().join("exported.bin");
    assert_eq!(get.export(&target, WAIT).await.unwrap(), 200 << 20);
    assert!(same_file(&source, &target));
    let seen: Vec<BlobProgress> = progress.collect().await;
    let last = seen.last().unwrap();
    assert_eq!((last.done, last.total), (200 << 20, 200 << 20));
    net::shutdown(&[&writer, &reader]).await;
}

/// A reader stopped in the middle of a blob and restarted from its directory keeps what it
/// had stored (its blob store holds part of the blob after the restart) and fetches the rest:
/// the blob is whole and right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_restarted_mid_blob_resumes_where_it_stopped() {
    let net = net::test_net().await;
    let blob = content(64 << 20, 11);
    let hash = iroh_blobs::Hash::new(&blob);
    let (writer, log, index) = writer_with_blob(&net, "resumed", &[], blob.clone()).await;
    let ticket = writer.proto.ticket(&log);

    let dir = tempfile::tempdir().unwrap();
    let reader = net::node_in_dir(&net, dir.path()).await;
    let core = reader.proto.open_ticket(&ticket).await.unwrap();
    let get = core.get_blob(index);
    let mut progress = get.progress();
    let fetch = tokio::spawn(get.fetch(WAIT));
    tokio::time::timeout(WAIT, async {
        // Stopped as soon as a MiB is in: the other 63 take the transfer a while.
        while progress.next().await.expect("progress").done < 1 << 20 {}
    })
    .await
    .expect("a MiB of the blob arrived");
    fetch.abort();
    let _ = fetch.await;
    drop(core);
    reader.shutdown().await;

    let reader = net::node_in_dir(&net, dir.path()).await;
    let kept = reader
        .store
        .blobs()
        .remote()
        .local(hash)
        .await
        .unwrap()
        .local_bytes();
    assert!(
        kept > 0 && kept < 64 << 20,
        "part of the blob survived the restart: {kept} bytes"
    );
    let core = reader.proto.open_ticket(&ticket).await.unwrap();
    let got = core.get_blob(index).wait(WAIT).await.unwrap();
    assert_eq!(got, blob);
    net::shutdown(&[&writer, &reader]).await;
}

/// A reader replicating in full under `BlobPolicy::UpTo(1 MiB)` fetches the small blob with
/// its block (a `BlobDownloaded` event) and not the big one; under `BlobPolicy::All` it
/// fetches both; with the default policy, none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_replication_fetches_the_blobs_its_policy_admits() {
    let net = net::test_net().await;
    let writer = net.node(Transport::Direct).await.unwrap();
    let log = writer.store.get_named("with blobs").await.unwrap();
    log.append(b"plain".to_vec()).await.unwrap();
    let (big, small) = (content(2 << 20, 1), content(100 << 10, 2));
    let big_at = log.append_blob(big.clone()).await.unwrap();
    let small_at = log.append_blob(small.clone()).await.unwrap();
    writer.proto.replicate(&log).await.unwrap();
    let (big_hash, small_hash) = (iroh_blobs::Hash::new(&big), iroh_blobs::Hash::new(&small));

    for policy in [BlobPolicy::UpTo(1 << 20), BlobPolicy::All, BlobPolicy::None] {
        let store = Corestore::memory().await.unwrap();
        let reader = net
            .node_built(Transport::Direct, store, |b| b.blob_policy(policy))
            .await
            .unwrap();
        let core = reader.store.get_remote(log.key()).await.unwrap();
        let mut events = reader.proto.events(&core);
        reader.proto.join(&core, &[writer.addr()]).await.unwrap();
        wait_full(&core, 3).await;
        let mut expected: Vec<(u64, iroh_blobs::Hash)> =
            [(big_at, big_hash), (small_at, small_hash)]
                .into_iter()
                .filter(|(i, _)| policy.admits(if *i == big_at { 2 << 20 } else { 100 << 10 }))
                .collect();
        tokio::time::timeout(WAIT, async {
            while !expected.is_empty() {
                if let ReplicaEvent::BlobDownloaded { index, hash, .. } =
                    events.next().await.expect("events")
                {
                    assert!(expected.contains(&(index, hash)), "{policy:?}: {index}");
                    expected.retain(|e| *e != (index, hash));
                }
            }
        })
        .await
        .expect("the admitted blobs were downloaded");
        // Every policy fetch has ended: what was not admitted was not fetched.
        tokio::time::timeout(WAIT, async {
            while reader.proto.node_stats().await.unwrap().blob_fetches > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        let blobs = reader.store.blobs();
        assert_eq!(
            blobs.has(small_hash).await.unwrap(),
            policy != BlobPolicy::None
        );
        assert_eq!(
            blobs.has(big_hash).await.unwrap(),
            policy == BlobPolicy::All
        );
        reader.shutdown().await;
    }
    writer.shutdown().await;
}

/// A store dropped without `close` closes by itself, its blob store too (whose garbage
/// collector would otherwise keep it running, with its files locked): the directory opens
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_dropped_without_close_opens_again() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3u8 {
        // Dropping closes asynchronously: the next open waits for the files' locks to go.
        let store = tokio::time::timeout(WAIT, async {
            loop {
                match Corestore::persistent(dir.path()).await {
                    Ok(store) => break store,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await
        .expect("the dropped store let go of its files");
        let core = store.get_named("reopened").await.unwrap();
        core.append_blob(content(20_000, round)).await.unwrap();
        assert_eq!(core.info().length, u64::from(round) + 1);
    }
}

/// A provider that never answers holds its part up only for `PROVIDER_IDLE` (10 s): the part
/// goes to the next provider and the blob arrives; the silent one is not blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_provider_holds_a_fetch_up_only_until_it_is_dropped() {
    let net = net::test_net().await;
    let blob = content(1 << 20, 3);
    let (writer, log, index) = writer_with_blob(&net, "stalled", &[], blob.clone()).await;
    let (silent_ep, silent_router) = blob_only_endpoint(&net, SilentBlobs).await;

    let reader = net.node(Transport::Direct).await.unwrap();
    let core = net::joined(&reader, log.key(), &[silent_ep.addr(), writer.addr()]).await;
    wait_full(&core, index + 1).await;
    let mut events = reader.proto.subscribe();
    let got = core.get_blob(index).wait(WAIT).await.unwrap();
    assert_eq!(got, blob);
    let silent = *silent_ep.id().as_bytes();
    assert!(
        !net::drain(&mut events)
            .await
            .iter()
            .any(|e| matches!(e, Event::Invalid { peer, .. } if *peer == silent)),
        "silence is not bad data"
    );
    let _ = silent_router.shutdown().await;
    net::shutdown(&[&writer, &reader]).await;
}

/// A writer that truncates below a blob block and writes on moves its readers to a new fork:
/// the reader releases the blob of the block cut, and garbage collection takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_from_the_writer_releases_the_blobs_it_cuts() {
    let net = net::test_net().await;
    let cut = content(50_000, 4);
    let (writer, log, index) = writer_with_blob(&net, "forked", &[b"kept"], cut.clone()).await;

    let opts = StoreOptions {
        blobs: BlobOptions {
            gc_interval: Some(Duration::from_millis(50)),
            ..Default::default()
        },
        ..Default::default()
    };
    let store = Corestore::memory_with(opts).await.unwrap();
    let (reader, core) = net::follower_with(&net, &writer, &log, store).await;
    core.get_blob(index).fetch(WAIT).await.unwrap();
    let mut events = reader.proto.events(&core);
    log.truncate(index).await.unwrap();
    log.append(b"new fork".to_vec()).await.unwrap();
    wait_event(&mut events, "the reader moved to the new fork", |e| {
        matches!(e, ReplicaEvent::Truncate { .. })
    })
    .await;
    wait_collected(&reader.store, iroh_blobs::Hash::new(&cut)).await;
    net::shutdown(&[&writer, &reader]).await;
}

/// A blob appended from a stream of chunks names their concatenation; a handle that cannot
/// write gets `NotWritable` and stores nothing.
#[tokio::test]
async fn a_blob_appended_from_a_stream_names_its_chunks_together() {
    let store = Corestore::memory().await.unwrap();
    let core = store.get_named("streamed").await.unwrap();
    let chunks = vec![content(5000, 1), content(1, 2), content(70_000, 3)];
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let stream = n0_future::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let index = core
        .append_blob(iroh_hypercore::blobs::BlobSource::Stream(Box::pin(stream)))
        .await
        .unwrap();
    let block = core.get(index).await.unwrap().unwrap();
    let blob = BlobRef::from_block(&block).unwrap();
    assert_eq!(blob.size, whole.len() as u64);
    assert_eq!(store.blobs().get_bytes(blob.hash).await.unwrap(), whole);

    let other = Corestore::memory().await.unwrap();
    let remote = other.get_remote(core.key()).await.unwrap();
    let err = remote.append_blob(b"no".to_vec()).await.unwrap_err();
    assert!(matches!(err, Error::NotWritable), "{err}");
    assert_eq!(remote.info().length, 0);
}

//! Runs of block proofs: random runs over random logs verify in order on a fresh reader with
//! about one node per block, and a forged proof in a run stores the verified prefix only.

mod common;

use iroh_hypercore::{
    Corestore, Error, Hypercore,
    core::RunItem,
    tree::{Proof, run_proof_levels},
};
use proptest::prelude::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn writer(len: u64) -> Hypercore {
    let store = Corestore::memory().await.unwrap();
    let core = store.get_named("runs").await.unwrap();
    let blocks: Vec<Vec<u8>> = (0..len)
        .map(|i| format!("block {i}").into_bytes())
        .collect();
    core.append_batch(blocks).await.unwrap();
    core
}

fn proofs(items: Vec<RunItem>) -> Vec<Proof> {
    items
        .into_iter()
        .map(|i| match i {
            RunItem::Proof(p) => p,
            RunItem::Missing(i) => panic!("writer lacks block {i}"),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn random_runs_verify_in_order(len in 1u64..300, cuts in prop::collection::vec(0u64..300, 0..6)) {
        rt().block_on(async {
            let w = writer(len).await;
            let r = common::verified_reader(&w).await;
            let mut bounds: Vec<u64> = cuts.into_iter().map(|c| c % len).collect();
            bounds.extend([0, len]);
            bounds.sort();
            bounds.dedup();
            let mut node_count = 0;
            // Apply runs in reverse order: each must verify against the roots alone.
            for pair in bounds.windows(2).rev() {
                let items = w.create_run_proofs(0, pair[0], pair[1], len).await.unwrap();
                let ps = proofs(items);
                node_count += ps.iter().map(|p| p.block.as_ref().unwrap().nodes.len()).sum::<usize>();
                let applied = r.apply_block_proofs(ps).await.unwrap();
                assert!(applied.rejected.is_none(), "{:?}", applied.rejected);
                assert_eq!(applied.stored.len() as u64, pair[1] - pair[0]);
            }
            for i in 0..len {
                assert_eq!(r.get(i).await.unwrap().unwrap(), w.get(i).await.unwrap().unwrap());
            }
            assert_eq!(r.info().contiguous_length, len);
            // About one node per block, plus one path per run.
            let runs = bounds.len() as u64 - 1;
            assert!(node_count as u64 <= len + runs * 10, "{node_count} nodes for {len} blocks");
        });
    }
}

#[tokio::test]
async fn a_forged_proof_stores_only_the_verified_prefix() {
    let w = writer(64).await;
    let r = common::verified_reader(&w).await;
    let mut ps = proofs(w.create_run_proofs(0, 0, 16, 64).await.unwrap());
    let b = ps[5].block.as_mut().unwrap();
    let mut v = b.value.to_vec();
    v[0] ^= 1;
    b.value = v.into();
    let applied = r.apply_block_proofs(ps).await.unwrap();
    assert_eq!(applied.stored.len(), 5);
    let (index, err) = applied.rejected.unwrap();
    assert_eq!(index, 5);
    assert!(matches!(err, Error::Proof(_)), "{err:?}");
    assert!(r.get(5).await.unwrap().is_none());
    assert!(r.get(6).await.unwrap().is_none());
    assert_eq!(r.info().contiguous_length, 5);
}

/// Each proof of a run is checked against its own block's leaf (the run's leaves are hashed
/// together): a block swapped with its neighbour, a proof without a block or one past the
/// signed length stops the run there, and nothing after it is stored, valid or not.
#[tokio::test]
async fn a_run_checks_each_proof_against_its_own_leaf() {
    let w = writer(64).await;
    let fresh = || async { common::verified_reader(&w).await };
    let run = || async { proofs(w.create_run_proofs(0, 0, 16, 64).await.unwrap()) };

    // Blocks 3 and 4 swapped: each value is some block's, neither is its proof's.
    let r = fresh().await;
    let mut ps = run().await;
    let (a, b) = (ps[3].block.take().unwrap(), ps[4].block.take().unwrap());
    let (mut a2, mut b2) = (a.clone(), b.clone());
    std::mem::swap(&mut a2.value, &mut b2.value);
    ps[3].block = Some(a2);
    ps[4].block = Some(b2);
    let applied = r.apply_block_proofs(ps).await.unwrap();
    assert_eq!(applied.stored.len(), 3);
    assert_eq!(applied.rejected.unwrap().0, 3);
    assert!(r.get(3).await.unwrap().is_none());
    assert!(r.get(4).await.unwrap().is_none());

    // A proof without a block: the valid proofs after it are not taken either.
    let r = fresh().await;
    let mut ps = run().await;
    ps[3].block = None;
    let applied = r.apply_block_proofs(ps).await.unwrap();
    assert_eq!(applied.stored.len(), 3);
    assert_eq!(applied.rejected.unwrap().0, u64::MAX);
    assert!(r.get(4).await.unwrap().is_none());

    // A block past the signed length carrying block 4's true value, then block 4's proof with
    // a forged value: the forgery is never checked against the true value's leaf.
    let r = fresh().await;
    let mut ps = run().await;
    let true_value = ps[4].block.as_ref().unwrap().value.clone();
    let first = ps[3].block.as_mut().unwrap();
    first.index = 64;
    first.value = true_value;
    let b = ps[4].block.as_mut().unwrap();
    let mut v = b.value.to_vec();
    v[0] ^= 1;
    b.value = v.into();
    let applied = r.apply_block_proofs(ps).await.unwrap();
    assert_eq!(applied.stored.len(), 3);
    assert_eq!(applied.rejected.unwrap().0, 64);
    assert!(r.get(3).await.unwrap().is_none());
    assert!(r.get(4).await.unwrap().is_none());
    assert_eq!(r.info().contiguous_length, 3);
}

#[tokio::test]
async fn a_reader_serves_runs_and_reports_gaps() {
    let w = writer(40).await;
    let a = common::verified_reader(&w).await;
    let ps = proofs(w.create_run_proofs(0, 0, 10, 40).await.unwrap());
    a.apply_block_proofs(ps).await.unwrap();
    let ps = proofs(w.create_run_proofs(0, 20, 40, 40).await.unwrap());
    a.apply_block_proofs(ps).await.unwrap();
    // `a` lacks 10..20: it says so, and re-roots the proofs after the gap.
    let items = a.create_run_proofs(0, 5, 25, 40).await.unwrap();
    let missing: Vec<u64> = items
        .iter()
        .filter_map(|i| match i {
            RunItem::Missing(i) => Some(*i),
            RunItem::Proof(_) => None,
        })
        .collect();
    assert_eq!(missing, (10..20).collect::<Vec<_>>());
    let b = common::verified_reader(&w).await;
    let got: Vec<Proof> = items
        .into_iter()
        .filter_map(|i| match i {
            RunItem::Proof(p) => Some(p),
            RunItem::Missing(_) => None,
        })
        .collect();
    let applied = b.apply_block_proofs(got).await.unwrap();
    assert!(applied.rejected.is_none(), "{:?}", applied.rejected);
    assert_eq!(applied.stored.len(), 10);
    // 40 blocks: block 20 lies under the 32-block root, five levels up.
    assert_eq!(run_proof_levels(20, 20, 40), 5);
}

#[tokio::test]
async fn bad_runs_are_refused() {
    let w = writer(10).await;
    assert!(w.create_run_proofs(1, 0, 5, 10).await.is_err());
    assert!(w.create_run_proofs(0, 5, 5, 10).await.is_err());
    assert!(w.create_run_proofs(0, 0, 11, 11).await.is_err());
    let r = common::remote_reader(w.key()).await;
    let ps = proofs(w.create_run_proofs(0, 0, 5, 10).await.unwrap());
    // A reader with no signed length cannot verify blocks.
    assert!(r.apply_block_proofs(ps).await.is_err());
    assert!(r.get(0).await.is_err());
}

/// A `download().done()` made before a hundred commits that it did not read (more than its
/// channel holds): it is told it lagged, counts the stored blocks again, and resolves once
/// the rest arrive.
#[tokio::test]
async fn a_done_that_lagged_behind_many_commits_still_resolves() {
    const LEN: u64 = 120;
    let w = writer(LEN).await;
    let r = common::verified_reader(&w).await;
    let download = r.download(0..LEN);
    let apply = |start: u64| {
        let (w, r) = (w.clone(), r.clone());
        async move {
            let items = w.create_run_proofs(0, start, start + 1, LEN).await.unwrap();
            let applied = r.apply_block_proofs(proofs(items)).await.unwrap();
            assert_eq!(applied.stored.len(), 1);
        }
    };
    // One commit per block, nobody reading the news.
    for i in 0..100 {
        apply(i).await;
    }
    let done = tokio::spawn(download.done(std::time::Duration::from_secs(30)));
    for i in 100..LEN {
        apply(i).await;
    }
    done.await.unwrap().unwrap();
    assert_eq!(r.info().contiguous_length, LEN);
}

//! kill -9 while appending: the reopened core is consistent and every block verifies.
//!
//! The test re-runs its own binary as the child process (selected by an environment variable),
//! which appends in a loop and prints each acknowledged length.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod common;

use iroh_hypercore::{Corestore, Durability, StoreOptions};

const CHILD_DIR: &str = "HYPERCORE_CRASH_CHILD_DIR";
const CHILD_RELAXED: &str = "HYPERCORE_CRASH_CHILD_RELAXED";

fn options(relaxed: bool) -> StoreOptions {
    StoreOptions {
        durability: if relaxed {
            Durability::Relaxed
        } else {
            Durability::Durable
        },
        primary_key: Some([3; 32]),
        ..Default::default()
    }
}

/// The child: appends forever, printing every acknowledged length. Ignored in normal runs; the
/// crash tests start it with `--ignored`.
#[tokio::test]
#[ignore = "the child process of the crash tests"]
async fn crash_child() {
    let dir = std::env::var(CHILD_DIR).expect("started by a crash test");
    let relaxed = std::env::var(CHILD_RELAXED).is_ok();
    let store = Corestore::persistent_with(&dir, options(relaxed))
        .await
        .unwrap();
    let core = store.get_named("crash").await.unwrap();
    for i in 0u64.. {
        let outcome = core
            .append(format!("block {i}").into_bytes())
            .await
            .unwrap();
        println!("acked {}", outcome.length);
        if relaxed && outcome.length == 100 {
            // Relaxed appends may all be lost on kill -9 until a durable commit: force one.
            core.flush().await.unwrap();
            println!("durable {}", outcome.length);
        }
    }
}

async fn crash_and_check(relaxed: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--ignored", "--nocapture"])
        .env(CHILD_DIR, dir.path())
        .envs(relaxed.then_some((CHILD_RELAXED, "1")))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut last_acked = 0u64;
    let mut durable = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while last_acked < 300 && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(n) = line.strip_prefix("acked ") {
            last_acked = n.parse().unwrap();
        }
        if let Some(n) = line.strip_prefix("durable ") {
            durable = n.parse().unwrap();
        }
    }
    assert!(
        last_acked >= 300,
        "child acknowledged only {last_acked} appends"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Lengths acknowledged after the last one we read may also exist; drain what was printed.
    for line in lines.map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("acked ") {
            last_acked = n.parse().unwrap();
        }
    }

    let store = Corestore::persistent_with(dir.path(), options(relaxed))
        .await
        .unwrap();
    let core = store.get_named("crash").await.unwrap();
    let info = core.info();
    if !relaxed {
        assert!(
            info.length >= last_acked,
            "lost acknowledged appends: {} < {last_acked}",
            info.length
        );
    }
    assert!(
        info.length >= durable,
        "lost flushed appends: {} < {durable}",
        info.length
    );
    assert!(!relaxed || durable == 100, "the child flushed at 100");
    assert_eq!(info.contiguous_length, info.length);
    // Every block verifies on a fresh reader against the stored signature.
    let reader = common::verified_reader(&core).await;
    for i in 0..info.length {
        common::fetch_block(&core, &reader, i).await;
        assert_eq!(
            reader.get(i).await.unwrap().unwrap().as_ref(),
            format!("block {i}").as_bytes()
        );
    }
    // And the log continues.
    core.append(b"after crash".to_vec()).await.unwrap();
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_append() {
    crash_and_check(false).await;
}

#[tokio::test]
async fn kill_9_with_relaxed_durability_stays_consistent() {
    crash_and_check(true).await;
}

#![cfg(feature = "cli")]
//! The `hyper` binary run as a separate process on a temporary data directory: its local
//! commands round-trip, `--json` parses, and every error is one line with a non-zero exit.

use std::process::{Command, Output, Stdio};

/// Runs `hyper --data dir args…` with `stdin` fed in.
fn hyper(dir: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_hyper"))
        .arg("--data")
        .arg(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hyper runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin written");
    child.wait_with_output().expect("hyper ends")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "hyper failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

/// A failure: exit code 1 and one line on stderr, which is returned.
fn failure(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr.clone()).expect("utf-8");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("hyper: "), "{err}");
    err
}

#[test]
fn create_append_cat_info_list_and_delete_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = stdout(&hyper(d, &["create", "chat"], ""));
    let key = key.trim();
    assert_eq!(key.len(), 64, "a hex key: {key}");
    assert_eq!(
        stdout(&hyper(d, &["append", "chat", "hello", "world"], "")),
        "2\n"
    );
    assert_eq!(
        stdout(&hyper(d, &["append", "chat"], "one\ntwo\nthree\n")),
        "5\n"
    );
    assert_eq!(
        stdout(&hyper(d, &["cat", "chat"], "")),
        "hello\nworld\none\ntwo\nthree\n"
    );
    assert_eq!(
        stdout(&hyper(d, &["cat", key, "--start", "1", "--end", "3"], "")),
        "world\none\n",
        "by key, a range"
    );
    assert_eq!(
        stdout(&hyper(d, &["cat", "chat", "--start", "3", "--raw"], "")),
        "twothree"
    );

    let info: serde_json::Value =
        serde_json::from_str(&stdout(&hyper(d, &["info", "chat", "--json"], ""))).unwrap();
    assert_eq!(info["key"], key);
    assert_eq!(info["name"], "chat");
    assert_eq!(info["length"], 5);
    assert_eq!(info["byte_length"], 21);
    assert_eq!(info["writable"], true);
    let text = stdout(&hyper(d, &["info", key], ""));
    assert!(text.contains("length: 5"), "{text}");

    let file = d.join("blob.bin");
    std::fs::write(&file, vec![9u8; 100_000]).unwrap();
    let index = stdout(&hyper(
        d,
        &["append", "chat", "--blob", file.to_str().unwrap()],
        "",
    ));
    assert_eq!(index, "5\n", "the blob's block index");
    let list: serde_json::Value =
        serde_json::from_str(&stdout(&hyper(d, &["list", "--json"], ""))).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["length"], 6);

    assert_eq!(stdout(&hyper(d, &["delete", "chat"], "")), "");
    let list: serde_json::Value =
        serde_json::from_str(&stdout(&hyper(d, &["list", "--json"], ""))).unwrap();
    assert_eq!(list, serde_json::json!([]));
    let err = failure(&hyper(d, &["cat", "chat"], ""));
    assert!(err.contains("no log named \"chat\""), "{err}");
}

#[test]
fn errors_are_one_line_with_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let err = failure(&hyper(d, &["cat", "nobody"], ""));
    assert!(
        err.contains("no log named \"nobody\"") && err.contains("hyper list"),
        "{err}"
    );
    let err = failure(&hyper(d, &["info", &"ab".repeat(32)], ""));
    assert!(err.contains("no log with key abab"), "{err}");

    let big = d.join("big.bin");
    std::fs::write(&big, vec![0u8; (8 << 20) + 1]).unwrap();
    let err = failure(&hyper(
        d,
        &["append", "x", "--file", big.to_str().unwrap()],
        "",
    ));
    assert!(err.contains("use --blob"), "{err}");

    // Another process holds the directory: said at once, not waited for.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let held = runtime
        .block_on(iroh_hypercore::Corestore::persistent(d))
        .unwrap();
    let started = std::time::Instant::now();
    let err = failure(&hyper(d, &["list"], ""));
    assert!(err.contains("in use by another hyper process"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    runtime.block_on(held.close()).unwrap();
    assert_eq!(stdout(&hyper(d, &["list"], "")), "", "free again");
}

#![cfg(feature = "cli")]
//! The `hyper` binary run as a separate process on a temporary data directory: its local
//! commands round-trip, `--json` parses, and every error is one line with a non-zero exit.

#[path = "common/process.rs"]
mod process;

use process::{failure, hyper, stdout};

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
    // A writer cannot drive the reader's terminal or split a block into two lines.
    stdout(&hyper(d, &["append", "chat", "\u{1b}[2Jred\nfake"], ""));
    assert_eq!(
        stdout(&hyper(d, &["cat", "chat", "--start", "5"], "")),
        "\\u{1b}[2Jred\\nfake\n"
    );
    assert_eq!(
        stdout(&hyper(d, &["truncate", "chat", "5"], "")),
        "5 (fork 1)\n"
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
        err.contains("no store in"),
        "read-only commands make no store: {err}"
    );
    stdout(&hyper(d, &["create", "other"], ""));
    let err = failure(&hyper(d, &["cat", "nobody"], ""));
    assert!(
        err.contains("no log named \"nobody\"") && err.contains("hyper list"),
        "{err}"
    );
    let err = failure(&hyper(d, &["info", &"ab".repeat(32)], ""));
    assert!(err.contains("no log with key abab"), "{err}");

    let err = failure(&hyper(d, &["append", "x", "text"], ""));
    assert!(
        err.contains("no log named \"x\"") && err.contains("hyper create x"),
        "append makes no log: {err}"
    );
    stdout(&hyper(d, &["create", "x"], ""));
    let big = d.join("big.bin");
    std::fs::write(&big, vec![0u8; (8 << 20) + 1]).unwrap();
    let err = failure(&hyper(
        d,
        &["append", "x", "--file", big.to_str().unwrap()],
        "",
    ));
    assert!(err.contains("use --blob"), "{err}");

    // Names: no control characters, nothing that reads as a key, no second log of a name.
    let err = failure(&hyper(d, &["create", "a\tb"], ""));
    assert!(err.contains("control characters"), "{err}");
    let err = failure(&hyper(d, &["create", &"cd".repeat(32)], ""));
    assert!(err.contains("64 hex characters"), "{err}");
    let err = failure(&hyper(d, &["create", "x"], ""));
    assert!(err.contains("exists"), "{err}");
    let err = failure(&hyper(d, &["truncate", "x", "5"], ""));
    assert!(err.contains("cannot grow"), "{err}");

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
    assert!(
        stdout(&hyper(d, &["list"], "")).contains("\tx\t0\n"),
        "free again"
    );
}

/// A write the disk has no room for (here: over the process's file size limit, which fails
/// the write as a full disk would) is one line, and the log keeps what it had.
#[cfg(unix)]
#[test]
fn a_full_disk_is_said_plainly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stdout(&hyper(d, &["create", "log"], ""));
    stdout(&hyper(d, &["append", "log", "one", "two"], ""));
    let big = d.join("big.bin");
    std::fs::write(&big, vec![7u8; 4 << 20]).unwrap();
    let err = failure(&process::hyper_with_file_limit(
        d,
        &["append", "log", "--file", big.to_str().unwrap()],
    ));
    assert!(err.contains("the disk is full"), "{err}");
    assert_eq!(stdout(&hyper(d, &["cat", "log"], "")), "one\ntwo\n");
    assert_eq!(stdout(&hyper(d, &["append", "log", "three"], "")), "3\n");
}

#![cfg(all(feature = "cli", unix))]
//! What a new user meets in the first hour with `hyper`, as separate processes: lines that
//! are bytes and not text, a follow piped into `head`, a full disk under a blob, appending to
//! a log that `share` serves, blobs shown as blobs, read-only commands that create nothing.

#[path = "common/process.rs"]
mod process;

use std::path::Path;

use process::{LOOPBACK, Running, failure, hyper, stdout};

/// `hyper --data dir --relay disabled --bind 127.0.0.1:0 args…`, still running.
fn spawn(dir: &Path, args: &[&str]) -> Running {
    let all: Vec<&str> = LOOPBACK.iter().chain(args).copied().collect();
    Running::spawn(dir, &all)
}

/// The raw bytes of a log's blocks, one after the other.
fn raw(dir: &Path, log: &str) -> Vec<u8> {
    let out = hyper(dir, &["cat", log, "--raw"], "");
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

#[test]
fn lines_that_are_not_utf8_are_appended_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stdout(&hyper(d, &["create", "log"], ""));
    // From stdin: three lines, the second not UTF-8 (and one with a CR LF end).
    let out = hyper(
        d,
        &["append", "log"],
        b"one\n\xff\xfe latin-1 \xe9\r\nthree\n",
    );
    assert_eq!(stdout(&out), "3\n");
    // From the arguments: bytes that are no UTF-8 either.
    let mut cmd = std::process::Command::new(process::HYPER);
    cmd.arg("--data")
        .arg(d)
        .args(["append", "log"])
        .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"arg \xc3\x28"));
    assert_eq!(stdout(&process::output_within(cmd, "")), "4\n");
    assert_eq!(
        raw(d, "log"),
        b"one\xff\xfe latin-1 \xe9threearg \xc3\x28".to_vec()
    );
    // `cat` shows them as lines, invalid bytes replaced.
    let lines = stdout(&hyper(d, &["cat", "log"], ""));
    assert_eq!(lines.lines().count(), 4, "{lines}");
}

#[test]
fn a_line_over_a_block_is_refused_before_it_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stdout(&hyper(d, &["create", "log"], ""));
    let mut input = b"fine\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', (8 << 20) + 10));
    input.extend_from_slice(b"\nnever\n");
    let err = failure(&hyper(d, &["append", "log"], input));
    assert!(err.contains("line 2 is over"), "{err}");
    assert_eq!(
        stdout(&hyper(d, &["cat", "log"], "")),
        "fine\n",
        "the lines before it are appended"
    );
    // A name the store would not keep is refused, not made unlisted.
    let err = failure(&hyper(d, &["create", &"n".repeat(1100)], ""));
    assert!(err.contains("at most 1024 bytes"), "{err}");
}

#[test]
fn share_stdin_appends_a_line_that_is_not_utf8_and_keeps_serving() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    stdout(&hyper(a.path(), &["create", "chat"], ""));
    let mut sharer = spawn(a.path(), &["share", "chat", "--stdin"]);
    let ticket = sharer.line();
    let follower = spawn(b.path(), &["follow", &ticket]);
    sharer.type_bytes(b"caf\xe9\n");
    sharer.type_line("after");
    assert_eq!(
        follower.line(),
        "caf\u{fffd}",
        "printed with the byte replaced"
    );
    assert_eq!(follower.line(), "after", "the node kept running");
    assert_eq!(follower.interrupt().0, Some(0));
    let (code, err) = sharer.interrupt();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(raw(a.path(), "chat"), b"caf\xe9after".to_vec());
}

#[test]
fn a_follow_piped_into_head_ends_when_head_does_with_no_new_block() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    stdout(&hyper(a.path(), &["create", "log"], ""));
    stdout(&hyper(a.path(), &["append", "log", "only", "two"], ""));
    let sharer = spawn(a.path(), &["share", "log"]);
    let ticket = sharer.line();
    // The follower holds the log already: both blocks are printed at once, before `head`
    // exits, and no new block comes. Only noticing the closed pipe ends the follow.
    let synced = spawn(b.path(), &["follow", &ticket, "--exit-when-synced"]);
    assert_eq!(synced.wait().0, Some(0));
    let piped = process::follow_into_head(b.path(), &ticket, "");
    let err = String::from_utf8_lossy(&piped.stderr);
    assert_eq!(String::from_utf8_lossy(&piped.stdout), "only\n", "{err}");
    assert!(
        piped.status.success(),
        "a closed pipe is a normal end: {err}"
    );
    assert_eq!(sharer.interrupt().0, Some(0));
}

/// A blob the disk has no room for (here: over the process's file size limit, which fails
/// the write as a full disk would) is said plainly, and nothing is appended.
#[test]
fn a_blob_onto_a_full_disk_says_the_disk_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stdout(&hyper(d, &["create", "log"], ""));
    stdout(&hyper(d, &["append", "log", "one"], ""));
    let big = d.join("big.bin");
    std::fs::write(&big, vec![7u8; 4 << 20]).unwrap();
    let err = failure(&process::hyper_with_file_limit(
        d,
        &["append", "log", "--blob", big.to_str().unwrap()],
    ));
    assert!(err.contains("the disk is full"), "{err}");
    assert_eq!(stdout(&hyper(d, &["cat", "log"], "")), "one\n");
}

#[test]
fn cat_shows_a_blob_block_as_a_blob() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stdout(&hyper(d, &["create", "log"], ""));
    let content = vec![3u8; 100_000];
    let file = d.join("photo.bin");
    std::fs::write(&file, &content).unwrap();
    stdout(&hyper(d, &["append", "log", "before"], ""));
    let index = stdout(&hyper(
        d,
        &["append", "log", "--blob", file.to_str().unwrap()],
        "",
    ));
    assert_eq!(index, "1\n");
    let hash = iroh_blobs::Hash::new(&content).to_string();
    assert_eq!(
        stdout(&hyper(d, &["cat", "log"], "")),
        format!("before\nblob 97.66 KiB {hash}\n")
    );
    let json: Vec<serde_json::Value> = stdout(&hyper(d, &["cat", "log", "--json"], ""))
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(json[0], serde_json::json!({"index": 0, "text": "before"}));
    assert_eq!(
        json[1],
        serde_json::json!({"index": 1, "blob": {"hash": hash, "size": 100_000}})
    );
}

#[test]
fn share_serves_only_the_logs_it_names_unless_all() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    stdout(&hyper(a.path(), &["create", "public"], ""));
    stdout(&hyper(a.path(), &["append", "public", "hello"], ""));
    let private = stdout(&hyper(a.path(), &["create", "private"], ""));
    stdout(&hyper(a.path(), &["append", "private", "secret"], ""));
    let private: [u8; 32] = hex::decode(private.trim()).unwrap().try_into().unwrap();

    let sharer = spawn(a.path(), &["share", "public"]);
    let public: iroh_hypercore::CoreTicket = sharer.line().parse().unwrap();
    // A ticket for the other log of the store, at the same node (an old ticket, say).
    let other = iroh_hypercore::CoreTicket::new(private, public.nodes().to_vec()).to_string();
    let refused = spawn(
        b.path(),
        &["follow", &other, "--exit-when-synced", "--timeout", "3"],
    );
    let (code, err) = refused.wait();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no peer answered"), "{err}");
    assert_eq!(sharer.interrupt().0, Some(0));

    // `--all` serves it, and with no log named prints a ticket for each.
    let sharer = spawn(a.path(), &["share", "--all"]);
    let tickets: Vec<iroh_hypercore::CoreTicket> = [sharer.line(), sharer.line()]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    let mut keys: Vec<_> = tickets.iter().map(|t| t.key()).collect();
    keys.sort();
    let mut both = [public.key(), private];
    both.sort();
    assert_eq!(keys, both);
    // At the node's new address (a new port), with the key of the log not named.
    let other = iroh_hypercore::CoreTicket::new(private, tickets[0].nodes().to_vec()).to_string();
    let served = spawn(b.path(), &["follow", &other, "--exit-when-synced"]);
    assert_eq!(served.line(), "secret");
    assert_eq!(served.wait().0, Some(0));
    assert_eq!(sharer.interrupt().0, Some(0));
}

#[test]
fn append_and_truncate_from_a_second_terminal_reach_a_running_share() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    stdout(&hyper(a.path(), &["create", "log"], ""));
    stdout(&hyper(a.path(), &["append", "log", "first"], ""));
    let sharer = spawn(a.path(), &["share", "log"]);
    let ticket = sharer.line();
    let follower = spawn(b.path(), &["follow", &ticket]);
    assert_eq!(follower.line(), "first");

    // The store is held by share: these go through its control socket.
    assert_eq!(
        stdout(&hyper(
            a.path(),
            &["append", "log", "from", "terminal two"],
            ""
        )),
        "3\n"
    );
    assert_eq!(follower.line(), "from");
    assert_eq!(follower.line(), "terminal two", "seen live by the follower");
    assert_eq!(
        stdout(&hyper(a.path(), &["append", "log"], b"piped\nlines\n")),
        "5\n"
    );
    assert_eq!(follower.line(), "piped");
    assert_eq!(follower.line(), "lines");
    let file = a.path().join("blob.bin");
    std::fs::write(&file, vec![1u8; 50_000]).unwrap();
    assert_eq!(
        stdout(&hyper(
            a.path(),
            &["append", "log", "--blob", file.to_str().unwrap()],
            ""
        )),
        "5\n"
    );
    assert!(follower.line().starts_with("blob 48.83 KiB "));
    assert_eq!(
        stdout(&hyper(a.path(), &["truncate", "log", "1"], "")),
        "1 (fork 1)\n"
    );
    // A new log too (not shared by this share: it serves what it was started with).
    let key = stdout(&hyper(a.path(), &["create", "second"], ""));
    assert_eq!(key.trim().len(), 64, "{key}");
    assert_eq!(
        stdout(&hyper(a.path(), &["append", "second", "x"], "")),
        "1\n"
    );
    // Errors come back as one line, as they would from the store itself.
    let err = failure(&hyper(a.path(), &["append", "nope", "x"], ""));
    assert!(err.contains("no log named \"nope\""), "{err}");
    let err = failure(&hyper(a.path(), &["truncate", "log", "9"], ""));
    assert!(err.contains("cannot grow"), "{err}");
    // Other commands still say who holds the store.
    let err = failure(&hyper(a.path(), &["cat", "log"], ""));
    assert!(err.contains("in use by another hyper process"), "{err}");
    let err = failure(&hyper(a.path(), &["create", "second"], ""));
    assert!(err.contains("exists"), "{err}");

    assert_eq!(follower.interrupt().0, Some(0));
    assert_eq!(sharer.interrupt().0, Some(0));
    assert!(
        !a.path().join("hyper.sock").exists(),
        "the socket goes with the process"
    );
    assert_eq!(stdout(&hyper(a.path(), &["cat", "log"], "")), "first\n");
    let info = stdout(&hyper(a.path(), &["info", "log", "--json"], ""));
    assert!(info.contains("\"fork\":1"), "{info}");
}

/// Every file under `dir` with its bytes, sorted by path.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn set_read_only(dir: &Path, read_only: bool) {
    use std::os::unix::fs::PermissionsExt;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path.clone());
            }
            let mode = if path.is_dir() { 0o555 } else { 0o444 };
            let mode = if read_only { mode } else { mode | 0o200 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    let mode = if read_only { 0o555 } else { 0o755 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn read_only_commands_create_nothing_and_work_on_a_read_only_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("store");
    stdout(&hyper(&d, &["create", "log"], ""));
    stdout(&hyper(&d, &["append", "log", "a", "b"], ""));
    let key = stdout(&hyper(&d, &["list"], ""));

    // A mistyped directory: an error, and nothing made.
    let typo = dir.path().join("stroe");
    for args in [&["list"][..], &["info", "log"], &["cat", "log"]] {
        let err = failure(&hyper(&typo, args, ""));
        assert!(err.contains("no store in"), "{err}");
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }

    // A read-only store: read, and not one byte of it written.
    let before = snapshot(&d);
    set_read_only(&d, true);
    assert_eq!(stdout(&hyper(&d, &["list"], "")), key);
    assert_eq!(stdout(&hyper(&d, &["cat", "log"], "")), "a\nb\n");
    let info: serde_json::Value =
        serde_json::from_str(&stdout(&hyper(&d, &["info", "log", "--json"], ""))).unwrap();
    assert_eq!(info["stored_blocks"], 2);
    assert_eq!(info["stored_bytes"], 2);
    set_read_only(&d, false);
    assert_eq!(snapshot(&d), before, "the read-only commands wrote nothing");
}

#[test]
fn a_node_serves_its_metrics_for_prometheus() {
    use std::io::{Read, Write};
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    stdout(&hyper(a.path(), &["create", "log"], ""));
    stdout(&hyper(
        a.path(),
        &["append", "log", "one", "two", "three"],
        "",
    ));
    let sharer = spawn(a.path(), &["--metrics", "127.0.0.1:0", "share", "log"]);
    let ticket = sharer.line();
    sharer.wait_stderr("metrics at http://", 1);
    let err = sharer.stderr();
    let addr = err
        .split("metrics at http://")
        .nth(1)
        .and_then(|rest| rest.split("/metrics").next())
        .expect("the address")
        .to_string();
    let synced = spawn(b.path(), &["follow", &ticket, "--exit-when-synced"]);
    assert_eq!(synced.wait().0, Some(0));
    // Each scrape is set from the node's figures of that moment.
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    // The writer sent the follower its three blocks (a block asked for again under load, or
    // pushed and asked for at once, is sent and counted twice).
    let uploads: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("hypercore_peers_blocks_up_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the upload counter");
    assert!(uploads >= 3, "{text}");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("hypercore_storage_commits_total"), "{text}");
    assert!(text.contains("socket_"), "iroh's own: {text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    assert_eq!(sharer.interrupt().0, Some(0));
}

#[test]
fn completions_and_an_example_in_every_commands_help() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("untouched");
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout(&hyper(&d, &["completions", shell], ""));
        assert!(
            script.contains("follow") && script.contains("get-blob"),
            "{shell}"
        );
    }
    assert!(!d.exists(), "completions open no store");
    for command in [
        "create", "list", "info", "append", "truncate", "cat", "delete", "share", "follow",
        "get-blob",
    ] {
        let help = stdout(&hyper(&d, &[command, "--help"], ""));
        assert!(help.contains("Example"), "{command}: {help}");
    }
}

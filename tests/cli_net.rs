#![cfg(all(feature = "cli", unix))]
//! `hyper share`, `follow` and `get-blob` as separate processes on loopback with no relay
//! (`--relay disabled --bind 127.0.0.1:0`), each with its own data directory: a live chat
//! over stdin, a follow that resumes from its store, a blob fetched whole, Ctrl-C exiting
//! 0, and each network error as one line with exit code 1.

#[path = "common/process.rs"]
mod process;

use std::path::Path;

use process::{LOOPBACK, Running, failure, hyper, stdout};

/// `hyper --data dir --relay disabled --bind 127.0.0.1:0 args…`, still running.
fn spawn(dir: &Path, args: &[&str]) -> Running {
    let all: Vec<&str> = LOOPBACK.iter().chain(args).copied().collect();
    Running::spawn(dir, &all)
}

/// The same, run to its end.
fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    let all: Vec<&str> = LOOPBACK.iter().chain(args).copied().collect();
    hyper(dir, &all, "")
}

/// A log `name` in `dir` holding `lines`, and its key.
fn log_with(dir: &Path, name: &str, lines: &[&str]) -> String {
    let key = stdout(&hyper(dir, &["create", name], ""))
        .trim()
        .to_string();
    if !lines.is_empty() {
        let mut args = vec!["append", name];
        args.extend_from_slice(lines);
        stdout(&hyper(dir, &args, ""));
    }
    key
}

fn info(dir: &Path, log: &str) -> serde_json::Value {
    serde_json::from_str(&stdout(&hyper(dir, &["info", log, "--json"], ""))).expect("json")
}

#[test]
fn a_line_typed_into_share_appears_in_follow_and_ctrl_c_exits_zero() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = log_with(a.path(), "chat", &["one", "two"]);

    let mut sharer = spawn(a.path(), &["share", "chat", "--stdin"]);
    let ticket = sharer.line();
    assert!(
        ticket.starts_with("core"),
        "the first stdout line is the ticket: {ticket}"
    );
    let sharer_id = ticket_id(&ticket);

    let follower = spawn(b.path(), &["follow", &ticket]);
    assert_eq!(follower.line(), "one");
    assert_eq!(follower.line(), "two");
    sharer.type_line("hello from a");
    assert_eq!(
        follower.line(),
        "hello from a",
        "typed, appended, replicated live"
    );

    let (code, err) = follower.interrupt();
    assert_eq!(code, Some(0), "Ctrl-C is a clean exit: {err}");
    assert!(err.contains("3 blocks printed, 3 downloaded"), "{err}");
    let (code, err) = sharer.interrupt();
    assert_eq!(code, Some(0), "{err}");

    // The typed line was flushed to the writer's store, and each side recorded the other.
    assert_eq!(
        stdout(&hyper(a.path(), &["cat", "chat"], "")),
        "one\ntwo\nhello from a\n"
    );
    let seen_by_b = info(b.path(), &key);
    assert_eq!(seen_by_b["length"], 3);
    assert_eq!(seen_by_b["writable"], false);
    assert_eq!(seen_by_b["peers"][0]["id"], sharer_id.as_str());
    assert!(seen_by_b["peers"][0]["last_seen"].as_u64().unwrap() > 0);
    let seen_by_a = info(a.path(), "chat");
    assert_eq!(
        seen_by_a["peers"].as_array().unwrap().len(),
        1,
        "{seen_by_a}"
    );
}

#[test]
fn a_restarted_follow_resumes_from_its_store() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let lines: Vec<String> = (0..50).map(|i| format!("line {i}")).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let key = log_with(a.path(), "log", &refs);
    let mut sharer = spawn(a.path(), &["share", "log", "--stdin"]);
    let ticket = sharer.line();

    let expected: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let first = run(b.path(), &["follow", &ticket, "--exit-when-synced"]);
    assert_eq!(stdout(&first), expected);
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(err.contains("50 blocks printed, 50 downloaded"), "{err}");

    let again = run(b.path(), &["follow", &ticket, "--exit-when-synced"]);
    assert_eq!(stdout(&again), expected, "the same blocks, from the store");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("50 blocks printed, 0 downloaded"), "{err}");

    // Sparse: only the blocks asked for.
    let c = tempfile::tempdir().unwrap();
    let sparse = run(
        c.path(),
        &[
            "follow",
            &ticket,
            "--sparse",
            "--start",
            "48",
            "--exit-when-synced",
        ],
    );
    assert_eq!(stdout(&sparse), "line 48\nline 49\n");
    let err = String::from_utf8_lossy(&sparse.stderr);
    assert!(err.contains(": 2 blocks printed\n"), "{err}");
    let held = stdout(&hyper(c.path(), &["cat", &key, "--start", "48"], ""));
    assert_eq!(held, "line 48\nline 49\n", "the two are stored");
    let err = failure(&hyper(c.path(), &["cat", &key, "--start", "47"], ""));
    assert!(
        err.contains("block 47 is not stored here"),
        "nothing else: {err}"
    );

    // Live again: the stored blocks first, then only the new ones are downloaded.
    let follower = spawn(b.path(), &["follow", &ticket]);
    for line in &lines {
        assert_eq!(&follower.line(), line);
    }
    sharer.type_line("new 1");
    sharer.type_line("new 2");
    assert_eq!(follower.line(), "new 1");
    assert_eq!(follower.line(), "new 2");
    let (code, err) = follower.interrupt();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("52 blocks printed, 2 downloaded"), "{err}");
    assert_eq!(sharer.interrupt().0, Some(0));
}

/// The sharer is stopped and started again, twice, on its data directory and `--bind`
/// address: the follower, never restarted, says it has no peers and retries, finds the
/// sharer again and prints what is typed into the new one, every line once.
#[test]
fn a_follow_survives_a_restarted_share() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    log_with(a.path(), "chat", &["one"]);
    let mut sharer = spawn(a.path(), &["share", "chat", "--stdin"]);
    let ticket = sharer.line();
    let parsed: iroh_hypercore::CoreTicket = ticket.parse().expect("a ticket");
    let bound = parsed.nodes()[0]
        .ip_addrs()
        .next()
        .expect("an address")
        .to_string();
    let follower = spawn(b.path(), &["follow", &ticket]);
    assert_eq!(follower.line(), "one");

    for (restarts, line) in [(1, "two"), (2, "three")] {
        let (code, err) = sharer.interrupt();
        assert_eq!(code, Some(0), "{err}");
        follower.wait_stderr("no peers, retrying in ", restarts);
        sharer = Running::spawn(
            a.path(),
            &[
                "--relay", "disabled", "--bind", &bound, "share", "chat", "--stdin",
            ],
        );
        assert_eq!(
            ticket_id(&sharer.line()),
            ticket_id(&ticket),
            "the same endpoint id"
        );
        follower.wait_stderr(" again", restarts);
        sharer.type_line(line);
        assert_eq!(follower.line(), line, "typed into the restarted share");
    }
    let (code, err) = follower.interrupt();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("3 blocks printed, 3 downloaded"), "{err}");
    assert_eq!(sharer.interrupt().0, Some(0));
}

#[test]
fn a_shared_blob_is_fetched_with_equal_bytes() {
    let (a, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    log_with(a.path(), "files", &["readme"]);
    // 3 MB that do not compress or repeat.
    let mut bytes = Vec::with_capacity(3_000_000);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while bytes.len() < 3_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    let file = a.path().join("video.bin");
    std::fs::write(&file, &bytes).unwrap();
    let index = stdout(&hyper(
        a.path(),
        &["append", "files", "--blob", file.to_str().unwrap()],
        "",
    ));
    assert_eq!(index, "1\n");
    let sharer = spawn(a.path(), &["share", "files"]);
    let ticket = sharer.line();

    let out = c.path().join("fetched.bin");
    let got = run(
        c.path(),
        &["get-blob", &ticket, "1", "-o", out.to_str().unwrap()],
    );
    stdout(&got);
    assert!(std::fs::read(&out).unwrap() == bytes, "equal bytes");
    let left: Vec<_> = std::fs::read_dir(c.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(
        left.is_empty(),
        "written under a temporary name, renamed once whole"
    );
    let err = failure(&run(
        c.path(),
        &["get-blob", &ticket, "1", "-o", "no/such/dir/f"],
    ));
    assert!(
        err.contains("the directory no/such/dir does not exist"),
        "{err}"
    );

    // The block that is no blob, one past the end, and a full disk: one line each.
    let err = failure(&run(c.path(), &["get-blob", &ticket, "0", "-o", "x.bin"]));
    assert!(err.contains("block 0 names no blob"), "{err}");
    let err = failure(&run(c.path(), &["get-blob", &ticket, "7", "-o", "x.bin"]));
    assert!(
        err.contains("the log has 2 blocks: there is no block 7"),
        "{err}"
    );
    if Path::new("/dev/full").exists() {
        let err = failure(&run(
            c.path(),
            &["get-blob", &ticket, "1", "-o", "/dev/full"],
        ));
        assert!(err.contains("the disk is full"), "{err}");
    }
    // Stored now: a second fetch needs no peer, and a name as long as a file system allows
    // works (the temporary directory's is shorter).
    assert_eq!(sharer.interrupt().0, Some(0));
    let long = format!("{}.bin", "n".repeat(240));
    for name in ["again.bin", long.as_str()] {
        let target = c.path().join(name);
        let args = [
            "get-blob",
            &ticket,
            "1",
            "-o",
            target.to_str().unwrap(),
            "--timeout",
            "1",
        ];
        stdout(&run(c.path(), &args));
        assert!(std::fs::read(&target).unwrap() == bytes, "{name}");
    }
}

#[test]
fn network_errors_are_one_line_with_exit_code_one() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Bad tickets say which part is wrong, and create nothing.
    let fresh = b.path().join("never");
    for (ticket, says) in [
        ("blobabcdef", "must start with \"core\""),
        ("core!!!!", "not valid base32"),
        ("coreaaaa", "do not decode"),
    ] {
        let err = failure(&run(&fresh, &["follow", ticket]));
        assert!(err.contains("bad ticket") && err.contains(says), "{err}");
    }
    assert!(!fresh.exists(), "a bad ticket opens no store");

    let err = failure(&run(a.path(), &["share", "nobody"]));
    assert!(err.contains("no log named \"nobody\""), "{err}");

    // A ticket whose node is gone: the addresses tried are named.
    log_with(a.path(), "log", &["x"]);
    let sharer = spawn(a.path(), &["share", "log"]);
    let ticket = sharer.line();
    assert_eq!(sharer.interrupt().0, Some(0));
    let err = failure(&run(b.path(), &["follow", &ticket, "--timeout", "1"]));
    assert!(err.contains("no peer answered within 1 s"), "{err}");
    assert!(
        err.contains(&format!("tried {} at 127.0.0.1:", ticket_id(&ticket))),
        "{err}"
    );

    // --stdin needs a log this store can write: b now holds a copy of a's.
    let key = info(a.path(), "log")["key"].as_str().unwrap().to_string();
    let sharer = spawn(a.path(), &["share", "log"]);
    let ticket = sharer.line();
    stdout(&run(b.path(), &["follow", &ticket, "--exit-when-synced"]));
    assert_eq!(sharer.interrupt().0, Some(0));
    let err = failure(&run(b.path(), &["share", &key, "--stdin"]));
    assert!(err.contains("not writable here"), "{err}");
}

#[test]
fn a_follow_prints_again_what_a_truncation_replaced() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    log_with(a.path(), "log", &["a", "b", "c", "d", "e"]);
    let sharer = spawn(a.path(), &["share", "log"]);
    let ticket = sharer.line();
    let first = run(b.path(), &["follow", &ticket, "--exit-when-synced"]);
    assert_eq!(stdout(&first), "a\nb\nc\nd\ne\n");
    assert_eq!(sharer.interrupt().0, Some(0));

    // The writer cuts the log to 3 blocks and writes two others: a new fork.
    assert_eq!(
        stdout(&hyper(a.path(), &["truncate", "log", "3"], "")),
        "3 (fork 1)\n"
    );
    stdout(&hyper(a.path(), &["append", "log", "X", "Y"], ""));
    let sharer = spawn(a.path(), &["share", "log"]);
    let ticket = sharer.line();
    let again = run(b.path(), &["follow", &ticket, "--exit-when-synced"]);
    // The reader knows where the forks part to a subtree's root: at the writer's cut or
    // before it. From there the new fork is printed again.
    let err = String::from_utf8_lossy(&again.stderr);
    let printed: Vec<String> = stdout(&again).lines().map(String::from).collect();
    assert_eq!(
        printed[..5],
        ["a", "b", "c", "d", "e"],
        "the stored blocks first"
    );
    assert_printed_again(&err, &printed[5..], &["a", "b", "c", "X", "Y"]);
    // Now the store holds the new fork.
    let last = run(b.path(), &["follow", &ticket, "--exit-when-synced"]);
    assert_eq!(stdout(&last), "a\nb\nc\nX\nY\n");
    assert_eq!(sharer.interrupt().0, Some(0));
}

/// The blocks printed after a fork notice: from the block the notice names, the new fork.
fn assert_printed_again(err: &str, after: &[String], new_fork: &[&str]) {
    let from: usize = err
        .split("printing from block ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the fork is said: {err}"));
    assert!(err.contains("the log moved to fork 1"), "{err}");
    assert!(from <= 3, "never past the writer's cut: {err}");
    assert_eq!(after, &new_fork[from..], "{err}");
}

/// A writer (the library, on a test network) truncates while `follow` runs live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_follow_notices_a_truncation_and_prints_the_new_fork() {
    use iroh_hypercore::{
        StoreOptions,
        testnet::{TestNet, Transport},
    };
    let (w, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let net = TestNet::new().await.unwrap();
    let writer = net
        .node_in(Transport::Direct, w.path(), StoreOptions::default())
        .await
        .unwrap();
    let log = writer.store.get_named("log").await.unwrap();
    log.append_batch(["a", "b", "c", "d", "e"].map(|s| s.as_bytes().to_vec()))
        .await
        .unwrap();
    writer.proto.replicate(&log).await.unwrap();
    let ticket = writer.proto.ticket(&log).to_string();

    let follower = spawn(b.path(), &["follow", &ticket]);
    for line in ["a", "b", "c", "d", "e"] {
        assert_eq!(follower.line(), line);
    }
    log.truncate(3).await.unwrap();
    log.append_batch(["X", "Y"].map(|s| s.as_bytes().to_vec()))
        .await
        .unwrap();
    let mut after = Vec::new();
    while after.last().is_none_or(|l| l != "Y") {
        after.push(follower.line());
    }
    let (code, err) = follower.interrupt();
    assert_eq!(code, Some(0), "{err}");
    assert_printed_again(&err, &after, &["a", "b", "c", "X", "Y"]);
    writer.shutdown().await;
}

#[test]
fn a_reader_that_goes_away_ends_follow_with_exit_code_zero() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // More than a pipe holds, so that the writes after `head` left fail.
    let line = "x".repeat(100);
    let lines: Vec<&str> = (0..3000).map(|_| line.as_str()).collect();
    log_with(a.path(), "log", &lines);
    let sharer = spawn(a.path(), &["share", "log"]);
    let ticket = sharer.line();
    let piped = process::follow_into_head(b.path(), &ticket, "--exit-when-synced");
    assert_eq!(
        String::from_utf8_lossy(&piped.stdout),
        format!("{line}\n"),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert!(
        piped.status.success(),
        "a closed pipe is a normal end: {}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert_eq!(sharer.interrupt().0, Some(0));
}

/// The endpoint id a ticket names (as `hyper info` shows peers).
fn ticket_id(ticket: &str) -> String {
    let ticket: iroh_hypercore::CoreTicket = ticket.parse().expect("a ticket");
    ticket.nodes()[0].id.to_string()
}

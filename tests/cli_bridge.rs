#![cfg(all(feature = "cli", unix))]
//! `hyper` as a bridge between JS Hypercore peers (TCP, Hypercore's own wire) and iroh peers,
//! each side a separate process: a JS writer's log reaches an iroh follower through
//! `hyper share KEY --tcp-connect`, and an iroh writer's log reaches a JS reader through
//! `hyper follow TICKET --tcp-listen`, both live. Without `node` these tests say so and pass.

#[path = "common/js.rs"]
mod js;
#[path = "common/process.rs"]
mod process;

use std::path::Path;

use js::Peer;
use process::{LOOPBACK, Running, hyper, stdout};
use serde_json::json;

fn spawn(dir: &Path, args: &[&str]) -> Running {
    let all: Vec<&str> = LOOPBACK.iter().chain(args).copied().collect();
    Running::spawn(dir, &all)
}

/// A block as `peer.js` writes it: "block i " then `x` up to `size` bytes.
fn js_block(i: u64, size: usize) -> String {
    let mut b = format!("block {i} ");
    while b.len() < size {
        b.push('x');
    }
    b
}

#[test]
fn a_js_writer_reaches_an_iroh_follower_through_the_bridge_live() {
    if js::node().is_none() {
        return;
    }
    let (w, bridge_dir, follower_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut writer = Peer::run("write", w.path(), json!({"count": 100, "size": 16}));
    let key = writer.line["key"].as_str().unwrap().to_string();
    let js_port = format!("127.0.0.1:{}", writer.line["port"]);

    // Straight from the JS writer over TCP, by key.
    let direct = hyper(
        follower_dir.path(),
        &[
            LOOPBACK.as_slice(),
            &["follow", "--tcp", &js_port, &key, "--exit-when-synced"],
        ]
        .concat(),
        "",
    );
    let lines: Vec<String> = stdout(&direct).lines().map(String::from).collect();
    assert_eq!(lines.len(), 100);
    assert_eq!(lines[99], js_block(99, 16));

    // Through a bridge: it fetches the log from the JS writer and serves it over iroh.
    let bridge = spawn(
        bridge_dir.path(),
        &["share", &key, "--tcp-connect", &js_port],
    );
    let ticket = bridge.line();
    assert!(ticket.starts_with("core"), "{ticket}");
    let fresh = tempfile::tempdir().unwrap();
    let follower = spawn(fresh.path(), &["follow", &ticket]);
    for i in 0..100 {
        assert_eq!(follower.line(), js_block(i, 16));
    }
    // Live: what the JS writer appends reaches the iroh follower.
    writer.say("append 3");
    assert_eq!(writer.next_line()["length"], 103);
    for i in 100..103 {
        assert_eq!(follower.line(), js_block(i, 16));
    }
    let (code, _) = follower.interrupt();
    assert_eq!(code, Some(0));
    let (code, _) = bridge.interrupt();
    assert_eq!(code, Some(0));
    assert_eq!(writer.stop(), Some(0));
}

#[test]
fn an_iroh_writer_reaches_a_js_reader_through_the_bridge_live() {
    if js::node().is_none() {
        return;
    }
    let (a, bridge_dir, r) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let key = stdout(&hyper(a.path(), &["create", "log"], ""))
        .trim()
        .to_string();
    let blocks: Vec<String> = (0..50).map(|i| js_block(i, 16)).collect();
    let mut args = vec!["append", "log"];
    args.extend(blocks.iter().map(String::as_str));
    stdout(&hyper(a.path(), &args, ""));

    // The writer speaks iroh only.
    let mut sharer = spawn(a.path(), &["share", "log", "--stdin"]);
    let ticket = sharer.line();
    // The bridge follows it over iroh and serves JS readers over TCP.
    let bridge = spawn(
        bridge_dir.path(),
        &["follow", &ticket, "--tcp-listen", "127.0.0.1:0"],
    );
    let port: u16 = bridge
        .stderr_line("listening for hypercore (JS) peers on tcp 127.0.0.1:")
        .trim()
        .parse()
        .expect("the bridge's port");
    for i in 0..50 {
        assert_eq!(bridge.line(), js_block(i, 16));
    }
    let mut reader = Peer::run(
        "read",
        r.path(),
        json!({"keys": [key], "port": port, "count": 50, "follow": true}),
    );
    assert_eq!(reader.line["length"], 50);
    assert_eq!(reader.line["bytes"], 50 * 16);
    // Live: a line typed into the iroh writer reaches the JS reader.
    sharer.type_line(&js_block(50, 16));
    assert_eq!(reader.next_line()["length"], 51);
    assert_eq!(bridge.line(), js_block(50, 16));
    assert_eq!(reader.stop(), Some(0));
    let (code, _) = bridge.interrupt();
    assert_eq!(code, Some(0));
    let (code, _) = sharer.interrupt();
    assert_eq!(code, Some(0));
}

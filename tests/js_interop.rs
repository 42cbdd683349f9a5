#![cfg(unix)]
//! Against real JS Hypercore 11 (`interop/js`, installed by `npm ci` from its lock file): the
//! harness the interoperability work builds on. A JS reader follows a JS writer over TCP on
//! loopback, every block checked, which is also the JS ← JS baseline of the wire benchmarks.
//! Without `node` these tests say so and pass; with it, any failing step fails them.

#[path = "common/js.rs"]
mod js;

use js::Peer;

#[test]
fn a_js_reader_follows_a_js_writer_over_tcp() {
    if js::node().is_none() {
        return;
    }
    let (w, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let writer = Peer::start(&["write", w.path().to_str().unwrap(), "2000", "1024"]);
    assert_eq!(writer.line["length"], 2000);
    let key = writer.line["key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 64);
    let port = writer.line["port"].to_string();
    let reader = Peer::start(&["read", r.path().to_str().unwrap(), &key, &port, "2000"]);
    assert_eq!(reader.line["length"], 2000);
    assert_eq!(reader.line["bytes"], 2000 * 1024);
    assert_eq!(reader.stop(), Some(0));
    assert_eq!(writer.stop(), Some(0));
}

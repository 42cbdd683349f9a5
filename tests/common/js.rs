//! Real JS Hypercore peers (`interop/js/peer.js`, Hypercore 11.37.1 pinned by its
//! `package-lock.json`): installed with `npm ci` once per test binary, run as child processes
//! on loopback. Without `node` a test says so loudly and passes; with `node`, a failing step
//! (npm, a peer) fails the test.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

/// How long a JS peer may take to print its line.
pub const WAIT: Duration = Duration::from_secs(120);

/// The directory of the JS peers.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/js")
}

/// Whether `node` runs here; installs the pinned packages the first time. `None` (with a
/// loud line on stderr) when `node` is absent: the caller returns.
pub fn node() -> Option<()> {
    static READY: OnceLock<bool> = OnceLock::new();
    let ready = *READY.get_or_init(|| {
        if Command::new("node").arg("--version").output().is_err() {
            eprintln!("SKIPPED: node is not installed, so no test against real JS Hypercore ran");
            return false;
        }
        let npm = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir())
            .output()
            .expect("npm runs where node does");
        assert!(
            npm.status.success(),
            "npm ci in interop/js failed: {}",
            String::from_utf8_lossy(&npm.stderr)
        );
        true
    });
    ready.then_some(())
}

/// A running JS peer: its first stdout line parsed as JSON, its stdin kept open (closing it
/// stops a writer).
pub struct Peer {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    /// The first line it printed.
    pub line: serde_json::Value,
}

impl Peer {
    /// Starts `node peer.js args…` and waits for its JSON line.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new("node")
            .arg(dir().join("peer.js"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut peer = Self {
            stdin: child.stdin.take(),
            child: Some(child),
            lines,
            line: serde_json::Value::Null,
        };
        peer.line = peer.next_line();
        peer
    }

    /// The next line it prints, parsed, within [`WAIT`].
    pub fn next_line(&mut self) -> serde_json::Value {
        let line = self
            .lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("the JS peer printed nothing more in {WAIT:?}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("the JS peer printed {line:?}: {e}"))
    }

    /// Starts `node peer.js MODE DIR OPTS` with options as JSON.
    pub fn run(mode: &str, dir: &Path, opts: serde_json::Value) -> Self {
        Self::start(&[mode, dir.to_str().expect("utf-8 path"), &opts.to_string()])
    }

    /// Writes a line to its stdin (a writer's `append N`).
    pub fn say(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("the JS peer reads its stdin");
        stdin.flush().expect("flush");
    }

    /// Closes its stdin (a writer then stops) and waits for its exit, within [`WAIT`].
    pub fn stop(mut self) -> Option<i32> {
        self.stdin.take();
        let mut child = self.child.take().expect("running");
        let (tx, rx) = std::sync::mpsc::channel();
        let pid = child.id();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(WAIT) {
            Ok(status) => status.expect("wait").code(),
            Err(_) => {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                panic!("the JS peer did not stop within {WAIT:?}");
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

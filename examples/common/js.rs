//! Real JS Hypercore peers (`interop/js/peer.js`) for the benchmarks that compare with them:
//! the pinned packages installed on first use, and a peer process killed when dropped.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

/// The directory of the JS peer and its pinned packages.
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/js")
}

/// Whether JS peers can run here: false when Node.js is not installed; installs the pinned
/// packages (`npm ci`) the first time.
pub fn js_ready() -> anyhow::Result<bool> {
    if Command::new("node").arg("--version").output().is_err() {
        return Ok(false);
    }
    if !js_dir().join("node_modules").exists() {
        let npm = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(js_dir())
            .status()?;
        anyhow::ensure!(npm.success(), "npm ci failed");
    }
    Ok(true)
}

/// A JS peer (`peer.js`), killed when dropped.
pub struct Js {
    child: Child,
    /// Its stdout, kept open (a peer whose stdout closes may fail writing to it).
    _lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Js {
    /// Starts `peer.js` in `mode` on `dir` with `opts`: the peer and the first line it prints.
    pub fn start(
        mode: &str,
        dir: &Path,
        opts: serde_json::Value,
    ) -> anyhow::Result<(Self, serde_json::Value)> {
        let mut child = Command::new("node")
            .arg(js_dir().join("peer.js"))
            .arg(mode)
            .arg(dir)
            .arg(opts.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("the JS peer printed nothing"))??;
        Ok((
            Self {
                child,
                _lines: lines,
            },
            serde_json::from_str(&first)?,
        ))
    }
}

impl Drop for Js {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

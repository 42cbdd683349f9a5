//! The built `hyper` binary run as separate processes: one-shot commands, and long-running
//! ones (`share`, `follow`) whose stdout lines arrive on a channel.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    process::{Child, ChildStdin, Command, Output, Stdio},
    sync::{
        Arc, Condvar, Mutex,
        mpsc::{Receiver, channel},
    },
    thread::JoinHandle,
    time::Duration,
};

/// How long a test waits for a line or an exit: generous, for a loaded CI machine.
pub const WAIT: Duration = Duration::from_secs(60);

/// The network options of every networked process: loopback only, no relay.
pub const LOOPBACK: [&str; 4] = ["--relay", "disabled", "--bind", "127.0.0.1:0"];

/// The built binary.
pub const HYPER: &str = env!("CARGO_BIN_EXE_hyper");

fn command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(HYPER);
    cmd.arg("--data")
        .arg(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("HYPER_DATA");
    cmd
}

/// Runs `hyper --data dir args…` to its end with `stdin` fed in.
pub fn hyper(dir: &Path, args: &[&str], stdin: impl AsRef<[u8]>) -> Output {
    output_within(command(dir, args), stdin)
}

/// Runs `cmd` to its end with `stdin` fed in; a run over [`WAIT`] is killed and fails the
/// test, so a hang fails rather than holds the test run.
pub fn output_within(mut cmd: Command, stdin: impl AsRef<[u8]>) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command runs");
    let pid = child.id();
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.as_ref().to_vec();
    std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(out) => out.expect("the command ends"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{cmd:?} did not end within {WAIT:?}");
        }
    }
}

/// Runs `hyper --data dir args…` under a file size limit of 2 MiB (a write past it fails as
/// a full disk would: `EFBIG`, the signal ignored).
pub fn hyper_with_file_limit(dir: &Path, args: &[&str]) -> Output {
    let mut limited = Command::new("sh");
    limited
        .arg("-c")
        .arg("ulimit -f 2048; trap '' XFSZ; exec \"$0\" \"$@\"")
        .arg(HYPER)
        .arg("--data")
        .arg(dir)
        .args(args)
        .env_remove("RUST_LOG");
    output_within(limited, "")
}

/// Runs `hyper --data dir --relay disabled --bind 127.0.0.1:0 follow TICKET extra… | head -n
/// 1` in bash with `pipefail`: the pipeline's output and its status (the follow's, if it
/// failed).
pub fn follow_into_head(dir: &Path, ticket: &str, extra: &str) -> Output {
    let mut bash = Command::new("bash");
    bash.arg("-c")
        .arg(format!(
            "set -o pipefail; \"$0\" --data \"$1\" --relay disabled --bind 127.0.0.1:0 \
             follow \"$2\" {extra} | head -n 1"
        ))
        .arg(HYPER)
        .arg(dir)
        .arg(ticket);
    output_within(bash, "")
}

/// The stdout of a run that succeeded.
pub fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "hyper failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

/// A failure: exit code 1 and one line on stderr, which is returned.
pub fn failure(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr.clone()).expect("utf-8");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("hyper: "), "{err}");
    err
}

/// A `hyper` process that keeps running: its stdout lines arrive on a channel, its stderr
/// is collected, its stdin stays open.
pub struct Running {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Signalled on each piece of stderr read.
    stderr_grew: Arc<Condvar>,
    stderr_reader: Option<JoinHandle<()>>,
    stdout_reader: Option<JoinHandle<()>>,
}

impl Running {
    /// Starts `hyper --data dir args…`.
    pub fn spawn(dir: &Path, args: &[&str]) -> Self {
        let mut child = command(dir, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hyper runs");
        let (tx, lines) = channel();
        let out = child.stdout.take().expect("stdout");
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr");
        let (collected, stderr_grew) = (stderr.clone(), Arc::new(Condvar::new()));
        let grew = stderr_grew.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
                grew.notify_all();
            }
        });
        Self {
            stdin: child.stdin.take(),
            child: Some(child),
            lines,
            stderr,
            stderr_grew,
            stderr_reader: Some(stderr_reader),
            stdout_reader: Some(stdout_reader),
        }
    }

    /// The next line on stdout (within [`WAIT`]).
    pub fn line(&self) -> String {
        match self.lines.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(e) => panic!(
                "no line from hyper ({e}); its stderr: {}",
                self.stderr.lock().unwrap()
            ),
        }
    }

    /// Waits (within [`WAIT`]) until stderr holds a whole line that starts with `prefix`, and
    /// returns the rest of that line.
    pub fn stderr_line(&self, prefix: &str) -> String {
        let rest_of_line = |err: &str| {
            let at = err.find(prefix)? + prefix.len();
            let rest = &err[at..];
            rest.find('\n').map(|end| rest[..end].to_string())
        };
        let err = self.stderr.lock().unwrap();
        let (err, waited) = self
            .stderr_grew
            .wait_timeout_while(err, WAIT, |err| rest_of_line(err).is_none())
            .unwrap();
        assert!(
            !waited.timed_out(),
            "stderr never had a line {prefix:?}: {err}"
        );
        rest_of_line(&err).expect("the line")
    }

    /// Waits (within [`WAIT`]) until stderr holds `text` `times` times in all.
    pub fn wait_stderr(&self, text: &str, times: usize) {
        let err = self.stderr.lock().unwrap();
        let (err, waited) = self
            .stderr_grew
            .wait_timeout_while(err, WAIT, |err| err.matches(text).count() < times)
            .unwrap();
        assert!(
            !waited.timed_out(),
            "stderr never said {text:?} {times} times: {err}"
        );
    }

    /// What stderr held so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Types `text` and a newline on the process's stdin.
    pub fn type_line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{text}").expect("stdin written");
        stdin.flush().expect("stdin flushed");
    }

    /// Writes `bytes` as they are on the process's stdin.
    pub fn type_bytes(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("stdin written");
        stdin.flush().expect("stdin flushed");
    }

    /// Sends SIGINT (Ctrl-C) and waits for the exit: its code and everything on stderr.
    pub fn interrupt(self) -> (Option<i32>, String) {
        let pid = self.child.as_ref().expect("running").id();
        let sent = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGINT sent");
        self.wait()
    }

    /// Waits (within [`WAIT`]) for the process to end by itself: its code and stderr.
    pub fn wait(mut self) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("running");
        let pid = child.id();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match rx.recv_timeout(WAIT) {
            Ok(status) => status.expect("wait"),
            Err(_) => {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                panic!(
                    "hyper did not exit; its stderr: {}",
                    self.stderr.lock().unwrap()
                );
            }
        };
        for reader in [self.stderr_reader.take(), self.stdout_reader.take()]
            .into_iter()
            .flatten()
        {
            let _ = reader.join();
        }
        let stderr = self.stderr.lock().unwrap().clone();
        (status.code(), stderr)
    }

    /// The stdout lines not read yet (all of them once [`wait`](Self::wait) returned).
    pub fn rest(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

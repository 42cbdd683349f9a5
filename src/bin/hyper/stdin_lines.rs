//! Lines of stdin as they are typed or piped, read on a thread of their own.

use tokio::sync::mpsc;

/// Lines read and not yet taken: the reader waits when this many are queued.
const BACKLOG: usize = 1024;

/// Starts reading stdin line by line; the receiver gets each line as soon as it is read, and
/// ends when stdin closes. A plain thread: a read blocked on a terminal must not hold the
/// runtime's shutdown.
pub fn read() -> mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next line (waiting for it) and then as many as are queued already, at most `max`;
/// empty once stdin closed.
pub async fn next_batch(
    rx: &mut mpsc::Receiver<std::io::Result<String>>,
    max: usize,
) -> Result<Vec<String>, String> {
    let mut batch = Vec::new();
    let Some(first) = rx.recv().await else {
        return Ok(batch);
    };
    batch.push(first.map_err(|e| format!("reading stdin: {e}"))?);
    while batch.len() < max {
        match rx.try_recv() {
            Ok(line) => batch.push(line.map_err(|e| format!("reading stdin: {e}"))?),
            Err(_) => break,
        }
    }
    Ok(batch)
}

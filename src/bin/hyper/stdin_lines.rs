//! Lines of stdin as they are typed or piped, read on a thread of their own. A line is
//! bytes: one that is not UTF-8 is appended as it is.

use tokio::sync::mpsc;

/// Lines read and not yet taken: the reader waits when this many are queued.
const BACKLOG: usize = 1024;

/// Starts reading stdin line by line; the receiver gets each line as soon as it is read, and
/// ends when stdin closes. A plain thread: a read blocked on a terminal must not hold the
/// runtime's shutdown.
pub fn read() -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            let read = match stdin.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => Ok(without_line_end(line)),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = read.is_err();
            if tx.blocking_send(read).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// The line without its `\n` (or `\r\n`), as `BufRead::lines` gives it.
fn without_line_end(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    line
}

/// The next line (waiting for it) and then as many as are queued already, at most `max`;
/// empty once stdin closed.
pub async fn next_batch(
    rx: &mut mpsc::Receiver<std::io::Result<Vec<u8>>>,
    max: usize,
) -> Result<Vec<Vec<u8>>, String> {
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

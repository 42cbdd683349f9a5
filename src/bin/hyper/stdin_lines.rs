//! Lines of stdin as they are typed or piped, read on a thread of their own. A line is
//! bytes: one that is not UTF-8 is appended as it is.

use iroh_hypercore::core::MAX_BLOCK_SIZE;
use tokio::sync::mpsc;

/// Lines read and not yet taken: the reader waits when this many are queued.
const BACKLOG: usize = 1024;
/// A batch stops growing past this many bytes (a line always goes whole).
const BATCH_BYTES: usize = 16 << 20;

/// Starts reading stdin line by line; the receiver gets each line as soon as it is read, and
/// ends when stdin closes. A plain thread: a read blocked on a terminal must not hold the
/// runtime's shutdown.
pub fn read() -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    std::thread::spawn(move || {
        use std::io::BufRead;
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut number = 0u64;
        loop {
            let mut line = Vec::new();
            number += 1;
            // At most a block and its line end are held: a longer line is an error at once,
            // not a file read whole into memory.
            let limit = (MAX_BLOCK_SIZE + 2) as u64;
            let read = match (&mut stdin).take(limit).read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) if line.len() as u64 == limit && line.last() != Some(&b'\n') => {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "line {number} is over the {MAX_BLOCK_SIZE} bytes of a block \
                             (append --blob takes a file of any size)"
                        ),
                    ))
                }
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

/// The next line (waiting for it) and then as many as are queued already, at most `max`
/// lines and about [`BATCH_BYTES`]; empty once stdin closed.
pub async fn next_batch(
    rx: &mut mpsc::Receiver<std::io::Result<Vec<u8>>>,
    max: usize,
) -> Result<Vec<Vec<u8>>, String> {
    let mut batch = Vec::new();
    let Some(first) = rx.recv().await else {
        return Ok(batch);
    };
    let first = first.map_err(|e| format!("reading stdin: {e}"))?;
    let mut bytes = first.len();
    batch.push(first);
    while batch.len() < max && bytes < BATCH_BYTES {
        match rx.try_recv() {
            Ok(line) => {
                let line = line.map_err(|e| format!("reading stdin: {e}"))?;
                bytes += line.len();
                batch.push(line);
            }
            Err(_) => break,
        }
    }
    Ok(batch)
}

//! Lines of stdin as they are typed or piped, read on a thread of their own. A line is
//! bytes: one that is not UTF-8 is appended as it is. What is held is bounded: a line by a
//! block's size (a longer one is an error as soon as that much is read), the lines read and
//! not yet taken by [`MAX_QUEUED_BYTES`].

use std::sync::{Arc, Condvar, Mutex};

use iroh_hypercore::core::MAX_BLOCK_SIZE;
use tokio::sync::mpsc;

/// Lines read and not yet taken: the reader waits when this many are queued.
const BACKLOG: usize = 1024;
/// Bytes of lines read and not yet taken: the reader waits past it (a line always goes).
const MAX_QUEUED_BYTES: usize = 32 << 20;
/// A batch stops growing past this many bytes (a line always goes whole).
const BATCH_BYTES: usize = 16 << 20;

/// Bytes queued, and the reader's wait for room.
type Queued = Arc<(Mutex<usize>, Condvar)>;

/// The lines of stdin, as the reader thread hands them over.
pub struct StdinLines {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    queued: Queued,
    /// An error met after lines of a batch: said on the next call, the lines first.
    failed: Option<String>,
}

/// Starts reading stdin line by line; each line is handed over as soon as it is read, until
/// stdin closes. A plain thread: a read blocked on a terminal must not hold the runtime's
/// shutdown.
pub fn read() -> StdinLines {
    let (tx, rx) = mpsc::channel(BACKLOG);
    let queued: Queued = Arc::default();
    let room = queued.clone();
    std::thread::spawn(move || {
        use std::io::{BufRead, Read};
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
            if let Ok(line) = &read {
                wait_for_room(&room, line.len());
            }
            let failed = read.is_err();
            if tx.blocking_send(read).is_err() || failed {
                return;
            }
        }
    });
    StdinLines {
        rx,
        queued,
        failed: None,
    }
}

/// Waits until `len` more bytes fit in the queue (or it is empty), then counts them.
fn wait_for_room(queued: &Queued, len: usize) {
    let (bytes, room) = &**queued;
    let mut bytes = bytes.lock().unwrap_or_else(|p| p.into_inner());
    while *bytes > 0 && *bytes + len > MAX_QUEUED_BYTES {
        bytes = room.wait(bytes).unwrap_or_else(|p| p.into_inner());
    }
    *bytes += len;
}

impl StdinLines {
    /// A line taken: its bytes leave the queue.
    fn taken(&self, line: &std::io::Result<Vec<u8>>) {
        if let Ok(line) = line {
            let (bytes, room) = &*self.queued;
            let mut bytes = bytes.lock().unwrap_or_else(|p| p.into_inner());
            *bytes = bytes.saturating_sub(line.len());
            room.notify_all();
        }
    }

    /// The next line (waiting for it) and then as many as are queued already, at most `max`
    /// lines and about [`BATCH_BYTES`]; empty once stdin closed. A read error after some
    /// lines ends the batch there: the lines come first, the error on the next call.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Vec<u8>>, String> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let mut batch = Vec::new();
        let Some(first) = self.rx.recv().await else {
            return Ok(batch);
        };
        self.taken(&first);
        let first = first.map_err(|e| format!("reading stdin: {e}"))?;
        let mut bytes = first.len();
        batch.push(first);
        while batch.len() < max && bytes < BATCH_BYTES {
            let Ok(line) = self.rx.try_recv() else {
                break;
            };
            self.taken(&line);
            match line {
                Ok(line) => {
                    bytes += line.len();
                    batch.push(line);
                }
                Err(e) => {
                    self.failed = Some(format!("reading stdin: {e}"));
                    break;
                }
            }
        }
        Ok(batch)
    }

    /// The lines read and not taken yet, without waiting for more; stops reading. (Taken
    /// before and after closing: a reader waiting for room hands its line over once some is
    /// made.)
    pub fn rest(&mut self) -> Vec<Vec<u8>> {
        let mut rest = Vec::new();
        while let Ok(line) = self.rx.try_recv() {
            self.taken(&line);
            rest.extend(line.ok());
        }
        self.rx.close();
        while let Ok(line) = self.rx.try_recv() {
            self.taken(&line);
            rest.extend(line.ok());
        }
        rest
    }
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

//! The control socket of a running `share`: while it holds the store, `append` and
//! `truncate` from another terminal go through it (`hyper.sock` in the data directory,
//! readable by its owner only), and peers following the log see the change live.
//!
//! A request or a reply is one frame: a 4-byte big-endian length, then the postcard
//! encoding of a [`Request`] or a [`Reply`]; a connection carries requests one at a time.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use iroh_hypercore::Corestore;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
};

use crate::{append, fail, local};

/// The socket, inside the data directory.
const FILE: &str = "hyper.sock";
/// The largest frame read: one request of [`MAX_REQUEST_BYTES`] blocks (plus one block past
/// it, since a request holds at least one) and its encoding.
const MAX_FRAME: usize = MAX_REQUEST_BYTES + iroh_hypercore::core::MAX_BLOCK_SIZE + 4096;
/// A client puts at most this many bytes of blocks in one request (more lines go in the next).
pub const MAX_REQUEST_BYTES: usize = 8 << 20;
/// Connections served at once (each is one person's command).
const MAX_CONNECTIONS: usize = 16;
/// How long the rest of a frame may take once its length arrived.
const FRAME_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a client waits for the answer to a request that is not a blob (a stopped node,
/// say, suspended with Ctrl-Z, accepts and never answers).
const REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a client asks the running node.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Append `blocks` (all or none) to the writable log `log`.
    Append {
        /// The log's name.
        log: String,
        /// The blocks.
        blocks: Vec<ByteBuf>,
    },
    /// Append the file `path` (absolute) as a blob to the writable log `log`.
    AppendBlob {
        /// The log's name.
        log: String,
        /// The file.
        path: PathBuf,
    },
    /// Create the writable log `log` (derived from the store's primary key).
    Create {
        /// The log's name.
        log: String,
    },
    /// Truncate the writable log `log` to `length` blocks.
    Truncate {
        /// The log's name or key.
        log: String,
        /// The new length.
        length: u64,
    },
}

/// What the node answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// Appended: the log's length now.
    Appended(u64),
    /// The blob's block was appended at this index.
    AppendedBlob(u64),
    /// Truncated: the length and fork now.
    Truncated(u64, u64),
    /// Created: the log's key.
    Created([u8; 32]),
    /// The request failed: the error line.
    Failed(String),
}

/// The control socket's path for the data directory `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Serves the control socket of `dir` for `store` until dropped (the socket file is removed
/// then). A socket left by a process that died is replaced: whoever holds the store owns it.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    _task: n0_future::task::AbortOnDropHandle<()>,
}

impl Server {
    /// Listens on the socket; a failure is a warning (the node runs without it).
    pub fn start(store: &Corestore, dir: &Path) -> Option<Self> {
        let path = path(dir);
        let _ = std::fs::remove_file(&path);
        let listener = match UnixListener::bind(&path) {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!(
                    "warning: no control socket at {} ({e}): append and truncate from another \
                     terminal will wait for this process to end",
                    path.display()
                );
                return None;
            }
        };
        if let Err(e) = restrict(&path) {
            eprintln!("warning: closing the control socket: {e}");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        let (store, dir) = (store.clone(), dir.to_path_buf());
        let task = tokio::spawn(serve(listener, store, dir));
        Some(Self {
            path,
            _task: n0_future::task::AbortOnDropHandle::new(task),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Only the owner may connect (and [`serve`] checks each peer's user id too).
fn restrict(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

async fn serve(listener: UnixListener, store: Corestore, dir: PathBuf) {
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path(&dir)).map(|m| m.uid()).ok()
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: not a busy loop.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let same_user = stream
            .peer_cred()
            .is_ok_and(|cred| Some(cred.uid()) == owner);
        if !same_user {
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let busy = Reply::Failed(format!(
                "the running hyper process serves {MAX_CONNECTIONS} commands already; try again"
            ));
            tokio::spawn(async move {
                let _ = tokio::time::timeout(FRAME_WAIT, write_frame(&mut stream, &busy)).await;
            });
            continue;
        };
        let (store, dir) = (store.clone(), dir.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _ = answer(stream, &store, &dir).await;
        });
    }
}

/// Answers the requests of one connection until it closes.
async fn answer(mut stream: UnixStream, store: &Corestore, dir: &Path) -> std::io::Result<()> {
    while let Some(request) = read_frame::<Request>(&mut stream).await? {
        let reply = match handle(store, dir, request).await {
            Ok(reply) => reply,
            Err(e) => Reply::Failed(e),
        };
        write_frame(&mut stream, &reply).await?;
    }
    Ok(())
}

async fn handle(store: &Corestore, dir: &Path, request: Request) -> Result<Reply, String> {
    match request {
        Request::Append { log, blocks } => {
            let core = append::writable(store, dir, &log).await?;
            let blocks: Vec<Vec<u8>> = blocks.into_iter().map(ByteBuf::into_vec).collect();
            append::check_sizes(&blocks, 0)?;
            if !blocks.is_empty() {
                core.append_batch(blocks)
                    .await
                    .map_err(|e| fail::describe(&format!("appending to {log}"), e))?;
            }
            Ok(Reply::Appended(core.info().length))
        }
        Request::AppendBlob { log, path } => {
            // A file the client named by its absolute path; not a pipe or a device that
            // would hold the node.
            if !path.is_absolute() || !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                return Err(format!("{} is not a file", path.display()));
            }
            let core = append::writable(store, dir, &log).await?;
            let index = core.append_blob(path.as_path()).await.map_err(|e| {
                fail::describe(&format!("appending {} as a blob", path.display()), e)
            })?;
            Ok(Reply::AppendedBlob(index))
        }
        Request::Create { log } => local::create(store, dir, &log).await.map(Reply::Created),
        Request::Truncate { log, length } => {
            let (core, _) = local::resolve(store, dir, &log).await?;
            local::truncate(&core, &log, length).await?;
            let info = core.info();
            Ok(Reply::Truncated(info.length, info.fork))
        }
    }
}

/// A connection to the node running on `dir`'s store, if one listens.
pub struct Client(UnixStream);

impl Client {
    /// Connects to the control socket of `dir`; `None` if no node listens on it.
    pub async fn connect(dir: &Path) -> Option<Self> {
        UnixStream::connect(path(dir)).await.ok().map(Self)
    }

    /// Sends `request` and waits for the reply; a failure is the node's error line.
    pub async fn ask(&mut self, request: &Request) -> Result<Reply, String> {
        let lost = |e: std::io::Error| format!("the running hyper process did not answer: {e}");
        if let Err(e) = write_frame(&mut self.0, request).await {
            // A node that turned the request down (busy) answered before it closed.
            return match tokio::time::timeout(FRAME_WAIT, read_frame::<Reply>(&mut self.0)).await {
                Ok(Ok(Some(Reply::Failed(why)))) => Err(why),
                _ => Err(lost(e)),
            };
        }
        // A blob may take long to add; anything else is answered at once by a running node.
        let reply = match request {
            Request::AppendBlob { .. } => read_frame::<Reply>(&mut self.0).await,
            _ => tokio::time::timeout(REPLY_WAIT, read_frame::<Reply>(&mut self.0))
                .await
                .map_err(|_| {
                    format!(
                        "the hyper process holding the store did not answer in {} s (is it \
                         stopped?); the request may still be carried out: look with hyper \
                         info once it runs",
                        REPLY_WAIT.as_secs()
                    )
                })?,
        };
        match reply.map_err(lost)? {
            Some(Reply::Failed(e)) => Err(e),
            Some(reply) => Ok(reply),
            None => Err("the running hyper process closed the connection".into()),
        }
    }
}

/// Reads one frame; `None` at a clean end of the stream.
async fn read_frame<T: serde::de::DeserializeOwned>(
    stream: &mut UnixStream,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes, over the {MAX_FRAME} allowed"),
        ));
    }
    // Read as it arrives (no buffer of a size only announced), within a time.
    let mut frame = Vec::new();
    let read = tokio::time::timeout(
        FRAME_WAIT,
        (&mut *stream).take(len as u64).read_to_end(&mut frame),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "a frame cut short"))??;
    if read != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    postcard::from_bytes(&frame)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

async fn write_frame<T: Serialize>(stream: &mut UnixStream, value: &T) -> std::io::Result<()> {
    let frame = postcard::to_stdvec(value)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let len = u32::try_from(frame.len())
        .ok()
        .filter(|&n| n as usize <= MAX_FRAME)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too big"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(&frame).await?;
    stream.flush().await
}

//! The peer book part: the addresses of the peers each core the application replicates
//! remembers, kept in the core's database record so that they outlive a restart. Most recently
//! useful first (a peer a channel opened with moves to the front), at most
//! [`MAX_KNOWN_PER_CORE`] peers of [`MAX_ADDRS`] addresses each. A record that does not decode
//! counts as empty. It owns the futures of its reads and writes.

use std::collections::{HashMap, HashSet};

use iroh::{EndpointAddr, TransportAddr};
use n0_future::{FuturesUnordered, StreamExt, boxed::BoxFuture};

use crate::{core::Hypercore, crypto::CoreKey, replication::engine::MAX_KNOWN_PER_CORE};

/// Addresses kept per peer.
const MAX_ADDRS: usize = 8;

/// What a read or write of a record ended with.
pub(super) enum BookEvent {
    /// The record of a core was read: the peers it remembers.
    Loaded(CoreKey, Vec<EndpointAddr>),
    /// The record of a core was written (or failed to be).
    Saved(CoreKey),
}

/// The peer book part; see the module docs.
#[derive(Default)]
pub(super) struct PeerBook {
    /// Each core's peers, most recently useful first.
    books: HashMap<CoreKey, Vec<EndpointAddr>>,
    /// Cores whose record is being written, and those changed meanwhile.
    saving: HashSet<CoreKey>,
    dirty: HashSet<CoreKey>,
    io: FuturesUnordered<BoxFuture<BookEvent>>,
}

impl PeerBook {
    /// Reads the record of `core`: its peers come out of [`next`](Self::next).
    pub(super) fn load(&mut self, core: Hypercore) {
        self.books.entry(core.key()).or_default();
        self.io.push(Box::pin(async move {
            let addrs = match core.remembered_peers().await {
                Ok(bytes) if bytes.is_empty() => Vec::new(),
                Ok(bytes) => postcard::from_bytes(&bytes).unwrap_or_else(|e| {
                    tracing::warn!("the record of a core's peers does not decode: {e}");
                    Vec::new()
                }),
                Err(e) => {
                    tracing::warn!("reading the peers a core remembers: {e}");
                    Vec::new()
                }
            };
            BookEvent::Loaded(core.key(), addrs)
        }));
    }

    /// The record of `key` was read: its peers join those learnt meanwhile (which stay in
    /// front). Returns them all.
    pub(super) fn loaded(&mut self, key: CoreKey, addrs: Vec<EndpointAddr>) -> Vec<EndpointAddr> {
        let Some(book) = self.books.get_mut(&key) else {
            return Vec::new();
        };
        for addr in addrs {
            if !book.iter().any(|a| a.id == addr.id) {
                book.push(bounded(addr));
            }
        }
        book.truncate(MAX_KNOWN_PER_CORE);
        book.clone()
    }

    /// A channel of `core` with the peer at `addr` opened: it goes first, and the record is
    /// written if that changed it.
    pub(super) fn useful(&mut self, core: &Hypercore, addr: EndpointAddr) {
        let Some(book) = self.books.get_mut(&core.key()) else {
            return;
        };
        let addr = bounded(addr);
        if book.first() == Some(&addr) {
            return;
        }
        book.retain(|a| a.id != addr.id);
        book.insert(0, addr);
        book.truncate(MAX_KNOWN_PER_CORE);
        self.save(core);
    }

    /// `core` was joined with `nodes` (a ticket's): those it did not know go last, and the
    /// record is written if that changed it.
    pub(super) fn add(&mut self, core: &Hypercore, nodes: &[EndpointAddr]) {
        let Some(book) = self.books.get_mut(&core.key()) else {
            return;
        };
        let before = book.len();
        for addr in nodes {
            if book.len() < MAX_KNOWN_PER_CORE && !book.iter().any(|a| a.id == addr.id) {
                book.push(bounded(addr.clone()));
            }
        }
        if book.len() != before {
            self.save(core);
        }
    }

    /// Writes the record of `core`, or marks it to be written again after the write under
    /// way (one write per core at a time).
    fn save(&mut self, core: &Hypercore) {
        let key = core.key();
        if !self.saving.insert(key) {
            self.dirty.insert(key);
            return;
        }
        let Some(book) = self.books.get(&key) else {
            return;
        };
        let bytes = postcard::to_stdvec(book).unwrap_or_default();
        let write = core.remember_peers(bytes);
        self.io.push(Box::pin(async move {
            if let Err(e) = write.await {
                tracing::warn!("the peers a core remembers were not written: {e}");
            }
            BookEvent::Saved(key)
        }));
    }

    /// The record of `key` was written: written again if it changed meanwhile (`core` is its
    /// handle, if it is still replicated).
    pub(super) fn saved(&mut self, key: CoreKey, core: Option<Hypercore>) {
        self.saving.remove(&key);
        if self.dirty.remove(&key)
            && let Some(core) = core
        {
            self.save(&core);
        }
    }

    /// `key` is no longer replicated (a write under way still ends).
    pub(super) fn forget(&mut self, key: &CoreKey) {
        self.books.remove(key);
        self.dirty.remove(key);
    }

    /// The next read or write that ended; pending forever while none runs.
    pub(super) async fn next(&mut self) -> BookEvent {
        match self.io.next().await {
            Some(ev) => ev,
            None => std::future::pending().await,
        }
    }
}

/// `addr` with at most [`MAX_ADDRS`] addresses, relays first.
fn bounded(addr: EndpointAddr) -> EndpointAddr {
    let mut addrs: Vec<TransportAddr> = addr.addrs.into_iter().collect();
    addrs.sort_by_key(|a| !a.is_relay());
    addrs.truncate(MAX_ADDRS);
    EndpointAddr::from_parts(addr.id, addrs)
}

//! The peer book part: the addresses of the peers each core the application replicates
//! remembers, kept in the core's database record so that they outlive a restart: the peers it
//! was named (ticket and `join` nodes, most recently named first, at most [`MAX_NAMED`]) and,
//! apart, those a channel opened with (most recently useful first, at most [`MAX_LEARNT`]),
//! so that peers that learn the key and open channels from many ids never push the named ones
//! out. Each peer keeps at most [`MAX_ADDRS`] addresses. A record that does not decode counts
//! as empty; one of the earlier format (one list) is read as peers a channel opened with; one
//! that could not be read is not written over (the next change reads it again). It owns the futures of its reads and writes.

use std::collections::{HashMap, HashSet};

use iroh::{EndpointAddr, TransportAddr};
use n0_future::{FuturesUnordered, StreamExt, boxed::BoxFuture};
use serde::{Deserialize, Serialize};

use crate::{
    core::Hypercore,
    crypto::CoreKey,
    replication::engine::{MAX_LEARNT, MAX_NAMED},
};

/// Addresses kept per peer.
const MAX_ADDRS: usize = 8;

/// The peers one core remembers (its record's format).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Book {
    /// Named by the application, most recently named first.
    pub(super) named: Vec<EndpointAddr>,
    /// A channel opened with them, most recently first; none of them named.
    pub(super) useful: Vec<EndpointAddr>,
}

impl Book {
    /// A record's bytes: this format, or the earlier one list (read as `useful`).
    fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes).or_else(|e| {
            postcard::from_bytes::<Vec<EndpointAddr>>(bytes)
                .map(|useful| Self {
                    named: Vec::new(),
                    useful,
                })
                .map_err(|_| e)
        })
    }

    fn contains(&self, id: &iroh::EndpointId) -> bool {
        self.named.iter().chain(&self.useful).any(|a| a.id == *id)
    }
}

/// What a read or write of a record ended with.
pub(super) enum BookEvent {
    /// The record of a core was read: the peers it remembers (`None` if it could not be read).
    Loaded(CoreKey, Option<Book>),
    /// The record of a core was written (or failed to be).
    Saved(CoreKey),
}

/// The peer book part; see the module docs.
#[derive(Default)]
pub(super) struct PeerBook {
    /// Each core's peers.
    books: HashMap<CoreKey, Book>,
    /// Cores whose record is being read, with the reads under way (several for a core
    /// replicated again by name, or left and replicated again, while it was read): a change
    /// meanwhile is written once every read ended and merged, so that it does not overwrite
    /// the peers remembered there.
    loading: HashMap<CoreKey, u32>,
    /// Cores whose record is being written, and those changed meanwhile (or while it was
    /// read, or after it could not be read).
    saving: HashSet<CoreKey>,
    dirty: HashSet<CoreKey>,
    /// Cores a read of whose record ended well since they were replicated (it may have
    /// started before). A record that could not be read is not written over: it may still
    /// hold the peers remembered (the next change reads it again).
    read: HashSet<CoreKey>,
    io: FuturesUnordered<BoxFuture<BookEvent>>,
}

impl PeerBook {
    /// Reads the record of `core`: its peers come out of [`next`](Self::next). While a write
    /// of the record is under way (a core left and replicated again), the read waits for it.
    pub(super) fn load(&mut self, core: Hypercore) {
        self.books.entry(core.key()).or_default();
        *self.loading.entry(core.key()).or_default() += 1;
        let read = core.remembered_peers(self.saving.contains(&core.key()));
        self.io.push(Box::pin(async move {
            let book = match read.await {
                Ok(bytes) if bytes.is_empty() => Some(Book::default()),
                // A record that does not decode holds nothing to keep: written over.
                Ok(bytes) => Some(Book::decode(&bytes).unwrap_or_else(|e| {
                    tracing::warn!("the record of a core's peers does not decode: {e}");
                    Book::default()
                })),
                Err(e) => {
                    tracing::warn!("reading the peers a core remembers: {e}");
                    None
                }
            };
            BookEvent::Loaded(core.key(), book)
        }));
    }

    /// The record of `key` was read (`None`: it could not be): its peers join those named or
    /// met meanwhile (which stay in front), and the record is written if those changed it,
    /// once no other read of it is under way and if one of them read it (`core` is its
    /// handle, if it is still replicated). Returns them all, for the driver to dial; nothing
    /// if the read failed (the peers named or met meanwhile are known already) or the core is
    /// no longer replicated.
    pub(super) fn loaded(
        &mut self,
        key: CoreKey,
        record: Option<Book>,
        core: Option<Hypercore>,
    ) -> Option<Book> {
        if let Some(reads) = self.loading.get_mut(&key) {
            *reads -= 1;
            if *reads == 0 {
                self.loading.remove(&key);
            }
        }
        let book = self.books.get_mut(&key)?;
        let read_well = record.is_some();
        if let Some(record) = record {
            self.read.insert(key);
            for addr in record.named {
                if book.named.len() >= MAX_NAMED {
                    break;
                }
                if !book.named.iter().any(|a| a.id == addr.id) {
                    // Named before: it stays named, though a channel with it opened meanwhile.
                    book.useful.retain(|a| a.id != addr.id);
                    book.named.push(bounded(addr));
                }
            }
            for addr in record.useful {
                if !book.contains(&addr.id) {
                    book.useful.push(bounded(addr));
                }
            }
            book.named.truncate(MAX_NAMED);
            book.useful.truncate(MAX_LEARNT);
        }
        let merged = read_well.then(|| book.clone());
        // After reads that all failed, the change is written once a later change has read
        // the record again, not at once: a store whose reads keep failing is not read over
        // and over.
        if !self.loading.contains_key(&key)
            && self.read.contains(&key)
            && self.dirty.remove(&key)
            && let Some(core) = core
        {
            self.save(&core);
        }
        merged
    }

    /// A channel of `core` with the peer at `addr` opened: it goes first among the useful
    /// (a named one keeps its place), and the record is written if that changed it.
    pub(super) fn useful(&mut self, core: &Hypercore, addr: EndpointAddr) {
        let Some(book) = self.books.get_mut(&core.key()) else {
            return;
        };
        let addr = bounded(addr);
        if book.named.iter().any(|a| a.id == addr.id) || book.useful.first() == Some(&addr) {
            return;
        }
        book.useful.retain(|a| a.id != addr.id);
        book.useful.insert(0, addr);
        book.useful.truncate(MAX_LEARNT);
        self.save(core);
    }

    /// `core` was joined with `nodes` (a ticket's): they go first among the named, and the
    /// record is written if that changed it.
    pub(super) fn add(&mut self, core: &Hypercore, nodes: &[EndpointAddr]) {
        let Some(book) = self.books.get_mut(&core.key()) else {
            return;
        };
        let before = book.clone();
        for addr in nodes.iter().take(MAX_NAMED).rev() {
            book.useful.retain(|a| a.id != addr.id);
            book.named.retain(|a| a.id != addr.id);
            book.named.insert(0, bounded(addr.clone()));
        }
        book.named.truncate(MAX_NAMED);
        if *book != before {
            self.save(core);
        }
    }

    /// Writes the record of `core`, or marks it to be written after the reads or the write
    /// under way (one write per core at a time, none before the record was read). If no read
    /// of it ended well and none is under way, it is read again first.
    fn save(&mut self, core: &Hypercore) {
        let key = core.key();
        let Some(book) = self.books.get(&key) else {
            return;
        };
        if !self.read.contains(&key) && !self.loading.contains_key(&key) {
            self.dirty.insert(key);
            self.load(core.clone());
            return;
        }
        if self.loading.contains_key(&key) || !self.saving.insert(key) {
            self.dirty.insert(key);
            return;
        }
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

    /// `key` is no longer replicated (a read or write under way still ends, and a read is
    /// still counted: if the core is replicated again meanwhile, nothing is written before it
    /// ends).
    pub(super) fn forget(&mut self, key: &CoreKey) {
        self.books.remove(key);
        self.dirty.remove(key);
        self.read.remove(key);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use iroh::{EndpointAddr, EndpointId, SecretKey};

    use super::{Book, BookEvent, CoreKey, PeerBook};
    use crate::{core::Hypercore, store::Corestore};

    /// The book's next event.
    async fn next_event(book: &mut PeerBook) -> BookEvent {
        tokio::time::timeout(Duration::from_secs(10), book.next())
            .await
            .expect("a read or write of the record ended")
    }

    /// Handles the book's next event as the driver does; returns the peers a read gave.
    async fn step(book: &mut PeerBook, core: &Hypercore) -> Option<Book> {
        match next_event(book).await {
            BookEvent::Loaded(key, record) => Some(
                book.loaded(key, record, Some(core.clone()))
                    .unwrap_or_default(),
            ),
            BookEvent::Saved(key) => {
                book.saved(key, Some(core.clone()));
                None
            }
        }
    }

    fn addr() -> EndpointAddr {
        EndpointAddr::new(SecretKey::generate().public())
    }

    /// The ids of the peers a book names.
    fn ids(book: &Book) -> Vec<EndpointId> {
        book.named.iter().map(|a| a.id).collect()
    }

    /// The record stored for `core`.
    async fn stored(core: &Hypercore) -> Book {
        Book::decode(&core.remembered_peers(false).await.unwrap()).unwrap()
    }

    /// A store with one core.
    async fn one_core() -> (Corestore, Hypercore) {
        let store = Corestore::memory().await.unwrap();
        let core = store.get_named("c").await.unwrap();
        (store, core)
    }

    /// A store with one core whose record names `old`, written by a first run's book.
    async fn remembering(old: &EndpointAddr) -> (Corestore, Hypercore) {
        let (store, core) = one_core().await;
        let mut book = PeerBook::default();
        book.load(core.clone());
        assert_eq!(step(&mut book, &core).await, Some(Book::default()));
        book.add(&core, std::slice::from_ref(old));
        assert_eq!(step(&mut book, &core).await, None);
        (store, core)
    }

    /// A book replicating `key` with `reads` reads of its record under way (they end by
    /// calling `loaded` by hand).
    fn reading(key: CoreKey, reads: u32) -> PeerBook {
        let mut book = PeerBook::default();
        book.books.entry(key).or_default();
        book.loading.insert(key, reads);
        book
    }

    /// A core joined before its record was read (a restart, then `join` at once) keeps the
    /// peers it remembered, in memory and in the record: the new ones are written only after
    /// the read, merged.
    #[tokio::test]
    async fn peers_named_before_the_record_is_read_do_not_replace_it() {
        let (old, new) = (addr(), addr());
        let (_store, core) = remembering(&old).await;
        // The next run is joined with `new` before its read of the record ran, and a channel
        // with `old` opens meanwhile: `old` stays named.
        let mut book = PeerBook::default();
        book.load(core.clone());
        book.add(&core, std::slice::from_ref(&new));
        book.useful(&core, old.clone());
        let merged = step(&mut book, &core).await.expect("the read comes first");
        assert_eq!(ids(&merged), vec![new.id, old.id]);
        assert!(merged.useful.is_empty());
        assert_eq!(
            step(&mut book, &core).await,
            None,
            "the merged book is written"
        );
        assert_eq!(ids(&stored(&core).await), vec![new.id, old.id]);
    }

    /// A core left and replicated again while its record was read has two reads under way: a
    /// change is written once both ended, merged, never between them (where a first read
    /// that failed would let a record of only the new peers replace the remembered ones).
    #[tokio::test]
    async fn nothing_is_written_while_another_read_of_the_record_runs() {
        let (old, new) = (addr(), addr());
        let (_store, core) = remembering(&old).await;
        // Replicated, left and replicated again: two reads; joined with `new` meanwhile.
        let mut book = PeerBook::default();
        book.load(core.clone());
        book.forget(&core.key());
        book.load(core.clone());
        book.add(&core, std::slice::from_ref(&new));
        step(&mut book, &core).await.expect("a read ends first");
        assert!(
            book.saving.is_empty(),
            "the record is written while a read of it runs"
        );
        let merged = step(&mut book, &core)
            .await
            .expect("the other read ends next");
        assert_eq!(ids(&merged), vec![new.id, old.id]);
        assert_eq!(step(&mut book, &core).await, None, "then it is written");
        assert_eq!(ids(&stored(&core).await), vec![new.id, old.id]);
    }

    /// A read of a core forgotten before it ended is counted out: the core replicated again
    /// later is read and written as usual. Two reads of a core replicated again by name
    /// (without leaving) hold its write back until both ended.
    #[tokio::test]
    async fn reads_are_counted_out_when_they_end() {
        let (_store, core) = one_core().await;
        let new = addr();
        let mut book = PeerBook::default();
        book.load(core.clone());
        book.forget(&core.key());
        assert_eq!(step(&mut book, &core).await, Some(Book::default()));
        assert!(book.loading.is_empty());
        book.load(core.clone());
        book.load(core.clone());
        book.add(&core, std::slice::from_ref(&new));
        step(&mut book, &core).await.expect("a read");
        assert!(book.saving.is_empty(), "written while a read runs");
        step(&mut book, &core).await.expect("the other read");
        assert_eq!(step(&mut book, &core).await, None, "then it is written");
        assert_eq!(stored(&core).await.named, vec![new]);
    }

    /// A core left and replicated again while a write of its record is under way reads the
    /// record after that write, so a peer the write adds is not lost by the next write.
    #[tokio::test]
    async fn a_read_after_a_write_under_way_sees_it() {
        let (_store, core) = one_core().await;
        let (x, y) = (addr(), addr());
        let mut book = PeerBook::default();
        book.load(core.clone());
        assert_eq!(step(&mut book, &core).await, Some(Book::default()));
        book.add(&core, std::slice::from_ref(&x));
        assert!(
            book.saving.contains(&core.key()),
            "the write of `x` is under way"
        );
        book.forget(&core.key());
        book.load(core.clone());
        book.add(&core, std::slice::from_ref(&y));
        let mut merged = None;
        while merged.is_none() {
            merged = step(&mut book, &core).await;
        }
        assert_eq!(ids(&merged.unwrap()), vec![y.id, x.id]);
        while !book.saving.is_empty() || !book.dirty.is_empty() {
            step(&mut book, &core).await;
        }
        assert_eq!(ids(&stored(&core).await), vec![y.id, x.id]);
    }

    /// A record that could not be read (here: the store is closed) is not written over: it
    /// may still hold the peers remembered. The peers named meanwhile are still dialed.
    #[tokio::test]
    async fn a_record_that_could_not_be_read_is_not_written_over() {
        let (store, core) = one_core().await;
        let new = addr();
        store.close().await.unwrap();
        let mut book = PeerBook::default();
        book.load(core.clone());
        book.add(&core, std::slice::from_ref(&new));
        let BookEvent::Loaded(key, None) = next_event(&mut book).await else {
            panic!("the read of a closed store did not fail");
        };
        assert_eq!(
            book.loaded(key, None, Some(core.clone())),
            None,
            "nothing new to dial: `new` was dialed when it was named"
        );
        assert!(book.saving.is_empty(), "written over a record not read");
        assert!(
            book.loading.is_empty() && book.io.is_empty(),
            "a failed read is not followed by another by itself"
        );
        // Changes read the record again, one read at a time, and write nothing.
        for _ in 0..3 {
            book.useful(&core, addr());
            assert_eq!(book.loading.get(&key), Some(&1));
            assert!(book.saving.is_empty(), "written over a record not read");
        }
        let BookEvent::Loaded(key, None) = next_event(&mut book).await else {
            panic!("the read of a closed store did not fail");
        };
        assert_eq!(book.loaded(key, None, Some(core.clone())), None);
        assert!(book.io.is_empty(), "nothing more is read or written");
    }

    /// On an open store: after a failed read the record keeps its peers through later
    /// changes; of two reads, one that failed after one that read the record does not hold
    /// the write of a change back.
    #[tokio::test]
    async fn a_failed_read_keeps_the_record_and_a_good_one_lets_it_be_written() {
        let (old, new) = (addr(), addr());
        let (_store, core) = remembering(&old).await;
        let key = core.key();
        // A read that failed (as one under way would end), then a change: nothing written.
        let mut book = reading(key, 1);
        book.loaded(key, None, Some(core.clone()));
        book.add(&core, std::slice::from_ref(&new));
        assert!(book.saving.is_empty());
        assert_eq!(ids(&stored(&core).await), vec![old.id]);
        // Two reads: the first reads the record, the second fails. The change is written
        // once both ended, merged.
        let mut book = reading(key, 2);
        book.add(&core, std::slice::from_ref(&new));
        book.loaded(key, Some(stored(&core).await), Some(core.clone()));
        assert!(book.saving.is_empty(), "written while a read runs");
        book.loaded(key, None, Some(core.clone()));
        assert!(
            book.saving.contains(&key),
            "not written after both reads ended"
        );
        assert_eq!(step(&mut book, &core).await, None);
        assert_eq!(ids(&stored(&core).await), vec![new.id, old.id]);
    }

    /// After a read that failed, the next change reads the record again; when that read ends
    /// well, the change is written merged with the peers remembered.
    #[tokio::test]
    async fn a_change_after_a_failed_read_reads_the_record_again() {
        let (old, new) = (addr(), addr());
        let (_store, core) = remembering(&old).await;
        let key = core.key();
        let mut book = reading(key, 1);
        book.add(&core, std::slice::from_ref(&new));
        book.loaded(key, None, Some(core.clone()));
        assert!(
            book.loading.is_empty() && book.io.is_empty(),
            "a failed read is not retried by itself"
        );
        book.useful(&core, addr());
        assert!(
            book.loading.contains_key(&key),
            "the change reads the record again"
        );
        let merged = step(&mut book, &core).await.expect("the read ends");
        assert_eq!(ids(&merged), vec![new.id, old.id]);
        assert_eq!(step(&mut book, &core).await, None, "then it is written");
        assert_eq!(ids(&stored(&core).await), vec![new.id, old.id]);
    }

    /// A record reads back as written; a record of the earlier format (one list) reads as
    /// peers a channel opened with, so that none of them takes a named place.
    #[test]
    fn records_of_both_formats_decode() {
        let book = Book {
            named: (0..2).map(|_| addr()).collect(),
            useful: (0..3).map(|_| addr()).collect(),
        };
        let bytes = postcard::to_stdvec(&book).unwrap();
        assert_eq!(Book::decode(&bytes).unwrap(), book);
        let old: Vec<EndpointAddr> = (0..4).map(|_| addr()).collect();
        let read = Book::decode(&postcard::to_stdvec(&old).unwrap()).unwrap();
        assert_eq!(read.named, vec![]);
        assert_eq!(read.useful, old);
        assert!(Book::decode(&[0xff, 0xff]).is_err());
    }
}

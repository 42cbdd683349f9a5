//! The [`Hypercore`] handle.

use std::sync::Arc;

use super::{Info, events::Subscription, state::CoreInner};
use crate::{
    crypto::{CoreKey, DiscoveryKey, Hash},
    error::Result,
};

/// One signed append-only log, byte-compatible with JS Hypercore 11.
///
/// A `Hypercore` is a cheap, cloneable handle (an `Arc` inside). Every async method takes
/// `&self` and returns a `'static + Send` future, so many operations on one core can be in
/// flight at once and stored next to other work, for example in a `FuturesUnordered`.
///
/// ```
/// # #[tokio::main] async fn main() -> iroh_hypercore::Result<()> {
/// use iroh_hypercore::Corestore;
///
/// let store = Corestore::memory().await?;
/// let core = store.get_named("example").await?;
/// core.append(b"hello".to_vec()).await?;
/// core.append_batch(vec![b"big".to_vec(), b"world".to_vec()]).await?;
/// assert_eq!(core.info().length, 3);
/// assert_eq!(core.get(1).await?.as_deref(), Some(&b"big"[..]));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Hypercore {
    pub(crate) inner: Arc<CoreInner>,
}

/// What an append reports once it is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Length of the log after this append.
    pub length: u64,
    /// Byte length of the log after this append.
    pub byte_length: u64,
}

impl Hypercore {
    pub(crate) fn from_inner(inner: Arc<CoreInner>) -> Self {
        Self { inner }
    }

    /// The core key.
    pub fn key(&self) -> CoreKey {
        self.inner.key
    }

    /// The discovery key.
    pub fn discovery_key(&self) -> DiscoveryKey {
        self.inner.discovery_key
    }

    /// Whether this node holds the secret key.
    pub fn writable(&self) -> bool {
        self.inner.writable()
    }

    /// Encrypts this core's blocks with `key`, as JS Hypercore 11's `encryption: { key }`
    /// does: from now on appends (through any handle of the core) store ciphertext, and
    /// reads return text. The log's hashes, signatures and replication are over the
    /// ciphertext, so peers replicate it without the key, and a JS peer with the key reads
    /// what this one wrote (and the other way round). The key is kept in memory only: give it
    /// each time the core is opened. A second, different key is refused. The block keys are
    /// derived for the core's kind when used, so a reader may give the key before it learns
    /// a remote core's kind (default or compat) from its first upgrade. Blob blocks
    /// ([`append_blob`](Self::append_blob)) are not encrypted by this.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> iroh_hypercore::Result<()> {
    /// let core = iroh_hypercore::Corestore::memory().await?.get_named("secret").await?;
    /// core.set_encryption_key([5; 32])?;
    /// core.append("hello").await?;
    /// assert_eq!(core.get(0).await?.unwrap(), "hello");
    /// assert_eq!(core.info().byte_length, 8 + 5); // 8 bytes of padding per block
    /// # Ok(()) }
    /// ```
    pub fn set_encryption_key(&self, key: [u8; 32]) -> Result<()> {
        let set = self.inner.encryption_key.get_or_init(|| key);
        if crate::crypto::capability::same_capability(set, &key) {
            Ok(())
        } else {
            Err(crate::Error::InvalidArgument(
                "the core is encrypted with another key",
            ))
        }
    }

    /// Whether blocks are encrypted ([`set_encryption_key`](Self::set_encryption_key)).
    pub fn is_encrypted(&self) -> bool {
        self.inner.encryption_key.get().is_some()
    }

    /// A snapshot of the committed state.
    pub fn info(&self) -> Info {
        let st = self.inner.state();
        let h = &st.committed;
        Info {
            key: self.inner.key,
            discovery_key: self.inner.discovery_key,
            length: h.tree.length,
            contiguous_length: h.contiguous_length,
            byte_length: h.tree.byte_length,
            fork: h.tree.fork,
            writable: self.inner.writable(),
            kind: h.kind,
        }
    }

    /// The tree hash of the committed length.
    pub fn tree_hash(&self) -> Hash {
        self.inner.state().committed.tree.hash()
    }

    /// The signature of the committed length, as hypercore stores it.
    pub fn signature(&self) -> Option<Vec<u8>> {
        self.inner.state().committed.tree.signature.clone()
    }

    /// The encoded manifest of a default core, once known.
    pub fn manifest(&self) -> Option<Vec<u8>> {
        self.inner.state().committed.manifest.clone()
    }

    /// A stream of this core's events from now on. A subscriber more than 128 events behind
    /// gets [`CoreEvent::Lagged`](super::CoreEvent::Lagged) and re-reads what it needs.
    pub fn subscribe(&self) -> Subscription {
        Subscription::new(self.inner.news.subscribe())
    }

    /// The raw receiver of this core's commit news from now on.
    pub(crate) fn news_receiver(&self) -> tokio::sync::broadcast::Receiver<super::CoreEvent> {
        self.inner.news.subscribe()
    }

    /// Resolves once everything written so far is durable, also with relaxed durability.
    pub fn flush(&self) -> impl Future<Output = Result<()>> + Send + 'static + use<> {
        let f = self.inner.storage.flush();
        async move { Ok(f.await?) }
    }

    /// Flushes and closes this core: later writes through any handle fail with
    /// [`Error::Closed`](crate::Error::Closed).
    pub fn close(&self) -> impl Future<Output = Result<()>> + Send + 'static + use<> {
        self.mark_closed();
        self.flush()
    }

    pub(crate) fn mark_closed(&self) {
        self.inner.state().closed = true;
        self.inner.stop_waits();
        self.inner.signal(super::Signal::Closed);
    }

    /// Whether this core was closed or deleted.
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.state().closed
    }

    /// Fails the reads waiting for peers with [`Error::Left`](crate::Error::Left): called by
    /// a protocol that stops replicating this core.
    pub(crate) fn stop_waits(&self) {
        self.inner.stop_waits();
    }
}

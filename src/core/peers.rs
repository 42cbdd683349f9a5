//! The record of the peers a core remembers, kept with the core in its database: opaque bytes
//! here (the protocol encodes them), written and read in their own small transactions.

use super::Hypercore;
use crate::{error::Result, storage::Op};

impl Hypercore {
    /// The record of the peers this core remembers (empty if it remembers none). With
    /// `after_writes`, it is read once the writes queued before the call committed, so that a
    /// write of the record under way is read back rather than the record it replaces.
    pub(crate) fn remembered_peers(
        &self,
        after_writes: bool,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send + 'static + use<> {
        let (storage, id) = (self.inner.storage.clone(), self.inner.id);
        // Queued now, behind the writes already queued.
        let barrier = after_writes.then(|| storage.barrier());
        async move {
            if let Some(barrier) = barrier {
                barrier.await?;
            }
            Ok(storage.read(move |r| r.peers(id)).await?)
        }
    }

    /// Replaces the record of the peers this core remembers.
    pub(crate) fn remember_peers(
        &self,
        peers: Vec<u8>,
    ) -> impl Future<Output = Result<()>> + Send + 'static + use<> {
        let write = self.inner.storage.write(Op::SetPeers {
            slot: self.inner.slot.clone(),
            peers,
        });
        async move {
            write.await?;
            Ok(())
        }
    }
}

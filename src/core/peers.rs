//! The record of the peers a core remembers, kept with the core in its database: opaque bytes
//! here (the protocol encodes them), written and read in their own small transactions.

use super::Hypercore;
use crate::{error::Result, storage::Op};

impl Hypercore {
    /// The record of the peers this core remembers (empty if it remembers none).
    pub(crate) fn remembered_peers(
        &self,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send + 'static + use<> {
        let (storage, id) = (self.inner.storage.clone(), self.inner.id);
        async move { Ok(storage.read(move |r| r.peers(id)).await?) }
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

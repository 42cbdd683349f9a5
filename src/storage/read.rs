//! [`Reader`]: typed reads inside one read transaction (a consistent snapshot).

use redb::{ReadTransaction, ReadableTable};

use super::{
    StorageError,
    blocks::{BlocksRead, ReadView},
    nodes,
    schema::{self, CoreHeader},
};
use crate::{
    crypto::CoreKey,
    tree::{Node, NodeSource},
};

/// What [`Reader::cores_by_discovery_keys`] found for one discovery key: the core's key, id
/// and header, if the store holds it.
pub(crate) type FoundCore = Result<Option<(CoreKey, u64, CoreHeader)>, StorageError>;

/// The id and header of the core stored under `key` in the key and header tables, if any.
fn stored_core(
    cores: &redb::ReadOnlyTable<[u8; 32], u64>,
    headers: &redb::ReadOnlyTable<u64, &'static [u8]>,
    key: CoreKey,
) -> Result<Option<(u64, CoreHeader)>, StorageError> {
    let Some(id) = cores.get(key)?.map(|v| v.value()) else {
        return Ok(None);
    };
    let raw = headers
        .get(id)?
        .ok_or_else(|| StorageError::Corrupt(format!("core {id} has no header")))?;
    Ok(Some((id, CoreHeader::decode(raw.value())?)))
}

/// A snapshot of the database, handed to [`Storage::read`](super::Storage::read).
pub(crate) struct Reader<'t> {
    txn: &'t ReadTransaction,
}

impl<'t> Reader<'t> {
    /// Reads in `txn`.
    pub(super) fn new(txn: &'t ReadTransaction) -> Self {
        Self { txn }
    }

    /// The tree nodes of core `id`.
    pub fn nodes(&self, id: u64) -> Result<CoreNodes, StorageError> {
        Ok(CoreNodes {
            table: self.txn.open_table(schema::NODES)?,
            id,
            last: nodes::LastRow::default(),
        })
    }

    /// The block values of every core.
    pub fn blocks(&self) -> Result<Blocks, StorageError> {
        Ok(Blocks(BlocksRead::open(self.txn)?))
    }

    /// The id and header of the core stored under `key`, if any.
    pub fn core(&self, key: CoreKey) -> Result<Option<(u64, CoreHeader)>, StorageError> {
        let cores = self.txn.open_table(schema::CORES)?;
        let headers = self.txn.open_table(schema::HEADERS)?;
        stored_core(&cores, &headers, key)
    }

    /// Keys of every stored core, in one pass over the key table.
    pub fn core_keys(&self) -> Result<Vec<CoreKey>, StorageError> {
        let cores = self.txn.open_table(schema::CORES)?;
        let mut out = Vec::new();
        for item in cores.iter()? {
            out.push(item?.0.value());
        }
        Ok(out)
    }

    /// The key, id and header of the stored core of each discovery key in `dks`, in order
    /// (`None` where the store holds none; an error where its header does not decode): each
    /// table opened once for all of them.
    pub fn cores_by_discovery_keys(
        &self,
        dks: &[[u8; 32]],
    ) -> Result<Vec<FoundCore>, StorageError> {
        let index = self.txn.open_table(schema::DISCOVERY)?;
        let cores = self.txn.open_table(schema::CORES)?;
        let headers = self.txn.open_table(schema::HEADERS)?;
        let find = |dk: &[u8; 32]| -> FoundCore {
            let Some(key) = index.get(dk)?.map(|v| v.value()) else {
                return Ok(None);
            };
            Ok(stored_core(&cores, &headers, key)?.map(|(id, header)| (key, id, header)))
        };
        Ok(dks.iter().map(find).collect())
    }

    /// The record of the peers core `id` remembers (empty if none).
    pub fn peers(&self, id: u64) -> Result<Vec<u8>, StorageError> {
        let table = match self.txn.open_table(schema::PEERS) {
            Ok(table) => table,
            // A file written before any core remembered a peer.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(table
            .get(id)?
            .map(|v| v.value().to_vec())
            .unwrap_or_default())
    }

    /// The name of every named core: (key, name) (none in a file without names).
    pub fn names(&self) -> Result<Vec<(CoreKey, schema::CoreName)>, StorageError> {
        let table = match self.txn.open_table(schema::NAMES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in table.iter()? {
            let (key, name) = row?;
            out.push((key.value(), schema::CoreName::decode(name.value())?));
        }
        Ok(out)
    }

    /// The name core `key` was made with, if it has one.
    pub fn name_of(&self, key: &CoreKey) -> Result<Option<schema::CoreName>, StorageError> {
        let table = match self.txn.open_table(schema::NAMES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        table
            .get(key)?
            .map(|v| schema::CoreName::decode(v.value()))
            .transpose()
    }

    /// The record of the peers the whole store is replicated with (empty if none).
    pub fn store_peers(&self) -> Result<Vec<u8>, StorageError> {
        let meta = self.txn.open_table(schema::META)?;
        Ok(meta
            .get(schema::META_STORE_PEERS)?
            .map(|v| v.value().to_vec())
            .unwrap_or_default())
    }

    /// The store's primary key, once set.
    pub fn primary_key(&self) -> Result<Option<[u8; 32]>, StorageError> {
        self.meta_key(schema::META_PRIMARY_KEY, "primary key")
    }

    /// The secret key of the store's endpoint, once set.
    pub fn endpoint_key(&self) -> Result<Option<[u8; 32]>, StorageError> {
        self.meta_key(schema::META_ENDPOINT_KEY, "endpoint key")
    }

    /// A 32-byte value of the meta table.
    fn meta_key(&self, name: &str, what: &str) -> Result<Option<[u8; 32]>, StorageError> {
        let meta = self.txn.open_table(schema::META)?;
        let Some(v) = meta.get(name)? else {
            return Ok(None);
        };
        let key: [u8; 32] = v
            .value()
            .try_into()
            .map_err(|_| StorageError::Corrupt(format!("malformed {what}")))?;
        Ok(Some(key))
    }
}

/// The stored block values, for reading (see [`ReadView`] for the queries).
pub(crate) struct Blocks(BlocksRead);

impl Blocks {
    /// Read access.
    pub fn view(&self) -> ReadView<'_> {
        self.0.view()
    }
}

/// The stored tree nodes of one core, as of the read transaction they were opened in.
pub(crate) struct CoreNodes {
    table: redb::ReadOnlyTable<(u64, u64), &'static [u8]>,
    id: u64,
    last: nodes::LastRow,
}

impl NodeSource for CoreNodes {
    type Error = StorageError;
    fn node(&self, index: u64) -> Result<Option<Node>, StorageError> {
        self.last.get(&self.table, self.id, index)
    }
}

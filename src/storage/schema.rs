//! The redb schema: table definitions, the stored core header, the schema version check and
//! the migration of files of the previous version.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::StorageError;
use crate::{
    crypto::{CoreKind, discovery_key},
    tree::TreeState,
};

/// Version of the layout below. A file of [`PREVIOUS_SCHEMA_VERSION`] is migrated on open; any
/// other version is refused.
pub const SCHEMA_VERSION: u32 = 5;

/// The version migrated to [`SCHEMA_VERSION`] on open: version 4 had no [`DISCOVERY`] index
/// and no endpoint key (the index is built from [`CORES`]; the key is made on first use).
pub const PREVIOUS_SCHEMA_VERSION: u32 = 4;

/// Store-wide values: `schema_version` (u32 le), `primary_key` (32 B), `next_core_id` (u64 le),
/// `endpoint_secret_key` (32 B).
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Core key → core id.
pub const CORES: TableDefinition<[u8; 32], u64> = TableDefinition::new("cores");
/// Discovery key → core key, for every core in [`CORES`]: a peer names a core by its
/// discovery key only.
pub const DISCOVERY: TableDefinition<[u8; 32], [u8; 32]> = TableDefinition::new("discovery");
/// Core id → postcard [`CoreHeader`].
pub const HEADERS: TableDefinition<u64, &[u8]> = TableDefinition::new("headers");
/// (core id, flat-tree index / 32) → the stored nodes of those 32 indices (see
/// [`super::nodes`]).
pub const NODES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("nodes");
/// (core id, first block index) → a chunk of consecutive block values, or the marker of a large
/// block (see [`super::blocks`]).
pub const BLOCKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("blocks");
/// (core id, block index, piece number) → a piece of a large block (see [`super::blocks`]).
pub const PIECES: TableDefinition<(u64, u64, u32), &[u8]> = TableDefinition::new("pieces");
/// Core id → the peers the core remembers, as the layer above encodes them (at most
/// [`MAX_PEERS_BYTES`]). Made on its first write, so files of this version without it read as
/// if every core remembered none, and older code reading a newer file ignores it.
pub const PEERS: TableDefinition<u64, &[u8]> = TableDefinition::new("peers");

/// The largest record of a core's peers (and of the store's peers).
pub const MAX_PEERS_BYTES: usize = 16 * 1024;
/// Core key → the name it was made with ([`CoreName`]: the namespace's 32 bytes, then the
/// name's UTF-8). Written in the transaction that creates a named core; made on its first
/// write, so files of this version without it read as if no core had a name.
pub const NAMES: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("names");
/// Refuses a record of peers (a core's or the store's) over [`MAX_PEERS_BYTES`]: nothing is
/// written.
pub fn check_peers_record(what: &str, peers: &[u8]) -> Result<(), super::StorageError> {
    if peers.len() > MAX_PEERS_BYTES {
        return Err(super::StorageError::Rejected(format!(
            "a record of {what} of {} bytes (at most {MAX_PEERS_BYTES})",
            peers.len()
        )));
    }
    Ok(())
}

/// The longest name stored.
pub const MAX_NAME_BYTES: usize = 1024;
/// Meta key of the peers the whole store is replicated with, as the layer above encodes
/// them (at most [`MAX_PEERS_BYTES`]).
pub const META_STORE_PEERS: &str = "store_peers";

/// The name a core was made with, in the namespace it was made in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreName {
    /// The namespace (Corestore's 32-byte namespace hash).
    pub namespace: [u8; 32],
    /// The name.
    pub name: String,
}

impl CoreName {
    /// Its stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.namespace.to_vec();
        out.extend_from_slice(self.name.as_bytes());
        out
    }

    /// Reads stored bytes; malformed ones are a [`StorageError::Corrupt`](super::StorageError).
    pub fn decode(bytes: &[u8]) -> Result<Self, super::StorageError> {
        let corrupt = || super::StorageError::Corrupt("malformed core name".into());
        let (ns, name) = bytes.split_first_chunk::<32>().ok_or_else(corrupt)?;
        let name = std::str::from_utf8(name).map_err(|_| corrupt())?;
        Ok(Self {
            namespace: *ns,
            name: name.to_string(),
        })
    }
}

/// Meta key of the schema version.
pub const META_SCHEMA_VERSION: &str = "schema_version";
/// Meta key of the store's primary key.
pub const META_PRIMARY_KEY: &str = "primary_key";
/// Meta key of the next free core id.
pub const META_NEXT_CORE_ID: &str = "next_core_id";
/// Meta key of the secret key of the endpoint that serves the store.
pub const META_ENDPOINT_KEY: &str = "endpoint_secret_key";

/// Everything about one core that is not a node or a block.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CoreHeader {
    /// Core key.
    pub key: [u8; 32],
    /// Kind of core, once known (a reader learns it from the first proof).
    pub kind: Option<CoreKind>,
    /// Encoded manifest of a default core, once known.
    pub manifest: Option<Vec<u8>>,
    /// Secret seed of a writable core.
    pub secret: Option<[u8; 32]>,
    /// Signed tree state.
    pub tree: TreeState,
    /// Number of leading blocks all present locally.
    pub contiguous_length: u64,
}

impl CoreHeader {
    /// Postcard bytes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("header serialization cannot fail")
    }

    /// Decodes a stored header; corrupt bytes give an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        postcard::from_bytes(bytes).map_err(|e| StorageError::Corrupt(format!("core header: {e}")))
    }
}

/// Creates the tables of a new database, migrates one of [`PREVIOUS_SCHEMA_VERSION`], or checks
/// the schema version of an existing one.
pub fn init(db: &redb::Database) -> Result<(), StorageError> {
    match stored_version(db)? {
        Some(SCHEMA_VERSION) => Ok(()),
        Some(PREVIOUS_SCHEMA_VERSION) => migrate_from_previous(db),
        Some(found) => Err(StorageError::SchemaMismatch {
            found,
            expected: SCHEMA_VERSION,
        }),
        None => create(db),
    }
}

/// The schema version of the file, or `None` for a new database.
pub(super) fn stored_version(db: &impl ReadableDatabase) -> Result<Option<u32>, StorageError> {
    let read = db.begin_read()?;
    let meta = match read.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let version = meta
        .get(META_SCHEMA_VERSION)?
        .ok_or_else(|| StorageError::Corrupt("no schema version".into()))?;
    let bytes: [u8; 4] = version
        .value()
        .try_into()
        .map_err(|_| StorageError::Corrupt("malformed schema version".into()))?;
    Ok(Some(u32::from_le_bytes(bytes)))
}

/// The tables of a new database.
fn create(db: &redb::Database) -> Result<(), StorageError> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION.to_le_bytes().as_slice())?;
        meta.insert(META_NEXT_CORE_ID, 0u64.to_le_bytes().as_slice())?;
        txn.open_table(CORES)?;
        txn.open_table(DISCOVERY)?;
        txn.open_table(HEADERS)?;
        txn.open_table(NODES)?;
        txn.open_table(BLOCKS)?;
        txn.open_table(PIECES)?;
    }
    txn.commit()?;
    Ok(())
}

/// Version 4 to 5, in one transaction (a crash leaves the file at version 4): indexes every
/// stored core by its discovery key.
fn migrate_from_previous(db: &redb::Database) -> Result<(), StorageError> {
    let txn = db.begin_write()?;
    {
        let cores = txn.open_table(CORES)?;
        let mut index = txn.open_table(DISCOVERY)?;
        for item in cores.iter()? {
            let key = item?.0.value();
            index.insert(discovery_key(&key), key)?;
        }
        txn.open_table(META)?
            .insert(META_SCHEMA_VERSION, SCHEMA_VERSION.to_le_bytes().as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

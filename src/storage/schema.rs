//! The redb schema: table definitions, the stored core header, and the schema version check.

use redb::{ReadableDatabase, TableDefinition};

use super::StorageError;
use crate::{crypto::CoreKind, tree::TreeState};

/// Version of the layout below; a database of another version is refused.
pub const SCHEMA_VERSION: u32 = 4;

/// Store-wide values: `schema_version` (u32 le), `primary_key` (32 B), `next_core_id` (u64 le).
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Core key → core id.
pub const CORES: TableDefinition<[u8; 32], u64> = TableDefinition::new("cores");
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

/// Meta key of the schema version.
pub const META_SCHEMA_VERSION: &str = "schema_version";
/// Meta key of the store's primary key.
pub const META_PRIMARY_KEY: &str = "primary_key";
/// Meta key of the next free core id.
pub const META_NEXT_CORE_ID: &str = "next_core_id";

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

/// Creates the tables of a new database, or checks the schema version of an existing one.
pub fn init(db: &redb::Database) -> Result<(), StorageError> {
    {
        let read = db.begin_read()?;
        match read.open_table(META) {
            Ok(meta) => {
                let version = meta
                    .get(META_SCHEMA_VERSION)?
                    .ok_or_else(|| StorageError::Corrupt("no schema version".into()))?;
                let bytes: [u8; 4] = version
                    .value()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt("malformed schema version".into()))?;
                let found = u32::from_le_bytes(bytes);
                if found != SCHEMA_VERSION {
                    return Err(StorageError::SchemaMismatch {
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
                return Ok(());
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION.to_le_bytes().as_slice())?;
        meta.insert(META_NEXT_CORE_ID, 0u64.to_le_bytes().as_slice())?;
        txn.open_table(CORES)?;
        txn.open_table(HEADERS)?;
        txn.open_table(NODES)?;
        txn.open_table(BLOCKS)?;
        txn.open_table(PIECES)?;
    }
    txn.commit()?;
    Ok(())
}

//! The store-wide writes: the primary key, and creating and deleting cores (the key → id
//! table, the next free id, the first header, and every row of a deleted core).

use redb::ReadableTable;

use crate::crypto::discovery_key;

use super::{
    StorageError,
    batch::Batch,
    ops::Outcome,
    schema::{self, CoreHeader, CoreName},
    slot::CoreSlot,
};

/// Stores the store's primary key, unless one is stored: the outcome carries the stored one
/// (two stores opening a new database at once agree on it).
pub(super) fn set_primary_key(
    batch: &mut Batch<'_>,
    key: &[u8; 32],
) -> Result<Outcome, StorageError> {
    set_meta_key_once(batch, schema::META_PRIMARY_KEY, "primary key", key)
}

/// Stores the 32-byte meta value `name`, unless one is stored: returns the stored one.
fn set_meta_key_once(
    batch: &mut Batch<'_>,
    name: &str,
    what: &str,
    key: &[u8; 32],
) -> Result<Outcome, StorageError> {
    let mut meta = batch.txn().open_table(schema::META)?;
    if let Some(stored) = meta.get(name)? {
        let stored: [u8; 32] = stored
            .value()
            .try_into()
            .map_err(|_| StorageError::Corrupt(format!("malformed {what}")))?;
        return Ok(Outcome::Key(stored));
    }
    meta.insert(name, key.as_slice())?;
    Ok(Outcome::Key(*key))
}

/// Stores the secret key of the endpoint that serves the store, unless one is stored: the
/// outcome carries the stored one.
pub(super) fn set_endpoint_key(
    batch: &mut Batch<'_>,
    key: &[u8; 32],
) -> Result<Outcome, StorageError> {
    set_meta_key_once(batch, schema::META_ENDPOINT_KEY, "endpoint key", key)
}

/// Stores a new core under `key`, or reports the one stored already.
pub(super) fn create_core(
    batch: &mut Batch<'_>,
    key: [u8; 32],
    header: &CoreHeader,
    name: Option<&CoreName>,
) -> Result<Outcome, StorageError> {
    if let Some(name) = name {
        check_name(name)?;
    }
    let txn = batch.txn();
    let mut cores = txn.open_table(schema::CORES)?;
    if let Some(id) = cores.get(key)?.map(|v| v.value()) {
        return Ok(Outcome::Core { id, created: false });
    }
    if let Some(name) = name {
        txn.open_table(schema::NAMES)?
            .insert(key, name.encode().as_slice())?;
    }
    let mut meta = txn.open_table(schema::META)?;
    let id = {
        let raw = meta
            .get(schema::META_NEXT_CORE_ID)?
            .ok_or_else(|| StorageError::Corrupt("no next core id".into()))?;
        let bytes: [u8; 8] = raw
            .value()
            .try_into()
            .map_err(|_| StorageError::Corrupt("malformed next core id".into()))?;
        u64::from_le_bytes(bytes)
    };
    meta.insert(schema::META_NEXT_CORE_ID, (id + 1).to_le_bytes().as_slice())?;
    cores.insert(key, id)?;
    txn.open_table(schema::DISCOVERY)?
        .insert(discovery_key(&key), key)?;
    txn.open_table(schema::HEADERS)?
        .insert(id, header.encode().as_slice())?;
    Ok(Outcome::Core { id, created: true })
}

/// Deletes the core stored under `key` with every row of it, and marks its open slot deleted.
pub(super) fn delete_core(
    batch: &mut Batch<'_>,
    key: [u8; 32],
    slot: Option<&CoreSlot>,
) -> Result<Outcome, StorageError> {
    let txn = batch.txn();
    let Some(id) = txn
        .open_table(schema::CORES)?
        .remove(key)?
        .map(|v| v.value())
    else {
        return Ok(Outcome::Deleted(false));
    };
    txn.open_table(schema::DISCOVERY)?
        .remove(discovery_key(&key))?;
    txn.open_table(schema::HEADERS)?.remove(id)?;
    txn.open_table(schema::PEERS)?.remove(id)?;
    txn.open_table(schema::NAMES)?.remove(key)?;
    batch.nodes()?.remove_core(id)?;
    batch.blocks()?.remove_core(id)?;
    if let Some(slot) = slot {
        slot.staged().deleted = true;
    }
    Ok(Outcome::Deleted(true))
}

/// A name too long to store is refused before anything is written.
fn check_name(name: &CoreName) -> Result<(), StorageError> {
    if name.name.len() > schema::MAX_NAME_BYTES {
        return Err(StorageError::Rejected(format!(
            "a core name of {} bytes (at most {})",
            name.name.len(),
            schema::MAX_NAME_BYTES
        )));
    }
    Ok(())
}

/// Records the name of the stored core `key`.
pub(super) fn set_name(
    batch: &mut Batch<'_>,
    key: [u8; 32],
    name: &CoreName,
) -> Result<Outcome, StorageError> {
    check_name(name)?;
    let txn = batch.txn();
    if txn.open_table(schema::CORES)?.get(key)?.is_none() {
        return Err(StorageError::Rejected("no core to name".into()));
    }
    txn.open_table(schema::NAMES)?
        .insert(key, name.encode().as_slice())?;
    Ok(Outcome::Done)
}

/// Replaces the record of the store's peers.
pub(super) fn set_store_peers(
    batch: &mut Batch<'_>,
    peers: &[u8],
) -> Result<Outcome, StorageError> {
    schema::check_peers_record("store peers", peers)?;
    batch
        .txn()
        .open_table(schema::META)?
        .insert(schema::META_STORE_PEERS, peers)?;
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Op, Storage, StorageOptions};

    #[tokio::test]
    async fn a_record_of_store_peers_over_the_limit_stores_nothing() {
        let storage = Storage::memory(StorageOptions::default()).unwrap();
        let fits = vec![1u8; schema::MAX_PEERS_BYTES];
        storage
            .write(Op::SetStorePeers(fits.clone()))
            .await
            .unwrap();
        let over = vec![2u8; schema::MAX_PEERS_BYTES + 1];
        let err = storage.write(Op::SetStorePeers(over)).await.unwrap_err();
        assert!(matches!(err, StorageError::Rejected(_)), "{err}");
        assert_eq!(storage.read(|r| r.store_peers()).await.unwrap(), fits);
    }

    #[tokio::test]
    async fn a_name_over_the_limit_or_of_no_core_stores_nothing() {
        let storage = Storage::memory(StorageOptions::default()).unwrap();
        let name = |len: usize| {
            Box::new(CoreName {
                namespace: [0; 32],
                name: "n".repeat(len),
            })
        };
        let err = storage
            .write(Op::SetName {
                key: [9; 32],
                name: name(3),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Rejected(_)), "no core: {err}");
        let err = storage
            .write(Op::SetName {
                key: [9; 32],
                name: name(schema::MAX_NAME_BYTES + 1),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Rejected(_)), "too long: {err}");
        assert!(storage.read(|r| r.names()).await.unwrap().is_empty());
    }
}

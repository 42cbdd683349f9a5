//! The names of the logs made in a data directory. A log's key is derived from its name, but
//! a name cannot be read back from a key: the store keeps each name in its database, written
//! in the transaction that creates the log (`Corestore::names`). A `names.txt` that an
//! earlier version kept beside the database is imported once and removed.

use std::{collections::BTreeMap, path::Path};

use iroh_hypercore::{CoreKey, Corestore};

use crate::fail;

/// The longest name the store keeps (a longer one would open its log, unlisted).
const MAX_NAME_BYTES: usize = 1024;

/// The file an earlier version kept the names in, inside the data directory.
const LEGACY_FILE: &str = "names.txt";

/// The names of the store's logs, by name (with those of a `names.txt` not imported yet: a
/// store opened read-only imports nothing).
pub async fn load(store: &Corestore, dir: &Path) -> Result<BTreeMap<String, CoreKey>, String> {
    let mut names: BTreeMap<String, CoreKey> = legacy(store, dir).into_iter().collect();
    names.extend(
        store
            .names()
            .await
            .map_err(|e| fail::describe("reading the logs' names", e))?,
    );
    Ok(names)
}

/// The names of `names.txt` whose keys are the ones their names derive here.
fn legacy(store: &Corestore, dir: &Path) -> Vec<(String, CoreKey)> {
    let Ok(text) = std::fs::read_to_string(dir.join(LEGACY_FILE)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (name, key) = line.rsplit_once('\t')?;
            let key = parse_key(key).filter(|k| *k == store.named_key(name))?;
            check(name).ok()?;
            Some((name.to_string(), key))
        })
        .collect()
}

/// Imports the names of `names.txt` (an earlier version's) into the store, then removes the
/// file. A line whose key is not the one its name derives here is skipped.
pub async fn import_legacy(store: &Corestore, dir: &Path) -> Result<(), String> {
    let path = dir.join(LEGACY_FILE);
    if !path.exists() {
        return Ok(());
    }
    for (name, _) in legacy(store, dir) {
        store
            .get_named(&name)
            .await
            .map_err(|e| fail::describe(&format!("importing the name {name:?}"), e))?;
    }
    std::fs::remove_file(&path)
        .map_err(|e| fail::describe(&format!("removing {}", path.display()), e))
}

/// Checks a name for a new log: not empty, no control characters (they would break the
/// file's lines), and not 64 hex characters (that reads as a key).
pub fn check(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a log's name cannot be empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "a log's name is at most {MAX_NAME_BYTES} bytes ({} given)",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "{name:?}: a log's name cannot hold control characters"
        ));
    }
    if parse_key(name).is_some() {
        return Err(format!(
            "{name}: a log's name cannot be 64 hex characters (that is how keys are written)"
        ));
    }
    Ok(())
}

/// Lowercase hex of a key.
pub fn hex(key: &CoreKey) -> String {
    data_encoding::HEXLOWER.encode(key)
}

/// A key written as 64 hex characters.
pub fn parse_key(text: &str) -> Option<CoreKey> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.trim().as_bytes())
        .ok()?;
    bytes.try_into().ok()
}

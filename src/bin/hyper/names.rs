//! The names of the logs made in a data directory (a core's key is derived from its name, but
//! a name cannot be read back from a key): one `name<TAB>key` line each, in `names.txt`.

use std::{collections::BTreeMap, path::Path};

use iroh_hypercore::CoreKey;

/// The file, inside the data directory.
const FILE: &str = "names.txt";

/// The names known in `dir`, by name.
pub fn load(dir: &Path) -> BTreeMap<String, CoreKey> {
    let Ok(text) = std::fs::read_to_string(dir.join(FILE)) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|line| {
            let (name, key) = line.rsplit_once('\t')?;
            Some((name.to_string(), parse_key(key)?))
        })
        .collect()
}

/// Checks a name for a new log: not empty, no control characters (they would break the
/// file's lines), and not 64 hex characters (that reads as a key).
pub fn check(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a log's name cannot be empty".into());
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

/// Records `name` for `key`; a name already given to another key is refused.
pub fn remember(dir: &Path, name: &str, key: &CoreKey) -> Result<(), String> {
    check(name)?;
    let mut known = load(dir);
    match known.get(name) {
        Some(k) if k == key => return Ok(()),
        Some(k) => {
            return Err(format!(
                "the name {name:?} is taken by the log {} in {}",
                hex(k),
                dir.display()
            ));
        }
        None => {}
    }
    known.insert(name.to_string(), *key);
    save(dir, &known)
}

/// Forgets the name of `key`.
pub fn forget(dir: &Path, key: &CoreKey) -> Result<(), String> {
    let mut known = load(dir);
    known.retain(|_, k| k != key);
    save(dir, &known)
}

fn save(dir: &Path, known: &BTreeMap<String, CoreKey>) -> Result<(), String> {
    let text: String = known
        .iter()
        .map(|(n, k)| format!("{n}\t{}\n", hex(k)))
        .collect();
    let path = dir.join(FILE);
    crate::data_dir::write_atomic(&path, &text)
        .map_err(|e| crate::fail::describe(&format!("writing {}", path.display()), e))
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

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

/// Records `name` for `key` (once).
pub fn remember(dir: &Path, name: &str, key: &CoreKey) -> std::io::Result<()> {
    if load(dir).contains_key(name) {
        return Ok(());
    }
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(FILE))?;
    writeln!(f, "{}\t{}", name.replace(['\n', '\t'], " "), hex(key))
}

/// Forgets the name of `key`.
pub fn forget(dir: &Path, key: &CoreKey) -> std::io::Result<()> {
    let kept: String = load(dir)
        .into_iter()
        .filter(|(_, k)| k != key)
        .map(|(n, k)| format!("{n}\t{}\n", hex(&k)))
        .collect();
    std::fs::write(dir.join(FILE), kept)
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

//! The bytes of a redb file in memory, shared by clones, for test backends that add a fault
//! (a full disk, a held fsync) around plain reads and writes. They outlive the database, so a
//! store can be reopened on them.

use std::sync::{Arc, RwLock};

/// A growable byte file in memory.
#[derive(Debug, Clone, Default)]
pub struct MemFile(Arc<RwLock<Vec<u8>>>);

impl MemFile {
    /// Its length.
    pub fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.read().unwrap().len() as u64)
    }

    /// Fills `out` from `offset`; past the end is an error.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let data = self.0.read().unwrap();
        let src = data
            .get(span(offset, out.len()))
            .ok_or_else(|| past_end("read"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    /// Grows or shrinks it to `len` bytes.
    pub fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.write().unwrap().resize(len as usize, 0);
        Ok(())
    }

    /// Writes `bytes` at `offset`; past the end is an error.
    pub fn write(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        let mut data = self.0.write().unwrap();
        let dst = data
            .get_mut(span(offset, bytes.len()))
            .ok_or_else(|| past_end("write"))?;
        dst.copy_from_slice(bytes);
        Ok(())
    }
}

/// The byte range of `len` bytes from `offset`.
fn span(offset: u64, len: usize) -> std::ops::Range<usize> {
    let start = offset as usize;
    start..start + len
}

/// The error of an access (`what`) past the end of the file.
fn past_end(what: &str) -> std::io::Error {
    std::io::Error::other(format!("{what} past the end"))
}

//! [`BlobRef`]: the small block that names a blob, and telling it from ordinary data.

use serde::{Deserialize, Serialize};

/// What every blob block starts with: no text and no postcard value a user writes by chance
/// begins with these bytes.
const MARKER: &[u8; 12] = b"\0hyper-blob\0";

/// The version of the encoding after [`MARKER`].
const VERSION: u8 = 0;

/// The sizes a blob block can have: the marker, the version, the hash and a size of one to
/// ten bytes (a varint). Blocks of other sizes are not looked at.
pub(crate) const BLOCK_LEN: std::ops::RangeInclusive<u64> =
    (MARKER.len() as u64 + 34)..=(MARKER.len() as u64 + 43);

/// A blob named by a log: the block holding it vouches (by the log's signature) for the
/// content's BLAKE3 hash and its size, and the bytes themselves travel through iroh-blobs.
///
/// ```
/// use iroh_hypercore::blobs::BlobRef;
///
/// let blob = BlobRef { hash: iroh_blobs::Hash::new(b"hello"), size: 5 };
/// let block = blob.to_block();
/// assert_eq!(BlobRef::from_block(&block), Some(blob));
/// assert_eq!(BlobRef::from_block(b"an ordinary block"), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobRef {
    /// The BLAKE3 hash of the content.
    pub hash: iroh_blobs::Hash,
    /// The content's size in bytes.
    pub size: u64,
}

/// The encoding after the marker.
#[derive(Serialize, Deserialize)]
struct Wire {
    version: u8,
    hash: [u8; 32],
    size: u64,
}

impl BlobRef {
    /// The block that names this blob.
    pub fn to_block(&self) -> Vec<u8> {
        let wire = Wire {
            version: VERSION,
            hash: *self.hash.as_bytes(),
            size: self.size,
        };
        let mut block = MARKER.to_vec();
        // Serializing three plain fields into a Vec cannot fail.
        block.extend(postcard::to_stdvec(&wire).unwrap_or_default());
        block
    }

    /// The blob a block names, or `None` for an ordinary block (also for one that starts
    /// with the marker but is not exactly a blob reference of a known version).
    pub fn from_block(block: &[u8]) -> Option<Self> {
        let rest = block.strip_prefix(MARKER.as_slice())?;
        let (wire, tail) = postcard::take_from_bytes::<Wire>(rest).ok()?;
        (tail.is_empty() && wire.version == VERSION).then(|| Self {
            hash: iroh_blobs::Hash::from_bytes(wire.hash),
            size: wire.size,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Every reference reads back from its block, and no block that is not exactly one
        /// (cut short, extended, or any bytes at all) reads as one by accident.
        #[test]
        fn blocks_round_trip_and_nothing_else_decodes(
            hash in any::<[u8; 32]>(),
            size in any::<u64>(),
            cut in 0usize..60,
            extra in proptest::collection::vec(any::<u8>(), 1..8),
            noise in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let blob = BlobRef { hash: iroh_blobs::Hash::from_bytes(hash), size };
            let block = blob.to_block();
            prop_assert_eq!(BlobRef::from_block(&block), Some(blob));
            let short = &block[..cut.min(block.len() - 1)];
            prop_assert_eq!(BlobRef::from_block(short), None);
            let mut long = block.clone();
            long.extend(&extra);
            prop_assert_eq!(BlobRef::from_block(&long), None);
            if !noise.starts_with(MARKER) {
                prop_assert_eq!(BlobRef::from_block(&noise), None);
            }
        }
    }

    #[test]
    fn blob_blocks_have_the_sizes_the_protocol_looks_at() {
        for size in [0, 1, 127, 128, u32::MAX as u64, u64::MAX] {
            let len = BlobRef {
                hash: iroh_blobs::Hash::new(b"x"),
                size,
            }
            .to_block()
            .len() as u64;
            assert!(BLOCK_LEN.contains(&len), "{size}: {len}");
        }
    }

    #[test]
    fn an_unknown_version_is_not_a_blob() {
        let mut block = BlobRef {
            hash: iroh_blobs::Hash::new(b"x"),
            size: 1,
        }
        .to_block();
        block[MARKER.len()] = VERSION + 1;
        assert_eq!(BlobRef::from_block(&block), None);
    }
}

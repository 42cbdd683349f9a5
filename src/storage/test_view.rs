//! What tests and fuzz targets may see of the database's rows (feature `test-utils`): the
//! table definitions and the row codecs, to write malformed rows and check what storage reads
//! from them, or to check what a store left on disk. The crate itself never uses this module.

pub use super::{
    blocks::{BlocksRead, BlocksWrite, CHUNK_BYTES},
    nodes::{GROUP, NodesWrite, get as node},
    schema::{
        BLOCKS, CORES, CoreHeader, DISCOVERY, HEADERS, META, META_SCHEMA_VERSION, NODES, PIECES,
        PREVIOUS_SCHEMA_VERSION, SCHEMA_VERSION, init,
    },
};

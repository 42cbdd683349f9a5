//! [`Hypercore`]: one signed append-only log stored in a [`Storage`](crate::storage::Storage).

mod apply_turns;
mod blobs;
mod encryption;
mod events;
mod hypercore;
mod info;
mod lazy_broadcast;
mod news;
mod peers;
mod proofs;
mod reads;
mod recent;
mod runs;
mod signals;
mod state;
mod wait;
mod writes;

pub use blobs::GetBlob;
pub use encryption::{BlockEncryption, PADDING as ENCRYPTION_PADDING};
pub use events::{CoreEvent, Subscription};
pub use hypercore::{AppendOutcome, Hypercore};
pub use info::{Info, Stored};
pub(crate) use lazy_broadcast::LazyBroadcast;
pub use proofs::Applied;
pub use reads::MAX_STORED_RUN;
pub use runs::{MAX_RUN, RunApplied, RunItem};
pub(crate) use signals::{Signal, SignalQueue};
pub(crate) use state::{CoreHome, CoreInner as CoreInnerHandle, create_core, hex, load_core};
pub use wait::{Download, Get, Progress, Update};
pub use writes::MAX_BLOCK_SIZE;

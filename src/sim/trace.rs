//! The trace of a run: a digest of everything that happened, in order (every message with its
//! bytes, every storage operation, every event), and counters for the figures a run prints.

use std::time::Duration;

use blake2::{Blake2b, Digest, digest::consts::U32};

/// A digest of a run and its counters.
#[derive(Debug, Clone)]
pub struct Trace {
    hasher: Blake2b<U32>,
    /// Records written.
    pub records: u64,
    /// Messages sent (handed to a link).
    pub messages: u64,
    /// Bytes of the messages sent.
    pub message_bytes: u64,
    /// Messages honest nodes sent (the others are hostile nodes' lies and floods).
    pub honest_messages: u64,
    /// Storage operations run.
    pub storage_ops: u64,
    /// Verified blocks stored by any node (`Download` events).
    pub blocks_delivered: u64,
    /// `Invalid` events: data a node rejected.
    pub invalid: u64,
    /// Messages sent by kind (`Sync`, `Data`, `RequestRun`...), hostile nodes' included.
    pub message_kinds: std::collections::BTreeMap<String, u64>,
    /// Engine events by kind (`Download`, `Backoff`, `Penalized`...), over all nodes.
    pub events: std::collections::BTreeMap<String, u64>,
}

impl Default for Trace {
    fn default() -> Self {
        Self {
            hasher: Blake2b::new(),
            records: 0,
            messages: 0,
            message_bytes: 0,
            honest_messages: 0,
            storage_ops: 0,
            blocks_delivered: 0,
            invalid: 0,
            events: Default::default(),
            message_kinds: Default::default(),
        }
    }
}

/// What a trace record is.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub enum Kind {
    /// A message handed to a link: its frame.
    Message = 1,
    /// A storage operation: its description.
    StorageOp = 2,
    /// An engine event.
    Event = 3,
    /// Something the simulation did: a connection, a node leaving, an append.
    Action = 4,
}

impl Trace {
    /// Adds one record: when, at which node, what, and its bytes.
    pub fn record(&mut self, at: Duration, node: usize, kind: Kind, bytes: &[u8]) {
        self.records += 1;
        let nanos = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
        self.hasher.update(nanos.to_le_bytes());
        self.hasher.update((node as u64).to_le_bytes());
        self.hasher.update([kind as u8]);
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
    }

    /// Counts one `Debug`-formatted value under its variant's name in `counts`.
    pub fn count_kind(counts: &mut std::collections::BTreeMap<String, u64>, debug: &str) {
        let kind = debug.split(|c: char| !c.is_alphanumeric()).next();
        *counts
            .entry(kind.unwrap_or_default().to_string())
            .or_default() += 1;
    }

    /// The digest of every record so far, in hex.
    pub fn digest(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.hasher.clone().finalize())
    }

    /// Messages honest nodes sent per verified block delivered.
    pub fn messages_per_block(&self) -> f64 {
        self.honest_messages as f64 / self.blocks_delivered.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_depends_on_every_field_and_the_order() {
        let d = |records: &[(u64, usize, Kind, &[u8])]| {
            let mut t = Trace::default();
            for (ms, node, kind, bytes) in records {
                t.record(Duration::from_millis(*ms), *node, *kind, bytes);
            }
            t.digest()
        };
        let base = d(&[(1, 0, Kind::Message, b"a"), (2, 1, Kind::Event, b"b")]);
        assert_eq!(
            base,
            d(&[(1, 0, Kind::Message, b"a"), (2, 1, Kind::Event, b"b")])
        );
        for other in [
            d(&[(2, 1, Kind::Event, b"b"), (1, 0, Kind::Message, b"a")]),
            d(&[(1, 0, Kind::Message, b"a"), (3, 1, Kind::Event, b"b")]),
            d(&[(1, 0, Kind::Message, b"a"), (2, 2, Kind::Event, b"b")]),
            d(&[(1, 0, Kind::Message, b"a"), (2, 1, Kind::Action, b"b")]),
            d(&[(1, 0, Kind::Message, b"a"), (2, 1, Kind::Event, b"c")]),
        ] {
            assert_ne!(base, other);
        }
    }
}

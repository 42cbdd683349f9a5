//! A replicated core: its local state as the engine knows it, its mode, what the application
//! waits for, and its queue of proofs to apply. Changes of the local state (from storage
//! tasks or the application) are taken in here and passed on: events, announcements,
//! pushes, `Sync`s and the blocks to fetch.

use std::{collections::BTreeMap, time::Instant};

use super::{Engine, Event, LocalInfo, Mode, Sent, apply::ApplyQueue};
use crate::crypto::{CoreKey, DiscoveryKey};

/// A core the engine replicates.
#[derive(Debug)]
pub(super) struct Replica {
    /// Its discovery key (the one on the wire).
    pub(super) discovery_key: DiscoveryKey,
    /// Its local state.
    pub(super) local: LocalInfo,
    /// What to fetch of it.
    pub(super) mode: Mode,
    /// Blocks the application is waiting for (past the length, or any in sparse mode), with
    /// how many reads want each.
    pub(super) wanted: BTreeMap<u64, u32>,
    /// Full mode: blocks below this were queued (or held).
    pub(super) queued_to: u64,
    /// Proofs received and not yet applied.
    pub(super) apply: ApplyQueue,
    /// Which adding of the core this is: storage tasks started by an earlier one (before a
    /// leave) are ignored when they end.
    pub(super) epoch: u64,
    /// Served only because a peer asked for it: channels open to the peers that ask, not to
    /// every peer.
    pub(super) served_only: bool,
}

impl Replica {
    /// A core with local state `local`, fetched in `mode`.
    pub(super) fn new(
        discovery_key: DiscoveryKey,
        local: LocalInfo,
        mode: Mode,
        epoch: u64,
        served_only: bool,
    ) -> Self {
        Self {
            discovery_key,
            local,
            mode,
            wanted: BTreeMap::new(),
            queued_to: local.contiguous,
            apply: ApplyQueue::default(),
            epoch,
            served_only,
        }
    }
}

impl Engine {
    /// Takes in the core's new local state: tells peers, queues new blocks, emits events.
    pub(super) fn update_local(&mut self, core: CoreKey, new: LocalInfo, now: Instant) {
        let Some(r) = self.cores.get_mut(&core) else {
            return;
        };
        let old = r.local;
        if old == new {
            return;
        }
        r.local = new;
        if let Some(avg) = new.byte_length.checked_div(new.length) {
            self.fetch.set_block_size(core, avg);
        }
        if new.fork != old.fork {
            // Everything in flight was for the old fork.
            r.apply.pending.clear();
            r.queued_to = new.contiguous;
            self.fetch.remove_core(&core);
            self.channels.for_each_of_core(&core, |c| {
                c.requests.retain(|_, s| matches!(s, Sent::Upgrade { .. }));
            });
            self.emit(Event::Truncate {
                core,
                length: new.length,
                fork: new.fork,
            });
        } else if new.length < old.length {
            self.fetch.truncate(&core, new.length);
            r.queued_to = r.queued_to.min(new.length);
        }
        if new.length > old.length || new.fork != old.fork {
            self.emit(Event::Append {
                core,
                length: new.length,
                fork: new.fork,
            });
            self.announce(core, now);
        }
        if new.length != old.length || new.fork != old.fork {
            self.reopen_idle(core, now);
        }
        self.push_new_blocks(core, old, new);
        self.broadcast_sync(core, false);
        self.enqueue_missing(core);
    }
}

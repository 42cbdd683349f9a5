//! `update`: the application asks every peer of a core for its state (a `Sync` with `ask`)
//! and learns, with [`Event::Updated`], the newest signed length once each has answered (or
//! its channel went) and the upgrade to the longest length heard, if any, has ended.

use std::collections::BTreeSet;

use super::{ChannelId, Engine, Event};
use crate::{crypto::CoreKey, replication::wire::Message};

impl Engine {
    /// Asks every open channel of `core` for its peer's state.
    pub(super) fn on_update(&mut self, core: CoreKey) {
        let Some(info) = self.sync_info(&core, true) else {
            return;
        };
        let channels = self.open_channels(&core);
        let waiting = self.updates.entry(core).or_default();
        for (_, ch) in &channels {
            waiting.insert(*ch);
        }
        for (peer, ch) in channels {
            self.send(peer, ch, Message::Sync(info));
        }
    }

    /// Channel `id` of `core` answered (or went away): it is waited for no more.
    pub(super) fn update_answered(&mut self, core: &CoreKey, id: ChannelId) {
        if let Some(waiting) = self.updates.get_mut(core) {
            waiting.remove(&id);
        }
    }

    /// Reports the updates whose peers all answered and whose upgrade ended.
    pub(super) fn finish_updates(&mut self) {
        let done: Vec<CoreKey> = self
            .updates
            .iter()
            .filter(|(core, waiting)| {
                waiting.is_empty()
                    && !self.upgrades.is_under_way(core)
                    && self
                        .cores
                        .get(*core)
                        .is_none_or(|r| r.apply.upgrade_proof.is_none() && !r.apply.running)
            })
            .map(|(core, _)| *core)
            .collect();
        for core in done {
            self.updates.remove(&core);
            if let Some(r) = self.cores.get(&core) {
                let length = r.local.length;
                self.emit(Event::Updated { core, length });
            }
        }
    }
}

/// The channels each core's update waits for.
pub(super) type PendingUpdates = std::collections::BTreeMap<CoreKey, BTreeSet<ChannelId>>;

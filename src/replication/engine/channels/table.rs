//! Every channel, by id and by core: the channels of one core are found without a scan, in id
//! order.

use std::collections::{BTreeMap, BTreeSet};

use super::super::{ChannelId, PeerId};
use crate::crypto::CoreKey;

/// One channel as the channel part knows it: a stream for one core with one peer, and where
/// its handshake stands (its deadline is the `Handshake` timer).
#[derive(Debug, Clone, Copy)]
pub(super) struct Channel {
    /// The peer at the other end.
    pub(super) peer: PeerId,
    /// The core it replicates.
    pub(super) core: CoreKey,
    /// We opened it (its id is even).
    pub(super) opened_by_me: bool,
    /// Both sides proved the key. A channel we opened is not until the peer's valid `Accept`
    /// arrives before its handshake timer; until then it carries nothing but our `Open`.
    pub(super) authenticated: bool,
}

/// Every channel, by id and by core.
#[derive(Debug, Default)]
pub(super) struct ChannelTable {
    by_id: BTreeMap<ChannelId, Channel>,
    by_core: BTreeMap<CoreKey, BTreeSet<ChannelId>>,
}

impl ChannelTable {
    /// Channel `id`.
    pub(super) fn get(&self, id: &ChannelId) -> Option<&Channel> {
        self.by_id.get(id)
    }

    /// Channel `id`, to change it (its peer and core stay).
    pub(super) fn get_mut(&mut self, id: &ChannelId) -> Option<&mut Channel> {
        self.by_id.get_mut(id)
    }

    /// Adds channel `id`.
    pub(super) fn insert(&mut self, id: ChannelId, channel: Channel) {
        self.by_core.entry(channel.core).or_default().insert(id);
        if let Some(old) = self.by_id.insert(id, channel) {
            self.unindex(id, &old.core);
        }
    }

    /// Removes channel `id`.
    pub(super) fn remove(&mut self, id: &ChannelId) -> Option<Channel> {
        let c = self.by_id.remove(id)?;
        self.unindex(*id, &c.core);
        Some(c)
    }

    fn unindex(&mut self, id: ChannelId, core: &CoreKey) {
        if self.by_id.get(&id).is_some_and(|c| c.core == *core) {
            return;
        }
        if let Some(ids) = self.by_core.get_mut(core) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_core.remove(core);
            }
        }
    }

    /// Every channel, in id order.
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn all(&self) -> impl Iterator<Item = (ChannelId, &Channel)> {
        self.by_id.iter().map(|(id, c)| (*id, c))
    }

    /// The channels of `core`, in id order.
    pub(super) fn of_core(&self, core: &CoreKey) -> Vec<(ChannelId, Channel)> {
        self.by_core
            .get(core)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id).map(|c| (*id, *c)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(core: CoreKey) -> Channel {
        Channel {
            peer: [9; 32],
            core,
            opened_by_me: true,
            authenticated: true,
        }
    }

    #[test]
    fn channels_of_a_core_are_found_in_id_order_and_forgotten_with_them() {
        let (a, b) = ([1; 32], [2; 32]);
        let mut table = ChannelTable::default();
        for (id, core) in [(4, a), (1, b), (2, a), (0, a)] {
            table.insert(id, channel(core));
        }
        let ids = |t: &ChannelTable, core| {
            t.of_core(&core)
                .iter()
                .map(|(id, _)| *id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&table, a), [0, 2, 4]);
        assert_eq!(ids(&table, b), [1]);
        table.remove(&2);
        table.remove(&1);
        assert_eq!(ids(&table, a), [0, 4]);
        assert!(!table.by_core.contains_key(&b), "no empty set left");
        // An id used again for another core moves to that core.
        table.insert(4, channel(b));
        assert_eq!(ids(&table, a), [0]);
        assert_eq!(ids(&table, b), [4]);
    }
}

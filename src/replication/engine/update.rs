//! `update`: the application asks every peer of a core for its state (a `Sync` with `ask`)
//! and learns, with [`Event::Updated`], the newest signed length once each has answered (or
//! its channel went, or `upgrade_timeout` passed without its answer) and the upgrade to the
//! longest length heard, if any, has ended.

use std::{collections::BTreeSet, time::Instant};

use super::{ChannelId, Engine, Event};
use crate::{crypto::CoreKey, replication::wire::Message};

/// An update of one core under way.
#[derive(Debug, Default)]
pub(super) struct PendingUpdate {
    /// The channels whose answer it waits for.
    pub waiting: BTreeSet<ChannelId>,
    /// When it stops waiting for them (silent peers do not hold it up for ever).
    deadline: Option<Instant>,
}

impl Engine {
    /// Asks every open channel of `core` for its peer's state.
    pub(super) fn on_update(&mut self, core: CoreKey, now: Instant) {
        let Some(info) = self.sync_info(&core, true) else {
            return;
        };
        let channels = self.open_channels(&core);
        let pending = self.updates.entry(core).or_default();
        if pending.deadline.is_none() {
            // An update asked while one is under way joins it and keeps its deadline: asking
            // again and again does not make a silent peer hold them all up.
            pending.deadline = now.checked_add(self.cfg.upgrade_timeout);
            self.update_deadlines.replace(core, None, pending.deadline);
        }
        for (_, ch) in &channels {
            pending.waiting.insert(*ch);
        }
        for (peer, ch) in channels {
            self.send(peer, ch, Message::Sync(info));
        }
    }

    /// Channel `id` of `core` answered (or went away): it is waited for no more.
    pub(super) fn update_answered(&mut self, core: &CoreKey, id: ChannelId) {
        if let Some(pending) = self.updates.get_mut(core) {
            pending.waiting.remove(&id);
        }
    }

    /// Updates whose peers did not all answer in time wait for them no more.
    pub(super) fn expire_updates(&mut self, now: Instant) {
        for core in self.update_deadlines.drain_due(now) {
            if let Some(pending) = self.updates.get_mut(&core) {
                pending.waiting.clear();
                pending.deadline = None;
            }
        }
    }

    /// Forgets the update of `core` (done, or the core left).
    pub(super) fn drop_update(&mut self, core: &CoreKey) {
        if let Some(pending) = self.updates.remove(core) {
            self.update_deadlines.replace(*core, pending.deadline, None);
        }
    }

    /// The timers of the updates under way, for [`Engine::check_timers`].
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn check_update_timers(&self) -> Result<(), String> {
        let expected: BTreeSet<(Instant, CoreKey)> = self
            .updates
            .iter()
            .filter_map(|(core, p)| p.deadline.map(|t| (t, *core)))
            .collect();
        let set: BTreeSet<_> = self.update_deadlines.entries().into_iter().collect();
        if set != expected {
            return Err(format!("update timers {set:?}, updates {expected:?}"));
        }
        Ok(())
    }

    /// Reports the updates whose peers all answered and whose upgrade ended.
    pub(super) fn finish_updates(&mut self) {
        let done: Vec<CoreKey> = self
            .updates
            .iter()
            .filter(|(core, pending)| {
                pending.waiting.is_empty()
                    && !self.upgrades.is_under_way(core)
                    && self
                        .cores
                        .get(*core)
                        .is_none_or(|r| r.apply.upgrade_proof.is_none() && !r.apply.running)
            })
            .map(|(core, _)| *core)
            .collect();
        for core in done {
            self.drop_update(&core);
            if let Some(r) = self.cores.get(&core) {
                let length = r.local.length;
                self.emit(Event::Updated { core, length });
            }
        }
    }
}

/// The update under way of each core.
pub(super) type PendingUpdates = std::collections::BTreeMap<CoreKey, PendingUpdate>;

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::{
        super::{
            Input, Mode, Output,
            testing::{CORE, PEER, engine_with_peer, local, outputs, sync},
        },
        *,
    };

    /// Whether the outputs report the update of `CORE` with `length`.
    fn updated(outputs: &[Output], length: u64) -> bool {
        outputs.iter().any(|o| {
            matches!(o, Output::Event(Event::Updated { core, length: l })
                if *core == CORE && *l == length)
        })
    }

    /// An update asks the peer with a `Sync` that asks back, and resolves when the peer
    /// answers; a peer that stays silent holds it up only until `upgrade_timeout`.
    #[test]
    fn an_update_resolves_when_its_peer_answers_or_after_the_timeout() {
        let now = Instant::now();
        let (mut engine, channel) =
            engine_with_peer(local(5, true), Mode::Full, sync(5, true), now);
        engine.handle(Input::Update(CORE), now);
        let out = outputs(&mut engine);
        assert!(
            out.iter().any(|o| matches!(o,
                Output::Send(p, ch, Message::Sync(info)) if *p == PEER && *ch == channel && info.ask)),
            "the peer is asked: {out:?}"
        );
        assert!(!updated(&out, 5), "not before the peer answered");
        engine.handle(Input::Message(PEER, channel, sync(5, false)), now);
        assert!(updated(&outputs(&mut engine), 5), "the answer resolves it");

        // The peer stays silent this time, and a second update asked meanwhile does not put
        // the deadline back.
        engine.handle(Input::Update(CORE), now);
        assert!(!updated(&outputs(&mut engine), 5));
        let timeout = engine.config().upgrade_timeout;
        engine.handle(Input::Update(CORE), now + timeout / 2);
        assert!(!updated(&outputs(&mut engine), 5));
        assert!(engine.poll_timeout().is_some_and(|t| t <= now + timeout));
        engine.handle_timeout(now + timeout / 2);
        assert!(!updated(&outputs(&mut engine), 5), "not before the timeout");
        engine.check_timers().unwrap();
        engine.handle_timeout(now + timeout);
        assert!(
            updated(&outputs(&mut engine), 5),
            "the silent peer is waited for no more"
        );
        engine.check_timers().unwrap();
        assert!(engine.updates.is_empty() && engine.update_deadlines.len() == 0);
    }
}

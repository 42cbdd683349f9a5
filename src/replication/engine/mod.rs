//! The replication engine: one sans-IO state machine that owns every peer, channel, the fetch
//! queue and the gossip state of all replicated cores.
//!
//! It does no IO. The driver feeds it [`Input`]s (messages, finished storage tasks, gossip,
//! local changes) with the current time, calls [`Engine::handle_timeout`] when
//! [`Engine::poll_timeout`] says so, and carries out the [`Output`]s it yields: messages to
//! send, channels to open or close, storage tasks to run, gossip to broadcast, and [`Event`]s.
//! Its state changes only inside these calls, so a simulation with a fake clock can drive
//! hundreds of engines deterministically. The calling contract is on [`Engine`].
//!
//! # Shape
//!
//! [`Engine`] routes inputs to parts that each own their state, behind private fields, as
//! iroh-gossip's topic state routes to its swarm membership and its broadcast tree:
//!
//! - `channels`: every channel up to the moment both sides proved the key (the handshake,
//!   parked channels, each peer's channel table, the queue of cores waiting for room, idle
//!   channels closing at the cap);
//! - `sync`: one [`CoreSync`](sync) per replicated core: what its peers hold, its upgrade,
//!   the blocks it fetches, the proofs it applies, the pushes of a writer, `update`;
//! - `serve`: the peers' requests to us, queued, bounded and answered;
//! - `fetch`: the [`FetchQueue`] of missing blocks, shared by every core, with the peers'
//!   back-offs;
//! - `announce`: gossip announcements and the rate limit on the dials they cause;
//! - `extensions`: registered names, the peers' allowances, the store channel's queue;
//! - `peers`: each connected peer's counters, backlog and allowance of control messages;
//! - `redial`: the peers each core knows, dialed again while it has none;
//! - `timer`: one table of every timer but the fetch queue's; `tasks`: storage task ids;
//!   `allowance`: the token bucket of the allowances.
//!
//! A part changes only its own state. What it needs of the others it gets through [`Cx`]
//! (outputs, timers, task ids, counters, the fetch queue), and what it asks of another part it
//! says with a [`Note`] (a channel authenticated or gone, a core to announce, an upgrade to
//! ask again), which the engine routes once the call returns. `impl Engine` is this file:
//! routing, and the `poll_*` calls.
//!
//! # A received block, from frame to event
//!
//! Fourteen steps, each a call from one part to the next (a `Data` frame answering a run
//! request; the local append path is the same from step 9 down, and starts at `Hypercore`):
//!
//! 1. `net/frames`: the channel's `FrameReader` decodes the frame;
//! 2. `net/driver`: `Driver::on_frames` reports it, [`Input::Message`];
//! 3. `channels`: the channel is authenticated, the message goes back as `Inbound::Data`;
//! 4. `sync`: the core's `CoreSync` matches it to the run request it answers (`on_data`);
//! 5. `fetch`: [`FetchQueue::on_received`] takes the block (or says it was not asked for);
//! 6. `sync`: the proof joins the core's batch, and the one apply task starts:
//!    [`Output::Task`] with [`Task::ApplyRun`];
//! 7. `net/driver/cores`: the task runs on the core, through
//!    [`storage::run`](crate::replication::storage::run);
//! 8. `core/runs`: `Hypercore::apply_block_proofs` verifies the batch in one read transaction
//!    (`tree::verify_proof`), hands the blocks to waiting reads, and writes them as one op;
//! 9. `storage`: the actor commits the op in its batch (group commit);
//! 10. `storage/slot`: the committed state is published, and the core's `CommitListener`
//!     told;
//! 11. `core/news`: `CoreEvent::Download` goes to the core's subscribers (a block changes no
//!     length: the protocols watching the core are not signalled);
//! 12. `net/driver/cores`: the task's [`Reply`] reports [`Input::TaskDone`] with the core's
//!     state after the commit;
//! 13. `sync`: `CoreSync::run_applied` takes each stored block out of the fetch queue, counts
//!     it ([`Event::Download`]) and takes the new state in, once: our `Sync` to the peers,
//!     the next batch, the next requests;
//! 14. `net/driver`: the outputs go out (events to subscribers, frames to `Streams`).
//!
//! An upgrade is applied the same way; its commit also moves the length, so the watching
//! protocols are signalled too, and the driver, finding the engine already holds that state
//! from the task's reply, does not report it again: each commit is heard once.

mod allowance;
mod announce;
mod channels;
mod config;
mod cx;
mod extensions;
mod io;
mod peers;
mod redial;
mod serve;
mod sync;
mod task;
mod tasks;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod timer;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::Instant,
};

use announce::Announcer;
use bytes::Bytes;
use channels::{Channels, Inbound, StoreChannel};
pub use config::EngineConfig;
use cx::{Cx, Note};
use extensions::Extensions;
pub use extensions::{
    ExtensionTarget, MAX_EXTENSION_NAME, MAX_EXTENSION_PAYLOAD, MAX_STORE_CHANNEL_FRAME,
    STORE_CHANNEL_KEY, store_channel_discovery_key,
};
pub use io::{ApplyOutcome, ChannelId, Event, Input, LocalInfo, Mode, Output, PeerStats};
use peers::{Control, Peers};
use redial::Redial;
pub use redial::{MAX_KNOWN_PER_CORE, MAX_LEARNT, MAX_NAMED};
use serve::Server;
use sync::CoreSync;
use task::Done;
pub use task::{Applied, ProofRead, Reply, RunRead, Task, TaskDone, TaskId};
use tasks::Tasks;
use timer::{Timer, TimerTable};

use super::{PeerId, fetch::FetchQueue, wire::Message};
use crate::crypto::{CoreKey, DiscoveryKey};

/// The reason in the `Close` of a channel closed because it was idle.
pub const IDLE_REASON: &str = "idle";

/// The reason in the `Close` of a channel refused for lack of room among the parked ones:
/// its opener opens it again later, with back-off.
pub const NO_ROOM_REASON: &str = "no room to park the channel";

/// The reason sent in the `Close` of each channel of a core the node leaves.
pub const LEAVE_REASON: &str = "left the core";

/// Store peers kept ([`Input::StorePeers`]): the most recent.
pub const MAX_STORE_PEERS: usize = 64;

/// The services a part may use, borrowed from the engine's fields (so that a part can be
/// borrowed beside them).
macro_rules! cx {
    ($engine:ident, $now:expr) => {
        Cx {
            now: $now,
            cfg: &$engine.cfg,
            out: &mut $engine.outputs,
            notes: &mut $engine.notes,
            timers: &mut $engine.timers,
            tasks: &mut $engine.tasks,
            peers: &mut $engine.peers,
            fetch: &mut $engine.fetch,
        }
    };
}

/// The replication engine of one endpoint; see the module docs for its parts.
///
/// # Calling contract
///
/// One owner (the driver) calls the engine, with a `now` that never goes back, in turns:
///
/// 1. Report one thing that happened with [`handle`](Self::handle), or, once the instant
///    [`poll_timeout`](Self::poll_timeout) gave has come, call
///    [`handle_timeout`](Self::handle_timeout) (calling it early or twice is harmless: only
///    what is due is handled). [`add_core`](Self::add_core) is a turn too.
/// 2. Drain [`poll_output`](Self::poll_output) until it returns `None`, carrying out each
///    [`Output`] in the order given: messages of one channel go out in that order, after the
///    channel's `OpenChannel` and before its `CloseChannel`.
/// 3. Call [`poll_timeout`](Self::poll_timeout) and wake for `handle_timeout` then. It changes
///    only in the calls of step 1, so it need not be asked again before the next turn.
///
/// What the driver must report, and when:
///
/// - [`Input::PeerConnected`] when a connection is up, before any message of that peer, and
///   [`Input::PeerDisconnected`] when it is gone (repeats are ignored). Messages of a peer
///   that is not connected are dropped.
/// - [`Input::Message`] for every message, in arrival order per channel. Channel ids are the
///   engine's: it numbers the channels it opens (with [`Output::OpenChannel`]) with even ids;
///   the driver numbers the streams a peer opens with odd ids never used before, and the
///   first message on such a channel is the peer's `Open`.
/// - [`Input::ChannelClosed`] when a stream ends or fails (also after an
///   [`Output::CloseChannel`]: it is then ignored).
/// - [`Input::TaskDone`] exactly once for every [`Output::Task`], made by the task's
///   [`Reply`] (so it is of the task's own kind), with, for applies, the core's state after
///   the task. The engine runs at most one apply task per core at a time; the others may
///   finish in any order. Tasks for a peer or channel that went away meanwhile are reported
///   all the same.
/// - [`Input::Backlog`] when a peer goes over its backlog limit or back under it
///   ([`EngineConfig::max_backlog_bytes`], and its fair share of
///   [`EngineConfig::max_backlog_total`]): serving that peer waits while it is over.
/// - [`Input::LocalChanged`] after every change of a core made outside the engine (a local
///   append or truncate); [`Input::Want`] for blocks the application reads in sparse mode.
/// - [`Input::Gossip`] and [`Input::GossipLagged`] for the topics the engine joined with
///   [`Output::JoinGossip`].
///
/// What the outputs ask for:
///
/// - [`Output::Connect`]: dial the peer; report [`Input::PeerConnected`] if it answers (a
///   failed dial needs no input).
/// - [`Output::OpenChannel`]: open a stream to the peer and send the first message on it.
/// - [`Output::Send`]: send a message on a channel. Until
///   [`is_authenticated`](Self::is_authenticated) holds for a channel, only handshake-sized
///   frames may be read from it.
/// - [`Output::CloseChannel`]: finish the stream once what was queued on it is sent.
/// - [`Output::Task`]: run a storage task on the core and report [`Input::TaskDone`].
/// - [`Output::JoinGossip`], [`Output::Broadcast`]: subscribe to and broadcast on a core's
///   gossip topic.
/// - [`Output::Event`]: tell the application.
#[derive(Debug)]
pub struct Engine {
    /// This endpoint's id.
    me: PeerId,
    cfg: EngineConfig,
    /// Every channel up to its authentication, and the cores that may have channels.
    channels: Channels,
    /// The sync part of each replicated core.
    cores: BTreeMap<CoreKey, CoreSync>,
    /// The connected peers' counters and backlogs.
    peers: Peers,
    /// The peers' requests to us.
    server: Server,
    /// The missing blocks, the run requests fetching them, the peers' back-offs.
    fetch: FetchQueue,
    /// Gossip announcements and the dials they cause.
    announcer: Announcer,
    /// Extension names, allowances and the store channel's queues.
    extensions: Extensions,
    /// The peers each core knows, and the search for them while it has no channel.
    redial: Redial,
    /// Storage task ids.
    tasks: Tasks,
    /// Every timer but the fetch queue's.
    timers: TimerTable,
    /// Outputs not yet polled, in order.
    outputs: VecDeque<Output>,
    /// What parts asked of each other, routed after each call.
    notes: VecDeque<Note>,
    /// Cores whose upgrade is asked again at the end of the turn.
    retry_upgrade: BTreeSet<CoreKey>,
    /// Cores with a peer ahead that is backed off: asked again when a back-off ends.
    after_backoff: BTreeSet<CoreKey>,
    /// Cores with an `update` under way.
    updating: BTreeSet<CoreKey>,
    /// Cores whose blocks arrived in this turn, applied at its end.
    arrived: BTreeSet<CoreKey>,
    /// Peers that get a channel for every core we replicate ([`Input::StorePeers`]), most
    /// recent last.
    store_peers: VecDeque<PeerId>,
    /// Peers connected on Hypercore's own wire: store peers while connected.
    wire_peers: BTreeSet<PeerId>,
    /// Cores whose last channel went in this turn.
    maybe_lost: BTreeSet<CoreKey>,
}

impl Engine {
    /// An engine for the endpoint `me`.
    pub fn new(me: PeerId, cfg: EngineConfig) -> Self {
        Self {
            me,
            channels: Channels::new(me),
            cores: BTreeMap::new(),
            peers: Peers::new(),
            server: Server::default(),
            fetch: FetchQueue::new(cfg.fetch.clone()),
            announcer: Announcer::new(
                me,
                cfg.announce_interval,
                cfg.gossip_max_message,
                cfg.gossip_dials_per_second,
            ),
            extensions: Extensions::default(),
            redial: Redial::new(me),
            tasks: Tasks::default(),
            timers: TimerTable::default(),
            outputs: VecDeque::new(),
            notes: VecDeque::new(),
            retry_upgrade: BTreeSet::new(),
            arrived: BTreeSet::new(),
            after_backoff: BTreeSet::new(),
            updating: BTreeSet::new(),
            store_peers: VecDeque::new(),
            wire_peers: BTreeSet::new(),
            maybe_lost: BTreeSet::new(),
            cfg,
        }
    }

    /// This endpoint's id.
    pub fn me(&self) -> PeerId {
        self.me
    }

    /// The engine's tuning.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    // Cores.

    /// Starts replicating a core: joins its gossip topic, adopts the channels peers parked for
    /// it and opens a channel to every connected peer known to have or want it (see
    /// [`Input::Peers`]); no other peer learns that we replicate it. Adding a core twice only updates its
    /// mode (and a core that was only [served](Self::serve_core) becomes replicated). A turn
    /// of its own (see the calling contract).
    pub fn add_core(&mut self, key: CoreKey, local: LocalInfo, mode: Mode, now: Instant) {
        if key == *STORE_CHANNEL_KEY {
            return;
        }
        match self.channels.register(key, false) {
            Some(was_served_only) => {
                if let Some(c) = self.cores.get_mut(&key)
                    && c.set_mode(mode)
                {
                    // A sparse core may have closed idle with nothing wanted: in full mode
                    // it wants every block.
                    self.channels.reopen_idle(key, &mut cx!(self, now));
                }
                if was_served_only {
                    // The peers it was served to are its peers now: remembered.
                    for peer in self.core_peers(&key) {
                        self.redial.learn(key, peer, true);
                    }
                    self.open_to_known_peers(key, now);
                }
            }
            None => {
                self.insert_core(key, local, mode, now);
                self.open_to_known_peers(key, now);
            }
        }
        self.route_notes(now);
        self.schedule(now);
    }

    /// Serves a core the driver found in its store for the channels peers parked for it
    /// (after [`Output::FindCore`]): adopted if one of them proves the key, with no channel
    /// opened to other peers and no announcement. If none does (or they went away), the core
    /// is not added and they wait out their handshake timeout as for a core the store lacks,
    /// so that a peer without the key cannot tell whether the store holds it. Returns whether
    /// it is served. A turn of its own.
    pub fn serve_core(&mut self, key: CoreKey, local: LocalInfo, mode: Mode, now: Instant) -> bool {
        if key == *STORE_CHANNEL_KEY {
            return false;
        }
        if self.cores.contains_key(&key) {
            return true;
        }
        if !self.channels.parked_proves(&key) {
            return false;
        }
        self.channels.register(key, true);
        self.insert_core(key, local, mode, now);
        self.route_notes(now);
        self.schedule(now);
        true
    }

    /// Adds the sync part of `key` (registered with the channel part) and adopts the channels
    /// parked for it.
    fn insert_core(&mut self, key: CoreKey, local: LocalInfo, mode: Mode, now: Instant) {
        self.cores.insert(key, CoreSync::new(key, local, mode));
        let topic = super::gossip::topic(&key);
        self.outputs.push_back(Output::JoinGossip(key, topic));
        let mut cx = cx!(self, now);
        self.channels.adopt_parked(&key, &mut cx);
        self.route_notes(now);
        if let Some(c) = self.cores.get_mut(&key) {
            c.enqueue_missing(&mut cx!(self, now));
        }
    }

    /// Opens a channel for `key` to every connected peer known to have or want it (and to
    /// the store peers), and announces it (on its gossip topic, which only holders of the key
    /// can join).
    fn open_to_known_peers(&mut self, key: CoreKey, now: Instant) {
        let mut peers: Vec<PeerId> = self.redial.known(&key);
        peers.extend(self.store_peers.iter().copied());
        peers.extend(self.wire_peers.iter().copied());
        peers.sort();
        peers.dedup();
        peers.retain(|p| self.channels.is_connected(p));
        let mut cx = cx!(self, now);
        for peer in peers {
            self.channels.open(peer, key, &mut cx);
        }
        cx.note(Note::Announce(key));
    }

    /// Opens a channel to `peer` for every replicated core known to have it as a peer (for
    /// every one, to a store peer).
    fn open_known_cores(&mut self, peer: PeerId, now: Instant) {
        let cores = cores_for(
            &peer,
            self.gets_every_core(&peer),
            &self.cores,
            &self.redial,
        );
        self.channels.open_known(peer, cores, &mut cx!(self, now));
    }

    /// Whether `peer` gets a channel for every core we replicate: a store peer, or a peer on
    /// Hypercore's own wire while it is connected.
    fn gets_every_core(&self, peer: &PeerId) -> bool {
        self.store_peers.contains(peer) || self.wire_peers.contains(peer)
    }

    /// Peers that get a channel for every core we replicate: those connected get them now.
    fn on_store_peers(&mut self, peers: Vec<PeerId>, now: Instant) {
        let me = self.me;
        for peer in peers.into_iter().filter(|p| *p != me) {
            self.store_peers.retain(|p| *p != peer);
            self.store_peers.push_back(peer);
            if self.store_peers.len() > MAX_STORE_PEERS {
                self.store_peers.pop_front();
            }
            if self.channels.is_connected(&peer) {
                self.open_known_cores(peer, now);
            }
        }
    }

    /// Stops replicating `key` (a turn of its own): each of its channels is closed with a
    /// `Close` telling the peer, and its queued fetches, upgrade, proofs waiting to be
    /// applied and announcement are dropped; the driver is asked to leave its gossip topic
    /// ([`Output::LeaveGossip`]). Storage tasks still running for it finish and are ignored.
    /// Adding the core again starts afresh. Returns whether the core was replicated.
    pub fn remove_core(&mut self, key: CoreKey, now: Instant) -> bool {
        if !self.cores.contains_key(&key) {
            return false;
        }
        // Its channels close first, and their ends reach its sync part (each open one
        // reported closed), before the part goes.
        self.channels.unregister(&key, &mut cx!(self, now));
        self.route_notes(now);
        let Some(core) = self.cores.remove(&key) else {
            return false;
        };
        let mut cx = cx!(self, now);
        core.clear_timers(&mut cx);
        cx.fetch.remove_core(&key);
        self.announcer.forget(&key, cx.timers);
        self.redial.forget(&key, cx.timers);
        self.retry_upgrade.remove(&key);
        self.after_backoff.remove(&key);
        self.updating.remove(&key);
        self.arrived.remove(&key);
        self.outputs.push_back(Output::LeaveGossip(key));
        self.route_notes(now);
        self.schedule(now);
        true
    }

    /// Whether `key` is replicated.
    pub fn has_core(&self, key: &CoreKey) -> bool {
        self.cores.contains_key(key)
    }

    /// The mode `key` is replicated in.
    pub fn mode(&self, key: &CoreKey) -> Option<Mode> {
        self.cores.get(key).map(|c| c.mode())
    }

    /// The local state the engine knows of a core.
    pub fn local(&self, key: &CoreKey) -> Option<LocalInfo> {
        self.cores.get(key).map(|c| c.local())
    }

    // Queries.

    /// Connected peers, in id order.
    pub fn peers(&self) -> Vec<PeerId> {
        self.peers.ids().collect()
    }

    /// Peers with an open channel for `core`, in id order.
    pub fn core_peers(&self, core: &CoreKey) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self.cores.get(core).map_or_else(Vec::new, |c| {
            c.open_channels().into_iter().map(|(p, _)| p).collect()
        });
        v.sort();
        v
    }

    /// Counters of every connected peer, in id order.
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        self.peers.stats(|p| self.channels.count_of(p))
    }

    /// The counters of [`PeerStats`] summed over every peer since the engine started, those
    /// that left included (`peer` is zeros; `channels` counts the open channels now).
    pub fn peer_totals(&self) -> PeerStats {
        PeerStats {
            channels: self.channels.open_count(),
            ..self.peers.totals()
        }
    }

    /// The peers `core` knows (ticket and `join` nodes, peers it had a channel with, gossip
    /// origins), most recently useful first: the ones it dials again while it has no channel.
    pub fn known_peers(&self, core: &CoreKey) -> Vec<PeerId> {
        self.redial.known(core)
    }

    /// Whether a channel a peer opened for the core of discovery key `dk` is parked (waits
    /// for us to add the core).
    pub fn is_parked(&self, dk: &DiscoveryKey) -> bool {
        self.channels.is_parked(dk)
    }

    /// Dials that gossip announcements asked for and the rate limit skipped.
    pub fn gossip_dials_skipped(&self) -> u64 {
        self.announcer.dials_skipped()
    }

    /// Channels peers opened for cores we do not replicate, waiting to be adopted.
    pub fn parked_channels(&self) -> usize {
        self.channels.parked_len()
    }

    /// Blocks waiting in the fetch queue.
    pub fn queued_blocks(&self) -> usize {
        self.fetch.len()
    }

    /// The core of channel `id`.
    pub fn channel_core(&self, id: ChannelId) -> Option<CoreKey> {
        self.channels.core_of(id)
    }

    /// The largest frame to read on channel `id`: a handshake's until both sides proved the
    /// key, an extension message's on a store channel, else
    /// [`MAX_FRAME`](crate::replication::wire::MAX_FRAME).
    pub fn max_frame(&self, id: ChannelId) -> usize {
        self.channels.max_frame(id)
    }

    /// Whether both sides of channel `id` proved the key: only then may its stream carry
    /// frames larger than a handshake's.
    pub fn is_authenticated(&self, id: ChannelId) -> bool {
        self.channels.is_authenticated(id)
    }

    // Extensions.

    /// Delivers extension messages named `name` (as [`Event::Extension`]).
    pub fn register_extension(&mut self, name: &str) {
        self.extensions.register(name);
    }

    /// Sends an extension message (a turn of its own). Returns how many channels it was
    /// queued on: none if the core has no open channel with the peer, or the name or payload
    /// is over its limit. A peer that does not read what we send gets no more of it (as with
    /// serving).
    pub fn send_extension(
        &mut self,
        target: ExtensionTarget,
        name: &str,
        payload: Bytes,
        now: Instant,
    ) -> usize {
        let Some(msg) = Extensions::message(name, &payload) else {
            return 0;
        };
        let open = |core: &CoreKey| {
            self.cores
                .get(core)
                .map_or_else(Vec::new, CoreSync::open_channels)
        };
        let channels: Vec<(PeerId, ChannelId)> = match target {
            ExtensionTarget::Core(core, peer) => open(&core)
                .into_iter()
                .filter(|(p, _)| *p == peer)
                .collect(),
            ExtensionTarget::Broadcast(core) => open(&core),
            ExtensionTarget::Peer(peer) => {
                if !self.peers.has_room(&peer) {
                    return 0;
                }
                let mut cx = cx!(self, now);
                let sent = match self.channels.store_channel(peer, &mut cx) {
                    StoreChannel::Open(ch) => {
                        cx.send(peer, ch, msg);
                        true
                    }
                    StoreChannel::Opening => self.extensions.queue_for_store_channel(peer, msg),
                    StoreChannel::NoPeer => false,
                };
                self.schedule(now);
                return usize::from(sent);
            }
        };
        let channels: Vec<(PeerId, ChannelId)> = channels
            .into_iter()
            .filter(|(p, _)| self.peers.has_room(p))
            .collect();
        for (peer, ch) in &channels {
            self.outputs
                .push_back(Output::Send(*peer, *ch, msg.clone()));
        }
        self.schedule(now);
        channels.len()
    }

    // Turns.

    /// Feeds one input at time `now` (step 1 of the calling contract).
    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::PeerConnected(peer) => self.on_connected(peer, now),
            Input::WirePeerConnected(peer, binding) => {
                if self.channels.is_connected(&peer) {
                    return;
                }
                self.channels.set_session(peer, binding);
                self.on_connected(peer, now);
                // As Corestore's `replicate(stream)`: every core we replicate, while it lasts
                // (apart from the store peers the application named).
                self.wire_peers.insert(peer);
                self.open_known_cores(peer, now);
            }
            Input::PeerDisconnected(peer) => self.on_disconnected(peer, now),
            Input::Message(peer, channel, msg) => self.on_message(peer, channel, msg, now),
            Input::ChannelClosed(_, channel) => self.channels.drop(channel, &mut cx!(self, now)),
            Input::TaskDone(done) => self.on_task_done(done, now),
            Input::Gossip(core, bytes) => self.on_gossip(core, &bytes, now),
            Input::Backlog { peer, bytes, over } => {
                self.peers.set_backlog(&peer, bytes, over);
                self.serve_next(peer, now);
            }
            Input::Invalid(core, peer, reason) => cx!(self, now).blame(core, peer, reason),
            Input::GossipLagged(core) => {
                self.with_core(core, now, |c, cx| c.broadcast_sync(true, cx))
            }
            Input::LocalChanged(core, local) => {
                self.with_core(core, now, |c, cx| c.local_changed(local, cx))
            }
            Input::Want(core, start, end) => {
                self.with_core(core, now, |c, cx| c.want(start, end, cx))
            }
            Input::Unwant(core, start, end) => {
                self.with_core(core, now, |c, cx| c.unwant(start, end, cx))
            }
            Input::Update(core) => {
                // Channels that closed idle open again to be asked: the update waits for them
                // as for a first peer.
                let reopened = self.cores.contains_key(&core)
                    && self.channels.reopen_idle(core, &mut cx!(self, now));
                let searching = self.redial.is_searching(&core) || reopened;
                self.with_core(core, now, |c, cx| c.update(searching, cx))
            }
            Input::Peers(core, peers) => self.on_peers(core, peers, true, now),
            Input::PeersSeen(core, peers) => self.on_peers(core, peers, false, now),
            Input::StorePeers(peers) => self.on_store_peers(peers, now),
        }
        self.route_notes(now);
        self.schedule(now);
    }

    /// Messages that arrived together on `channel`, in order: each handled as
    /// [`Input::Message`] is, with one scheduling pass after the last instead of one after
    /// each (a read of a stream yields every frame received since the last). The blocks
    /// among them go to storage together: one apply per core, where one at a time the first
    /// block would start an apply alone.
    pub fn handle_messages(
        &mut self,
        peer: PeerId,
        channel: ChannelId,
        msgs: impl IntoIterator<Item = Message>,
        now: Instant,
    ) {
        for msg in msgs {
            self.on_message(peer, channel, msg, now);
            self.route_notes(now);
        }
        self.schedule(now);
    }

    /// Calls `f` on the sync part of `core`, if it is replicated.
    fn with_core(&mut self, core: CoreKey, now: Instant, f: impl FnOnce(&mut CoreSync, &mut Cx)) {
        if let Some(c) = self.cores.get_mut(&core) {
            f(c, &mut cx!(self, now));
        }
    }

    /// The next output to carry out (step 2 of the calling contract).
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.outputs.pop_front()?;
        // Nothing but the handshake leaves on a channel whose peer has not proven the key:
        // only the channel part sends on such channels, and only `Accept` and `Close`.
        debug_assert!(
            match &out {
                Output::Send(_, ch, msg) => {
                    matches!(msg, Message::Accept { .. } | Message::Close { .. })
                        || self.channels.core_of(*ch).is_none()
                        || self.channels.is_authenticated(*ch)
                }
                _ => true,
            },
            "{out:?} on an unauthenticated channel"
        );
        Some(out)
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called (step 3 of the
    /// calling contract): the first timer of the engine's table or of the fetch queue.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.timers.first(), self.fetch.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Handles every timer due at `now`: the fetch queue's requests and back-offs, then each
    /// timer of the table by the part it names.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (id, peer, core) in self.fetch.poll_timeouts(now) {
            self.with_core(core, now, |c, cx| c.run_timed_out(id, peer, cx));
        }
        // The timers due now, taken at once: one a handler sets again for `now` waits for the
        // next call.
        let due: Vec<Timer> = std::iter::from_fn(|| self.timers.pop_due(now)).collect();
        for timer in due {
            let mut cx = cx!(self, now);
            match timer {
                Timer::Handshake(ch) => self.channels.handshake_timed_out(ch, &mut cx),
                Timer::OpenRest(peer) => {
                    let every = self.store_peers.contains(&peer) || self.wire_peers.contains(&peer);
                    let cores = cores_for(&peer, every, &self.cores, &self.redial);
                    self.channels.open_known(peer, cores, &mut cx);
                }
                Timer::Room => {}
                Timer::Update(core) => {
                    if let Some(c) = self.cores.get_mut(&core) {
                        c.update_timed_out();
                    }
                }
                Timer::Upgrade(core) => {
                    if let Some(c) = self.cores.get_mut(&core) {
                        c.upgrade_timed_out(&mut cx);
                    }
                }
                Timer::Announce(core) => {
                    if let Some(c) = self.cores.get(&core) {
                        self.announcer.announce(core, c.local(), &mut cx);
                    }
                }
                Timer::Reopen(peer, core) => self.channels.reopen(peer, core, &mut cx),
                Timer::Redial(core) => {
                    let channels = &self.channels;
                    self.redial
                        .redial(core, |p| channels.is_connected(p), &mut cx);
                    // Known peers still connected get the channel again (one that refused it
                    // for lack of room, or closed it).
                    for peer in self.redial.known(&core) {
                        self.channels.open_again(peer, core, &mut cx);
                    }
                }
            }
            self.route_notes(now);
        }
        // The cores that waited for a back-off ask again (one may have ended).
        for core in std::mem::take(&mut self.after_backoff) {
            self.with_core(core, now, |c, cx| c.maybe_upgrade(cx));
        }
        self.route_notes(now);
        self.schedule(now);
    }

    // Routing.

    /// Peers that have or want `core`, `named` by the application or seen: remembered, and
    /// dialed again while it has no channel.
    fn on_peers(&mut self, core: CoreKey, peers: Vec<PeerId>, named: bool, now: Instant) {
        if !self.cores.contains_key(&core) || self.channels.is_served_only(&core) {
            return;
        }
        let me = self.me;
        let peers: Vec<PeerId> = peers
            .into_iter()
            .filter(|p| *p != me)
            .take(if named { MAX_NAMED } else { MAX_LEARNT })
            .collect();
        if named {
            // In reverse: the first given goes first.
            for peer in peers.iter().rev() {
                self.redial.name(core, *peer);
            }
        } else {
            for peer in &peers {
                self.redial.learn(core, *peer, false);
            }
        }
        for peer in peers {
            // Known now: a connected peer gets the channel at once.
            if self.channels.is_connected(&peer) {
                self.channels.open(peer, core, &mut cx!(self, now));
            }
        }
        if self.cores.get(&core).is_some_and(|c| !c.has_channels()) {
            self.redial.lost(core, true, &mut cx!(self, now));
        }
    }

    fn on_connected(&mut self, peer: PeerId, now: Instant) {
        let mut cx = cx!(self, now);
        let Some(open_now) = self.channels.connect(peer, &mut cx) else {
            return;
        };
        cx.peers.add(peer);
        self.server.add_peer(peer);
        cx.emit(Event::PeerAdd(peer));
        if open_now {
            self.open_known_cores(peer, now);
        }
    }

    /// A connection is gone: every channel, parked channel, serve queue, fetch-queue state and
    /// upgrade of the peer is forgotten.
    fn on_disconnected(&mut self, peer: PeerId, now: Instant) {
        self.wire_peers.remove(&peer);
        if !self.channels.disconnect(&peer, &mut cx!(self, now)) {
            return;
        }
        self.route_notes(now);
        self.peers.remove(&peer);
        self.server.remove_peer(&peer);
        self.extensions.remove_peer(&peer);
        self.fetch.remove_peer(&peer, now);
        self.outputs
            .push_back(Output::Event(Event::PeerRemove(peer)));
    }

    fn on_message(&mut self, peer: PeerId, channel: ChannelId, msg: Message, now: Instant) {
        let inbound = self
            .channels
            .on_message(peer, channel, msg, &mut cx!(self, now));
        let Inbound::Data { core, msg } = inbound else {
            return;
        };
        if core == *STORE_CHANNEL_KEY {
            self.on_store_message(peer, channel, msg, now);
            return;
        }
        let control = matches!(msg, Message::Cancel { .. } | Message::Unwant { .. });
        if control && !self.take_control(peer, channel, now) {
            return;
        }
        let mut cx = cx!(self, now);
        match msg {
            Message::Open { .. } | Message::Accept { .. } => {
                cx.peers.count_dropped(&peer);
                self.channels
                    .close(peer, channel, "channel opened twice", &mut cx);
            }
            Message::Close { reason } => {
                tracing::debug!("channel closed by peer: {reason}");
                // Closed as idle while we had news for it (they crossed): open it again now,
                // or nobody would until the core's next change.
                let idle_close = reason == IDLE_REASON;
                let idle_here = is_idle(&self.cores, &self.server, peer, core, channel);
                if idle_close && idle_here {
                    // Marked before the channel goes: the core keeps the peer (not lost).
                    self.channels.mark_idle_closed(peer, core);
                }
                cx.out.push_back(Output::CloseChannel(peer, channel));
                self.channels.drop(channel, &mut cx);
                self.route_notes(now);
                if idle_close && !idle_here {
                    self.channels.open(peer, core, &mut cx!(self, now));
                }
            }
            Message::Request { .. } | Message::RequestRun { .. } => {
                if let Message::Request { request, .. } = &msg
                    && request.upgrade.is_some()
                    && let Some(c) = self.cores.get_mut(&core)
                {
                    c.upgrade_asked(channel);
                }
                let cores = &self.cores;
                let length_of = |k: &CoreKey| cores.get(k).map_or(0, |c| c.local().length);
                let flood = self
                    .server
                    .on_request(peer, channel, core, msg, &length_of, &mut cx);
                if flood {
                    self.channels
                        .close(peer, channel, "too many requests", &mut cx);
                }
            }
            Message::Cancel { id } => self.server.cancel(peer, channel, id),
            Message::Extension { name, payload } => {
                self.extensions
                    .on_message(peer, Some(core), name, payload, &mut cx)
            }
            msg => {
                if let Some(c) = self.cores.get_mut(&core) {
                    c.on_message(channel, msg, &mut cx);
                }
            }
        }
    }

    /// Whether a control message of `peer` on `channel` is within its allowance; past it,
    /// it is dropped, and a second's worth dropped closes the channel.
    fn take_control(&mut self, peer: PeerId, channel: ChannelId, now: Instant) -> bool {
        let per_second = self.cfg.control_messages_per_second;
        match self.peers.control(&peer, per_second, now) {
            Control::Take => true,
            Control::Drop => false,
            Control::Close => {
                let mut cx = cx!(self, now);
                self.channels
                    .close(peer, channel, "too many control messages", &mut cx);
                self.route_notes(now);
                false
            }
        }
    }

    /// A message on the store channel: only extensions (and its end) mean anything there.
    fn on_store_message(&mut self, peer: PeerId, channel: ChannelId, msg: Message, now: Instant) {
        let mut cx = cx!(self, now);
        match msg {
            Message::Extension { name, payload } => self
                .extensions
                .on_message(peer, None, name, payload, &mut cx),
            Message::Close { .. } => {
                cx.out.push_back(Output::CloseChannel(peer, channel));
                self.channels.drop(channel, &mut cx);
            }
            _ => cx.peers.count_dropped(&peer),
        }
    }

    /// A storage task finished: its result goes to the part that asked for it, by its kind.
    /// A core left meanwhile (and perhaps added again) knows nothing of its tasks, whose
    /// results are then dropped.
    fn on_task_done(&mut self, done: TaskDone, now: Instant) {
        let cores = &mut self.cores;
        let mut cx = cx!(self, now);
        match done.0 {
            Done::Proof(_, id, result) if self.server.reads_proof(id) => {
                let length_of = |k: &CoreKey| cores.get(k).map_or(0, |c| c.local().length);
                self.server.proof_read(id, result, &length_of, &mut cx);
            }
            Done::Proof(core, id, result) => {
                if let Some(c) = cores.get_mut(&core) {
                    c.pushed(id, result, &mut cx);
                }
            }
            Done::Run(id, result) => {
                let length_of = |k: &CoreKey| cores.get(k).map_or(0, |c| c.local().length);
                self.server.run_read(id, result, &length_of, &mut cx);
            }
            Done::Applied(core, id, applied) => {
                if let Some(c) = cores.get_mut(&core) {
                    c.upgrade_applied(id, applied, &mut cx);
                }
            }
            Done::RunApplied(core, id, applied) => {
                if let Some(c) = cores.get_mut(&core) {
                    c.run_applied(id, applied, &mut cx);
                }
            }
        }
    }

    /// A gossip announcement: a hint to connect to the announcer, or ask it for its state, if
    /// it is ahead of us.
    fn on_gossip(&mut self, core: CoreKey, bytes: &[u8], now: Instant) {
        let Some(local) = self.cores.get(&core).map(CoreSync::local) else {
            return;
        };
        let Some(heard) = self.announcer.heard(bytes, &local) else {
            return;
        };
        self.redial.learn(core, heard.origin, false);
        let mut cx = cx!(self, now);
        if !self.channels.is_connected(&heard.origin) {
            // Anyone on the topic can name any origin: dials are rate limited here, and the
            // driver bounds those in flight and times them out.
            if self.announcer.allow_dial(now) {
                cx.out.push_back(Output::Connect(heard.origin));
            } else {
                tracing::debug!("gossip dial skipped: rate limit");
            }
        } else if let Some(ch) = self.channels.channel_of(&heard.origin, &core) {
            // Connected already: ask for its state rather than trusting the announcement.
            if let Some(c) = self.cores.get_mut(&core) {
                c.ask_if_untold(ch, heard.fork, heard.length, &mut cx);
            }
        } else {
            self.channels.open(heard.origin, core, &mut cx);
        }
    }

    /// Starts serving `peer`'s queued requests as far as its limits allow.
    fn serve_next(&mut self, peer: PeerId, now: Instant) {
        let cores = &self.cores;
        let length_of = |k: &CoreKey| cores.get(k).map_or(0, |c| c.local().length);
        self.server
            .serve_next(peer, &length_of, &mut cx!(self, now));
    }

    /// Routes the notes the parts left, in order, until none is left; then a core whose last
    /// channel went and that has none now (nor one that closed idle with a connected peer)
    /// looks for the peers it knows.
    fn route_notes(&mut self, now: Instant) {
        self.route_each_note(now);
        for core in std::mem::take(&mut self.maybe_lost) {
            let served_only = self.channels.is_served_only(&core);
            let mut cx = cx!(self, now);
            // A core whose channel closed idle still has that peer: it is not lost.
            if self.cores.get(&core).is_some_and(|c| !c.has_channels())
                && !served_only
                && !self.channels.idle_closed_with_any(&core)
            {
                cx.emit(Event::NoPeers { core });
                self.redial.lost(core, false, &mut cx);
            }
        }
    }

    fn route_each_note(&mut self, now: Instant) {
        while let Some(note) = self.notes.pop_front() {
            let mut cx = cx!(self, now);
            match note {
                Note::ChannelUp {
                    peer,
                    core,
                    channel,
                } => {
                    if core == *STORE_CHANNEL_KEY {
                        self.extensions.store_channel_open(peer, channel, &mut cx);
                    } else if let Some(c) = self.cores.get_mut(&core) {
                        c.channel_up(peer, channel, &mut cx);
                        // A core only served to the peers that asked remembers and redials
                        // nobody.
                        if !self.channels.is_served_only(&core) {
                            self.redial.learn(core, peer, true);
                            self.redial.found(core, cx.timers);
                        }
                    }
                }
                Note::ChannelDown {
                    peer,
                    core,
                    channel,
                    peer_gone,
                    given_up,
                } => {
                    if let Some(c) = self.cores.get_mut(&core)
                        && c.channel_down(channel, peer_gone, given_up, &mut cx)
                        && !c.has_channels()
                    {
                        // Its last peer may have gone: told once the notes are routed (a
                        // channel that replaces this one comes up in the same turn).
                        self.maybe_lost.insert(core);
                    }
                    self.server.forget_channel(&peer, channel);
                }
                Note::Announce(core) => {
                    if let Some(c) = self.cores.get(&core) {
                        self.announcer.announce(core, c.local(), &mut cx);
                    }
                }
                Note::Reopen(core) => {
                    self.channels.reopen_idle(core, &mut cx);
                }
                Note::IdlePeerGone(core) => {
                    if self.cores.get(&core).is_some_and(|c| !c.has_channels()) {
                        self.maybe_lost.insert(core);
                    }
                }
                Note::RetryUpgrade(core) => {
                    self.retry_upgrade.insert(core);
                }
                Note::UpgradeAfterBackoff(core) => {
                    self.after_backoff.insert(core);
                }
                Note::BackoffEnded => self.retry_upgrade.append(&mut self.after_backoff),
                Note::Updating(core) => {
                    self.updating.insert(core);
                }
                Note::BlocksArrived(core) => {
                    self.arrived.insert(core);
                }
            }
        }
    }

    /// Ends every turn: closes idle channels where cores wait for room, opens the channels
    /// that waited for a handshake to end, asks again for the upgrades whose peer went away,
    /// applies the blocks that arrived in the turn, sends every request the fetch queue has
    /// room for, reports the updates answered, and the peers the fetch queue backed off or
    /// penalized.
    fn schedule(&mut self, now: Instant) {
        let (cores, server) = (&self.cores, &self.server);
        self.channels.make_room(
            |peer, core, ch| is_idle(cores, server, peer, core, ch),
            &mut cx!(self, now),
        );
        self.channels.open_queued(&mut cx!(self, now));
        self.route_notes(now);
        while let Some(core) = self.retry_upgrade.pop_first() {
            self.with_core(core, now, |c, cx| c.maybe_upgrade(cx));
            self.route_notes(now);
        }
        while let Some(core) = self.arrived.pop_first() {
            self.with_core(core, now, |c, cx| c.maybe_apply(cx));
            self.route_notes(now);
        }
        while let Some(a) = self.fetch.next_request(now) {
            let mut cx = cx!(self, now);
            let sent = self
                .cores
                .get_mut(&a.core)
                .is_some_and(|c| c.send_run(a, &mut cx));
            if !sent {
                cx.fetch.cancel(a.id);
                cx.fetch.remove_source(&a.core, &a.peer);
            }
        }
        for core in std::mem::take(&mut self.updating) {
            let mut cx = cx!(self, now);
            if let Some(c) = self.cores.get_mut(&core) {
                match c.finish_update(&mut cx) {
                    Some(length) => cx.emit(Event::Updated { core, length }),
                    None => {
                        self.updating.insert(core);
                    }
                }
            }
        }
        self.channels.arm_room_timer(&mut cx!(self, now));
        for notice in self.fetch.take_notices() {
            let ev = match notice {
                super::fetch::PeerNotice::BackedOff(p, _) => Event::Backoff(p),
                super::fetch::PeerNotice::Penalized(peer, until) => Event::Penalized {
                    peer,
                    penalty: until.saturating_duration_since(now),
                },
            };
            self.outputs.push_back(Output::Event(ev));
        }
    }

    /// Checks that the timer table holds exactly the timers the parts' state needs
    /// (handshakes, upgrades, updates, announcements), and the fetch queue's its requests
    /// and back-offs: for tests and simulations.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn check_timers(&self) -> Result<(), String> {
        self.channels.check_timers(&self.timers)?;
        for c in self.cores.values() {
            c.check_timers(&self.timers)?;
        }
        for (timer, _) in self.timers.entries() {
            if let Timer::Upgrade(core)
            | Timer::Update(core)
            | Timer::Announce(core)
            | Timer::Redial(core) = timer
                && !self.cores.contains_key(&core)
            {
                return Err(format!("{timer:?} of a core not replicated"));
            }
        }
        self.announcer.check_timers(&self.timers)?;
        self.redial.check_timers(&self.timers)?;
        self.fetch.check_timers()
    }

    /// Checks that what peers can make the engine hold is within its bounds: parked and open
    /// channels, queued requests and running storage tasks, peers remembered. The simulator
    /// checks it after every turn of every honest node, beside hostile ones.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn check_bounds(&self) -> Result<(), String> {
        self.channels.check_bounds(&self.cfg)?;
        self.server.check_bounds(&self.cfg)?;
        self.redial.check_bounds()?;
        self.peers.check_bounds()?;
        if self.store_peers.len() > MAX_STORE_PEERS {
            return Err(format!("{} store peers", self.store_peers.len()));
        }
        if !self.arrived.is_empty() {
            return Err(format!(
                "{} cores' blocks arrived, not applied",
                self.arrived.len()
            ));
        }
        if let Some((core, _)) = self.cores.iter().find(|(_, c)| c.has_stalled_blocks()) {
            return Err(format!("blocks of {core:02x?} wait with no apply running"));
        }
        Ok(())
    }
}

/// Whether channel `ch` of `peer` for `core` carries nothing and would carry nothing if kept:
/// nothing its core's sync would send or wait for, and no request of the peer's queued or
/// being read.
fn is_idle(
    cores: &BTreeMap<CoreKey, CoreSync>,
    server: &Server,
    peer: PeerId,
    core: CoreKey,
    ch: ChannelId,
) -> bool {
    cores.get(&core).is_some_and(|c| c.is_idle(ch)) && !server.is_busy_on(&peer, ch)
}

/// The cores we may open a channel for to `peer`: those that know it, or every one we
/// replicate for a store peer.
fn cores_for(
    peer: &PeerId,
    every: bool,
    cores: &BTreeMap<CoreKey, CoreSync>,
    redial: &Redial,
) -> Vec<CoreKey> {
    if every {
        cores.keys().copied().collect()
    } else {
        redial.cores_knowing(peer)
    }
}

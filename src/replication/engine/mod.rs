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
//! [`Engine`] composes parts that each own their state, and routes inputs to them and their
//! results to the outputs, as iroh-gossip's topic state composes its swarm membership and its
//! broadcast tree:
//!
//! - `peers`: the connected peers, their channels by core and their counters;
//! - `channels`: every channel by id and by core (`channels::ChannelTable`), opening and
//!   closing them, and routing each message of an open channel;
//! - `handshake` and `parked`: the key proof on each new channel, and the channels waiting
//!   for a core we do not replicate (`parked::ParkedChannels`);
//! - `remote`: what each channel's remote holds (`Sync`, `Range`, `Want`), recorded as
//!   sources in the fetch queue;
//! - `replica`: each core's local state and what follows from its changes;
//! - `upgrade`: the signed-length requests of each core and their deadlines
//!   (`upgrade::Upgrades`);
//! - `fetching`: the blocks to fetch, the run requests the [`FetchQueue`] hands out, their
//!   answers, and the end of every turn (`Engine::schedule`);
//! - `apply`: the proofs of each core waiting for storage (`apply::ApplyQueue`);
//! - `push`: the writer's pushes of new blocks to peers that follow it live;
//! - `serve`: the peers' requests to us, queued, bounded and answered (`serve::Server`);
//! - `announce`: gossip announcements and the rate limit on the dials they cause
//!   (`announce::Announcer`, `announce::DialLimit`);
//! - `tasks`: what each storage task is for, and where its result goes;
//! - `io` and `config`: the public types the driver sees.
//!
//! Timers come from deadline sets kept in step with the state (handshakes, upgrades,
//! announcements here, requests and back-offs in the fetch queue): [`Engine::poll_timeout`]
//! reads the first of each, and [`Engine::handle_timeout`] takes only the due ones.

mod announce;
mod apply;
mod channels;
mod config;
mod extensions;
mod fetching;
mod handshake;
mod idle;
mod io;
mod leave;
mod parked;
mod peers;
mod push;
mod remote;
mod replica;
mod serve;
mod tasks;
#[cfg(test)]
mod testing;
mod update;
mod upgrade;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::Instant,
};

use announce::{Announcer, DialLimit};
use channels::{ChannelTable, Sent};
pub use config::EngineConfig;
pub use extensions::{
    ExtensionTarget, MAX_EXTENSION_NAME, MAX_EXTENSION_PAYLOAD, MAX_STORE_CHANNEL_FRAME,
    STORE_CHANNEL_KEY, store_channel_discovery_key,
};
pub use idle::IDLE_REASON;
pub use io::{
    ApplyOutcome, ChannelId, Event, Input, LocalInfo, Mode, Output, PeerStats, Task, TaskId,
    TaskResult,
};
pub use leave::LEAVE_REASON;
use parked::ParkedChannels;
use peers::Peer;
use replica::Replica;
use serve::Server;
use tasks::TaskCtx;
use upgrade::Upgrades;

use super::{
    PeerId,
    deadlines::Deadlines,
    fetch::FetchQueue,
    wire::{Message, SyncInfo},
};
use crate::crypto::{
    CoreKey, DiscoveryKey,
    capability::{Role, check_capability},
    discovery_key,
};

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
/// - [`Input::TaskDone`] exactly once for every [`Output::Task`], with the same id, the result
///   variant of the task (`CreateProof` → `Proof`, `CreateRun` → `Run`, `ApplyProof` →
///   `Applied`, `ApplyRun` → `RunApplied`) and, for applies, the core's state after the task.
///   The engine runs at most one apply task per core at a time; the others may finish in any
///   order. Tasks for a peer or channel that went away meanwhile are reported all the same.
/// - [`Input::Backlog`] when the bytes queued towards a peer cross
///   [`EngineConfig::max_backlog_bytes`] either way: serving that peer waits while it is over.
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
    /// The replicated cores: local state, mode, wanted blocks, proofs waiting to be applied.
    cores: BTreeMap<CoreKey, Replica>,
    /// The core of each discovery key (the key on the wire).
    by_discovery_key: BTreeMap<DiscoveryKey, CoreKey>,
    /// Connected peers: their channel of each core and their counters.
    peers: BTreeMap<PeerId, Peer>,
    /// Every channel, by id and by core.
    channels: ChannelTable,
    /// Handshake deadlines: channels we opened waiting for `Accept`, and parked channels.
    handshakes: Deadlines<ChannelId>,
    /// When we open the channels the lower id of a connection did not (see `peers`).
    open_rest: Deadlines<PeerId>,
    /// Peers whose queued channels may open at the end of this turn (see `channels`).
    open_next: BTreeSet<PeerId>,
    /// Channels peers opened for cores we do not replicate (yet).
    parked: ParkedChannels,
    /// Each core's upgrade request in flight, with its deadline.
    upgrades: Upgrades,
    /// The missing blocks, the run requests fetching them, the peers' back-offs.
    fetch: FetchQueue,
    /// The serve side: the peers' requests to us, queued and bounded.
    server: Server,
    /// When each core was last announced on gossip, and the announcements waiting.
    announcer: Announcer,
    /// The rate limit on dials that gossip announcements cause.
    dials: DialLimit,
    /// Running storage tasks: what each is for.
    tasks: BTreeMap<TaskId, TaskCtx>,
    /// Outputs not yet polled, in order.
    outputs: VecDeque<Output>,
    /// The id of the next channel we open (even).
    next_channel: ChannelId,
    /// The id of the next storage task.
    next_task: TaskId,
    /// The epoch of the replica last added.
    next_epoch: u64,
    /// Extension names the application registered.
    extensions: extensions::ExtensionNames,
    /// The channels each core's `update` waits for.
    updates: update::PendingUpdates,
    /// When each update under way stops waiting for silent peers.
    update_deadlines: Deadlines<CoreKey>,
    /// Requests being read for peers that the peers cancelled: `(channel, request id)`.
    cancelled: BTreeSet<(ChannelId, u64)>,
    /// Peers at their channel cap with cores waiting for room (see `idle`).
    room_wanted: BTreeSet<PeerId>,
    /// When to look again for idle channels while cores wait for room, if no message comes.
    room_deadline: Option<Instant>,
}

impl Engine {
    /// An engine for the endpoint `me`.
    pub fn new(me: PeerId, cfg: EngineConfig) -> Self {
        Self {
            me,
            fetch: FetchQueue::new(cfg.fetch.clone()),
            upgrades: Upgrades::new(cfg.upgrade_timeout),
            server: Server::new(&cfg),
            announcer: Announcer::new(cfg.announce_interval),
            dials: DialLimit::new(cfg.gossip_dials_per_second),
            cfg,
            cores: BTreeMap::new(),
            by_discovery_key: BTreeMap::new(),
            peers: BTreeMap::new(),
            channels: ChannelTable::default(),
            handshakes: Deadlines::default(),
            open_rest: Deadlines::default(),
            open_next: BTreeSet::new(),
            parked: ParkedChannels::default(),
            tasks: BTreeMap::new(),
            outputs: VecDeque::new(),
            next_channel: 0,
            next_task: 0,
            next_epoch: 0,
            extensions: Default::default(),
            updates: Default::default(),
            update_deadlines: Deadlines::default(),
            cancelled: BTreeSet::new(),
            room_wanted: BTreeSet::new(),
            room_deadline: None,
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

    /// Starts replicating a core: joins its gossip topic, adopts the channels peers parked for
    /// it and opens a channel on every other connection. Adding a core twice only updates its
    /// mode (and a core that was only [served](Self::serve_core) becomes replicated). A turn
    /// of its own (see the calling contract).
    pub fn add_core(&mut self, key: CoreKey, local: LocalInfo, mode: Mode, now: Instant) {
        if key == *STORE_CHANNEL_KEY {
            return;
        }
        if let Some(r) = self.cores.get_mut(&key) {
            r.mode = mode;
            if std::mem::take(&mut r.served_only) {
                self.open_to_every_peer(key, now);
            }
            self.schedule(now);
            return;
        }
        self.insert_core(key, local, mode, false, now);
        self.open_to_every_peer(key, now);
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
        let dk = discovery_key(&key);
        let proven = self.parked.of_core(&dk).into_iter().any(|ch| {
            self.parked.get(ch).is_some_and(|p| {
                check_capability(&key, Role::Opener, &p.peer, &self.me, &p.capability)
            })
        });
        if !proven {
            return false;
        }
        self.insert_core(key, local, mode, true, now);
        self.schedule(now);
        true
    }

    /// Adds the replica of `key` and adopts the channels parked for it.
    fn insert_core(
        &mut self,
        key: CoreKey,
        local: LocalInfo,
        mode: Mode,
        served_only: bool,
        now: Instant,
    ) {
        let dk = discovery_key(&key);
        self.by_discovery_key.insert(dk, key);
        self.next_epoch += 1;
        self.cores.insert(
            key,
            Replica::new(dk, local, mode, self.next_epoch, served_only),
        );
        self.outputs
            .push_back(Output::JoinGossip(key, super::gossip::topic(&dk)));
        for ch in self.parked.of_core(&dk) {
            if let Some(p) = self.unpark(ch) {
                self.on_open(p.peer, ch, dk, p.capability, now);
            }
        }
        self.enqueue_missing(key);
    }

    /// Opens a channel for `key` on every connection, and announces it.
    fn open_to_every_peer(&mut self, key: CoreKey, now: Instant) {
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            self.open_channel(peer, key, now);
        }
        self.announce(key, now);
    }

    /// Whether `key` is replicated.
    pub fn has_core(&self, key: &CoreKey) -> bool {
        self.cores.contains_key(key)
    }

    /// The mode `key` is replicated in.
    pub fn mode(&self, key: &CoreKey) -> Option<Mode> {
        self.cores.get(key).map(|r| r.mode)
    }

    /// The local state the engine knows of a core.
    pub fn local(&self, key: &CoreKey) -> Option<LocalInfo> {
        self.cores.get(key).map(|r| r.local)
    }

    /// Connected peers, in id order.
    pub fn peers(&self) -> Vec<PeerId> {
        self.peers.keys().copied().collect()
    }

    /// Peers with an open channel for `core`, in id order.
    pub fn core_peers(&self, core: &CoreKey) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self
            .open_channels(core)
            .into_iter()
            .map(|(peer, _)| peer)
            .collect();
        v.sort();
        v
    }

    /// Dials that gossip announcements asked for and the rate limit skipped.
    pub fn gossip_dials_skipped(&self) -> u64 {
        self.dials.skipped()
    }

    /// Channels peers opened for cores we do not replicate, waiting to be adopted.
    pub fn parked_channels(&self) -> usize {
        self.parked.len()
    }

    /// Blocks waiting in the fetch queue.
    pub fn queued_blocks(&self) -> usize {
        self.fetch.len()
    }

    /// Feeds one input at time `now` (step 1 of the calling contract).
    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::PeerConnected(peer) => self.on_connected(peer, now),
            Input::PeerDisconnected(peer) => self.on_disconnected(peer),
            Input::Message(peer, channel, msg) => self.on_message(peer, channel, msg, now),
            Input::ChannelClosed(peer, channel) => self.on_channel_closed(peer, channel),
            Input::TaskDone(id, result) => self.on_task_done(id, result, now),
            Input::Gossip(core, bytes) => self.on_gossip(core, &bytes, now),
            Input::GossipLagged(core) => self.resync(core),
            Input::LocalChanged(core, local) => self.update_local(core, local, now),
            Input::Want(core, start, end) => self.on_want(core, start, end, now),
            Input::Unwant(core, start, end) => self.on_unwant(core, start, end),
            Input::Invalid(core, peer, reason) => self.blame(core, peer, reason, now),
            Input::Backlog(peer, bytes) => self.on_backlog(peer, bytes),
            Input::Update(core) => self.on_update(core, now),
        }
        self.schedule(now);
    }

    /// The next output to carry out (step 2 of the calling contract).
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called (step 3 of the
    /// calling contract): the first deadline of the handshakes, upgrades, announcements,
    /// requests and back-offs, each read from its deadline set.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.handshakes.first(),
            self.open_rest.first(),
            self.room_deadline,
            self.update_deadlines.first(),
            self.upgrades.next_deadline(),
            self.announcer.next_deadline(),
            self.fetch.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Handles every timer due at `now`: handshakes, channels to open, request timeouts,
    /// back-offs, upgrades, announcements.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_handshakes(now);
        self.open_rest_due(now);
        if self.room_deadline.is_some_and(|t| t <= now) {
            self.room_deadline = None;
        }
        self.expire_runs(now);
        self.expire_upgrades(now);
        self.expire_updates(now);
        for core in self.announcer.due(now) {
            self.announce(core, now);
        }
        self.schedule(now);
    }

    /// Checks that every deadline set holds exactly the timers of the state it indexes
    /// (handshakes, upgrades, announcements, requests and back-offs), and that every upgrade
    /// and request in flight has one: for tests and simulations.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn check_timers(&self) -> Result<(), String> {
        let mut expected: Vec<(Instant, ChannelId)> = self
            .channels
            .all()
            .filter_map(|(id, c)| c.handshake_deadline.map(|t| (t, id)))
            .chain(self.parked.all().map(|(id, p)| (p.deadline, id)))
            .collect();
        expected.sort();
        let set = self.handshakes.entries();
        if set != expected {
            return Err(format!("handshake timers {set:?}, handshakes {expected:?}"));
        }
        let mut expected: Vec<(Instant, PeerId)> = self
            .peers
            .iter()
            .filter_map(|(id, p)| p.open_rest_at.map(|t| (t, *id)))
            .collect();
        expected.sort();
        let set = self.open_rest.entries();
        if set != expected {
            return Err(format!("open timers {set:?}, peers {expected:?}"));
        }
        self.check_update_timers()?;
        self.upgrades.check_timers()?;
        self.announcer.check_timers()?;
        self.fetch.check_timers()
    }

    fn emit(&mut self, ev: Event) {
        self.outputs.push_back(Output::Event(ev));
    }

    /// Queues a message. Nothing but the handshake leaves on a channel whose peer has not
    /// proven the key: this is the one place that guarantees it.
    fn send(&mut self, peer: PeerId, channel: ChannelId, msg: Message) {
        let handshake = matches!(msg, Message::Accept { .. } | Message::Close { .. });
        if !handshake && !self.is_authenticated(channel) {
            debug_assert!(false, "{msg:?} on an unauthenticated channel");
            return;
        }
        self.outputs.push_back(Output::Send(peer, channel, msg));
    }

    fn sync_info(&self, core: &CoreKey, ask: bool) -> Option<SyncInfo> {
        self.cores.get(core).map(|r| SyncInfo {
            fork: r.local.fork,
            length: r.local.length,
            contiguous: r.local.contiguous,
            ask,
            downloading: r.mode == Mode::Full && !r.local.writable,
        })
    }

    /// Sends our state on every open channel of `core`, but those with a push being prepared:
    /// their `Sync` follows the push.
    fn broadcast_sync(&mut self, core: CoreKey, ask: bool) {
        let Some(info) = self.sync_info(&core, ask) else {
            return;
        };
        for (peer, ch) in self.open_channels(&core) {
            if self.channels.get(&ch).is_some_and(|c| !c.pushing) {
                self.send(peer, ch, Message::Sync(info));
            }
        }
    }
}

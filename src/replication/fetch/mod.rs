//! The fetch queue (after kitsune2's CoreFetch): which missing blocks to request from which
//! peer, and when.
//!
//! Entries are keyed by (core, block); the peers that have a block are those whose ranges (what
//! each said it holds) cover it. Requests go out as runs of consecutive blocks from one peer,
//! within a per-peer window of bytes in flight, and while the blocks received and not yet
//! stored stay under a cap. A request that times out, or
//! a peer that sends invalid data, puts the peer on exponential back-off (capped); after its
//! last back-off the peer is penalized: asked nothing for a penalty period that doubles with
//! each offence (and is longer for data that did not verify than for slowness), then probed
//! again, one request at a time. Nobody is dropped for good while it is connected: a slow
//! honest peer comes back. A block leaves the queue only when it was verified and committed;
//! until then it is retried from whichever peer can serve it. Pure state: time comes in as an
//! argument.
//!
//! A peer with requests open has two deadlines, and all its requests time out at the first
//! (one failure): it answers its requests in turn, over streams that share its link, so a
//! request at the back of a window may start long after it was sent.
//! - Its rate: each block it delivers (one that will be verified) moves the deadline on by
//!   `timeout` per `run_bytes` of the block, up to `timeout` from now. A peer keeping up
//!   `run_bytes` per `timeout` never times out, however long its window takes (8 MiB take
//!   8 s at 1 MB/s); one slower, silent or trickling blocks does.
//! - Its oldest open request must get one of its blocks within `timeout` of becoming the
//!   oldest or of its last one: a peer cannot keep a block from everyone by withholding it
//!   while it delivers the rest.
//!
//! Its timers (each peer's answer deadline and back-off) are kept in a `Deadlines` set
//! in step with the requests and peers, so [`FetchQueue::next_deadline`] and
//! [`FetchQueue::poll_timeouts`] touch only what is due, however many requests are in flight.
//!
//! This file holds the queue, its requests and its per-peer state; `blocks` holds the queued
//! entries of each core, and `block_ranges` the sets of blocks kept as ranges (a core's blocks
//! waiting for a peer, a request's blocks not yet answered). Which peers have a block is what
//! each said it holds (its ranges), never a list per block.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::{Duration, Instant},
};

mod block_ranges;
mod blocks;
mod deadlines;

use block_ranges::BlockRanges;
use blocks::{CoreQueue, EntryState};
use deadlines::Deadlines;

use super::{PeerId, ranges};
use crate::{core::MAX_RUN, crypto::CoreKey};

/// Tuning of the fetch queue.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Bytes in flight per peer (estimated from the core's average block size).
    pub window_bytes: u64,
    /// Largest run one request asks for, in bytes.
    pub run_bytes: u64,
    /// Time a peer with requests open may go without delivering before they are retried
    /// elsewhere; each block it delivers buys it `timeout` per `run_bytes` of the block, up
    /// to `timeout` from now (so the slowest peer kept is `run_bytes` per `timeout`).
    pub timeout: Duration,
    /// First back-off after a failure; doubles with each further failure.
    pub backoff: Duration,
    /// Longest back-off.
    pub backoff_max: Duration,
    /// Failures in a row after which a peer is penalized: asked nothing for a while.
    pub max_failures: u32,
    /// A peer's first penalty; it doubles with each further one on the same connection, up to
    /// `penalty_max`, and is [`INVALID_PENALTY_FACTOR`] times as long when the peer sent data
    /// that did not verify.
    pub penalty: Duration,
    /// Longest penalty.
    pub penalty_max: Duration,
    /// Requests in flight per peer (a server queues only so many).
    pub max_requests: usize,
    /// Bytes received and not yet stored, over all peers and cores, beyond which nothing more
    /// is asked for: what a reader whose disk is slower than the network holds in memory.
    pub max_held_bytes: u64,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            window_bytes: 8 * 1024 * 1024,
            run_bytes: 256 * 1024,
            timeout: Duration::from_secs(5),
            backoff: Duration::from_millis(250),
            backoff_max: Duration::from_secs(8),
            max_failures: 6,
            penalty: Duration::from_secs(30),
            penalty_max: Duration::from_secs(600),
            max_requests: 32,
            max_held_bytes: 64 * 1024 * 1024,
        }
    }
}

/// How much longer the penalty of a peer that sent data that did not verify is than that of a
/// slow one.
pub const INVALID_PENALTY_FACTOR: u32 = 4;

/// Pieces a peer's `NoData` answers may cut what it said it holds of one core into; past them
/// it is no longer a source of that core's blocks (until it says it holds more). What it says
/// holds at most about half as many (a channel keeps 1,024 of a peer's ranges).
pub const MAX_SOURCE_PIECES: usize = 2048;

/// Peers that went away whose failures, penalty and offences are kept, should they come back
/// (the most recent).
pub const MAX_GONE_PEERS: usize = 1024;

/// A request the queue wants sent: blocks `start..end` of `core` from `peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    /// Request id (also the id on the wire).
    pub id: u64,
    /// Peer to ask.
    pub peer: PeerId,
    /// Core.
    pub core: CoreKey,
    /// First block.
    pub start: u64,
    /// End of the run (exclusive).
    pub end: u64,
}

#[derive(Debug)]
struct Request {
    peer: PeerId,
    core: CoreKey,
    /// When it was sent.
    sent: Instant,
    /// Blocks not yet answered.
    outstanding: BlockRanges,
}

#[derive(Debug, Default)]
struct PeerState {
    in_flight_bytes: u64,
    requests: usize,
    /// While it has requests open: when they time out, the earlier of `rate_by` and the
    /// oldest request's deadline (the time its timer is set for).
    answer_by: Option<Instant>,
    /// While it has requests open: when they time out unless it delivers more bytes.
    rate_by: Option<Instant>,
    /// Its oldest open request, and when it times out without one of its blocks.
    oldest: Option<(u64, Instant)>,
    failures: u32,
    backoff_until: Option<Instant>,
    /// Whether the back-off is a penalty (after the last failure allowed).
    penalized: bool,
    /// Penalties so far (kept when it reconnects, see [`MAX_GONE_PEERS`]): each doubles the
    /// next. Forgotten once a penalty comes more than `penalty_max` after the last one ended.
    offences: u32,
    /// When its last penalty ended.
    penalty_ended: Option<Instant>,
    /// Whether a failure since the last penalty was data that did not verify.
    sent_invalid: bool,
    /// The blocks of each core the peer is a source of, as ranges: runs are looked for only
    /// there, so a peer that has little costs little to serve the queue.
    ranges: BTreeMap<CoreKey, Vec<(u64, u64)>>,
}

impl PeerState {
    /// When its requests time out: the earlier of its two deadlines (set together while it
    /// has requests open).
    fn due(&self) -> Option<Instant> {
        self.rate_by
            .zip(self.oldest)
            .map(|(rate, (_, oldest))| rate.min(oldest))
    }

    /// Brings `answer_by` to [`due`](Self::due): the timer's old and new time.
    fn refresh_answer_by(&mut self) -> (Option<Instant>, Option<Instant>) {
        let at = self.due();
        (std::mem::replace(&mut self.answer_by, at), at)
    }
}

/// What a timer of the queue is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The answer deadline of a peer with requests open.
    Answer(PeerId),
    /// The end of a peer's back-off.
    Backoff(PeerId),
}

/// What became of a block that arrived for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Expected: to be verified and stored.
    Taken,
    /// Not asked for in that request, or answered already.
    Unexpected,
    /// Asked for, but holding it would pass `max_held_bytes`: back in the queue, dropped.
    OverCap,
}

/// What happened to a peer that the engine should act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerNotice {
    /// The peer failed and is backed off until the given time.
    BackedOff(PeerId, Instant),
    /// The peer failed after its last back-off and is penalized: asked nothing until the given
    /// time, then probed again.
    Penalized(PeerId, Instant),
}

/// The queue of missing blocks; see the module docs.
#[derive(Debug)]
pub struct FetchQueue {
    cfg: FetchConfig,
    /// Queued blocks per core, in key order (runs are handed out in that order).
    cores: BTreeMap<CoreKey, CoreQueue>,
    /// Every core with a block waiting for a peer, and maybe some whose wait ended (removed
    /// when [`assign`](Self::assign) finds them empty): with many cores whose blocks all
    /// arrived, a peer's runs are looked for among these rather than among all it has.
    ready_cores: BTreeSet<CoreKey>,
    requests: BTreeMap<u64, Request>,
    peers: BTreeMap<PeerId, PeerState>,
    block_size: BTreeMap<CoreKey, u64>,
    notices: Vec<PeerNotice>,
    next_id: u64,
    /// Bytes of entries in the `Received` state.
    held_bytes: u64,
    /// Every peer's answer deadline and back-off, by time.
    deadlines: Deadlines<Timer>,
    /// The record of peers that went away with failures, oldest first in `gone_order`.
    gone: BTreeMap<PeerId, PeerState>,
    gone_order: VecDeque<PeerId>,
    /// The latest time a call brought (none before the first): when a request ends on a call
    /// that brings none (a cancel, a core or source removed), the next oldest request's wait
    /// starts from it. Never read from the system clock, so a simulated run replays exactly.
    clock: Option<Instant>,
}

impl FetchQueue {
    /// An empty queue.
    pub fn new(cfg: FetchConfig) -> Self {
        Self {
            cfg,
            cores: BTreeMap::new(),
            ready_cores: BTreeSet::new(),
            requests: BTreeMap::new(),
            peers: BTreeMap::new(),
            block_size: BTreeMap::new(),
            notices: Vec::new(),
            next_id: 1,
            held_bytes: 0,
            deadlines: Deadlines::default(),
            gone: BTreeMap::new(),
            gone_order: VecDeque::new(),
            clock: None,
        }
    }

    /// The state of `peer`, made now if it has none: from its record if it went away with
    /// failures (its back-off or penalty goes on).
    fn state(&mut self, peer: PeerId) -> &mut PeerState {
        if !self.peers.contains_key(&peer)
            && let Some(r) = self.gone.remove(&peer)
        {
            self.gone_order.retain(|p| *p != peer);
            if r.backoff_until.is_some() {
                self.deadlines
                    .replace(Timer::Backoff(peer), None, r.backoff_until);
            }
            self.peers.insert(peer, r);
        }
        self.peers.entry(peer).or_default()
    }

    /// Whether `peer` has requests (for `core`, if given) open and is more than half a timeout
    /// late at `now` with them: behind its rate, or, for its oldest request, without one of
    /// its blocks. A peer that goes away then held them, where one that goes right after it
    /// was asked or while it delivers (a restart, a connection replaced) did not; requests at
    /// the back of a deep window that have not started yet are not late.
    pub fn has_late_requests(&self, peer: &PeerId, core: Option<&CoreKey>, now: Instant) -> bool {
        let Some(p) = self.peers.get(peer) else {
            return false;
        };
        let half = self.cfg.timeout / 2;
        let late = |by: Instant| by.saturating_duration_since(now) < half;
        let slow = p.rate_by.is_some_and(late);
        self.requests.iter().any(|(id, r)| {
            r.peer == *peer
                && core.is_none_or(|c| r.core == *c)
                && (slow || p.oldest.is_some_and(|(o, by)| o == *id && late(by)))
        })
    }

    /// Number of blocks in the queue (waiting, in flight or being committed).
    pub fn len(&self) -> usize {
        self.cores.values().map(|q| q.entries.len()).sum()
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.cores.values().all(|q| q.entries.is_empty())
    }

    /// Whether block `index` of `core` is queued.
    pub fn contains(&self, core: &CoreKey, index: u64) -> bool {
        self.cores
            .get(core)
            .is_some_and(|q| q.entries.contains_key(&index))
    }

    /// Sets the average block size of `core`, which sizes runs and windows.
    pub fn set_block_size(&mut self, core: CoreKey, bytes: u64) {
        self.block_size.insert(core, bytes.max(1));
    }

    /// Queues blocks `start..end` of `core` (keeping entries already queued).
    pub fn add(&mut self, core: CoreKey, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let q = self.cores.entry(core).or_default();
        let beyond = q
            .entries
            .last_key_value()
            .is_none_or(|(last, _)| *last < start);
        if beyond && end - start >= q.entries.len() as u64 {
            // A long stretch past everything queued (a log to catch up on): built in bulk.
            q.entries
                .append(&mut (start..end).map(|i| (i, EntryState::Ready)).collect());
            q.ready.insert(start, end);
        } else {
            for index in start..end {
                q.entries.entry(index).or_insert_with(|| {
                    q.ready.insert(index, index + 1);
                    EntryState::Ready
                });
            }
        }
        if !q.ready.is_empty() {
            self.ready_cores.insert(core);
        }
    }

    /// Records that `peer` has blocks `start..end` of `core` (of a core with a queue): they
    /// join its ranges, which are what it is asked for. No block is walked.
    /// A peer that went away with failures is back on its record here (its back-off or
    /// penalty goes on), whether or not the core has a queue.
    pub fn add_source(&mut self, core: CoreKey, start: u64, end: u64, peer: PeerId) {
        if start >= end {
            return;
        }
        self.state(peer);
        if !self.cores.contains_key(&core) {
            return;
        }
        if let Some(state) = self.peers.get_mut(&peer) {
            ranges::insert(state.ranges.entry(core).or_default(), start, end);
        }
    }

    /// Forgets every entry and request of `core` (after it changed fork, or stopped replicating).
    pub fn remove_core(&mut self, core: &CoreKey) {
        if let Some(q) = self.cores.remove(core) {
            self.release_held(q.entries.into_values());
        }
        self.ready_cores.remove(core);
        for p in self.peers.values_mut() {
            p.ranges.remove(core);
        }
        self.fail_requests(|r| r.core == *core);
    }

    /// Blocks `indices` of `core` are no longer wanted: their entries leave the queue (but
    /// those received and being stored). Returns the requests left with nothing to fetch,
    /// which are closed here, for the caller to cancel with their peers.
    pub fn remove_blocks(&mut self, core: &CoreKey, indices: &[u64]) -> Vec<u64> {
        let Some(q) = self.cores.get_mut(core) else {
            return Vec::new();
        };
        let mut touched = BTreeSet::new();
        for index in indices {
            match q.entries.get(index).copied() {
                Some(EntryState::Received(_)) | None => {}
                Some(state) => {
                    if let EntryState::InFlight(id) = state {
                        touched.insert(id);
                    }
                    q.entries.remove(index);
                    q.ready.remove_one(*index);
                }
            }
        }
        let emptied: Vec<u64> = touched
            .into_iter()
            .filter(|id| {
                self.requests.get(id).is_some_and(|r| {
                    r.outstanding
                        .iter()
                        .all(|(s, e)| q.entries.range(s..e).next().is_none())
                })
            })
            .collect();
        for id in &emptied {
            // Its blocks are gone from the queue: failing it only frees the peer's window.
            self.fail_request(*id);
        }
        emptied
    }

    /// `peer` no longer serves `core` (its channel closed): its requests for it go to others
    /// (the engine counts a failure first if the peer gave the channel up with requests in
    /// flight).
    pub fn remove_source(&mut self, core: &CoreKey, peer: &PeerId) {
        self.fail_requests(|r| r.peer == *peer && r.core == *core);
        if let Some(p) = self.peers.get_mut(peer) {
            p.ranges.remove(core);
        }
    }

    /// Forgets blocks of `core` from `length` on (the log got shorter).
    pub fn truncate(&mut self, core: &CoreKey, length: u64) {
        if let Some(q) = self.cores.get_mut(core) {
            let dropped = q.entries.split_off(&length);
            q.ready.split_off(length);
            self.release_held(dropped.into_values());
        }
    }

    /// The peer went away: it is no longer a source, and its requests go to others. Going
    /// with requests in flight for more than half their timeout counts as a failure; its
    /// failures, back-off and offences are kept (for the last [`MAX_GONE_PEERS`] peers) for
    /// when it comes back.
    pub fn remove_peer(&mut self, peer: &PeerId, now: Instant) {
        self.tick(now);
        if self.has_late_requests(peer, None, now) {
            self.fail(*peer, now, false);
        }
        self.forget_peer(peer);
    }

    /// Fails the requests of `peer` without penalty and forgets its state, but for the record
    /// of its failures.
    fn forget_peer(&mut self, peer: &PeerId) {
        self.fail_requests(|r| r.peer == *peer);
        let Some(state) = self.peers.remove(peer) else {
            return;
        };
        if state.failures > 0 || state.offences > 0 {
            // What it failed is kept, not what it was asked or holds.
            let record = PeerState {
                in_flight_bytes: 0,
                requests: 0,
                ranges: BTreeMap::new(),
                ..state
            };
            self.gone.insert(*peer, record);
            self.gone_order.retain(|p| p != peer);
            self.gone_order.push_back(*peer);
            while self.gone_order.len() > MAX_GONE_PEERS {
                if let Some(old) = self.gone_order.pop_front() {
                    self.gone.remove(&old);
                }
            }
        }
        self.deadlines
            .replace(Timer::Backoff(*peer), state.backoff_until, None);
    }

    /// Whether `peer` is serving a penalty at `now` (see [`PeerNotice::Penalized`]).
    pub fn is_penalized(&self, peer: &PeerId, now: Instant) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.penalized && p.backoff_until.is_some_and(|t| t > now))
    }

    /// Whether `peer` is on back-off at `now`.
    pub fn is_backed_off(&self, peer: &PeerId, now: Instant) -> bool {
        self.peers
            .get(peer)
            .and_then(|p| p.backoff_until)
            .is_some_and(|t| t > now)
    }

    /// The next request to send at `now`, if a peer has room in its window and a block to give.
    pub fn next_request(&mut self, now: Instant) -> Option<Assignment> {
        self.tick(now);
        if self.held_bytes >= self.cfg.max_held_bytes {
            // Storage is behind: wait for commits before asking for more.
            return None;
        }
        let mut peers: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, s)| {
                // A peer that failed gets one probe at a time until it answers again.
                let max_requests = if s.failures > 0 {
                    1
                } else {
                    self.cfg.max_requests
                };
                s.in_flight_bytes < self.cfg.window_bytes
                    && s.requests < max_requests
                    && s.backoff_until.is_none_or(|t| t <= now)
            })
            .map(|(p, _)| *p)
            .collect();
        // The least busy peer first, ties by id, so that seeders share the work.
        peers.sort_by_key(|p| (self.peers[p].in_flight_bytes, *p));
        for peer in peers {
            if let Some(a) = self.assign(peer, now) {
                return Some(a);
            }
        }
        None
    }

    /// Builds the longest run of ready blocks `peer` has, starting at the first one, in key
    /// order of the cores. Only the cores with waiting blocks and the ranges the peer is a
    /// source of are looked at, through the smaller of the two sets.
    fn assign(&mut self, peer: PeerId, now: Instant) -> Option<Assignment> {
        let state = self.peers.get(&peer)?;
        let room = self.cfg.window_bytes.saturating_sub(state.in_flight_bytes);
        let failed = state.failures > 0;
        let run = if self.ready_cores.len() < state.ranges.len() {
            let mut stale = Vec::new();
            let mut found = None;
            for core in &self.ready_cores {
                if self.cores.get(core).is_none_or(|q| q.ready.is_empty()) {
                    stale.push(*core);
                    continue;
                }
                if let Some(known) = state.ranges.get(core)
                    && let Some((start, end)) = self.run_in(core, known, room, failed)
                {
                    found = Some((*core, start, end));
                    break;
                }
            }
            for core in stale {
                self.ready_cores.remove(&core);
            }
            found
        } else {
            state.ranges.iter().find_map(|(core, known)| {
                let (start, end) = self.run_in(core, known, room, failed)?;
                Some((*core, start, end))
            })
        };
        let (core, start, end) = run?;
        let id = self.next_id;
        self.next_id += 1;
        if let Some(q) = self.cores.get_mut(&core) {
            q.set_in_flight(start, end, id);
            if q.ready.is_empty() {
                self.ready_cores.remove(&core);
            }
        }
        let size = self.block_size.get(&core).copied().unwrap_or(1024);
        let due = now + self.cfg.timeout;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.in_flight_bytes = p
                .in_flight_bytes
                .saturating_add(size.saturating_mul(end - start));
            if p.requests == 0 {
                p.rate_by = Some(due);
                p.oldest = Some((id, due));
            }
            p.requests += 1;
        }
        self.update_answer_by(&peer);
        self.requests.insert(
            id,
            Request {
                peer,
                core,
                sent: now,
                outstanding: BlockRanges::from_range(start, end),
            },
        );
        Some(Assignment {
            id,
            peer,
            core,
            start,
            end,
        })
    }

    /// The first run of blocks of `core` ready in the peer's `known` ranges (what it holds):
    /// as long as its window, the run size and [`MAX_RUN`] allow (one block for a peer that
    /// failed).
    fn run_in(
        &self,
        core: &CoreKey,
        known: &[(u64, u64)],
        room: u64,
        failed: bool,
    ) -> Option<(u64, u64)> {
        let q = self.cores.get(core)?;
        let (start, end) = known
            .iter()
            .find_map(|&(s, e)| q.ready.first_within(s, e))?;
        let size = self.block_size.get(core).copied().unwrap_or(1024);
        let budget = if failed {
            1
        } else {
            (self.cfg.run_bytes.min(room) / size).clamp(1, MAX_RUN)
        };
        Some((start, end.min(start.saturating_add(budget))))
    }

    /// Block `index` of request `id` arrived (not yet verified), `bytes` long: it counts as held
    /// at that size until stored. A block that was not expected from that request (late,
    /// duplicate or never asked for) is [`Arrival::Unexpected`]; one that would take the bytes
    /// held past `max_held_bytes` (blocks larger than the log's average were asked for) is
    /// [`Arrival::OverCap`] and goes back to the queue, so the cap holds whatever arrives. The
    /// peer's failures are forgiven only when a block of its verifies
    /// ([`on_verified`](Self::on_verified)), not when one arrives.
    pub fn on_received(&mut self, id: u64, index: u64, bytes: u64, now: Instant) -> Arrival {
        self.received(id, index, bytes, now, true)
    }

    /// As [`on_received`](Self::on_received), for a block that will not be verified (an
    /// earlier block of its run was not stored): it buys its peer no time.
    pub fn on_received_unverified(
        &mut self,
        id: u64,
        index: u64,
        bytes: u64,
        now: Instant,
    ) -> Arrival {
        self.received(id, index, bytes, now, false)
    }

    fn received(&mut self, id: u64, index: u64, bytes: u64, now: Instant, credit: bool) -> Arrival {
        let Some(req) = self.requests.get_mut(&id) else {
            return Arrival::Unexpected;
        };
        if !req.outstanding.remove_one(index) {
            return Arrival::Unexpected;
        }
        let (peer, core, done) = (req.peer, req.core, req.outstanding.is_empty());
        self.tick(now);
        let cap = now + self.cfg.timeout;
        let size = self.block_size.get(&core).copied().unwrap_or(1024);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.in_flight_bytes = p.in_flight_bytes.saturating_sub(size);
            // The peer delivered: its rate deadline moves on by `timeout` per `run_bytes` of
            // the block, up to `timeout` from now.
            if credit && let Some(by) = p.rate_by {
                let run = u128::from(self.cfg.run_bytes.max(1));
                let bought = self.cfg.timeout.as_nanos() * u128::from(bytes) / run;
                let bought = Duration::from_nanos(u64::try_from(bought).unwrap_or(u64::MAX));
                p.rate_by = Some(by.checked_add(bought).map_or(cap, |t| t.min(cap)));
            }
            if let Some((oldest, by)) = &mut p.oldest
                && *oldest == id
            {
                *by = cap;
            }
            let (old, at) = p.refresh_answer_by();
            self.deadlines.replace(Timer::Answer(peer), old, at);
        }
        let over =
            self.held_bytes > 0 && self.held_bytes.saturating_add(bytes) > self.cfg.max_held_bytes;
        let mut arrival = Arrival::Taken;
        if let Some(q) = self.cores.get_mut(&core)
            && let Some(state) = q.entries.get_mut(&index)
            && *state == EntryState::InFlight(id)
        {
            if over {
                q.make_ready(index, EntryState::InFlight(id));
                self.ready_cores.insert(core);
                arrival = Arrival::OverCap;
            } else {
                *state = EntryState::Received(bytes);
                self.held_bytes = self.held_bytes.saturating_add(bytes);
            }
        }
        if done {
            self.close_request(id, now);
        }
        arrival
    }

    /// The peer of request `id` does not have blocks `start..end`: it stops being their source.
    pub fn on_no_data(&mut self, id: u64, start: u64, end: u64, now: Instant) {
        if start >= end {
            return;
        }
        let Some(req) = self.requests.get_mut(&id) else {
            return;
        };
        let (peer, core) = (req.peer, req.core);
        let gone = req.outstanding.take(start, end);
        // Only the blocks this request still waited for stop being the peer's: a `NoData`
        // cannot cut holes in what it was not asked.
        if let Some(p) = self.peers.get_mut(&peer)
            && let Some(known) = p.ranges.get_mut(&core)
        {
            for &(s, e) in &gone {
                ranges::remove(known, s, e);
            }
            if known.len() > MAX_SOURCE_PIECES {
                // Holes cut one by one would make each of its runs a longer search.
                p.ranges.remove(&core);
            }
        }
        let done = req.outstanding.is_empty();
        let size = self.block_size.get(&core).copied().unwrap_or(1024);
        let count: u64 = gone.iter().map(|(s, e)| e - s).sum();
        if let Some(p) = self.peers.get_mut(&peer) {
            p.in_flight_bytes = p.in_flight_bytes.saturating_sub(size.saturating_mul(count));
        }
        if let Some(q) = self.cores.get_mut(&core) {
            for index in gone.into_iter().flat_map(|(s, e)| s..e) {
                q.make_ready(index, EntryState::InFlight(id));
            }
            self.ready_cores.insert(core);
        }
        if done {
            self.close_request(id, now);
        }
    }

    /// A block from `peer` verified: its failures and back-off are forgiven. Returns whether
    /// that ended a back-off (whose timer will not fire).
    pub fn on_verified(&mut self, peer: &PeerId) -> bool {
        let Some(p) = self.peers.get_mut(peer) else {
            return false;
        };
        p.failures = 0;
        let ended = p.backoff_until.take();
        p.penalized = false;
        self.deadlines.replace(Timer::Backoff(*peer), ended, None);
        ended.is_some()
    }

    /// Block `index` of `core` was verified and committed: it leaves the queue for every peer.
    pub fn on_committed(&mut self, core: &CoreKey, index: u64) {
        if let Some(q) = self.cores.get_mut(core)
            && let Some(state) = q.entries.remove(&index)
        {
            if state == EntryState::Ready {
                q.ready.remove_one(index);
            }
            self.release_held([state]);
        }
    }

    /// Entries that leave the `Received` state no longer count as held.
    fn release_held(&mut self, left: impl IntoIterator<Item = EntryState>) {
        for state in left {
            if let EntryState::Received(bytes) = state {
                self.held_bytes = self.held_bytes.saturating_sub(bytes);
            }
        }
    }

    /// Block `index` of `core` from `peer` did not verify: nothing was stored, the block waits
    /// for another try and the peer is backed off.
    pub fn on_invalid(&mut self, core: &CoreKey, index: u64, peer: PeerId, now: Instant) {
        self.requeue(core, index);
        self.penalize(peer, now);
    }

    /// Storing block `index` failed locally: the entry stays for another try, nobody is blamed.
    pub fn on_store_failed(&mut self, core: &CoreKey, index: u64) {
        self.requeue(core, index);
    }

    fn requeue(&mut self, core: &CoreKey, index: u64) {
        let Some(q) = self.cores.get_mut(core) else {
            return;
        };
        if let Some(state) = q.entries.get_mut(&index)
            && let EntryState::Received(bytes) = *state
        {
            *state = EntryState::Ready;
            q.ready.insert(index, index + 1);
            self.ready_cores.insert(*core);
            self.held_bytes = self.held_bytes.saturating_sub(bytes);
        }
    }

    /// `peer` was slow (a request timed out, or it could not prove what it claimed): it is
    /// backed off, or penalized after its last back-off; see [`PeerNotice`].
    pub fn penalize(&mut self, peer: PeerId, now: Instant) {
        self.fail(peer, now, false);
    }

    /// `peer`, gone by now, sent data that did not verify (found once it had left): the
    /// failure goes on its record, for when it comes back.
    pub fn penalize_gone(&mut self, peer: PeerId, now: Instant) {
        let connected = self.peers.contains_key(&peer);
        self.fail(peer, now, true);
        if !connected {
            self.forget_peer(&peer);
        }
    }

    /// `peer` sent data that did not verify: as [`penalize`](Self::penalize), and its next
    /// penalty is [`INVALID_PENALTY_FACTOR`] times as long.
    pub fn penalize_invalid(&mut self, peer: PeerId, now: Instant) {
        self.fail(peer, now, true);
    }

    /// Counts a failure of `peer`. A peer serving a penalty is asked nothing, so what it fails
    /// meanwhile (a late answer, a push) adds nothing.
    fn fail(&mut self, peer: PeerId, now: Instant, invalid: bool) {
        self.tick(now);
        let cfg = self.cfg.clone();
        let state = self.state(peer);
        if state.penalized && state.backoff_until.is_some_and(|t| t > now) {
            return;
        }
        state.failures += 1;
        state.sent_invalid |= invalid;
        if state.failures > cfg.max_failures {
            // Penalized: out for a while, then one more failure away from the next penalty,
            // probed one request at a time, forgiven by a block of its that verifies.
            // A long-lived peer's rare offences do not add up: the count starts again once
            // `penalty_max` passed since its last penalty ended.
            if state
                .penalty_ended
                .is_some_and(|t| now.saturating_duration_since(t) > cfg.penalty_max)
            {
                state.offences = 0;
            }
            state.offences = state.offences.saturating_add(1);
            let factor = 1u32 << (state.offences - 1).min(16);
            let mut penalty = cfg.penalty.saturating_mul(factor);
            if std::mem::take(&mut state.sent_invalid) {
                penalty = penalty.saturating_mul(INVALID_PENALTY_FACTOR);
            }
            let until = now + penalty.min(cfg.penalty_max);
            state.penalty_ended = Some(until);
            state.failures = cfg.max_failures;
            state.penalized = true;
            let ended = state.backoff_until.replace(until);
            self.deadlines
                .replace(Timer::Backoff(peer), ended, Some(until));
            self.notices.push(PeerNotice::Penalized(peer, until));
            // What it was asked goes to others (its sources stay: it is asked again after).
            self.fail_requests(|r| r.peer == peer);
            return;
        }
        let factor = 1u32 << (state.failures - 1).min(16);
        let delay = cfg.backoff.saturating_mul(factor).min(cfg.backoff_max);
        let ended = state.backoff_until.replace(now + delay);
        self.deadlines
            .replace(Timer::Backoff(peer), ended, Some(now + delay));
        self.notices.push(PeerNotice::BackedOff(peer, now + delay));
    }

    /// Times out the requests of every peer whose answer deadline passed: their blocks go back
    /// to the queue and the peer is backed off (one failure, however many requests it had).
    /// Returns the requests that timed out, in id order: id, peer and core.
    /// Only the timers due are looked at, and the requests only when a peer's is due.
    pub fn poll_timeouts(&mut self, now: Instant) -> Vec<(u64, PeerId, CoreKey)> {
        self.tick(now);
        let mut late = BTreeSet::new();
        for timer in self.deadlines.drain_due(now) {
            match timer {
                // Back-offs that ended are no deadline any more (else the next one is in the
                // past).
                Timer::Backoff(peer) => {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.backoff_until = None;
                        p.penalized = false;
                    }
                }
                Timer::Answer(peer) => {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.answer_by = None;
                    }
                    late.insert(peer);
                }
            }
        }
        if late.is_empty() {
            return Vec::new();
        }
        let expired: Vec<(u64, PeerId, CoreKey)> = self
            .requests
            .iter()
            .filter(|(_, r)| late.contains(&r.peer))
            .map(|(id, r)| (*id, r.peer, r.core))
            .collect();
        // Newest first: a request that fails is then never the oldest of a peer with others
        // left, so no next oldest is looked for.
        for (id, _, _) in expired.iter().rev() {
            self.fail_request(*id);
        }
        for peer in late {
            self.penalize(peer, now);
        }
        expired
    }

    /// Notices about peers since the last call.
    pub fn take_notices(&mut self) -> Vec<PeerNotice> {
        std::mem::take(&mut self.notices)
    }

    /// When the queue next needs [`poll_timeouts`](Self::poll_timeouts) or a back-off ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first()
    }

    /// Checks that the deadline set holds exactly the deadline of every request and the
    /// back-off of every peer, and that every core with a waiting block is among the ready
    /// cores.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn check_timers(&self) -> Result<(), String> {
        let mut expected: Vec<(Instant, Timer)> = self
            .peers
            .iter()
            .filter_map(|(p, s)| s.answer_by.map(|t| (t, Timer::Answer(*p))))
            .chain(
                self.peers
                    .iter()
                    .filter_map(|(p, s)| s.backoff_until.map(|t| (t, Timer::Backoff(*p)))),
            )
            .collect();
        expected.sort();
        let set = self.deadlines.entries();
        if set != expected {
            return Err(format!("fetch timers {set:?}, state {expected:?}"));
        }
        for (peer, p) in &self.peers {
            let oldest = self
                .requests
                .iter()
                .find(|(_, r)| r.peer == *peer)
                .map(|(id, _)| *id);
            let both = p.rate_by.is_some() == p.oldest.is_some();
            if !both || p.oldest.map(|(id, _)| id) != oldest || p.answer_by != p.due() {
                return Err(format!(
                    "peer {peer:?}: oldest request {:?} (open: {oldest:?}), deadline {:?} \
                     (rate {:?})",
                    p.oldest, p.answer_by, p.rate_by
                ));
            }
        }
        if let Some((core, _)) = self
            .cores
            .iter()
            .find(|(c, q)| !q.ready.is_empty() && !self.ready_cores.contains(*c))
        {
            return Err(format!(
                "core {core:?} has waiting blocks but is not among the ready cores"
            ));
        }
        Ok(())
    }

    /// Whether request `id` is still waiting for blocks.
    pub fn is_open(&self, id: u64) -> bool {
        self.requests.contains_key(&id)
    }

    /// Removes an answered request.
    fn close_request(&mut self, id: u64, now: Instant) {
        if let Some(req) = self.requests.remove(&id) {
            self.request_ended(id, &req.peer, now);
        }
    }

    /// Request `id` of `peer` ended: its deadlines go with its last one, and if it was the
    /// oldest, the next oldest has `timeout` from `now` to get one of its blocks.
    fn request_ended(&mut self, id: u64, peer: &PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        p.requests = p.requests.saturating_sub(1);
        if p.requests == 0 {
            p.rate_by = None;
            p.oldest = None;
        } else if p.oldest.is_some_and(|(oldest, _)| oldest == id) {
            p.oldest = self
                .requests
                .range(id..)
                .find(|(_, r)| r.peer == *peer)
                .map(|(next, _)| (*next, now + self.cfg.timeout));
        }
        self.update_answer_by(peer);
    }

    /// Brings the queue's clock to `now` (it never goes back).
    fn tick(&mut self, now: Instant) {
        self.clock = Some(self.clock.map_or(now, |c| c.max(now)));
    }

    /// Sets `peer`'s timer to the earlier of its deadlines (none without requests open).
    fn update_answer_by(&mut self, peer: &PeerId) {
        if let Some(p) = self.peers.get_mut(peer) {
            let (old, at) = p.refresh_answer_by();
            self.deadlines.replace(Timer::Answer(*peer), old, at);
        }
    }

    /// The request's outstanding blocks go back to the queue.
    /// Fails, without penalty, every open request that `which` selects.
    fn fail_requests(&mut self, which: impl Fn(&Request) -> bool) {
        let ids: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| which(r))
            .map(|(id, _)| *id)
            .collect();
        // Newest first: a peer's oldest request fails last, when nothing is left to take
        // its place (else each would look for the next oldest).
        for id in ids.into_iter().rev() {
            self.fail_request(id);
        }
    }

    fn fail_request(&mut self, id: u64) {
        let Some(req) = self.requests.remove(&id) else {
            return;
        };
        // `next_request` brought a time before any request was made.
        let now = self.clock.unwrap_or(req.sent);
        self.request_ended(id, &req.peer, now);
        let size = self.block_size.get(&req.core).copied().unwrap_or(1024);
        if let Some(p) = self.peers.get_mut(&req.peer) {
            p.in_flight_bytes = p
                .in_flight_bytes
                .saturating_sub(size.saturating_mul(req.outstanding.len()));
        }
        if let Some(q) = self.cores.get_mut(&req.core) {
            for index in req.outstanding.indices() {
                q.make_ready(index, EntryState::InFlight(id));
            }
            self.ready_cores.insert(req.core);
        }
    }

    /// Ends request `id` without blaming anyone (its blocks go back to the queue).
    pub fn cancel(&mut self, id: u64) {
        self.fail_request(id);
    }
}

#[cfg(test)]
mod tests;

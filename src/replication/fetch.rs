//! The fetch queue (after kitsune2's CoreFetch): which missing blocks to request from which
//! peer, and when.
//!
//! Entries are keyed by (core, block) and list the peers that have the block. Requests go out as
//! runs of consecutive blocks from one peer, within a per-peer window of bytes in flight, and
//! while the blocks received and not yet stored stay under a cap. A request that times out, or
//! a peer that sends invalid data, puts the peer on exponential back-off (capped); after its
//! last back-off the peer is dropped from the queue. A block leaves the queue only when it was
//! verified and committed; until then it is retried from whichever peer can serve it. Pure
//! state: time comes in as an argument.
//!
//! Its timers (each request's deadline, each peer's back-off) are kept in a `Deadlines` set
//! in step with the requests and peers, so [`FetchQueue::next_deadline`] and
//! [`FetchQueue::poll_timeouts`] touch only what is due, however many requests are in flight.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use super::{PeerId, deadlines::Deadlines, ranges};
use crate::{core::MAX_RUN, crypto::CoreKey};

/// Tuning of the fetch queue.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Bytes in flight per peer (estimated from the core's average block size).
    pub window_bytes: u64,
    /// Largest run one request asks for, in bytes.
    pub run_bytes: u64,
    /// Time a request may go without an answer before it is retried elsewhere.
    pub timeout: Duration,
    /// First back-off after a failure; doubles with each further failure.
    pub backoff: Duration,
    /// Longest back-off.
    pub backoff_max: Duration,
    /// Failures in a row after which a peer is dropped from the queue.
    pub max_failures: u32,
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
            max_requests: 32,
            max_held_bytes: 64 * 1024 * 1024,
        }
    }
}

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

/// The queued blocks of one core, keyed by block index.
#[derive(Debug, Default)]
struct CoreQueue {
    entries: BTreeMap<u64, Entry>,
    /// Entries waiting for a peer.
    ready: BTreeSet<u64>,
}

impl CoreQueue {
    fn set_in_flight(&mut self, index: u64, id: u64) {
        self.ready.remove(&index);
        if let Some(e) = self.entries.get_mut(&index) {
            e.state = EntryState::InFlight(id);
        }
    }

    /// An entry back to ready, if it is in the given state.
    fn make_ready(&mut self, index: u64, from: EntryState) {
        if let Some(e) = self.entries.get_mut(&index)
            && e.state == from
        {
            e.state = EntryState::Ready;
            self.ready.insert(index);
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// Peers that have the block.
    sources: Vec<PeerId>,
    state: EntryState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    /// Waiting for a peer.
    Ready,
    /// Asked for in request `id`.
    InFlight(u64),
    /// Received (`bytes`, as estimated then), being verified and committed.
    Received(u64),
}

#[derive(Debug)]
struct Request {
    peer: PeerId,
    core: CoreKey,
    /// Blocks not yet answered.
    outstanding: BTreeSet<u64>,
    deadline: Instant,
}

#[derive(Debug, Default)]
struct PeerState {
    in_flight_bytes: u64,
    requests: usize,
    failures: u32,
    backoff_until: Option<Instant>,
    /// The blocks of each core the peer is a source of, as ranges: runs are looked for only
    /// there, so a peer that has little costs little to serve the queue.
    ranges: BTreeMap<CoreKey, Vec<(u64, u64)>>,
}

/// What a timer of the queue is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The deadline of request `id`.
    Request(u64),
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
    /// The peer failed after its last back-off and was dropped from the queue.
    Dropped(PeerId),
}

/// The queue of missing blocks; see the module docs.
#[derive(Debug)]
pub struct FetchQueue {
    cfg: FetchConfig,
    /// Queued blocks per core, in key order (runs are handed out in that order).
    cores: BTreeMap<CoreKey, CoreQueue>,
    requests: BTreeMap<u64, Request>,
    peers: BTreeMap<PeerId, PeerState>,
    block_size: BTreeMap<CoreKey, u64>,
    notices: Vec<PeerNotice>,
    next_id: u64,
    /// Bytes of entries in the `Received` state.
    held_bytes: u64,
    /// Every request's deadline and every back-off, by time.
    deadlines: Deadlines<Timer>,
}

impl FetchQueue {
    /// An empty queue.
    pub fn new(cfg: FetchConfig) -> Self {
        Self {
            cfg,
            cores: BTreeMap::new(),
            requests: BTreeMap::new(),
            peers: BTreeMap::new(),
            block_size: BTreeMap::new(),
            notices: Vec::new(),
            next_id: 1,
            held_bytes: 0,
            deadlines: Deadlines::default(),
        }
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
        let new = || Entry {
            sources: Vec::new(),
            state: EntryState::Ready,
        };
        let beyond = q
            .entries
            .last_key_value()
            .is_none_or(|(last, _)| *last < start);
        if beyond && end - start >= q.entries.len() as u64 {
            // A long stretch past everything queued (a log to catch up on): built in bulk.
            q.entries
                .append(&mut (start..end).map(|i| (i, new())).collect());
            q.ready.append(&mut (start..end).collect());
        } else {
            for index in start..end {
                q.entries.entry(index).or_insert_with(|| {
                    q.ready.insert(index);
                    new()
                });
            }
        }
        // The peers known to hold these blocks are their sources.
        for (peer, state) in &self.peers {
            for &(s, e) in state.ranges.get(&core).into_iter().flatten() {
                let (s, e) = (s.max(start), e.min(end));
                if s >= e {
                    continue;
                }
                for entry in q.entries.range_mut(s..e).map(|(_, e)| e) {
                    if !entry.sources.contains(peer) {
                        entry.sources.push(*peer);
                    }
                }
            }
        }
    }

    /// Records that `peer` has blocks `start..end` of `core`. Only the part not recorded
    /// before is walked, so a peer repeating itself costs nothing.
    pub fn add_source(&mut self, core: CoreKey, start: u64, end: u64, peer: PeerId) {
        if start >= end {
            return;
        }
        let state = self.peers.entry(peer).or_default();
        let Some(q) = self.cores.get_mut(&core) else {
            return;
        };
        let known = state.ranges.entry(core).or_default();
        for (s, e) in ranges::insert(known, start, end) {
            for e in q.entries.range_mut(s..e).map(|(_, e)| e) {
                if !e.sources.contains(&peer) {
                    e.sources.push(peer);
                }
            }
        }
    }

    /// Forgets every entry and request of `core` (after it changed fork, or stopped replicating).
    pub fn remove_core(&mut self, core: &CoreKey) {
        if let Some(q) = self.cores.remove(core) {
            self.release_held(q.entries.into_values());
        }
        for p in self.peers.values_mut() {
            p.ranges.remove(core);
        }
        self.fail_requests(|r| r.core == *core);
    }

    /// `peer` no longer serves `core` (its channel closed).
    pub fn remove_source(&mut self, core: &CoreKey, peer: &PeerId) {
        self.fail_requests(|r| r.peer == *peer && r.core == *core);
        let known = self
            .peers
            .get_mut(peer)
            .and_then(|p| p.ranges.remove(core))
            .unwrap_or_default();
        if let Some(q) = self.cores.get_mut(core) {
            for (s, e) in known {
                for e in q.entries.range_mut(s..e).map(|(_, e)| e) {
                    e.sources.retain(|p| p != peer);
                }
            }
        }
    }

    /// Forgets blocks of `core` from `length` on (the log got shorter).
    pub fn truncate(&mut self, core: &CoreKey, length: u64) {
        if let Some(q) = self.cores.get_mut(core) {
            let dropped = q.entries.split_off(&length);
            q.ready.split_off(&length);
            self.release_held(dropped.into_values());
        }
    }

    /// The peer went away: its requests fail without penalty and it is no longer a source.
    pub fn remove_peer(&mut self, peer: &PeerId) {
        self.fail_requests(|r| r.peer == *peer);
        let Some(state) = self.peers.remove(peer) else {
            return;
        };
        self.deadlines
            .replace(Timer::Backoff(*peer), state.backoff_until, None);
        for (core, known) in state.ranges {
            let Some(q) = self.cores.get_mut(&core) else {
                continue;
            };
            for (s, e) in known {
                for e in q.entries.range_mut(s..e).map(|(_, e)| e) {
                    e.sources.retain(|p| p != peer);
                }
            }
        }
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

    /// Builds the longest run of ready blocks `peer` has, starting at the first one. Only the
    /// ranges the peer is a source of are looked at.
    fn assign(&mut self, peer: PeerId, now: Instant) -> Option<Assignment> {
        let state = self.peers.get(&peer)?;
        let room = self.cfg.window_bytes.saturating_sub(state.in_flight_bytes);
        let failed = state.failures > 0;
        let mut run: Option<(CoreKey, u64, u64)> = None;
        'cores: for (core, known) in &state.ranges {
            let Some(q) = self.cores.get(core) else {
                continue;
            };
            let mut budget = 0;
            for &index in known.iter().flat_map(|&(s, e)| q.ready.range(s..e)) {
                let has = q
                    .entries
                    .get(&index)
                    .is_some_and(|e| e.sources.contains(&peer));
                match &mut run {
                    None if has => {
                        let size = self.block_size.get(core).copied().unwrap_or(1024);
                        budget = if failed {
                            1
                        } else {
                            (self.cfg.run_bytes.min(room) / size).clamp(1, MAX_RUN)
                        };
                        run = Some((*core, index, index + 1));
                    }
                    None => {}
                    Some((_, _, end)) if *end == index && has => *end += 1,
                    Some(_) => break 'cores,
                }
                if let Some((_, start, end)) = run
                    && end - start >= budget
                {
                    break 'cores;
                }
            }
            if run.is_some() {
                break;
            }
        }
        let (core, start, end) = run?;
        let id = self.next_id;
        self.next_id += 1;
        if let Some(q) = self.cores.get_mut(&core) {
            for index in start..end {
                q.set_in_flight(index, id);
            }
        }
        let size = self.block_size.get(&core).copied().unwrap_or(1024);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.in_flight_bytes += size * (end - start);
            p.requests += 1;
        }
        let deadline = now + self.cfg.timeout;
        self.requests.insert(
            id,
            Request {
                peer,
                core,
                outstanding: (start..end).collect(),
                deadline,
            },
        );
        self.deadlines.insert(deadline, Timer::Request(id));
        Some(Assignment {
            id,
            peer,
            core,
            start,
            end,
        })
    }

    /// Block `index` of request `id` arrived (not yet verified), `bytes` long: it counts as held
    /// at that size until stored. A block that was not expected from that request (late,
    /// duplicate or never asked for) is [`Arrival::Unexpected`]; one that would take the bytes
    /// held past `max_held_bytes` (blocks larger than the log's average were asked for) is
    /// [`Arrival::OverCap`] and goes back to the queue, so the cap holds whatever arrives. The
    /// peer's failures are forgiven only when a block of its verifies
    /// ([`on_verified`](Self::on_verified)), not when one arrives.
    pub fn on_received(&mut self, id: u64, index: u64, bytes: u64, now: Instant) -> Arrival {
        let Some(req) = self.requests.get_mut(&id) else {
            return Arrival::Unexpected;
        };
        if !req.outstanding.remove(&index) {
            return Arrival::Unexpected;
        }
        let deadline = now + self.cfg.timeout;
        self.deadlines
            .replace(Timer::Request(id), Some(req.deadline), Some(deadline));
        req.deadline = deadline;
        let (peer, core, done) = (req.peer, req.core, req.outstanding.is_empty());
        let size = self.block_size.get(&core).copied().unwrap_or(1024);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.in_flight_bytes = p.in_flight_bytes.saturating_sub(size);
        }
        let over =
            self.held_bytes > 0 && self.held_bytes.saturating_add(bytes) > self.cfg.max_held_bytes;
        let mut arrival = Arrival::Taken;
        if let Some(q) = self.cores.get_mut(&core)
            && let Some(e) = q.entries.get_mut(&index)
            && e.state == EntryState::InFlight(id)
        {
            if over {
                q.make_ready(index, EntryState::InFlight(id));
                arrival = Arrival::OverCap;
            } else {
                e.state = EntryState::Received(bytes);
                self.held_bytes = self.held_bytes.saturating_add(bytes);
            }
        }
        if done {
            self.close_request(id);
        }
        arrival
    }

    /// The peer of request `id` does not have blocks `start..end`: it stops being their source.
    pub fn on_no_data(&mut self, id: u64, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let Some(req) = self.requests.get_mut(&id) else {
            return;
        };
        let (peer, core) = (req.peer, req.core);
        let gone: Vec<u64> = req.outstanding.range(start..end).copied().collect();
        for index in &gone {
            req.outstanding.remove(index);
        }
        // Only the blocks this request still waited for stop being the peer's: a `NoData`
        // cannot cut holes in what it was not asked.
        if let Some(known) = self
            .peers
            .get_mut(&peer)
            .and_then(|p| p.ranges.get_mut(&core))
        {
            let mut stretches: Vec<(u64, u64)> = Vec::new();
            for &i in &gone {
                match stretches.last_mut() {
                    Some((_, e)) if *e == i => *e += 1,
                    _ => stretches.push((i, i + 1)),
                }
            }
            for (s, e) in stretches {
                ranges::remove(known, s, e);
            }
        }
        let done = req.outstanding.is_empty();
        let size = self.block_size.get(&core).copied().unwrap_or(1024);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.in_flight_bytes = p.in_flight_bytes.saturating_sub(size * gone.len() as u64);
        }
        if let Some(q) = self.cores.get_mut(&core) {
            for index in gone {
                if let Some(e) = q.entries.get_mut(&index) {
                    e.sources.retain(|p| *p != peer);
                }
                q.make_ready(index, EntryState::InFlight(id));
            }
        }
        if done {
            self.close_request(id);
        }
    }

    /// A block from `peer` verified: its failures and back-off are forgiven.
    pub fn on_verified(&mut self, peer: &PeerId) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.failures = 0;
            let ended = p.backoff_until.take();
            self.deadlines.replace(Timer::Backoff(*peer), ended, None);
        }
    }

    /// Block `index` of `core` was verified and committed: it leaves the queue for every peer.
    pub fn on_committed(&mut self, core: &CoreKey, index: u64) {
        if let Some(q) = self.cores.get_mut(core) {
            q.ready.remove(&index);
            if let Some(e) = q.entries.remove(&index) {
                self.release_held([e]);
            }
        }
    }

    /// Entries that leave the `Received` state no longer count as held.
    fn release_held(&mut self, left: impl IntoIterator<Item = Entry>) {
        for e in left {
            if let EntryState::Received(bytes) = e.state {
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
        if let Some(e) = q.entries.get_mut(&index)
            && let EntryState::Received(bytes) = e.state
        {
            e.state = EntryState::Ready;
            q.ready.insert(index);
            self.held_bytes = self.held_bytes.saturating_sub(bytes);
        }
    }

    /// Puts `peer` on back-off (or drops it after its last one); see [`PeerNotice`].
    pub fn penalize(&mut self, peer: PeerId, now: Instant) {
        let cfg = &self.cfg;
        let state = self.peers.entry(peer).or_default();
        state.failures += 1;
        if state.failures > cfg.max_failures {
            self.notices.push(PeerNotice::Dropped(peer));
            self.remove_peer(&peer);
            return;
        }
        let factor = 1u32 << (state.failures - 1).min(16);
        let delay = cfg.backoff.saturating_mul(factor).min(cfg.backoff_max);
        let ended = state.backoff_until.replace(now + delay);
        self.deadlines
            .replace(Timer::Backoff(peer), ended, Some(now + delay));
        self.notices.push(PeerNotice::BackedOff(peer, now + delay));
    }

    /// Times out requests whose deadline passed: their blocks go back to the queue and their
    /// peers are backed off. Returns the ids of the requests that timed out.
    /// Only the timers due are looked at; the requests are handled in id order.
    pub fn poll_timeouts(&mut self, now: Instant) -> Vec<(u64, PeerId)> {
        let mut expired = Vec::new();
        for timer in self.deadlines.drain_due(now) {
            match timer {
                // Back-offs that ended are no deadline any more (else the next one is in the
                // past).
                Timer::Backoff(peer) => {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.backoff_until = None;
                    }
                }
                Timer::Request(id) => {
                    if let Some(r) = self.requests.get(&id) {
                        expired.push((id, r.peer));
                    }
                }
            }
        }
        expired.sort_unstable();
        for (id, peer) in &expired {
            self.fail_request(*id);
            self.penalize(*peer, now);
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

    /// Whether request `id` is still waiting for blocks.
    pub fn is_open(&self, id: u64) -> bool {
        self.requests.contains_key(&id)
    }

    /// Removes an answered request.
    fn close_request(&mut self, id: u64) {
        let Some(req) = self.requests.remove(&id) else {
            return;
        };
        self.deadlines.remove(req.deadline, Timer::Request(id));
        if let Some(p) = self.peers.get_mut(&req.peer) {
            p.requests = p.requests.saturating_sub(1);
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
        for id in ids {
            self.fail_request(id);
        }
    }

    fn fail_request(&mut self, id: u64) {
        let Some(req) = self.requests.remove(&id) else {
            return;
        };
        self.deadlines.remove(req.deadline, Timer::Request(id));
        if let Some(p) = self.peers.get_mut(&req.peer) {
            p.requests = p.requests.saturating_sub(1);
        }
        let size = self.block_size.get(&req.core).copied().unwrap_or(1024);
        if let Some(p) = self.peers.get_mut(&req.peer) {
            p.in_flight_bytes = p
                .in_flight_bytes
                .saturating_sub(size * req.outstanding.len() as u64);
        }
        if let Some(q) = self.cores.get_mut(&req.core) {
            for index in req.outstanding {
                q.make_ready(index, EntryState::InFlight(id));
            }
        }
    }

    /// Ends request `id` without blaming anyone (its blocks go back to the queue).
    pub fn cancel(&mut self, id: u64) {
        self.fail_request(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORE: CoreKey = [1; 32];
    const A: PeerId = [0xa; 32];
    const B: PeerId = [0xb; 32];
    const C: PeerId = [0xc; 32];

    fn cfg() -> FetchConfig {
        FetchConfig {
            window_bytes: 64 * 1024,
            run_bytes: 16 * 1024,
            timeout: Duration::from_secs(1),
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(400),
            max_failures: 3,
            max_requests: 8,
            max_held_bytes: 1 << 30,
        }
    }

    /// A fake clock: a fixed origin plus simulated time.
    struct Clock(Instant);
    impl Clock {
        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    fn queue(blocks: u64, sources: &[PeerId]) -> FetchQueue {
        let mut q = FetchQueue::new(cfg());
        q.add(CORE, 0, blocks);
        for p in sources {
            q.add_source(CORE, 0, blocks, *p);
        }
        q
    }

    fn drain(q: &mut FetchQueue, now: Instant) -> Vec<Assignment> {
        std::iter::from_fn(|| q.next_request(now)).collect()
    }

    #[test]
    fn overlapping_and_bulk_adds_queue_each_block_once_in_order() {
        let now = Instant::now();
        let mut q = FetchQueue::new(FetchConfig {
            window_bytes: u64::MAX / 2,
            max_requests: usize::MAX,
            ..cfg()
        });
        q.add(CORE, 10, 20);
        // Overlaps what is queued: added block by block.
        q.add(CORE, 0, 15);
        // Past everything queued and longer than it: built in bulk.
        q.add(CORE, 40, 1000);
        // A short stretch past the end, and one inside a gap.
        q.add(CORE, 1000, 1002);
        q.add(CORE, 30, 35);
        assert_eq!(q.len(), 20 + 960 + 2 + 5);
        q.add_source(CORE, 0, 2000, A);
        let got: Vec<u64> = drain(&mut q, now)
            .into_iter()
            .flat_map(|a| a.start..a.end)
            .collect();
        let want: Vec<u64> = (0..20).chain(30..35).chain(40..1002).collect();
        assert_eq!(got, want);
        got.iter().for_each(|i| q.on_committed(&CORE, *i));
        assert!(q.is_empty());
    }

    #[test]
    fn received_blocks_not_yet_stored_are_capped() {
        let clock = Clock(Instant::now());
        let mut q = FetchQueue::new(FetchConfig {
            max_held_bytes: 32 * 1024,
            ..cfg()
        });
        q.add(CORE, 0, 200);
        q.add_source(CORE, 0, 200, A);
        q.set_block_size(CORE, 1024);
        let asked: Vec<(u64, u64)> = drain(&mut q, clock.at(0))
            .iter()
            .flat_map(|a| (a.start..a.end).map(|i| (a.id, i)))
            .collect();
        assert_eq!(asked.len(), 64, "a window of 64 KiB");
        let arrived: Vec<Arrival> = asked
            .iter()
            .map(|(id, i)| q.on_received(*id, *i, 1024, clock.at(1)))
            .collect();
        // What was in flight past the cap is dropped and queued again: the cap holds whatever
        // arrives.
        assert!(arrived[..32].iter().all(|a| *a == Arrival::Taken));
        assert!(arrived[32..].iter().all(|a| *a == Arrival::OverCap));
        // The window is free again, but 32 KiB wait to be stored: nothing more is asked for.
        assert_eq!(q.next_request(clock.at(1)), None);
        // A failed store, like a commit, stops holding its block, which is asked for again.
        q.on_store_failed(&CORE, asked[0].1);
        let next = q.next_request(clock.at(2)).expect("below the cap");
        assert_eq!(next.start, asked[0].1);
        // Blocks are held at their real size: one far larger than the average does not fit.
        let arrival = q.on_received(next.id, next.start, 1 << 20, clock.at(3));
        assert_eq!(arrival, Arrival::OverCap, "31 KiB held + 1 MiB > 32 KiB");
    }

    #[test]
    fn runs_never_span_two_cores() {
        let now = Instant::now();
        let other: CoreKey = [2; 32];
        let mut q = FetchQueue::new(cfg());
        for core in [other, CORE] {
            q.add(core, 0, 3);
            q.add_source(core, 0, 3, A);
        }
        let runs: Vec<(CoreKey, u64, u64)> = drain(&mut q, now)
            .into_iter()
            .map(|a| (a.core, a.start, a.end))
            .collect();
        assert_eq!(runs, vec![(CORE, 0, 3), (other, 0, 3)]);
    }

    #[test]
    fn unresponsive_peer_times_out_and_backs_off_then_is_dropped() {
        let clock = Clock(Instant::now());
        let mut q = queue(4, &[A]);
        let a = q.next_request(clock.at(0)).unwrap();
        assert_eq!((a.peer, a.start, a.end), (A, 0, 4));
        assert_eq!(q.next_request(clock.at(0)), None);
        assert_eq!(q.next_deadline(), Some(clock.at(1000)));
        assert!(q.poll_timeouts(clock.at(999)).is_empty());
        assert_eq!(q.poll_timeouts(clock.at(1000)), vec![(a.id, A)]);
        assert_eq!(
            q.take_notices(),
            vec![PeerNotice::BackedOff(A, clock.at(1100))]
        );
        // Backed off: nothing to send until the back-off ends.
        assert_eq!(q.next_request(clock.at(1050)), None);
        let mut t = 1100;
        let mut delays = vec![];
        for _ in 0..3 {
            let a = q.next_request(clock.at(t)).expect("retried after back-off");
            t += 1000;
            q.poll_timeouts(clock.at(t));
            match q.take_notices()[..] {
                [PeerNotice::BackedOff(_, until)] => {
                    delays.push((until - clock.at(t)).as_millis());
                    t = (until - clock.0).as_millis() as u64;
                }
                [PeerNotice::Dropped(p)] => {
                    assert_eq!(p, A);
                    delays.push(0);
                }
                ref other => panic!("{other:?}"),
            }
            let _ = a;
        }
        // 100 ms, 200 ms, 400 ms (capped), then dropped after the fourth failure.
        assert_eq!(delays, vec![200, 400, 0]);
        assert_eq!(q.next_request(clock.at(t + 10_000)), None);
        assert_eq!(q.len(), 4, "blocks stay queued without a source");
    }

    #[test]
    fn peer_coming_back_is_forgiven() {
        let clock = Clock(Instant::now());
        let mut q = queue(3, &[A]);
        let a = q.next_request(clock.at(0)).unwrap();
        q.poll_timeouts(clock.at(1000));
        q.take_notices();
        // After a failure the peer gets a one-block probe.
        let probe = q.next_request(clock.at(1100)).unwrap();
        assert_ne!(a.id, probe.id);
        assert_eq!(probe.end - probe.start, 1);
        assert_eq!(q.next_request(clock.at(1100)), None);
        assert_eq!(
            q.on_received(probe.id, 0, 1024, clock.at(1300)),
            Arrival::Taken
        );
        // Arriving is not enough: until a block verified, only one-block probes.
        let second = q.next_request(clock.at(1300)).unwrap();
        assert_eq!((second.start, second.end), (1, 2));
        assert_eq!(
            q.on_received(second.id, 1, 1024, clock.at(1300)),
            Arrival::Taken
        );
        q.on_verified(&A);
        assert!(!q.is_backed_off(&A, clock.at(1300)));
        // A late answer to the timed-out request is ignored.
        assert_eq!(
            q.on_received(a.id, 2, 1024, clock.at(1300)),
            Arrival::Unexpected
        );
        // Forgiven: a full run again (here, what is left of the log).
        let full = q.next_request(clock.at(1300)).unwrap();
        assert_eq!((full.start, full.end), (2, 3));
        assert_eq!(
            q.on_received(full.id, 2, 1024, clock.at(1300)),
            Arrival::Taken
        );
        for i in 0..3 {
            q.on_committed(&CORE, i);
        }
        assert!(q.is_empty());
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn block_received_from_another_peer_first() {
        let clock = Clock(Instant::now());
        let mut q = queue(1, &[A]);
        let a = q.next_request(clock.at(0)).unwrap();
        // A times out; B shows up with the block and delivers first.
        q.poll_timeouts(clock.at(1000));
        q.add_source(CORE, 0, 1, B);
        let b = q.next_request(clock.at(1000)).unwrap();
        assert_eq!(b.peer, B);
        assert_eq!(q.on_received(b.id, 0, 1024, clock.at(1010)), Arrival::Taken);
        q.on_committed(&CORE, 0);
        assert!(!q.contains(&CORE, 0));
        assert_eq!(
            q.on_received(a.id, 0, 1024, clock.at(1020)),
            Arrival::Unexpected
        );
        assert!(q.is_empty());
    }

    #[test]
    fn invalid_data_backs_off_and_requeues_nothing_lost() {
        let clock = Clock(Instant::now());
        let mut q = queue(2, &[A, B]);
        let first = q.next_request(clock.at(0)).unwrap();
        assert_eq!(
            q.on_received(first.id, first.start, 1024, clock.at(1)),
            Arrival::Taken
        );
        q.on_invalid(&CORE, first.start, first.peer, clock.at(2));
        assert!(q.contains(&CORE, first.start));
        assert!(q.is_backed_off(&first.peer, clock.at(50)));
        let other = if first.peer == A { B } else { A };
        let retry = drain(&mut q, clock.at(50));
        assert!(retry.iter().all(|r| r.peer == other), "{retry:?}");
        assert!(
            retry
                .iter()
                .any(|r| (r.start..r.end).contains(&first.start))
        );
    }

    #[test]
    fn storage_failure_keeps_the_entry_without_blame() {
        let clock = Clock(Instant::now());
        let mut q = queue(1, &[A]);
        let a = q.next_request(clock.at(0)).unwrap();
        assert_eq!(q.on_received(a.id, 0, 1024, clock.at(1)), Arrival::Taken);
        q.on_store_failed(&CORE, 0);
        assert!(q.contains(&CORE, 0));
        assert!(!q.is_backed_off(&A, clock.at(2)));
        assert!(q.take_notices().is_empty());
        let again = q.next_request(clock.at(2)).unwrap();
        assert_eq!((again.peer, again.start), (A, 0));
    }

    #[test]
    fn three_seeders_share_a_range_in_disjoint_runs() {
        let clock = Clock(Instant::now());
        let mut q = queue(300, &[A, B, C]);
        q.set_block_size(CORE, 1024);
        let runs = drain(&mut q, clock.at(0));
        let mut seen = BTreeSet::new();
        let mut per_peer: BTreeMap<PeerId, u64> = BTreeMap::new();
        for r in &runs {
            assert!(r.end - r.start <= 16, "runs respect run_bytes");
            for i in r.start..r.end {
                assert!(seen.insert(i), "block {i} asked twice");
            }
            *per_peer.entry(r.peer).or_default() += r.end - r.start;
        }
        assert_eq!(seen.len(), 192, "three windows of 64 blocks");
        assert_eq!(per_peer.len(), 3);
        assert!(per_peer.values().all(|n| *n == 64), "{per_peer:?}");
        // Answers free the windows and the rest is handed out.
        for r in &runs {
            for i in r.start..r.end {
                assert_eq!(q.on_received(r.id, i, 1024, clock.at(1)), Arrival::Taken);
                q.on_committed(&CORE, i);
            }
        }
        let rest = drain(&mut q, clock.at(2));
        let n: u64 = rest.iter().map(|r| r.end - r.start).sum();
        assert_eq!(n, 108);
    }

    /// The timer set holds one deadline per open request and per back-off, moved as blocks
    /// arrive, and gone with the request or back-off it was for.
    #[test]
    fn timers_follow_requests_and_back_offs() {
        let clock = Clock(Instant::now());
        let mut q = queue(64, &[A, B]);
        q.set_block_size(CORE, 1024);
        let runs = drain(&mut q, clock.at(0));
        assert_eq!(q.deadlines.len(), runs.len());
        // An arrival moves its request's deadline.
        let first = runs[0];
        q.on_received(first.id, first.start, 1024, clock.at(500));
        assert_eq!(q.deadlines.len(), runs.len());
        assert_eq!(q.next_deadline(), Some(clock.at(1000)));
        // Every other request times out at 1000; the one that got a block does not.
        let expired = q.poll_timeouts(clock.at(1000));
        assert_eq!(expired.len(), runs.len() - 1);
        assert!(expired.windows(2).all(|w| w[0].0 < w[1].0), "in id order");
        assert!(q.is_open(first.id));
        // One deadline left for the open request, one back-off for each peer.
        assert_eq!(q.deadlines.len(), 3);
        // A failed once (100 ms), B twice (200 ms).
        assert_eq!(q.next_deadline(), Some(clock.at(1100)));
        q.poll_timeouts(clock.at(1100));
        assert_eq!(q.deadlines.len(), 2);
        assert_eq!(q.next_deadline(), Some(clock.at(1200)));
        q.poll_timeouts(clock.at(1200));
        assert_eq!(q.deadlines.len(), 1);
        assert_eq!(q.next_deadline(), Some(clock.at(1500)));
        q.on_no_data(first.id, first.start, first.end);
        assert!(!q.is_open(first.id));
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn no_data_moves_the_block_to_another_source() {
        let clock = Clock(Instant::now());
        let mut q = queue(4, &[A]);
        let a = q.next_request(clock.at(0)).unwrap();
        q.on_no_data(a.id, 2, 4);
        assert_eq!(q.on_received(a.id, 0, 1024, clock.at(1)), Arrival::Taken);
        assert_eq!(q.on_received(a.id, 1, 1024, clock.at(1)), Arrival::Taken);
        assert!(!q.is_open(a.id));
        assert_eq!(q.next_request(clock.at(2)), None, "A lacks 2..4");
        q.add_source(CORE, 0, 4, B);
        let b = q.next_request(clock.at(3)).unwrap();
        assert_eq!((b.peer, b.start, b.end), (B, 2, 4));
        assert!(!q.is_backed_off(&A, clock.at(3)));
    }
}

//! Tests of the fetch queue, driven with a fake clock.

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
        penalty: Duration::from_secs(30),
        penalty_max: Duration::from_secs(600),
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

/// A queue of `blocks` blocks of 1 KiB held by `sources`, with the clock it runs on and every
/// request it makes at time 0.
fn asked(blocks: u64, sources: &[PeerId]) -> (Clock, FetchQueue, Vec<Assignment>) {
    let clock = Clock(Instant::now());
    let mut q = queue(blocks, sources);
    q.set_block_size(CORE, 1024);
    let runs = drain(&mut q, clock.at(0));
    (clock, q, runs)
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
fn unresponsive_peer_times_out_and_backs_off_then_is_penalized() {
    let clock = Clock(Instant::now());
    let mut q = queue(4, &[A]);
    let a = q.next_request(clock.at(0)).unwrap();
    assert_eq!((a.peer, a.start, a.end), (A, 0, 4));
    assert_eq!(q.next_request(clock.at(0)), None);
    assert_eq!(q.next_deadline(), Some(clock.at(1000)));
    assert!(q.poll_timeouts(clock.at(999)).is_empty());
    assert_eq!(q.poll_timeouts(clock.at(1000)), vec![(a.id, A, a.core)]);
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
            [PeerNotice::Penalized(p, until)] => {
                assert_eq!(p, A);
                assert_eq!(until, clock.at(t) + cfg().penalty);
                delays.push(0);
            }
            ref other => panic!("{other:?}"),
        }
        let _ = a;
    }
    // 100 ms, 200 ms, 400 ms (capped), then penalized after the fourth failure.
    assert_eq!(delays, vec![200, 400, 0]);
    assert!(q.is_penalized(&A, clock.at(t)));
    let end = t + cfg().penalty.as_millis() as u64;
    assert_eq!(
        q.next_request(clock.at(end - 1)),
        None,
        "nothing during the penalty"
    );
    assert_eq!(q.len(), 4, "blocks stay queued");
    // Its penalty over, it is probed again, one block at a time.
    q.poll_timeouts(clock.at(end));
    let probe = q
        .next_request(clock.at(end))
        .expect("probed after the penalty");
    assert_eq!((probe.peer, probe.end - probe.start), (A, 1));
    assert_eq!(q.next_request(clock.at(end)), None, "one probe at a time");
    // It fails again: penalized at once, for twice as long.
    q.take_notices();
    q.poll_timeouts(clock.at(end + 1000));
    assert_eq!(
        q.take_notices(),
        vec![PeerNotice::Penalized(
            A,
            clock.at(end + 1000) + cfg().penalty * 2
        )]
    );
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
    let (clock, mut q, runs) = asked(300, &[A, B, C]);
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

/// The timer set holds one answer deadline per peer with requests open and one per back-off,
/// moved as blocks arrive, and gone with the last request or the back-off it was for.
#[test]
fn timers_follow_requests_and_back_offs() {
    let (clock, mut q, runs) = asked(64, &[A, B]);
    let ids =
        |p: PeerId| -> Vec<u64> { runs.iter().filter(|r| r.peer == p).map(|r| r.id).collect() };
    let (a, b) = (ids(A), ids(B));
    assert_eq!((a.len(), b.len()), (2, 2), "{runs:?}");
    let at = |q: &FetchQueue, p: PeerId| {
        q.deadlines
            .entries()
            .iter()
            .find(|(_, t)| *t == Timer::Answer(p))
            .map(|(at, _)| *at)
    };
    // One deadline per peer, whatever its number of requests.
    assert_eq!(q.deadlines.len(), 2);
    assert_eq!(at(&q, A), Some(clock.at(1000)));
    // A block of A's second request buys A 62.5 ms (a timeout per run's worth of bytes, 1 KiB
    // of 16 KiB), but its oldest request still needs one of its blocks by 1000.
    let second = runs.iter().find(|r| r.id == a[1]).copied().unwrap();
    q.on_received(second.id, second.start, 1024, clock.at(500));
    assert_eq!(at(&q, A), Some(clock.at(1000)));
    // A's first run arrives by 600: the second is the oldest and has until 1600, and so does
    // A's rate (capped a timeout from now).
    let first = runs.iter().find(|r| r.id == a[0]).copied().unwrap();
    for index in first.start..first.end {
        q.on_received(first.id, index, 1024, clock.at(600));
    }
    assert!(!q.is_open(first.id));
    assert_eq!(at(&q, A), Some(clock.at(1600)));
    q.check_timers().unwrap();
    // B's deadline passes at 1000: both its requests time out, one failure (100 ms).
    let expired = q.poll_timeouts(clock.at(1000));
    assert_eq!(expired.iter().map(|e| e.0).collect::<Vec<_>>(), b);
    assert_eq!(
        q.take_notices(),
        vec![PeerNotice::BackedOff(B, clock.at(1100))]
    );
    q.check_timers().unwrap();
    assert_eq!(q.deadlines.len(), 2, "A's deadline, B's back-off");
    q.poll_timeouts(clock.at(1100));
    assert_eq!(q.deadlines.len(), 1);
    assert_eq!(q.poll_timeouts(clock.at(1600)), vec![(a[1], A, CORE)]);
    q.check_timers().unwrap();
    assert!(
        q.deadlines
            .entries()
            .iter()
            .all(|(_, t)| matches!(t, Timer::Backoff(_))),
        "only back-offs left"
    );
    q.poll_timeouts(clock.at(10_000));
    assert_eq!(q.next_deadline(), None);
    // A request answered "no data" is closed with its peer's deadline.
    let retry = q.next_request(clock.at(10_000)).expect("asked again");
    assert_eq!(q.deadlines.len(), 1);
    q.on_no_data(retry.id, retry.start, retry.end, clock.at(10_000));
    assert!(!q.is_open(retry.id));
    assert_eq!(q.next_deadline(), None);
    q.check_timers().unwrap();
}

/// On a link slower than the window, a peer's last requests start long after they were sent:
/// they do not time out while the peer answers the ones before them at the minimum rate or
/// faster (`run_bytes` per `timeout`), and still do once it stops.
#[test]
fn requests_queued_behind_a_slow_link_do_not_time_out() {
    let (clock, mut q, runs) = asked(64, &[A]);
    assert_eq!(runs.len(), 4, "{runs:?}");
    // One block every 50 ms: the window takes 3.2 s, the timeout is 1 s.
    let mut t = 0;
    for run in &runs[..3] {
        for index in run.start..run.end {
            t += 50;
            assert!(q.poll_timeouts(clock.at(t)).is_empty(), "at {t} ms");
            assert_eq!(
                q.on_received(run.id, index, 1024, clock.at(t)),
                Arrival::Taken
            );
            q.check_timers().unwrap();
        }
        assert!(!q.is_open(run.id));
    }
    assert!(q.take_notices().is_empty(), "no failure");
    // The peer stops answering: the last request times out a timeout after its last block.
    let last = runs[3];
    assert!(q.is_open(last.id));
    assert_eq!(q.next_deadline(), Some(clock.at(t + 1000)));
    assert!(q.poll_timeouts(clock.at(t + 999)).is_empty());
    assert_eq!(
        q.poll_timeouts(clock.at(t + 1000)),
        vec![(last.id, A, CORE)]
    );
}

/// A peer whose first request ends just before its deadline has a whole timeout from its last
/// block for the requests after it.
#[test]
fn the_next_requests_get_a_whole_timeout_when_the_one_before_ends() {
    let (clock, mut q, runs) = asked(64, &[A]);
    for (n, index) in (runs[0].start..runs[0].end).enumerate() {
        let t = 990 * (n as u64 + 1) / (runs[0].end - runs[0].start);
        q.on_received(runs[0].id, index, 1024, clock.at(t));
    }
    assert!(!q.is_open(runs[0].id));
    assert!(q.poll_timeouts(clock.at(1000)).is_empty());
    assert!(q.poll_timeouts(clock.at(1989)).is_empty());
    assert_eq!(q.poll_timeouts(clock.at(1990)).len(), 3);
    q.check_timers().unwrap();
}

/// A peer that withholds one block while it delivers the rest at a good rate loses it a
/// timeout after the request it is in got its last block while the oldest.
#[test]
fn a_block_withheld_while_the_rest_arrive_times_out() {
    let (clock, mut q, runs) = asked(64, &[A]);
    let mut t = 0;
    for (n, run) in runs.iter().enumerate() {
        // Every block but the first of the first run.
        for index in run.start + u64::from(n == 0)..run.end {
            t += 20;
            assert!(q.poll_timeouts(clock.at(t)).is_empty(), "at {t} ms");
            q.on_received(run.id, index, 1024, clock.at(t));
        }
    }
    assert_eq!(t, 1260);
    // The first run's last block came at 300.
    assert_eq!(q.next_deadline(), Some(clock.at(1300)));
    assert_eq!(q.poll_timeouts(clock.at(1300)), vec![(runs[0].id, A, CORE)]);
    q.check_timers().unwrap();
}

/// Blocks that will not be verified (their run broke on an earlier one) buy no time: a peer
/// sending junk for such a run, even large, times out at its rate deadline.
#[test]
fn blocks_of_a_broken_run_buy_no_time() {
    let (clock, mut q, runs) = asked(64, &[A]);
    let mut t = 0;
    for index in runs[0].start..runs[0].start + 9 {
        t += 100;
        assert!(q.poll_timeouts(clock.at(t)).is_empty(), "at {t} ms");
        q.on_received_unverified(runs[0].id, index, 256 * 1024, clock.at(t));
    }
    assert_eq!(q.next_deadline(), Some(clock.at(1000)));
    assert_eq!(q.poll_timeouts(clock.at(1000)).len(), runs.len());
    q.check_timers().unwrap();
}

/// A peer delivering one core's requests while it withholds another's has late requests for
/// that core: leaving its channel then counts as a failure.
#[test]
fn requests_of_one_core_are_late_while_another_core_is_served() {
    let clock = Clock(Instant::now());
    let mut q = FetchQueue::new(cfg());
    let (x, y) = ([1; 32], [2; 32]);
    for core in [x, y] {
        q.add(core, 0, 16);
        q.add_source(core, 0, 16, A);
        q.set_block_size(core, 1024);
    }
    let runs = drain(&mut q, clock.at(0));
    let on_y = runs.iter().find(|r| r.core == y).copied().unwrap();
    for (n, index) in (on_y.start..on_y.end).enumerate() {
        q.on_received(on_y.id, index, 1024, clock.at(50 * n as u64 + 50));
    }
    assert!(q.has_late_requests(&A, Some(&x), clock.at(900)));
    assert!(!q.has_late_requests(&A, Some(&y), clock.at(900)));
}

/// A peer delivering its oldest request at a good rate that goes away (a restart) is not
/// blamed for the requests at the back of its window, which had not started; one whose
/// oldest request got nothing for more than half a timeout is.
#[test]
fn leaving_while_delivering_is_not_a_failure() {
    let (clock, mut q, runs) = asked(64, &[A]);
    for (n, index) in (runs[0].start..runs[0].end).enumerate() {
        q.on_received(runs[0].id, index, 1024, clock.at(40 * n as u64 + 40));
    }
    assert!(!q.has_late_requests(&A, None, clock.at(700)));
    q.remove_peer(&A, clock.at(700));
    assert!(q.take_notices().is_empty(), "blamed for a deep window");
    q.check_timers().unwrap();

    let mut q = queue(64, &[B]);
    q.set_block_size(CORE, 1024);
    drain(&mut q, clock.at(0));
    assert!(q.has_late_requests(&B, None, clock.at(600)));
    q.remove_peer(&B, clock.at(600));
    assert!(matches!(
        q.take_notices()[..],
        [PeerNotice::BackedOff(B, _)]
    ));
}

/// A peer that trickles blocks cannot hold its window: each block buys it only its share of
/// a timeout (62.5 ms for 1 KiB), and when its deadline passes, every request it held goes
/// back to the queue, as one failure.
#[test]
fn a_peer_trickling_blocks_loses_its_window() {
    let (clock, mut q, runs) = asked(64, &[A]);
    let mut t = 0;
    let mut expired = Vec::new();
    for index in runs[0].start..runs[0].end {
        t += 900;
        expired = q.poll_timeouts(clock.at(t));
        if !expired.is_empty() {
            break;
        }
        q.on_received(runs[0].id, index, 1024, clock.at(t));
    }
    assert!(t <= 2700, "held until {t} ms");
    assert_eq!(
        expired.iter().map(|e| e.0).collect::<Vec<_>>(),
        runs.iter().map(|r| r.id).collect::<Vec<_>>()
    );
    assert_eq!(q.len(), 64, "every block still queued");
    assert!(matches!(
        q.take_notices()[..],
        [PeerNotice::BackedOff(A, _)]
    ));
    q.check_timers().unwrap();
}

/// Requests of many cores share a peer's link (one stream each): a peer delivering above the
/// minimum rate, in any order across its requests, keeps them all.
#[test]
fn requests_of_many_cores_answered_in_turn_do_not_time_out() {
    let clock = Clock(Instant::now());
    let mut q = FetchQueue::new(cfg());
    let cores: Vec<CoreKey> = (1..=4u8).map(|c| [c; 32]).collect();
    for core in &cores {
        q.add(*core, 0, 16);
        q.add_source(*core, 0, 16, A);
        q.set_block_size(*core, 1024);
    }
    let runs = drain(&mut q, clock.at(0));
    assert_eq!(runs.len(), 4, "{runs:?}");
    // One block every 20 ms, round robin over the four requests: 3.1 times the minimum rate,
    // and each request takes 1.28 s, past the timeout.
    let mut t = 0;
    for n in 0..16 {
        for run in &runs {
            t += 20;
            assert!(q.poll_timeouts(clock.at(t)).is_empty(), "at {t} ms");
            q.on_received(run.id, run.start + n, 1024, clock.at(t));
        }
    }
    assert!(runs.iter().all(|r| !q.is_open(r.id)));
    assert!(q.take_notices().is_empty(), "no failure");
    q.check_timers().unwrap();
}

/// Blocks larger than the size the window was planned with count at their real size.
#[test]
fn blocks_larger_than_expected_buy_time_at_their_size() {
    let (clock, mut q, runs) = asked(64, &[A]);
    // 16 KiB blocks every 100 ms: ten times the minimum rate, one block a tenth of a second.
    let mut t = 0;
    for run in &runs {
        for index in run.start..run.end {
            t += 100;
            assert!(q.poll_timeouts(clock.at(t)).is_empty(), "at {t} ms");
            q.on_received(run.id, index, 16 * 1024, clock.at(t));
        }
    }
    assert!(q.take_notices().is_empty(), "no failure");
}

/// A peer that answers its first request and ignores the rest gets the rest timed out a
/// timeout after its last block.
#[test]
fn requests_ignored_after_an_answered_one_time_out() {
    let (clock, mut q, runs) = asked(64, &[A]);
    for index in runs[0].start..runs[0].end {
        q.on_received(runs[0].id, index, 1024, clock.at(200));
    }
    assert!(!q.is_open(runs[0].id));
    // The next one's timeout runs from 200: it and those behind it fail at 1200.
    assert!(q.poll_timeouts(clock.at(1199)).is_empty());
    let expired = q.poll_timeouts(clock.at(1200));
    assert_eq!(
        expired.iter().map(|e| e.0).collect::<Vec<_>>(),
        runs[1..].iter().map(|r| r.id).collect::<Vec<_>>()
    );
    q.check_timers().unwrap();
}

#[test]
fn no_data_moves_the_block_to_another_source() {
    let clock = Clock(Instant::now());
    let mut q = queue(4, &[A]);
    let a = q.next_request(clock.at(0)).unwrap();
    q.on_no_data(a.id, 2, 4, clock.at(0));
    assert_eq!(q.on_received(a.id, 0, 1024, clock.at(1)), Arrival::Taken);
    assert_eq!(q.on_received(a.id, 1, 1024, clock.at(1)), Arrival::Taken);
    assert!(!q.is_open(a.id));
    assert_eq!(q.next_request(clock.at(2)), None, "A lacks 2..4");
    q.add_source(CORE, 0, 4, B);
    let b = q.next_request(clock.at(3)).unwrap();
    assert_eq!((b.peer, b.start, b.end), (B, 2, 4));
    assert!(!q.is_backed_off(&A, clock.at(3)));
}

/// A peer serving a penalty is asked nothing, and what it fails meanwhile (another request
/// timing out in the same pass, a late invalid block) neither extends nor repeats the
/// penalty. A peer that sent invalid data is out four times as long as a slow one. It keeps
/// its penalty and offences when it reconnects.
#[test]
fn a_penalized_peer_is_not_penalized_again_during_its_penalty() {
    let clock = Clock(Instant::now());
    let mut q = queue(64, &[A]);
    for _ in 0..cfg().max_failures {
        q.penalize(A, clock.at(0));
    }
    q.take_notices();
    // A's back-off ended; it has failed: one probe at a time. Fail it, then make it two
    // requests in flight by forgiving it.
    q.on_verified(&A);
    let first = q.next_request(clock.at(0)).unwrap();
    let second = q.next_request(clock.at(0)).unwrap();
    assert_ne!(first.id, second.id);
    for _ in 0..cfg().max_failures {
        q.penalize_invalid(A, clock.at(0));
    }
    q.take_notices();
    // Both requests time out in one pass: the first failure penalizes A (it sent invalid data
    // since its last penalty), the second finds it serving its penalty.
    q.poll_timeouts(clock.at(1000));
    let until = clock.at(1000) + cfg().penalty * INVALID_PENALTY_FACTOR;
    assert_eq!(q.take_notices(), vec![PeerNotice::Penalized(A, until)]);
    q.penalize_invalid(A, clock.at(1001));
    assert!(q.take_notices().is_empty());
    assert!(q.is_penalized(&A, clock.at(1002)));
    assert_eq!(q.next_request(clock.at(1002)), None);
    assert_eq!(q.next_deadline(), Some(until));
    // A new connection does not start afresh: back as a source, it serves the rest of its
    // penalty, and its next offence costs double.
    q.remove_peer(&A, clock.at(1003));
    q.add_source(CORE, 0, 64, A);
    assert!(q.is_penalized(&A, clock.at(1004)));
    assert_eq!(q.next_request(clock.at(1004)), None);
    assert!(
        q.next_request(until).is_some(),
        "probed once its penalty ended"
    );
    q.penalize(A, until);
    assert_eq!(
        q.take_notices(),
        vec![PeerNotice::Penalized(A, until + cfg().penalty * 2)]
    );
}

/// Going away with requests in flight for more than half their timeout counts as a failure
/// (as their timing out would): a peer cannot escape its deadlines by reconnecting, and what
/// it failed stays with it when it comes back. Going right after being asked (a restart, a
/// connection replaced) costs nothing. (A channel given up is the engine's to count.)
#[test]
fn leaving_with_requests_in_flight_is_a_failure_that_outlives_the_connection() {
    let clock = Clock(Instant::now());
    let mut q = queue(64, &[A]);
    assert!(q.next_request(clock.at(0)).is_some());
    q.remove_peer(&A, clock.at(600));
    assert!(matches!(q.take_notices()[..], [PeerNotice::BackedOff(p, _)] if p == A));
    q.add_source(CORE, 0, 64, A);
    let mut t = 600;
    for _ in 0..cfg().max_failures * 2 {
        t += 10_000;
        if q.next_request(clock.at(t)).is_none() {
            continue; // backed off or penalized
        }
        q.remove_peer(&A, clock.at(t + 900));
        q.add_source(CORE, 0, 64, A);
    }
    assert!(
        q.take_notices()
            .iter()
            .any(|n| matches!(n, PeerNotice::Penalized(p, _) if *p == A)),
        "penalized after its last back-off, across connections"
    );
    // Going right after being asked, or with nothing asked, costs nothing.
    let mut q = queue(64, &[B]);
    assert!(q.next_request(clock.at(0)).is_some());
    q.remove_peer(&B, clock.at(100));
    q.add_source(CORE, 0, 64, B);
    q.remove_peer(&B, clock.at(200));
    q.add_source(CORE, 0, 64, B);
    assert!(q.take_notices().is_empty());
    assert!(q.next_request(clock.at(200)).is_some());
}

/// Data found bad after its peer left goes on the peer's record: back, it serves the penalty
/// it earned while away.
#[test]
fn bad_data_found_after_its_peer_left_is_on_its_record() {
    let clock = Clock(Instant::now());
    let mut q = queue(64, &[A]);
    q.remove_peer(&A, clock.at(0));
    for i in 0..=cfg().max_failures {
        q.penalize_gone(A, clock.at(u64::from(i)));
    }
    assert!(
        q.take_notices()
            .iter()
            .any(|n| matches!(n, PeerNotice::Penalized(p, _) if *p == A))
    );
    q.add_source(CORE, 0, 64, A);
    assert!(q.is_penalized(&A, clock.at(100)));
    assert_eq!(q.next_request(clock.at(100)), None);
    q.check_timers().unwrap();
}

/// Offences are forgotten with time: a penalty that comes more than `penalty_max` after the
/// last one ended is a first one again (30 s), where one soon after doubles.
#[test]
fn offences_are_forgotten_once_penalty_max_has_passed() {
    let clock = Clock(Instant::now());
    let mut q = queue(64, &[A]);
    let penalize = |q: &mut FetchQueue, at: u64| {
        for i in 0..=cfg().max_failures {
            q.penalize(A, clock.at(at + u64::from(i)));
        }
        q.take_notices()
            .into_iter()
            .find_map(|n| match n {
                PeerNotice::Penalized(_, until) => Some(until),
                _ => None,
            })
            .expect("penalized")
    };
    let first = penalize(&mut q, 0);
    assert_eq!(first, clock.at(cfg().max_failures as u64) + cfg().penalty);
    // Soon after the first ended: doubled.
    let t = first.duration_since(clock.0).as_millis() as u64 + 1_000;
    let second = penalize(&mut q, t);
    assert_eq!(second - clock.at(t), cfg().penalty * 2);
    // Long after the second ended: a first one again.
    let t = second.duration_since(clock.0).as_millis() as u64
        + cfg().penalty_max.as_millis() as u64
        + 1_000;
    let third = penalize(&mut q, t);
    assert_eq!(third - clock.at(t), cfg().penalty);
}

/// With many cores whose blocks all arrived, the runs of the few still waiting are found (the
/// queue looks among the cores with waiting blocks), and a core whose blocks come back to the
/// queue (a request that timed out, a block that failed to store) is asked for again.
#[test]
fn runs_are_found_among_many_finished_cores_and_again_when_blocks_come_back() {
    let clock = Clock(Instant::now());
    let mut q = FetchQueue::new(cfg());
    let cores: Vec<CoreKey> = (0..200u8).map(|i| [i; 32]).collect();
    for core in &cores {
        q.add(*core, 0, 2);
        q.add_source(*core, 0, 2, A);
    }
    // Every core but the last two is fetched and stored.
    for core in &cores[..198] {
        q.on_committed(core, 0);
        q.on_committed(core, 1);
    }
    q.check_timers().unwrap();
    let sent = drain(&mut q, clock.at(0));
    let asked: Vec<(CoreKey, u64, u64)> = sent.iter().map(|a| (a.core, a.start, a.end)).collect();
    assert_eq!(asked, vec![(cores[198], 0, 2), (cores[199], 0, 2)]);
    // Nothing waits now; a timeout puts the blocks of both requests back.
    assert!(q.next_request(clock.at(0)).is_none());
    let expired = q.poll_timeouts(clock.at(1_001));
    assert_eq!(expired.len(), 2);
    q.check_timers().unwrap();
    // Another source, not on back-off, gets them.
    q.add_source(cores[199], 0, 2, B);
    let again = q
        .next_request(clock.at(1_001))
        .expect("a block came back to the queue");
    assert_eq!(
        (again.peer, again.core, again.start, again.end),
        (B, cores[199], 0, 2)
    );
    // A received block that failed to store waits again, and is asked for.
    q.on_received(again.id, 0, 1024, clock.at(1_002));
    q.on_store_failed(&cores[199], 0);
    q.check_timers().unwrap();
    let retry = q
        .next_request(clock.at(1_002))
        .expect("the block that failed to store");
    assert_eq!((retry.core, retry.start, retry.end), (cores[199], 0, 1));
}

/// A penalized peer that comes back says what it holds of a core this node has nothing queued
/// of (a reader opened in full): its penalty goes on from its record all the same, so nothing
/// is asked of it before the penalty ends.
#[test]
fn a_peer_back_on_a_core_with_nothing_queued_keeps_its_penalty() {
    let clock = Clock(Instant::now());
    let t = clock.at(0);
    let mut q = FetchQueue::new(cfg());
    q.penalize_invalid(A, t);
    q.remove_peer(&A, t);
    assert!(!q.is_backed_off(&A, t), "gone: only on its record");
    q.add_source(CORE, 0, 10, A);
    assert!(q.is_backed_off(&A, t));
    q.add(CORE, 0, 10);
    q.add_source(CORE, 0, 10, A);
    assert_eq!(q.next_request(t), None, "asked nothing while backed off");
    q.check_timers().unwrap();
}

/// A peer that answers `NoData` for every other block it was asked cuts what it said it holds
/// into ever more pieces: past `MAX_SOURCE_PIECES` it is no source of the core any more, so
/// its runs are never looked for among more pieces than that, and its blocks go to another.
#[test]
fn no_data_cuts_what_a_peer_holds_into_a_bounded_number_of_pieces() {
    let clock = Clock(Instant::now());
    let blocks = 3 * MAX_SOURCE_PIECES as u64;
    let mut q = FetchQueue::new(FetchConfig {
        window_bytes: u64::MAX / 2,
        run_bytes: u64::MAX / 2,
        max_requests: usize::MAX,
        ..cfg()
    });
    q.set_block_size(CORE, 1024);
    q.add(CORE, 0, blocks);
    q.add_source(CORE, 0, blocks, A);
    let mut cut = 0;
    while let Some(a) = q.next_request(clock.at(0)) {
        assert_eq!(a.peer, A);
        for i in a.start..a.end {
            if i % 2 == 0 {
                q.on_no_data(a.id, i, i + 1, clock.at(0));
                cut += 1;
            } else {
                assert_eq!(q.on_received(a.id, i, 1024, clock.at(0)), Arrival::Taken);
                q.on_committed(&CORE, i);
            }
        }
        let pieces = q.peers[&A].ranges.get(&CORE).map_or(0, Vec::len);
        assert!(pieces <= MAX_SOURCE_PIECES, "{pieces} pieces");
    }
    assert!(cut > MAX_SOURCE_PIECES, "only {cut} blocks refused");
    assert!(
        !q.peers[&A].ranges.contains_key(&CORE),
        "no source of the core"
    );
    q.add_source(CORE, 0, blocks, B);
    let a = q
        .next_request(clock.at(0))
        .expect("another source is asked");
    assert_eq!((a.peer, a.start), (B, 0));
    q.check_timers().unwrap();
}

/// A core whose signed byte length makes its average block enormous fills a peer's window at
/// once, and a second core's request to the same peer does not overflow its bytes in flight.
#[test]
fn enormous_average_blocks_saturate_the_window_instead_of_overflowing() {
    let clock = Clock(Instant::now());
    let other: CoreKey = [2; 32];
    let mut q = FetchQueue::new(FetchConfig {
        window_bytes: u64::MAX,
        max_requests: usize::MAX,
        ..cfg()
    });
    for core in [CORE, other] {
        q.set_block_size(core, u64::MAX / 2);
        q.add(core, 0, 4);
        q.add_source(core, 0, 4, A);
    }
    let runs = drain(&mut q, clock.at(0));
    assert!(!runs.is_empty());
    assert!(q.peers[&A].in_flight_bytes >= u64::MAX / 2);
    q.check_timers().unwrap();
}

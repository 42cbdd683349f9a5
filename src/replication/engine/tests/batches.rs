//! The frames of one read handled in one turn (`Engine::handle_messages`) as they are one at a
//! time.

use std::time::Instant;

use super::super::{
    Engine, Input, Mode,
    testing::{PEER, engine_with_peer, local_at, outputs, sync_at},
};
use crate::replication::wire::Message;

/// A reader missing blocks 40..200 of a peer's log, which says it holds none of them yet,
/// and the channel to that peer.
fn reader(now: Instant) -> (Engine, u64) {
    engine_with_peer(
        local_at(200, 40, false),
        Mode::Full,
        sync_at(200, 0, false),
        now,
    )
}

/// A batch of a peer's messages (what it holds and wants, an answer we did not ask for, a
/// cancel of nothing) gives the same outputs and timers handled in one turn as one at a
/// time: only the scheduling after each is saved.
#[test]
fn a_batch_gives_what_its_messages_give_one_at_a_time() {
    let now = Instant::now();
    let batch = vec![
        // Blocks to ask for: only a scheduling pass sends those requests.
        Message::Range {
            start: 100,
            end: 200,
        },
        Message::Want { start: 0, end: 10 },
        Message::NoData {
            id: 12_345,
            start: 0,
            end: 5,
        },
        Message::Unwant { start: 0, end: 10 },
        Message::Cancel { id: 7 },
        Message::Range {
            start: 300,
            end: 400,
        },
    ];
    let (mut one_by_one, channel) = reader(now);
    for msg in batch.clone() {
        one_by_one.handle(Input::Message(PEER, channel, msg), now);
    }
    let (mut together, ch) = reader(now);
    assert_eq!(ch, channel);
    together.handle_messages(PEER, channel, batch, now);
    let mut expected: Vec<String> = outputs(&mut one_by_one)
        .iter()
        .map(|o| format!("{o:?}"))
        .collect();
    let mut got: Vec<String> = outputs(&mut together)
        .iter()
        .map(|o| format!("{o:?}"))
        .collect();
    assert!(
        expected.iter().any(|o| o.contains("RequestRun")),
        "the batch asks for blocks: {expected:?}"
    );
    // Requests may go out after the batch's other answers rather than between them.
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    one_by_one.check_timers().expect("timers one at a time");
    together.check_timers().expect("timers in one turn");
}

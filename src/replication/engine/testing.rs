//! The engine test harness (tests and the `test-utils` feature): an engine with one
//! authenticated channel to a peer, and the messages and states tests feed it.

use std::time::Instant;

use super::{
    Applied, ApplyOutcome, Engine, EngineConfig, Input, LocalInfo, Mode, Output, ProofRead,
    RunRead, Task,
};
use crate::{
    core::RunApplied,
    crypto::capability::{Role, capability},
    replication::wire::{Message, SyncInfo},
    tree::{BlockProof, Proof, UpgradeProof},
};

/// The id of the engine under test.
pub const ME: [u8; 32] = [1; 32];

/// The id of its peer.
pub const PEER: [u8; 32] = [9; 32];

/// The key of the core it replicates.
pub const CORE: [u8; 32] = [2; 32];

/// A local state of `length` blocks on fork 0, all stored.
pub fn local(length: u64, writable: bool) -> LocalInfo {
    LocalInfo {
        fork: 0,
        length,
        byte_length: length,
        contiguous: length,
        writable,
    }
}

/// A `Sync` saying `length` blocks on fork 0, all held, from a peer that downloads
/// everything (`downloading`) or not.
pub fn sync(length: u64, downloading: bool) -> Message {
    Message::Sync(SyncInfo {
        fork: 0,
        length,
        contiguous: length,
        ask: false,
        downloading,
    })
}

/// A reader's state: `length` blocks of 1 KiB on fork 0, the first `contiguous` stored.
pub fn local_at(length: u64, contiguous: u64, writable: bool) -> LocalInfo {
    LocalInfo {
        fork: 0,
        length,
        byte_length: length * 1024,
        contiguous,
        writable,
    }
}

/// A `Sync` saying `length` blocks on fork 0 with the first `contiguous` held, from a peer
/// that does not download everything; `ask` asks ours back.
pub fn sync_at(length: u64, contiguous: u64, ask: bool) -> Message {
    Message::Sync(SyncInfo {
        fork: 0,
        length,
        contiguous,
        ask,
        downloading: false,
    })
}

/// An engine holding `CORE` at `local` in `mode`, with one open channel to `PEER` whose
/// remote sent `remote`; its outputs so far are drained. Returns the channel.
pub fn engine_with_peer(
    local: LocalInfo,
    mode: Mode,
    remote: Message,
    now: Instant,
) -> (Engine, u64) {
    let (engine, channel, _) =
        engine_with_peer_outputs(EngineConfig::default(), local, mode, remote, now);
    (engine, channel)
}

/// [`engine_with_peer`] with the tuning `cfg`, returning the outputs that followed the
/// remote's message too.
pub fn engine_with_peer_outputs(
    cfg: EngineConfig,
    local: LocalInfo,
    mode: Mode,
    remote: Message,
    now: Instant,
) -> (Engine, u64, Vec<Output>) {
    let mut engine = Engine::new(ME, cfg);
    engine.add_core(CORE, local, mode, now);
    let channel = connect(&mut engine, PEER, now);
    engine.handle(Input::Message(PEER, channel, remote), now);
    let out = outputs(&mut engine);
    (engine, channel, out)
}

/// Connects `peer` to `engine`, which replicates `CORE` and is told that the peer has it (as
/// a ticket's node: we open channels only to such peers), and answers the channel the engine
/// opens for it with the peer's `Accept`. Returns the channel; the outputs are drained.
pub fn connect(engine: &mut Engine, peer: [u8; 32], now: Instant) -> u64 {
    let channel = connect_keeping(engine, peer, now, &mut Vec::new());
    outputs(engine);
    channel
}

/// [`connect`], keeping the engine's outputs before the `Accept` (but its `OpenChannel`) in
/// `rest`.
pub fn connect_keeping(
    engine: &mut Engine,
    peer: [u8; 32],
    now: Instant,
    rest: &mut Vec<Output>,
) -> u64 {
    known(engine, CORE, peer, now);
    engine.handle(Input::PeerConnected(peer), now);
    let mut channel = None;
    for o in outputs(engine) {
        match o {
            Output::OpenChannel(p, ch, _) if p == peer => channel = Some(ch),
            o => rest.push(o),
        }
    }
    let channel = channel.expect("a channel is opened to the new peer");
    let accept = accept_of(&CORE, engine.me(), peer);
    engine.handle(Input::Message(peer, channel, accept), now);
    assert!(engine.is_authenticated(channel));
    channel
}

/// Tells `engine` that `peer` has `core` (as a ticket's node): the engine opens channels for
/// a core only to such peers. The dial it asks for at once while the core has no channel is
/// taken as done (this is the dial); its outputs are drained.
pub fn known(engine: &mut Engine, core: [u8; 32], peer: [u8; 32], now: Instant) {
    engine.handle(Input::Peers(core, vec![peer]), now);
    engine.handle_timeout(now);
    outputs(engine);
}

/// `opener`'s `Open` of a channel for `core` to `acceptor`, proving the key.
pub fn open_of(core: &[u8; 32], opener: [u8; 32], acceptor: [u8; 32]) -> Message {
    Message::Open {
        discovery_key: crate::crypto::discovery_key(core),
        capability: capability(core, Role::Opener, &opener, &acceptor),
    }
}

/// `acceptor`'s `Accept` of `opener`'s channel for `core`, proving the key.
pub fn accept_of(core: &[u8; 32], opener: [u8; 32], acceptor: [u8; 32]) -> Message {
    Message::Accept {
        capability: capability(core, Role::Acceptor, &opener, &acceptor),
    }
}

/// The run requests among `out`: (id, start, end).
pub fn run_requests(out: &[Output]) -> Vec<(u64, u64, u64)> {
    run_requests_where(out, |_| true)
}

/// The run requests among `out` towards `peer`: (id, start, end).
pub fn run_requests_to(out: &[Output], peer: [u8; 32]) -> Vec<(u64, u64, u64)> {
    run_requests_where(out, |p| *p == peer)
}

fn run_requests_where(out: &[Output], to: impl Fn(&[u8; 32]) -> bool) -> Vec<(u64, u64, u64)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(p, _, Message::RequestRun { id, start, end, .. }) if to(p) => {
                Some((*id, *start, *end))
            }
            _ => None,
        })
        .collect()
}

/// A block proof of `size` bytes at `index` that proves nothing.
pub fn junk_block(index: u64, size: usize) -> Proof {
    Proof {
        block: Some(BlockProof {
            index,
            value: vec![0xee; size].into(),
            nodes: vec![],
        }),
        ..Default::default()
    }
}

/// An answer to an upgrade from `start` by `length` blocks, with block `start` (its proof
/// is not checked by the engine: storage verifies it).
pub fn upgrade_answer(start: u64, length: u64) -> Proof {
    Proof {
        block: Some(BlockProof {
            index: start,
            value: bytes::Bytes::from_static(b"x"),
            nodes: Vec::new(),
        }),
        upgrade: Some(UpgradeProof {
            start,
            length,
            nodes: Vec::new(),
            additional_nodes: Vec::new(),
            signature: vec![0; 64],
        }),
        ..Default::default()
    }
}

/// Every output the engine has, in order.
pub fn outputs(engine: &mut Engine) -> Vec<Output> {
    std::iter::from_fn(|| engine.poll_output()).collect()
}

/// Takes the first storage task `pick` selects out of `out`.
pub fn take_task(out: &mut Vec<Output>, pick: impl Fn(&Task) -> bool) -> Option<Task> {
    let i = out
        .iter()
        .position(|o| matches!(o, Output::Task(_, t) if pick(t)))?;
    match out.remove(i) {
        Output::Task(_, t) => Some(t),
        _ => None,
    }
}

/// The input reporting proof task `task` (a `CreateProof`) read `result`.
pub fn proof_read(task: Task, result: ProofRead) -> Input {
    match task {
        Task::CreateProof { reply, .. } => reply.done(result),
        other => panic!("not a proof task: {other:?}"),
    }
}

/// The input reporting run task `task` (a `CreateRun`) read `result`.
pub fn run_read(task: Task, result: RunRead) -> Input {
    match task {
        Task::CreateRun { reply, .. } => reply.done(result),
        other => panic!("not a run task: {other:?}"),
    }
}

/// The input reporting apply task `task` (an `ApplyProof`) ended with `outcome`, the core then
/// at `local`.
pub fn proof_applied(task: Task, outcome: ApplyOutcome<()>, local: LocalInfo) -> Input {
    match task {
        Task::ApplyProof { reply, .. } => reply.done(Applied { outcome, local }),
        other => panic!("not a proof apply: {other:?}"),
    }
}

/// The input reporting apply task `task` (an `ApplyRun`) ended with `outcome`, the core then
/// at `local`.
pub fn run_applied(task: Task, outcome: ApplyOutcome<RunApplied>, local: LocalInfo) -> Input {
    match task {
        Task::ApplyRun { reply, .. } => reply.done(Applied { outcome, local }),
        other => panic!("not a run apply: {other:?}"),
    }
}

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

/// An engine holding `CORE` at `local` in `mode`, with one open channel to `PEER` whose
/// remote sent `remote`; its outputs so far are drained. Returns the channel.
pub fn engine_with_peer(
    local: LocalInfo,
    mode: Mode,
    remote: Message,
    now: Instant,
) -> (Engine, u64) {
    engine_with_peer_cfg(EngineConfig::default(), local, mode, remote, now)
}

/// [`engine_with_peer`] with the tuning `cfg`.
pub fn engine_with_peer_cfg(
    cfg: EngineConfig,
    local: LocalInfo,
    mode: Mode,
    remote: Message,
    now: Instant,
) -> (Engine, u64) {
    let mut engine = Engine::new(ME, cfg);
    engine.add_core(CORE, local, mode, now);
    let channel = connect(&mut engine, PEER, now);
    engine.handle(Input::Message(PEER, channel, remote), now);
    outputs(&mut engine);
    (engine, channel)
}

/// Connects `peer` to `engine`, which replicates `CORE`, and answers the channel the engine
/// opens for it with the peer's `Accept`. Returns the channel; the outputs are drained.
pub fn connect(engine: &mut Engine, peer: [u8; 32], now: Instant) -> u64 {
    engine.handle(Input::PeerConnected(peer), now);
    let channel = outputs(engine)
        .into_iter()
        .find_map(|o| match o {
            Output::OpenChannel(p, ch, _) if p == peer => Some(ch),
            _ => None,
        })
        .expect("a channel is opened to the new peer");
    let accept = Message::Accept {
        capability: capability(&CORE, Role::Acceptor, &engine.me(), &peer),
    };
    engine.handle(Input::Message(peer, channel, accept), now);
    outputs(engine);
    channel
}

/// An answer to an upgrade from `start` by `length` blocks, with block `start` (its proof
/// is not checked by the engine: storage verifies it).
pub fn upgrade_answer(start: u64, length: u64) -> Proof {
    Proof {
        block: Some(BlockProof {
            index: start,
            value: b"x".to_vec(),
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

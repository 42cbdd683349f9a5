//! Helpers for unit tests of the engine: an engine with one authenticated channel.

use std::time::Instant;

use super::{Engine, EngineConfig, Input, LocalInfo, Mode, Output};
use crate::{
    crypto::capability::{Role, capability},
    replication::wire::{Message, SyncInfo},
};

pub(super) const PEER: [u8; 32] = [9; 32];
pub(super) const CORE: [u8; 32] = [2; 32];

pub(super) fn local(length: u64, writable: bool) -> LocalInfo {
    LocalInfo {
        fork: 0,
        length,
        byte_length: length,
        contiguous: length,
        writable,
    }
}

pub(super) fn sync(length: u64, downloading: bool) -> Message {
    Message::Sync(SyncInfo {
        fork: 0,
        length,
        contiguous: length,
        ask: false,
        downloading,
    })
}

/// An engine holding `length` blocks of `CORE` in `mode`, with one open channel to `PEER`
/// whose remote sent `remote`; its outputs so far are drained. Returns the channel.
pub(super) fn engine_with_peer(
    local: LocalInfo,
    mode: Mode,
    remote: Message,
    now: Instant,
) -> (Engine, u64) {
    let mut engine = Engine::new([1; 32], EngineConfig::default());
    engine.add_core(CORE, local, mode, now);
    engine.handle(Input::PeerConnected(PEER), now);
    let channel = std::iter::from_fn(|| engine.poll_output())
        .find_map(|o| match o {
            Output::OpenChannel(_, ch, _) => Some(ch),
            _ => None,
        })
        .expect("a channel is opened to the new peer");
    let accept = Message::Accept {
        capability: capability(&CORE, Role::Acceptor, &[1; 32], &PEER),
    };
    engine.handle(Input::Message(PEER, channel, accept), now);
    engine.handle(Input::Message(PEER, channel, remote), now);
    while engine.poll_output().is_some() {}
    (engine, channel)
}

/// An answer to an upgrade from `start` by `length` blocks, with block `start` (its proof
/// is not checked by the engine: storage verifies it).
pub(super) fn upgrade_answer(start: u64, length: u64) -> crate::tree::Proof {
    use crate::tree::{BlockProof, Proof, UpgradeProof};
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

pub(super) fn outputs(engine: &mut Engine) -> Vec<Output> {
    std::iter::from_fn(|| engine.poll_output()).collect()
}

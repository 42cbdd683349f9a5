//! Hostile nodes: their engines are honest, what they send is not. Each replays one family of
//! the wire attacks the engine must withstand.

use rand::{Rng, RngExt};

use super::script::Script;
use crate::{
    replication::Message,
    tree::{Proof, ProofRequest},
};

/// Ids of upgrade requests have the top bit set (the engine's convention).
const UPGRADE_ID_BIT: u64 = 1 << 63;

/// How a hostile node lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostility {
    /// Inflates its lengths, answers upgrades with an old signed state or with nothing, flips
    /// block values and pushes forged blocks.
    Liar,
    /// Completes handshakes and says what it has, then answers nothing and asks for nothing:
    /// every request to it times out.
    Silent,
    /// Floods every channel with requests for runs it does not need, and claims more than it
    /// has.
    Flooder,
    /// Sends what its [`Script`] says: any well-formed message, on any channel, any number
    /// of times (a fuzz input drives it).
    Scripted,
}

/// A hostile node's state.
#[derive(Debug, Clone)]
pub struct Hostile {
    /// How it lies.
    pub kind: Hostility,
    /// A signed state of the log at an older length, replayed as upgrade answers.
    pub old_state: Proof,
    /// Messages it rewrote, dropped or made up.
    pub lies: u64,
    /// The script of a [`Hostility::Scripted`] node.
    pub script: Option<Script>,
}

impl Hostile {
    /// A hostile node that replays `old_state`.
    pub fn new(kind: Hostility, old_state: Proof) -> Self {
        Self {
            kind,
            old_state,
            lies: 0,
            script: None,
        }
    }

    /// What it sends instead of `msg`.
    pub fn rewrite(&mut self, msg: Message, rng: &mut impl Rng) -> Vec<Message> {
        if matches!(msg, Message::Open { .. } | Message::Accept { .. }) {
            return vec![msg];
        }
        self.lies += 1;
        match self.kind {
            // The simulator asks its script, which may pick another channel.
            Hostility::Scripted => {
                self.lies -= 1;
                vec![msg]
            }
            Hostility::Silent => match msg {
                Message::Sync(_) | Message::Close { .. } => {
                    self.lies -= 1;
                    vec![msg]
                }
                _ => Vec::new(),
            },
            Hostility::Liar => vec![self.lie(msg, rng)],
            Hostility::Flooder => match msg {
                Message::Sync(mut info) => {
                    info.length = info.length.saturating_add(1 << 20);
                    let mut out = vec![Message::Sync(info)];
                    for _ in 0..32 {
                        let start = rng.random_range(0..1u64 << 20);
                        out.push(Message::RequestRun {
                            id: rng.random::<u64>() & !UPGRADE_ID_BIT,
                            fork: info.fork,
                            start,
                            end: start + rng.random_range(1..4096),
                            length: info.length,
                        });
                        out.push(Message::Request {
                            id: rng.random(),
                            request: ProofRequest::default(),
                        });
                    }
                    out
                }
                other => {
                    self.lies -= 1;
                    vec![other]
                }
            },
        }
    }

    fn lie(&mut self, msg: Message, rng: &mut impl Rng) -> Message {
        match msg {
            Message::Sync(mut info) => {
                info.length = info.length.saturating_add(1000);
                info.contiguous = info.contiguous.saturating_add(1000);
                Message::Sync(info)
            }
            Message::Data { id, mut proof } => {
                if proof.upgrade.is_some() {
                    proof = if rng.random_bool(0.5) {
                        self.old_state.clone()
                    } else {
                        Proof::default()
                    };
                } else if let Some(b) = &mut proof.block {
                    let mut value = b.value.to_vec();
                    value.push(b'!');
                    b.value = value.into();
                }
                Message::Data { id, proof }
            }
            Message::Push { .. } => Message::Push {
                proof: self.old_state.clone(),
            },
            // It cannot prove the length it claimed: it answers the upgrade anyway.
            Message::NoData { id, .. } if id & UPGRADE_ID_BIT != 0 => Message::Data {
                id,
                proof: self.old_state.clone(),
            },
            other => {
                self.lies -= 1;
                other
            }
        }
    }
}

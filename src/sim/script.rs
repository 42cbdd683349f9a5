//! A hostile node driven by a script of bytes (a fuzz input): every message its engine would
//! send is passed, dropped, mutated, replaced by a replay of anything it heard or said, or by
//! a message decoded from the script, and may go out on any of its channels, several times.
//! Every message stays well-formed (it is encoded to a frame like any other), so what the
//! honest nodes see is what a peer with a real endpoint could send. Once the script is used up
//! the node passes its engine's messages unchanged: the honest nodes must then converge.

use std::collections::VecDeque;

use crate::replication::wire::Message;

/// Messages kept to replay: what the node heard and said last.
const HISTORY: usize = 64;

/// Copies of one message sent at most.
const MAX_COPIES: usize = 16;

/// The longest message body decoded from the script.
const MAX_DECODED: usize = 512;

/// A hostile node's script, and what it can replay.
#[derive(Debug, Clone, Default)]
pub struct Script {
    bytes: Vec<u8>,
    pos: usize,
    history: VecDeque<Message>,
}

impl Script {
    /// A script of `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            pos: 0,
            history: VecDeque::new(),
        }
    }

    /// Whether the script is used up (the node has stopped lying).
    pub fn is_done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    /// Keeps `msg`, heard or said, to replay.
    pub fn remember(&mut self, msg: &Message) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(msg.clone());
    }

    fn byte(&mut self) -> u8 {
        let b = self.bytes.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }

    /// What the node sends instead of `msg` on channel `ch`: (channel, message) pairs, the
    /// channel one of `channels` (the node's channels with peers, `ch` among them).
    pub fn rewrite(&mut self, ch: u64, msg: Message, channels: &[u64]) -> Vec<(u64, Message)> {
        if self.is_done() {
            return vec![(ch, msg)];
        }
        self.remember(&msg);
        let op = self.byte();
        // The low bits pick what is sent, the next ones where and how often.
        let out = match op % 8 {
            0..=2 => Some(msg),
            3 => None,
            4 => self.mutate(msg),
            5 => {
                let replay = self.replay();
                if self.byte().is_multiple_of(2) {
                    replay.and_then(|m| self.mutate(m))
                } else {
                    replay
                }
            }
            6 => self.decode(),
            _ => Some(Message::Close {
                reason: String::new(),
            }),
        };
        let Some(out) = out else {
            return Vec::new();
        };
        let to = if op & 0x08 != 0 && !channels.is_empty() {
            channels[usize::from(self.byte()) % channels.len()]
        } else {
            ch
        };
        let copies = if op & 0x10 != 0 {
            1 + usize::from(self.byte()) % MAX_COPIES
        } else {
            1
        };
        vec![(to, out); copies]
    }

    /// A message the node heard or said before.
    fn replay(&mut self) -> Option<Message> {
        if self.history.is_empty() {
            return None;
        }
        let i = usize::from(self.byte()) % self.history.len();
        self.history.get(i).cloned()
    }

    /// `msg` with some of its encoded bytes overwritten by the script (numbers set to
    /// anything, `u64::MAX` included), if it still decodes.
    fn mutate(&mut self, msg: Message) -> Option<Message> {
        let mut body = postcard::to_allocvec(&msg).ok()?;
        if body.is_empty() {
            return Some(msg);
        }
        let edits = 1 + self.byte() % 4;
        for _ in 0..edits {
            let at = usize::from(u16::from_le_bytes([self.byte(), self.byte()])) % body.len();
            match self.byte() % 4 {
                // A varint of u64::MAX in place.
                0 => {
                    let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
                    body.splice(at..(at + 1).min(body.len()), max);
                }
                1 => body[at] = body[at].wrapping_add(1),
                2 => body[at] = body[at].wrapping_sub(1),
                _ => body[at] = self.byte(),
            }
        }
        postcard::from_bytes(&body).ok()
    }

    /// A message decoded from the next bytes of the script, if they decode.
    fn decode(&mut self) -> Option<Message> {
        let len = (usize::from(self.byte()) * 2).min(MAX_DECODED);
        let end = self.pos.saturating_add(len).min(self.bytes.len());
        let body = self.bytes.get(self.pos..end)?.to_vec();
        self.pos = end;
        postcard::from_bytes(&body).ok()
    }
}

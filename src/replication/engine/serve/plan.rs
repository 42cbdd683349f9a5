//! How to serve one request, decided from the request and our length alone, and the messages
//! that answer a run: pure functions, no state.

use crate::{
    core::{MAX_RUN, RunItem},
    replication::wire::Message,
    tree::ProofRequest,
};

/// How to serve a request taken from a peer's queue.
#[derive(Debug)]
pub(super) enum Plan {
    /// Answer at once, and count the request as refused: it asked for too much, or for
    /// nothing we have (an honest peer asks for what our `Sync` said we hold).
    Refuse(Message),
    /// Read the proof of request `id` from storage.
    Proof { id: u64, request: ProofRequest },
    /// Read part of run request `id` from storage (the rest later, from where it stops).
    Run(RunRequest),
}

/// A run request being served: what the requester asked, from where this part starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RunRequest {
    pub(super) id: u64,
    pub(super) fork: u64,
    pub(super) start: u64,
    pub(super) end: u64,
    /// The requester's length.
    pub(super) length: u64,
}

impl RunRequest {
    /// The request again, from `start` on.
    pub(super) fn message(&self) -> Message {
        Message::RequestRun {
            id: self.id,
            fork: self.fork,
            start: self.start,
            end: self.end,
            length: self.length,
        }
    }
}

/// How to serve `msg`, a request for a log of `length` blocks. `None` for a message that is
/// no request.
pub(super) fn plan(msg: Message, length: u64) -> Option<Plan> {
    let step = match msg {
        Message::Request { id, request } => {
            if !answerable(&request, length) {
                let none = Message::NoData {
                    id,
                    start: 0,
                    end: 0,
                };
                return Some(Plan::Refuse(none));
            }
            Plan::Proof { id, request }
        }
        Message::RequestRun {
            id,
            fork,
            start,
            end,
            length: their_length,
        } => {
            if start >= end || end - start > MAX_RUN {
                return Some(Plan::Refuse(Message::NoData { id, start, end }));
            }
            if start >= length.min(their_length) {
                // Past our log, or past the log the requester asks about: nothing of it can
                // be proven, and no storage task is needed to say so. Counted: a peer that
                // keeps asking for what we never said we hold is closed like a flood.
                return Some(Plan::Refuse(Message::NoData { id, start, end }));
            }
            Plan::Run(RunRequest {
                id,
                fork,
                start,
                end,
                length: their_length,
            })
        }
        _ => return None,
    };
    Some(step)
}

/// The answer to a refused request: `NoData` for what it asked.
pub(super) fn refusal(msg: &Message) -> Option<Message> {
    match *msg {
        Message::Request { id, .. } => Some(Message::NoData {
            id,
            start: 0,
            end: 0,
        }),
        Message::RequestRun { id, start, end, .. } => Some(Message::NoData { id, start, end }),
        _ => None,
    }
}

/// The messages answering run request `id`, in block order: a `Data` per proof, and one
/// `NoData` per stretch of blocks this node lacks.
pub(super) fn run_answer(id: u64, items: Vec<RunItem>) -> Vec<Message> {
    let mut out = Vec::with_capacity(items.len());
    let mut gap: Option<(u64, u64)> = None;
    // `None` at the end flushes a trailing gap.
    for item in items.into_iter().map(Some).chain([None]) {
        if let Some(RunItem::Missing(i)) = item {
            gap = Some((gap.map_or(i, |g| g.0), i + 1));
            continue;
        }
        if let Some((start, end)) = gap.take() {
            out.push(Message::NoData { id, start, end });
        }
        if let Some(RunItem::Proof(proof)) = item {
            out.push(Message::Data { id, proof });
        }
    }
    out
}

/// Whether a request to a log of `length` blocks could be answered with anything: one that
/// asks for nothing, or for a block past the log, gets `NoData` without a storage task.
fn answerable(request: &ProofRequest, length: u64) -> bool {
    let asks = request.block.is_some()
        || request.hash.is_some()
        || request.seek.is_some()
        || request.upgrade.is_some()
        || request.manifest;
    let block_past_end = request.block.as_ref().is_some_and(|b| b.index >= length);
    asks && !block_past_end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{BlockProof, Proof};

    fn proof(index: u64) -> RunItem {
        RunItem::Proof(Proof {
            block: Some(BlockProof {
                index,
                value: Default::default(),
                nodes: Vec::new(),
            }),
            ..Default::default()
        })
    }

    #[test]
    fn missing_stretches_become_one_no_data_each() {
        let items = vec![
            RunItem::Missing(0),
            proof(1),
            RunItem::Missing(2),
            RunItem::Missing(3),
            proof(4),
            RunItem::Missing(5),
        ];
        let shape: Vec<(char, u64, u64)> = run_answer(7, items)
            .into_iter()
            .map(|m| match m {
                Message::Data { id, proof } => ('d', id, proof.block.map_or(99, |b| b.index)),
                Message::NoData { id, start, end } => ('n', id, start * 10 + end),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ('n', 7, 1),
                ('d', 7, 1),
                ('n', 7, 24),
                ('d', 7, 4),
                ('n', 7, 56)
            ]
        );
    }

    /// What serving each kind of run request takes: too long a run, or one wholly past the
    /// log, is refused (answered at once, and counted), and the rest is read.
    #[test]
    fn runs_are_refused_answered_or_read() {
        let run = |start, end| Message::RequestRun {
            id: 7,
            fork: 0,
            start,
            end,
            length: 100,
        };
        let step = |msg| plan(msg, 100);
        assert!(matches!(
            step(run(0, MAX_RUN + 1)),
            Some(Plan::Refuse(Message::NoData { id: 7, .. }))
        ));
        assert!(matches!(
            step(run(5, 5)),
            Some(Plan::Refuse(Message::NoData { .. }))
        ));
        assert!(matches!(
            step(run(100, 110)),
            Some(Plan::Refuse(Message::NoData {
                start: 100,
                end: 110,
                ..
            }))
        ));
        assert!(matches!(
            step(run(10, 20)),
            Some(Plan::Run(RunRequest {
                start: 10,
                end: 20,
                ..
            }))
        ));
        assert!(step(Message::Cancel { id: 7 }).is_none());
    }
}

//! Sans-IO replication: the wire messages, the fetch queue and the engine that owns every peer
//! and channel. Inputs are messages, time and finished storage tasks; outputs are messages,
//! storage tasks, timers and events. The iroh driver in [`crate::net`] only moves bytes.
//!
//! - [`wire`]: the messages of a channel and their framing;
//! - [`gossip`]: the announcements on each core's gossip topic;
//! - [`fetch`]: the queue of missing blocks, which peer to ask for which run, and when;
//! - [`engine`]: the state machine the driver calls, composed of parts that each own their
//!   state (see its module docs and the calling contract on [`Engine`]);
//! - [`storage`]: the engine's storage tasks carried out on a [`Hypercore`](crate::Hypercore),
//!   for the iroh driver and the simulator alike;
//! - [`ranges`]: sorted disjoint ranges of blocks;

pub mod engine;
pub mod fetch;
pub mod gossip;
pub mod ranges;
pub mod storage;
pub mod wire;

pub use engine::{
    ApplyOutcome, Engine, EngineConfig, Event, Input, LocalInfo, Mode, Output, Task, TaskDone,
};
pub use fetch::{FetchConfig, FetchQueue};
pub use wire::{Message, SyncInfo, WireError};

/// An endpoint id, as bytes: names a peer in every input and output of the engine.
pub type PeerId = [u8; 32];

//! Sans-IO replication: the wire messages, the fetch queue and the engine that owns every peer
//! and channel. Inputs are messages, time and finished storage tasks; outputs are messages,
//! storage tasks, timers and events. The iroh driver in [`crate::net`] only moves bytes.

pub mod engine;
pub mod fetch;
pub mod gossip;
pub mod ranges;
pub mod wire;

pub use engine::{Engine, EngineConfig, Event, Input, LocalInfo, Mode, Output, Task, TaskResult};
pub use fetch::{FetchConfig, FetchQueue, PeerId};
pub use wire::{Message, SyncInfo, WireError};

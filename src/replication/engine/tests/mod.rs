//! The engine's behaviour, driven through its inputs and outputs with a fake clock, one file
//! per part of it.

mod batches;
mod channels;
mod control;
mod extensions;
mod fetching;
mod gossip;
mod leave;
mod parked;
mod push;
mod redial;
mod serve;
mod update;
mod upgrade;

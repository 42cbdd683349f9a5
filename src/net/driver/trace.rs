//! What `-v` (`RUST_LOG=iroh_hypercore=…`) shows of replication: every engine event as a log
//! line saying which peer and which core it is about (the core by its discovery key: a log
//! never holds a core's key, which is what lets one read it), and a span per channel around
//! the handling of its frames.
//!
//! Levels: `info` for what a person looks for when a follower is stuck (peers coming and
//! going, a core left without peers and its redials, data that did not verify, penalties,
//! refused channels, truncations), `debug` for channels and lengths, `trace` per block.

use crate::{
    crypto::{CoreKey, discovery_key},
    replication::Event,
};

/// The first 5 bytes of an id or key, in hex: enough to tell peers and cores apart in logs.
pub(super) struct Short(pub(super) [u8; 32]);

impl std::fmt::Display for Short {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..5] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A core as logs name it: its discovery key, short.
pub(super) fn dk(core: &CoreKey) -> Short {
    Short(discovery_key(core))
}

/// Whether a line at `level` would go anywhere: checked before any field is computed, since
/// with tracing's `log` feature a disabled event may still evaluate its fields (a discovery
/// key is a hash: measured at 2 more BLAKE2b runs per replicated block when unchecked).
/// An application that logs through the `log` crate (no tracing subscriber set) gets them
/// when its logger asks for the level.
pub(super) fn enabled(level: tracing::Level) -> bool {
    let (tracing_wants, log_level) = match level {
        tracing::Level::TRACE => (tracing::enabled!(tracing::Level::TRACE), log::Level::Trace),
        tracing::Level::DEBUG => (tracing::enabled!(tracing::Level::DEBUG), log::Level::Debug),
        tracing::Level::INFO => (tracing::enabled!(tracing::Level::INFO), log::Level::Info),
        tracing::Level::WARN => (tracing::enabled!(tracing::Level::WARN), log::Level::Warn),
        _ => (tracing::enabled!(tracing::Level::ERROR), log::Level::Error),
    };
    tracing_wants || (!tracing::dispatcher::has_been_set() && log_level <= log::max_level())
}

/// The level `ev` is logged at.
fn level_of(ev: &Event) -> tracing::Level {
    use tracing::Level;
    match ev {
        Event::PeerAdd(_)
        | Event::PeerRemove(_)
        | Event::ChannelRefused { .. }
        | Event::Truncate { .. }
        | Event::Invalid { .. }
        | Event::Penalized { .. }
        | Event::NoPeers { .. }
        | Event::Reconnecting { .. } => Level::INFO,
        Event::Download { .. } | Event::Upload { .. } | Event::Extension { .. } => Level::TRACE,
        _ => Level::DEBUG,
    }
}

/// Logs `ev` at its level, with its peer and core.
pub(super) fn log_event(ev: &Event) {
    use tracing::{debug, info, trace};
    if !enabled(level_of(ev)) {
        return;
    }
    match ev {
        Event::PeerAdd(peer) => info!(peer = %Short(*peer), "peer connected"),
        Event::PeerRemove(peer) => info!(peer = %Short(*peer), "peer disconnected"),
        Event::ChannelOpen { core, peer } => {
            debug!(peer = %Short(*peer), dk = %dk(core), "channel open")
        }
        Event::ChannelClosed { core, peer } => {
            debug!(peer = %Short(*peer), dk = %dk(core), "channel closed")
        }
        Event::ChannelRefused { peer, reason } => {
            info!(peer = %Short(*peer), "channel refused: {reason}")
        }
        Event::Append { core, length, fork } => {
            debug!(dk = %dk(core), length, fork, "log grew")
        }
        Event::Truncate { core, length, fork } => {
            info!(dk = %dk(core), length, fork, "log truncated to a new fork")
        }
        Event::Download {
            core,
            index,
            bytes,
            peer,
        } => {
            trace!(peer = %Short(*peer), dk = %dk(core), index, bytes, "block verified and stored")
        }
        Event::Upload {
            core,
            index,
            bytes,
            peer,
        } => trace!(peer = %Short(*peer), dk = %dk(core), index, bytes, "block sent"),
        Event::BlobDownloaded {
            core, index, size, ..
        } => debug!(dk = %dk(core), index, size, "blob fetched"),
        Event::Invalid { core, peer, reason } => {
            info!(peer = %Short(*peer), dk = %dk(core), "data that did not verify: {reason}")
        }
        Event::Backoff(peer) => debug!(peer = %Short(*peer), "peer backed off"),
        Event::Penalized { peer, penalty } => {
            info!(peer = %Short(*peer), ?penalty, "peer penalized: asked nothing for a while")
        }
        Event::NoPeers { core } => info!(dk = %dk(core), "no peer left for the core"),
        Event::Reconnecting {
            core,
            attempt,
            next_in,
        } => info!(dk = %dk(core), attempt, ?next_in, "dialling the core's known peers"),
        Event::Updated { core, length } => debug!(dk = %dk(core), length, "update answered"),
        Event::Extension {
            core, peer, name, ..
        } => {
            trace!(peer = %Short(*peer), dk = ?core.as_ref().map(dk).map(|d| d.to_string()), name, "extension message")
        }
        Event::Lagged(n) => debug!(n, "event subscriber lagged"),
    }
}

//! Connections: dials (bounded and timed out), accepted connections, one connection per
//! peer (the one dialed by the lower endpoint id), at most [`MAX_CONNECTIONS`].

use std::time::Instant;

use iroh::{EndpointAddr, EndpointId, endpoint::Connection};

use super::{
    super::ALPN,
    super::frames::{Budget, MAX_BUFFERED_PER_CONNECTION},
    Driver, Io,
};
use crate::{
    crypto::CoreKey,
    replication::{Input, PeerId},
};

/// Connections kept at once; more are closed as they come.
pub const MAX_CONNECTIONS: usize = 1024;

/// Dials in flight at once (gossip announcements and tickets name whom to dial).
pub const MAX_DIALS: usize = 16;

/// Nodes of one ticket (or `join`) that are dialed.
pub const MAX_JOIN_NODES: usize = 8;

/// Time a dial may take.
pub const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) struct Conn {
    pub(super) conn: Connection,
    pub(super) id: usize,
    pub(super) dialed_by_me: bool,
    /// What unfinished frames on this connection may hold.
    pub(super) budget: Budget,
    /// Bytes queued on its channels that QUIC has not taken yet.
    pub(super) backlog: u64,
    /// Whether the engine was last told the backlog is over its limit.
    pub(super) over: bool,
}

impl Driver {
    /// Dials the nodes a ticket (or `join`) names, at most [`MAX_JOIN_NODES`], and adds them
    /// to the core's gossip topic.
    pub(super) fn join(&mut self, key: CoreKey, nodes: Vec<EndpointAddr>) {
        let nodes: Vec<EndpointAddr> = nodes.into_iter().take(MAX_JOIN_NODES).collect();
        let ids: Vec<EndpointId> = nodes.iter().map(|a| a.id).collect();
        // Kept (the latest at most MAX_JOIN_NODES) as the core's blob providers beside its
        // channel peers.
        let known = self.join_nodes.entry(key).or_default();
        for id in ids.iter().filter(|id| **id != self.endpoint.id()) {
            if !known.contains(id) {
                known.push(*id);
            }
        }
        let excess = known.len().saturating_sub(MAX_JOIN_NODES);
        known.drain(..excess);
        for addr in nodes {
            if addr.id == self.endpoint.id() {
                continue;
            }
            self.lookup.add_endpoint_info(addr.clone());
            let peer = *addr.id.as_bytes();
            self.addrs.insert(peer, addr);
            self.dial(peer);
        }
        self.join_gossip_peers(key, ids);
    }

    pub(super) fn dial(&mut self, peer: PeerId) {
        if self.conns.contains_key(&peer) || self.dialing.contains(&peer) {
            return;
        }
        if self.dialing.len() >= MAX_DIALS {
            tracing::debug!("dial skipped: {MAX_DIALS} dials in flight");
            return;
        }
        let addr = match self.addrs.get(&peer) {
            Some(a) => a.clone(),
            None => match EndpointId::from_bytes(&peer) {
                Ok(id) => EndpointAddr::new(id),
                Err(_) => return,
            },
        };
        if addr.id == self.endpoint.id() {
            return;
        }
        self.dialing.insert(peer);
        let ep = self.endpoint.clone();
        self.io.push(Box::pin(async move {
            let r = match tokio::time::timeout(DIAL_TIMEOUT, ep.connect(addr, ALPN)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("dial timed out".to_string()),
            };
            Io::Dialed(peer, r)
        }));
    }

    /// Registers a connection, keeping one per peer: the one dialed by the lower endpoint id.
    pub(super) fn add_conn(&mut self, conn: Connection, dialed_by_me: bool) {
        let peer = *conn.remote_id().as_bytes();
        let me = *self.endpoint.id().as_bytes();
        let preferred = |dialed_by_me: bool| dialed_by_me == (me < peer);
        if let Some(existing) = self.conns.get(&peer) {
            let existing_alive = existing.conn.close_reason().is_none();
            if existing_alive && (preferred(existing.dialed_by_me) || !preferred(dialed_by_me)) {
                conn.close(0u32.into(), b"duplicate connection");
                return;
            }
            let old = self.remove_conn(&peer);
            if let Some(old) = old {
                old.conn.close(0u32.into(), b"duplicate connection");
            }
        } else if self.conns.len() >= MAX_CONNECTIONS {
            conn.close(0u32.into(), b"too many connections");
            return;
        }
        let id = conn.stable_id();
        let c1 = conn.clone();
        self.io.push(Box::pin(async move {
            c1.closed().await;
            Io::Closed(peer, id)
        }));
        self.accept_next(peer, id, conn.clone());
        self.conns.insert(
            peer,
            Conn {
                conn,
                id,
                dialed_by_me,
                budget: Budget::new(MAX_BUFFERED_PER_CONNECTION),
                backlog: 0,
                over: false,
            },
        );
        self.engine
            .handle(Input::PeerConnected(peer), Instant::now());
    }

    pub(super) fn remove_conn(&mut self, peer: &PeerId) -> Option<Conn> {
        let c = self.conns.remove(peer)?;
        // Its readers may be dropped only later: its bytes leave the node's budget now.
        c.budget.release_from(&self.budget);
        self.channels.retain(|_, ch| ch.peer != *peer);
        self.engine
            .handle(Input::PeerDisconnected(*peer), Instant::now());
        Some(c)
    }

    pub(super) fn accept_next(&mut self, peer: PeerId, id: usize, conn: Connection) {
        self.io.push(Box::pin(async move {
            let r = conn.accept_bi().await.map_err(|e| e.to_string());
            Io::Accepted(peer, id, r)
        }));
    }

    pub(super) fn current(&self, peer: &PeerId, conn_id: usize) -> bool {
        self.conns.get(peer).is_some_and(|c| c.id == conn_id)
    }

    /// A dial ended: the connection is registered, or the failure logged.
    pub(super) fn on_dialed(&mut self, peer: PeerId, result: Result<Connection, String>) {
        self.dialing.remove(&peer);
        match result {
            Ok(conn) => self.add_conn(conn, true),
            Err(e) => tracing::debug!("dial failed: {e}"),
        }
    }
}

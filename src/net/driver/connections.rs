//! The connections part: dials (bounded and timed out), accepted connections, one connection
//! per peer (the one dialed by the lower endpoint id), at most [`MAX_CONNECTIONS`], and the
//! budgets their unfinished frames count against. It owns its futures: dials, the next
//! stream each connection's peer opens, and each connection's end.

use std::collections::{HashMap, HashSet};

use iroh::{
    Endpoint, EndpointAddr, EndpointId,
    address_lookup::memory::MemoryLookup,
    endpoint::{Connection, RecvStream, SendStream},
};
use n0_future::{FuturesUnordered, StreamExt, boxed::BoxFuture};

use super::super::{
    ALPN,
    frames::{Budget, Budgets, MAX_BUFFERED_PER_CONNECTION, MAX_BUFFERED_TOTAL},
};
use crate::replication::PeerId;

/// Connections kept at once; more are closed as they come.
pub const MAX_CONNECTIONS: usize = 1024;

/// Dials in flight at once (gossip announcements and tickets name whom to dial).
pub const MAX_DIALS: usize = 16;

/// Nodes of one ticket (or `join`) that are dialed.
pub const MAX_JOIN_NODES: usize = 8;

/// Time a dial may take.
pub const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A peer's connection.
pub(super) struct Conn {
    pub(super) conn: Connection,
    /// Its stable id: events of a connection replaced since are ignored.
    pub(super) id: usize,
    dialed_by_me: bool,
    /// What unfinished frames on this connection may hold.
    budget: Budget,
}

/// What happened to a dial or a connection.
pub(super) enum ConnEvent {
    /// A dial ended.
    Dialed(PeerId, Result<Connection, String>),
    /// The peer of connection `usize` opened a stream (or the connection failed).
    Accepted(PeerId, usize, Result<(SendStream, RecvStream), String>),
    /// Connection `usize` of the peer closed.
    Closed(PeerId, usize),
}

/// What adding a connection did.
pub(super) enum Added {
    /// It was kept: `PeerId`'s connection now, replacing the connection returned, if any.
    Kept(PeerId, Option<Conn>),
    /// It was closed: a better one exists, or there are too many.
    Refused,
}

/// The connections part; see the module docs.
pub(super) struct Connections {
    endpoint: Endpoint,
    /// The addresses the driver learnt, for the endpoint to dial.
    lookup: MemoryLookup,
    conns: HashMap<PeerId, Conn>,
    dialing: HashSet<PeerId>,
    addrs: HashMap<PeerId, EndpointAddr>,
    /// What unfinished frames on all connections may hold.
    budget: Budget,
    io: FuturesUnordered<BoxFuture<ConnEvent>>,
}

impl Connections {
    /// No connection yet, on `endpoint`.
    pub(super) fn new(endpoint: Endpoint) -> Self {
        let lookup = MemoryLookup::new();
        if let Ok(services) = endpoint.address_lookup() {
            services.add(lookup.clone());
        }
        Self {
            endpoint,
            lookup,
            conns: HashMap::new(),
            dialing: HashSet::new(),
            addrs: HashMap::new(),
            budget: Budget::new(MAX_BUFFERED_TOTAL),
            io: FuturesUnordered::new(),
        }
    }

    /// This endpoint's id.
    pub(super) fn me(&self) -> EndpointId {
        self.endpoint.id()
    }

    /// Keeps `addr` to dial its node by.
    pub(super) fn remember(&mut self, addr: EndpointAddr) {
        self.lookup.add_endpoint_info(addr.clone());
        self.addrs.insert(*addr.id.as_bytes(), addr);
    }

    /// Dials `peer`, unless it is connected, being dialed, this node, or [`MAX_DIALS`] dials
    /// are in flight.
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
            ConnEvent::Dialed(peer, r)
        }));
    }

    /// A dial of `peer` ended.
    pub(super) fn dialed(&mut self, peer: &PeerId) {
        self.dialing.remove(peer);
    }

    /// Adds a connection, keeping one per peer: the one dialed by the lower endpoint id.
    pub(super) fn add(&mut self, conn: Connection, dialed_by_me: bool) -> Added {
        let peer = *conn.remote_id().as_bytes();
        let me = *self.endpoint.id().as_bytes();
        let preferred = |dialed_by_me: bool| dialed_by_me == (me < peer);
        let mut replaced = None;
        if let Some(existing) = self.conns.get(&peer) {
            let existing_alive = existing.conn.close_reason().is_none();
            if existing_alive && (preferred(existing.dialed_by_me) || !preferred(dialed_by_me)) {
                conn.close(0u32.into(), b"duplicate connection");
                return Added::Refused;
            }
            replaced = self.remove(&peer);
        } else if self.conns.len() >= MAX_CONNECTIONS {
            conn.close(0u32.into(), b"too many connections");
            return Added::Refused;
        }
        let id = conn.stable_id();
        let watched = conn.clone();
        self.io.push(Box::pin(async move {
            watched.closed().await;
            ConnEvent::Closed(peer, id)
        }));
        let budget = Budget::new(MAX_BUFFERED_PER_CONNECTION);
        let c = Conn {
            conn,
            id,
            dialed_by_me,
            budget,
        };
        self.conns.insert(peer, c);
        self.accept_next(peer, id);
        Added::Kept(peer, replaced)
    }

    /// Forgets `peer`'s connection (it is not closed here): its unfinished frames leave the
    /// node's budget now, though its readers may be dropped only later.
    pub(super) fn remove(&mut self, peer: &PeerId) -> Option<Conn> {
        let c = self.conns.remove(peer)?;
        c.budget.release_from(&self.budget);
        Some(c)
    }

    /// Waits for the next stream the peer opens on connection `id`.
    pub(super) fn accept_next(&mut self, peer: PeerId, id: usize) {
        let Some(conn) = self.conns.get(&peer).map(|c| c.conn.clone()) else {
            return;
        };
        self.io.push(Box::pin(async move {
            let r = conn.accept_bi().await.map_err(|e| e.to_string());
            ConnEvent::Accepted(peer, id, r)
        }));
    }

    /// Whether connection `id` is `peer`'s current one.
    pub(super) fn is_current(&self, peer: &PeerId, id: usize) -> bool {
        self.conns.get(peer).is_some_and(|c| c.id == id)
    }

    /// `peer`'s connection.
    pub(super) fn get(&self, peer: &PeerId) -> Option<&Conn> {
        self.conns.get(peer)
    }

    /// The addresses `peer` is reachable at, as far as we know: those of its connection's
    /// paths, and those we were given.
    pub(super) fn addr_of(&self, peer: &PeerId) -> Option<EndpointAddr> {
        let conn = self.conns.get(peer);
        let mut addr = match self.addrs.get(peer) {
            Some(addr) => addr.clone(),
            // The connection knows the id as a point already: decoding the bytes again
            // costs a square root.
            None => EndpointAddr::new(match conn {
                Some(c) => c.conn.remote_id(),
                None => EndpointId::from_bytes(peer).ok()?,
            }),
        };
        if let Some(c) = conn {
            let paths = c.conn.paths();
            addr = addr.with_addrs(paths.iter().map(|p| p.remote_addr().clone()));
        }
        Some(addr)
    }

    /// The budgets unfinished frames from `peer` count against.
    pub(super) fn budgets(&self, peer: &PeerId) -> Budgets {
        Budgets {
            connection: self
                .conns
                .get(peer)
                .map_or_else(|| Budget::new(0), |c| c.budget.clone()),
            total: self.budget.clone(),
        }
    }

    /// The peer whose connection holds the most unfinished bytes, if any holds some.
    pub(super) fn largest_holder(&self) -> Option<PeerId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.budget.used() > 0)
            .max_by_key(|(p, c)| (c.budget.used(), **p))
            .map(|(p, _)| *p)
    }

    /// Bytes of unfinished frames held from `peer`, and from all peers.
    pub(super) fn buffered(&self, peer: Option<&PeerId>) -> u64 {
        match peer {
            Some(p) => self.conns.get(p).map_or(0, |c| c.budget.used()),
            None => self.budget.used(),
        }
    }

    /// Connections open, and dials in flight.
    pub(super) fn counts(&self) -> (usize, usize) {
        (self.conns.len(), self.dialing.len())
    }

    /// Closes every connection (the node shuts down).
    pub(super) fn close_all(&mut self) {
        for (_, c) in self.conns.drain() {
            c.conn.close(0u32.into(), b"shutdown");
        }
    }

    /// The next dial, stream or close; pending forever while none is in flight.
    pub(super) async fn next(&mut self) -> ConnEvent {
        match self.io.next().await {
            Some(ev) => ev,
            None => std::future::pending().await,
        }
    }
}

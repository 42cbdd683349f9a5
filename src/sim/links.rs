//! The network between simulated nodes: which pairs are connected, and when a message sent on
//! a connection arrives.
//!
//! A connection is one QUIC connection: reliable and ordered per direction. Its latency is
//! drawn once per link; each direction sends at a fixed bandwidth, so messages queue behind one
//! another; a message that loses a packet arrives a retransmission (one round trip) later, and
//! holds up the messages behind it as QUIC's ordered streams do.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use rand::{Rng, RngExt};

/// How links behave.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Shortest one-way latency.
    pub min_latency: Duration,
    /// Longest one-way latency.
    pub max_latency: Duration,
    /// Bytes per second each direction of a link carries.
    pub bandwidth: u64,
    /// Share of messages that lose a packet and wait one retransmission.
    pub loss: f64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            min_latency: Duration::from_millis(20),
            max_latency: Duration::from_millis(80),
            bandwidth: 10 * 1024 * 1024,
            loss: 0.02,
        }
    }
}

/// One connection between two nodes.
#[derive(Debug)]
struct Link {
    /// Which connection this is: messages of an earlier one are lost with it.
    epoch: u64,
    latency: Duration,
    /// Per direction (lower node to higher, higher to lower): when the sender is done sending
    /// what it queued, and when the last queued message arrives.
    sending_until: [Duration; 2],
    last_arrival: [Duration; 2],
}

/// The links of a simulated network.
#[derive(Debug, Default)]
pub struct Links {
    cfg: LinkConfig,
    links: BTreeMap<(usize, usize), Link>,
    /// Each node's neighbours.
    neighbours: BTreeMap<usize, BTreeSet<usize>>,
    epochs: u64,
    /// While partitioned: the nodes on one side.
    partition: Option<BTreeSet<usize>>,
    /// Messages that waited for a retransmission.
    pub retransmissions: u64,
}

fn key(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

fn direction(from: usize, to: usize) -> usize {
    usize::from(from > to)
}

impl Links {
    /// No links yet.
    pub fn new(cfg: LinkConfig) -> Self {
        Self {
            cfg,
            ..Default::default()
        }
    }

    /// Whether `a` and `b` may connect: not across a partition.
    pub fn reachable(&self, a: usize, b: usize) -> bool {
        a != b
            && self
                .partition
                .as_ref()
                .is_none_or(|side| side.contains(&a) == side.contains(&b))
    }

    /// Connects `a` and `b`; returns the connection's epoch, or `None` if they are connected
    /// already or cannot reach each other.
    pub fn connect(&mut self, a: usize, b: usize, rng: &mut impl Rng) -> Option<u64> {
        if !self.reachable(a, b) || self.links.contains_key(&key(a, b)) {
            return None;
        }
        self.epochs += 1;
        let (lo, hi) = (self.cfg.min_latency, self.cfg.max_latency);
        let latency = lo + (hi - lo).mul_f64(rng.random::<f64>());
        self.links.insert(
            key(a, b),
            Link {
                epoch: self.epochs,
                latency,
                sending_until: [Duration::ZERO; 2],
                last_arrival: [Duration::ZERO; 2],
            },
        );
        self.neighbours.entry(a).or_default().insert(b);
        self.neighbours.entry(b).or_default().insert(a);
        Some(self.epochs)
    }

    /// Drops the connection of `a` and `b`; whether there was one.
    pub fn disconnect(&mut self, a: usize, b: usize) -> bool {
        if self.links.remove(&key(a, b)).is_none() {
            return false;
        }
        for (x, y) in [(a, b), (b, a)] {
            if let Some(n) = self.neighbours.get_mut(&x) {
                n.remove(&y);
            }
        }
        true
    }

    /// The nodes `a` is connected to.
    pub fn neighbours(&self, a: usize) -> Vec<usize> {
        self.neighbours
            .get(&a)
            .map(|n| n.iter().copied().collect())
            .unwrap_or_default()
    }

    /// How many nodes `a` is connected to.
    pub fn degree(&self, a: usize) -> usize {
        self.neighbours.get(&a).map_or(0, |n| n.len())
    }

    /// The epoch of the connection of `a` and `b`, if they are connected.
    pub fn epoch(&self, a: usize, b: usize) -> Option<u64> {
        self.links.get(&key(a, b)).map(|l| l.epoch)
    }

    /// The one-way latency of the connection of `a` and `b`.
    pub fn latency(&self, a: usize, b: usize) -> Option<Duration> {
        self.links.get(&key(a, b)).map(|l| l.latency)
    }

    /// Sends `bytes` from `from` to `to` at `now`: when it arrives, and the connection's epoch.
    pub fn send(
        &mut self,
        from: usize,
        to: usize,
        bytes: usize,
        now: Duration,
        rng: &mut impl Rng,
    ) -> Option<(Duration, u64)> {
        let link = self.links.get_mut(&key(from, to))?;
        let d = direction(from, to);
        let on_wire = Duration::from_secs_f64(bytes as f64 / self.cfg.bandwidth as f64);
        let sent = link.sending_until[d].max(now) + on_wire;
        link.sending_until[d] = sent;
        let mut arrival = sent + link.latency;
        if self.cfg.loss > 0.0 && rng.random_bool(self.cfg.loss) {
            self.retransmissions += 1;
            arrival += link.latency * 2;
        }
        let arrival = arrival.max(link.last_arrival[d]);
        link.last_arrival[d] = arrival;
        Some((arrival, link.epoch))
    }

    /// Splits the network: `side` can no longer reach the others. Returns the links it cut.
    pub fn partition(&mut self, side: BTreeSet<usize>) -> Vec<(usize, usize)> {
        let cut: Vec<_> = self
            .links
            .keys()
            .copied()
            .filter(|(a, b)| side.contains(a) != side.contains(b))
            .collect();
        for (a, b) in &cut {
            self.disconnect(*a, *b);
        }
        self.partition = Some(side);
        cut
    }

    /// Ends the partition: every node can reach every other again.
    pub fn heal(&mut self) {
        self.partition = None;
    }

    /// Connections open.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn ordered_per_direction_and_lost_with_the_connection() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut links = Links::new(LinkConfig {
            loss: 0.5,
            ..Default::default()
        });
        let epoch = links.connect(0, 1, &mut rng).unwrap();
        assert_eq!(links.connect(1, 0, &mut rng), None, "connected already");
        let mut last = Duration::ZERO;
        for _ in 0..100 {
            let (at, e) = links.send(0, 1, 1000, Duration::ZERO, &mut rng).unwrap();
            assert_eq!(e, epoch);
            assert!(at >= last, "arrivals stay in order");
            last = at;
        }
        assert!(links.retransmissions > 0);
        assert!(links.disconnect(0, 1));
        assert_eq!(links.send(0, 1, 10, Duration::ZERO, &mut rng), None);
        assert!(links.connect(0, 1, &mut rng).unwrap() > epoch);
    }

    #[test]
    fn a_partition_cuts_across_links_until_healed() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut links = Links::new(LinkConfig::default());
        links.connect(0, 1, &mut rng);
        links.connect(1, 2, &mut rng);
        let cut = links.partition([2].into());
        assert_eq!(cut, vec![(1, 2)]);
        assert!(!links.reachable(1, 2) && links.reachable(0, 1));
        assert_eq!(links.connect(2, 0, &mut rng), None);
        links.heal();
        assert!(links.connect(2, 0, &mut rng).is_some());
    }
}

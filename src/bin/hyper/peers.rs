//! The peers of each log, as `share` and `follow` saw them: who is connected now, and when
//! each peer was last seen (kept in `peers.txt` of the data directory,
//! one `key<TAB>peer<TAB>unix seconds` line each, for `hyper info`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use iroh::EndpointId;
use iroh_hypercore::{CoreKey, HypercoreProtocol, replication::Event};
use n0_future::StreamExt;

use crate::names;

/// The file, inside the data directory.
const FILE: &str = "peers.txt";
/// Peers remembered per log (the most recently seen): anyone may connect with a new id.
const MAX_PER_LOG: usize = 32;

/// When each peer of `key` was last seen, newest first: (peer id, unix seconds).
pub fn last_seen(dir: &Path, key: &CoreKey) -> Vec<(String, u64)> {
    let key = names::hex(key);
    let mut peers: Vec<(String, u64)> = load(dir)
        .into_iter()
        .filter(|((k, _), _)| *k == key)
        .map(|((_, peer), at)| (peer, at))
        .collect();
    peers.sort_by_key(|p| std::cmp::Reverse(p.1));
    peers
}

/// Forgets the peers of `key` (its log was deleted).
pub fn forget(dir: &Path, key: &CoreKey) -> std::io::Result<()> {
    let key = names::hex(key);
    let mut all = load(dir);
    all.retain(|(k, _), _| *k != key);
    save(dir, &all)
}

type Records = BTreeMap<(String, String), u64>;

fn load(dir: &Path) -> Records {
    let Ok(text) = std::fs::read_to_string(dir.join(FILE)) else {
        return Records::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let key = names::parse_key(fields.next()?)?;
            let peer: EndpointId = fields.next()?.parse().ok()?;
            let at = fields.next()?.parse().ok()?;
            Some(((names::hex(&key), peer.to_string()), at))
        })
        .collect()
}

/// Writes the records, at most [`MAX_PER_LOG`] per log (the newest), atomically.
fn save(dir: &Path, records: &Records) -> std::io::Result<()> {
    let mut by_log: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
    for ((key, peer), at) in records {
        by_log.entry(key).or_default().push((peer, *at));
    }
    let mut text = String::new();
    for (key, mut peers) in by_log {
        peers.sort_by_key(|p| std::cmp::Reverse(p.1));
        for (peer, at) in peers.into_iter().take(MAX_PER_LOG) {
            text.push_str(&format!("{key}\t{peer}\t{at}\n"));
        }
    }
    crate::data_dir::write_atomic(&dir.join(FILE), &text)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Peers with an open channel, by log.
type Connected = HashMap<CoreKey, HashSet<[u8; 32]>>;

/// Follows the events of a protocol for some logs: the peers connected, and the last-seen
/// records.
#[derive(Debug)]
pub struct PeerTracker {
    dir: PathBuf,
    connected: Arc<Mutex<Connected>>,
    task: tokio::task::JoinHandle<()>,
}

impl PeerTracker {
    /// Starts following `proto`'s events for the logs `keys`.
    pub fn start(dir: &Path, proto: &HypercoreProtocol, keys: &[CoreKey]) -> Self {
        let connected = Arc::new(Mutex::new(Connected::new()));
        let mut events = proto.subscribe();
        let keys: HashSet<CoreKey> = keys.iter().copied().collect();
        let (dir2, connected2) = (dir.to_path_buf(), connected.clone());
        let task = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let (core, peer, open) = match event {
                    Event::ChannelOpen { core, peer } => (core, peer, true),
                    Event::ChannelClosed { core, peer } => (core, peer, false),
                    _ => continue,
                };
                if !keys.contains(&core) {
                    continue;
                }
                {
                    let mut connected = lock(&connected2);
                    let peers = connected.entry(core).or_default();
                    if open {
                        peers.insert(peer);
                    } else {
                        peers.remove(&peer);
                    }
                }
                record(&dir2, &core, &[peer]);
            }
        });
        Self {
            dir: dir.to_path_buf(),
            connected,
            task,
        }
    }

    /// Distinct peers connected now, over all the logs.
    pub fn peers(&self) -> usize {
        lock(&self.connected)
            .values()
            .flatten()
            .collect::<HashSet<_>>()
            .len()
    }

    /// Stops following, and records the peers still connected as seen now.
    pub async fn finish(self) {
        self.task.abort();
        // Its last write, if one was under way, ends before this one starts.
        let _ = self.task.await;
        for (core, peers) in lock(&self.connected).iter() {
            let peers: Vec<_> = peers.iter().copied().collect();
            record(&self.dir, core, &peers);
        }
    }
}

fn lock(connected: &Mutex<Connected>) -> std::sync::MutexGuard<'_, Connected> {
    connected
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Records `peers` of `core` as seen now. A failure to write is logged: the record is a
/// convenience, not data.
fn record(dir: &Path, core: &CoreKey, peers: &[[u8; 32]]) {
    let mut all = load(dir);
    let at = now();
    for peer in peers {
        let Ok(peer) = EndpointId::from_bytes(peer) else {
            continue;
        };
        all.insert((names::hex(core), peer.to_string()), at);
    }
    if let Err(e) = save(dir, &all) {
        tracing::warn!("cannot record the peers seen in {}: {e}", dir.display());
    }
}

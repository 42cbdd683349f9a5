//! Peers on Hypercore's own wire over TCP: JS Hypercore and Corestore peers
//! (`core.replicate(socket)`, `store.replicate(socket)`), beside the iroh peers. `share --tcp`
//! and `follow --tcp-listen` listen for them; `follow --tcp` and `share --tcp-connect` dial
//! them, and dial again when the connection goes.

use std::{net::SocketAddr, time::Duration};

use iroh_hypercore::{HypercoreProtocol, replication::Event};
use n0_future::{StreamExt, task::AbortOnDropHandle};

/// The longest wait between two dials of a peer that went.
const MAX_REDIAL: Duration = Duration::from_secs(30);

/// Listens on `addr` and replicates over every connection (as the Noise responder). The
/// listener stops when the handle is dropped.
pub async fn listen(
    proto: &HypercoreProtocol,
    addr: SocketAddr,
) -> Result<AbortOnDropHandle<()>, String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("listening for hypercore peers on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("listening for hypercore (JS) peers on tcp {bound}");
    let proto = proto.clone();
    Ok(AbortOnDropHandle::new(n0_future::task::spawn(async move {
        loop {
            let Ok((tcp, from)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let proto = proto.clone();
            n0_future::task::spawn(async move {
                match proto.replicate_stream(tcp, false).await {
                    Ok(peer) => eprintln!(
                        "hypercore peer {} connected from {from}",
                        crate::names::hex(&peer)
                    ),
                    Err(e) => eprintln!("hypercore peer at {from}: {e}"),
                }
            });
        }
    })))
}

/// Dials `addr` (HOST:PORT) and replicates over the connection (as the Noise initiator);
/// dials again, waiting longer each time up to [`MAX_REDIAL`], when it fails or goes. Stops
/// when the handle is dropped.
pub fn dial(proto: &HypercoreProtocol, addr: String) -> AbortOnDropHandle<()> {
    let proto = proto.clone();
    AbortOnDropHandle::new(n0_future::task::spawn(async move {
        let mut wait = Duration::from_secs(1);
        loop {
            // Subscribed before the connection, so that its end is not missed.
            let mut events = proto.subscribe();
            match connect(&proto, &addr).await {
                Ok(peer) => {
                    wait = Duration::from_secs(1);
                    eprintln!(
                        "connected to hypercore peer {} at {addr}",
                        crate::names::hex(&peer)
                    );
                    while let Some(ev) = events.next().await {
                        if matches!(ev, Event::PeerRemove(p) if p == peer) {
                            break;
                        }
                    }
                    eprintln!("hypercore peer at {addr} went; dialing it again");
                }
                Err(e) => eprintln!("hypercore peer at {addr}: {e}; again in {wait:?}"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_REDIAL);
        }
    }))
}

async fn connect(proto: &HypercoreProtocol, addr: &str) -> Result<[u8; 32], String> {
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| "the connection timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    proto
        .replicate_stream(tcp, true)
        .await
        .map_err(|e| e.to_string())
}

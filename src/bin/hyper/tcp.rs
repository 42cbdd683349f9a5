//! Peers on Hypercore's own wire over TCP: JS Hypercore and Corestore peers
//! (`core.replicate(socket)`, `store.replicate(socket)`), beside the iroh peers. `share --tcp`
//! and `follow --tcp-listen` listen for them; `follow --tcp` and `share --tcp-connect` dial
//! them, and dial again when the connection goes.

use std::{net::SocketAddr, time::Duration};

use iroh_hypercore::{HypercoreProtocol, net::WireLink};
use n0_future::task::AbortOnDropHandle;

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
        let mut pause = Duration::from_millis(100);
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(accepted) => {
                    pause = Duration::from_millis(100);
                    accepted
                }
                // Out of file descriptors, say: not a loop at full speed.
                Err(e) => {
                    eprintln!("accepting a hypercore peer: {e}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let proto = proto.clone();
            n0_future::task::spawn(async move {
                match proto.replicate_stream(tcp, false).await {
                    Ok(link) => eprintln!(
                        "hypercore peer {} connected from {from}",
                        crate::names::hex(&link.peer())
                    ),
                    Err(e) => eprintln!("hypercore peer at {from}: {e}"),
                }
            });
        }
    })))
}

/// Dials `addr` (HOST:PORT) and replicates over the connection (as the Noise initiator);
/// dials again when it fails or ends, waiting longer each time (up to [`MAX_REDIAL`]) unless
/// the connection lasted. Stops when the handle is dropped.
pub fn dial(proto: &HypercoreProtocol, addr: String) -> AbortOnDropHandle<()> {
    let proto = proto.clone();
    AbortOnDropHandle::new(n0_future::task::spawn(async move {
        let mut wait = Duration::from_secs(1);
        loop {
            match connect(&proto, &addr).await {
                Ok(mut link) => {
                    eprintln!(
                        "connected to hypercore peer {} at {addr}",
                        crate::names::hex(&link.peer())
                    );
                    let up = std::time::Instant::now();
                    link.closed().await;
                    // A connection that lasted starts the waits afresh; one that did not
                    // (the peer refuses us, or replaces us) waits longer each time.
                    if up.elapsed() > MAX_REDIAL {
                        wait = Duration::from_secs(1);
                    }
                    eprintln!("hypercore peer at {addr} went; dialing it again in {wait:?}");
                }
                Err(e) => eprintln!("hypercore peer at {addr}: {e}; again in {wait:?}"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_REDIAL);
        }
    }))
}

async fn connect(proto: &HypercoreProtocol, addr: &str) -> Result<WireLink, String> {
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

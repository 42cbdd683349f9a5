//! `--metrics ADDR`: the node's metrics (iroh's own and the replication protocol's groups)
//! in the OpenMetrics text format at `http://ADDR/metrics`, for Prometheus to scrape. A
//! minimal HTTP/1.1 responder: every request gets the metrics as they are at that moment, one
//! request per connection.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use iroh_metrics::{MetricsSource, Registry};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::node::Node;

/// Scrapes answered at once; more wait for a turn.
const MAX_SCRAPES: usize = 8;
/// The most bytes of a request read.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a scraper may take to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(5);
/// How long one scrape may take in all (a scraper that does not read is cut off).
const SCRAPE_WAIT: Duration = Duration::from_secs(10);

/// Serves the metrics until dropped.
#[derive(Debug)]
pub struct MetricsServer {
    _task: n0_future::task::AbortOnDropHandle<()>,
}

impl MetricsServer {
    /// Listens on `addr` (port 0: a free one) and says where on stderr.
    pub async fn start(addr: SocketAddr, node: &Node) -> Result<Self, String> {
        let mut registry = Registry::default();
        registry.register_all(node.endpoint.metrics());
        registry.register_all(node.proto.metrics());
        let registry = Arc::new(registry);
        let proto = node.proto.clone();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--metrics {addr}: {e}"))?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("--metrics {addr}: {e}"))?;
        eprintln!("metrics at http://{bound}/metrics");
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of file descriptors, say: not a busy loop.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (registry, proto) = (registry.clone(), proto.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    let _ =
                        tokio::time::timeout(SCRAPE_WAIT, answer(stream, &registry, &proto)).await;
                });
            }
        });
        Ok(Self {
            _task: n0_future::task::AbortOnDropHandle::new(task),
        })
    }
}

/// Reads the request's head (whatever it asks) and writes the metrics.
async fn answer(
    mut stream: TcpStream,
    registry: &Registry,
    proto: &iroh_hypercore::HypercoreProtocol,
) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    let head = tokio::time::timeout(REQUEST_WAIT, async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
            match stream.read(&mut buf).await? {
                0 => break,
                n => request.extend_from_slice(&buf[..n]),
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(head, Ok(Ok(()))) {
        return Ok(());
    }
    // The figures of this moment (else they are at most a second old).
    let _ = proto.update_metrics().await;
    let body = match registry.encode_openmetrics_to_string() {
        Ok(text) => text + "# EOF\n",
        Err(e) => format!("# the metrics did not encode: {e}\n# EOF\n"),
    };
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/openmetrics-text; version=1.0.0; \
         charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

//! Ctrl-C and SIGTERM: the first one stops a node cleanly, a second one exits at once.

/// The process's interrupt handlers, installed before the node starts, so that a Ctrl-C
/// during start-up also shuts down cleanly instead of killing the process.
#[derive(Debug)]
pub struct Interrupts {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    /// Installs the handlers (inside the runtime).
    pub fn install() -> Result<Self, String> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let fail = |e: std::io::Error| format!("cannot catch Ctrl-C: {e}");
            Ok(Self {
                int: signal(SignalKind::interrupt()).map_err(fail)?,
                term: signal(SignalKind::terminate()).map_err(fail)?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on the first Ctrl-C (or SIGTERM). From then on a second one exits the process
    /// at once (code 130), for a shutdown that hangs.
    pub async fn first(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tokio::spawn(async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("hyper: interrupted again: exiting without a clean shutdown");
            std::process::exit(130);
        });
    }
}

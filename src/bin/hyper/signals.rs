//! Ctrl-C and SIGTERM: the first one stops a node cleanly; once a node is shutting down
//! (for that or any other reason), the next one exits at once.

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

    /// Resolves on the first Ctrl-C (or SIGTERM).
    pub async fn first(&mut self) {
        self.next().await;
    }

    /// From now on (a shutdown under way), the next Ctrl-C or SIGTERM exits the process at
    /// once with code 130: a shutdown that hangs can always be cut short. Signals that came
    /// meanwhile count: the handlers stay installed.
    pub fn exit_on_next(mut self) {
        tokio::spawn(async move {
            self.next().await;
            eprintln!("hyper: interrupted again: exiting without a clean shutdown");
            std::process::exit(130);
        });
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

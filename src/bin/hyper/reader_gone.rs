//! Noticing that whoever reads stdout went away (`hyper follow … | head -n 1`) while nothing
//! is being written: a write would fail with a broken pipe, but a follow waiting for a block
//! that never comes writes nothing.

/// Resolves once stdout is a pipe (or socket) whose reading end is closed. Pending forever
/// where that cannot be watched (a file, a terminal, a platform other than Unix).
pub async fn stdout_closed() {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;

        use tokio::io::{Interest, unix::AsyncFd};
        // The kernel reports an error on a pipe's writing end once no reader is left. A
        // regular file cannot be registered: then there is nothing to watch. A duplicate of
        // the descriptor is watched, owned here: it stays open as long as it is registered.
        let Ok(dup) = std::io::stdout().as_fd().try_clone_to_owned() else {
            return std::future::pending().await;
        };
        // SAFETY: `dup` is an open descriptor owned by the `AsyncFd` for its whole life, and
        // always returns the same descriptor.
        if let Ok(fd) = unsafe { AsyncFd::register_with_interest(dup, Interest::ERROR) } {
            loop {
                match fd.ready(Interest::ERROR).await {
                    Ok(guard) if guard.ready().is_error() => return,
                    Ok(mut guard) => guard.clear_ready(),
                    Err(_) => break,
                }
            }
        }
    }
    std::future::pending::<()>().await
}

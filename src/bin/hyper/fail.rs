//! Error lines a person can act on.

/// `what: error`, saying so plainly when the cause is a full disk (or a file size limit):
/// the I/O error's kind is looked for among the error's sources.
pub fn describe(what: &str, e: impl std::error::Error + 'static) -> String {
    if disk_full(&e) {
        format!("{what}: the disk is full ({e}); nothing more was written")
    } else {
        format!("{what}: {e}")
    }
}

/// Whether `e` or one of its sources is an I/O error of a full disk, a quota or the file size
/// limit.
fn disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            // `source()` of a wrapping I/O error (`io::Error::other`) skips the error it
            // wraps: look through the wrappers here.
            let mut io = Some(io);
            while let Some(wrapper) = io {
                if iroh_hypercore::error::is_disk_full(wrapper) {
                    return true;
                }
                io = wrapper
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<std::io::Error>());
            }
        }
        if let Some(e) = e.downcast_ref::<iroh_hypercore::Error>()
            && e.is_disk_full()
        {
            return true;
        }
        next = e.source();
    }
    false
}

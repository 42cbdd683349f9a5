//! Error lines a person can act on.

/// `what: error`, saying so plainly when the cause is a full disk (or a file size limit):
/// the I/O error's kind is looked for among the error's sources.
pub fn describe(what: &str, e: impl std::error::Error + 'static) -> String {
    if iroh_hypercore::error::is_disk_full_within(&e) {
        format!("{what}: the disk is full ({e}); nothing more was written")
    } else {
        format!("{what}: {e}")
    }
}

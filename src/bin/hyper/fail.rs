//! Error lines a person can act on.

/// `what: error`, saying so plainly when the cause is a full disk (or a file size limit).
pub fn describe(what: &str, e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    if is_disk_full(&text) {
        format!("{what}: the disk is full ({text}); nothing more was written")
    } else {
        format!("{what}: {text}")
    }
}

/// Whether an error's text is that of a full disk (`ENOSPC`, `EDQUOT`) or of the file size
/// limit (`EFBIG`). The library's errors carry the I/O error's text, not its kind.
fn is_disk_full(text: &str) -> bool {
    [
        "No space left on device",
        "os error 28",
        "Disk quota exceeded",
        "os error 122",
        "File too large",
        "os error 27",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

//! Blocks shown as lines of text.

use std::borrow::Cow;

/// A block as one line: invalid UTF-8 replaced, and control characters escaped (`\n`, `\r`,
/// `\u{1b}`, …; a tab stays), so that one block is always one line and a log's writer
/// cannot drive the reader's terminal with escape sequences. `--raw` writes the bytes as
/// they are.
pub fn line(block: &[u8]) -> Cow<'_, str> {
    let text = String::from_utf8_lossy(block);
    if !text.chars().any(is_escaped) {
        return text;
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_escaped(c) {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

fn is_escaped(c: char) -> bool {
    c.is_control() && c != '\t'
}

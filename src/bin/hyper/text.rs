//! Blocks shown as lines of text.

use std::borrow::Cow;

use iroh_hypercore::blobs::BlobRef;

/// A block as one line, as `cat` and `follow` print it: a blob block as
/// `blob <size> <hash>` (not its marker bytes), any other block as [`line`] shows it.
pub fn block(block: &[u8]) -> Cow<'_, str> {
    match BlobRef::from_block(block) {
        Some(blob) => Cow::Owned(format!(
            "blob {} {}",
            indicatif::HumanBytes(blob.size),
            blob.hash
        )),
        None => line(block),
    }
}

/// A block as a JSON object for `cat --json`: `{"index", "blob": {"hash", "size"}}` for a
/// blob block, else `{"index", "text"}` (invalid UTF-8 replaced; `--raw` has the bytes).
pub fn json(index: u64, block: &[u8]) -> serde_json::Value {
    match BlobRef::from_block(block) {
        Some(blob) => serde_json::json!({
            "index": index,
            "blob": { "hash": blob.hash.to_string(), "size": blob.size },
        }),
        None => serde_json::json!({
            "index": index,
            "text": String::from_utf8_lossy(block),
        }),
    }
}

/// A block as one line: invalid UTF-8 replaced, and control characters escaped (`\n`, `\r`,
/// `\u{1b}`, …; a tab stays), so that one block is always one line and a log's writer
/// cannot drive the reader's terminal with escape sequences. `--raw` writes the bytes as
/// they are.
pub fn line(block: &[u8]) -> Cow<'_, str> {
    // Printable ASCII and tabs, the common case, are shown as they are: one pass over the
    // bytes instead of decoding each character twice.
    if block
        .iter()
        .all(|&b| (b' '..=b'~').contains(&b) || b == b'\t')
    {
        // All ASCII: valid UTF-8.
        if let Ok(text) = std::str::from_utf8(block) {
            return Cow::Borrowed(text);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte alone and in a line of text: shown as the character-by-character rule
    /// shows it (invalid UTF-8 replaced, control characters but the tab escaped), whether
    /// the line takes the ASCII fast path or not.
    #[test]
    fn lines_show_every_byte_as_the_slow_rule_does() {
        let slow = |block: &[u8]| -> String {
            String::from_utf8_lossy(block)
                .chars()
                .flat_map(|c| {
                    let escaped: Vec<char> = if is_escaped(c) {
                        c.escape_default().collect()
                    } else {
                        vec![c]
                    };
                    escaped
                })
                .collect()
        };
        for b in 0..=255u8 {
            for block in [vec![b], [b"line ".as_slice(), &[b], b" end\t~"].concat()] {
                assert_eq!(line(&block), slow(&block), "byte {b:#04x}");
            }
        }
        for block in [
            "plain ascii, tab\there ~".as_bytes(),
            "é ü \u{85} \u{1b}[2J".as_bytes(),
        ] {
            assert_eq!(line(block), slow(block));
        }
        assert!(matches!(line(b"plain\ttext"), Cow::Borrowed("plain\ttext")));
    }

    /// What a reader's terminal gets, written out: escapes, DEL, newlines and the
    /// one-character CSI are shown as text, a tab stays, invalid UTF-8 is replaced.
    #[test]
    fn lines_show_control_characters_as_text() {
        assert_eq!(line(b"\x1b[2J"), "\\u{1b}[2J");
        assert_eq!(line(b"\x7f"), "\\u{7f}");
        assert_eq!(line(b"a\nb\rc"), "a\\nb\\rc");
        assert_eq!(line(b"a\tb"), "a\tb");
        assert_eq!(line(&[0xff]), "\u{fffd}");
        assert_eq!(line("\u{9b}31m".as_bytes()), "\\u{9b}31m");
    }
}

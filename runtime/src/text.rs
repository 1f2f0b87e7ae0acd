//! Text from the database made safe to show: rows, error texts, names and
//! application names may hold control characters (an escape sequence that
//! retitles a terminal or clears its screen), which human-readable outputs
//! write as escapes such as `\x1b` or `\u{9b}`, never as they are.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control character (C0 U+0000–U+001F, DEL, C1
/// U+0080–U+009F) but those in `keep` written as an escape: `\t`, `\r` and
/// `\n` by name, the other ASCII ones as `\x1b`, C1 ones as `\u{9b}`.
/// Borrowed when there is nothing to escape.
pub fn escape_controls<'a>(text: &'a str, keep: &[char]) -> Cow<'a, str> {
    if !text.chars().any(|c| c.is_control() && !keep.contains(&c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !c.is_control() || keep.contains(&c) {
            out.push(c);
            continue;
        }
        match c {
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if c.is_ascii() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    Cow::Owned(out)
}

/// Displays text with every control character escaped (newlines too): for
/// log fields that carry row data or server messages.
pub(crate) struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&escape_controls(self.0, &[]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_written_as_escapes() {
        let hostile = "a\x1b]0;TITLE\x07\x1b[2J\u{9b}31m\x7f\t\r\nb é";
        assert_eq!(
            escape_controls(hostile, &[]),
            "a\\x1b]0;TITLE\\x07\\x1b[2J\\u{9b}31m\\x7f\\t\\r\\nb é"
        );
        assert_eq!(
            escape_controls(hostile, &['\n']),
            "a\\x1b]0;TITLE\\x07\\x1b[2J\\u{9b}31m\\x7f\\t\\r\nb é"
        );
        assert!(matches!(
            escape_controls("plain text, é ü", &[]),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_controls("\0\u{1f}\u{80}\u{9f}\u{a0}", &[]),
            "\\x00\\x1f\\u{80}\\u{9f}\u{a0}"
        );
        assert_eq!(Escaped("x\x1by").to_string(), "x\\x1by");
    }
}

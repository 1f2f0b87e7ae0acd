//! Text from the database made safe to show on a terminal: rows, error
//! texts, names and application names may hold control characters (an
//! escape sequence retitling the terminal or clearing the screen), which
//! are written as escapes such as `\x1b` or `\u{9b}`, never as they are.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control character but those in `keep` escaped (the
/// library's one rule, `walflow::admin::escape_controls`).
fn escape<'a>(text: &'a str, keep: &[char]) -> Cow<'a, str> {
    walflow::admin::escape_controls(text, keep)
}

/// `text` on one line: every control character escaped, newlines too.
/// For table cells and names.
pub fn one_line(text: &str) -> Cow<'_, str> {
    escape(text, &[])
}

/// `text` with its line breaks kept and every other control character
/// escaped. For whole outputs, whose layout is made of lines.
pub fn lines(text: &str) -> Cow<'_, str> {
    escape(text, &['\n'])
}

/// JSON text with DEL and the C1 control characters, which JSON allows
/// raw in strings, written as `\u007f` ... `\u009f`: the same value for a
/// JSON reader, nothing a terminal acts on. (Serializers already escape
/// the C0 ones.) These characters occur only inside strings, where such
/// an escape is valid.
pub fn json(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control_above_ascii_space) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_control_above_ascii_space(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// DEL and C1.
fn is_control_above_ascii_space(c: char) -> bool {
    matches!(c, '\u{7f}'..='\u{9f}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_escapes_newlines_and_lines_keeps_them() {
        // The rule itself is the library's (tested there); these pick what to keep.
        assert_eq!(one_line("a\x1b[2J\nb"), "a\\x1b[2J\\nb");
        assert_eq!(lines("a\x1b[2J\nb"), "a\\x1b[2J\nb");
    }

    #[test]
    fn json_keeps_its_value_without_raw_controls() {
        let value = serde_json::json!({ "error": "x\x1b[2J\u{9b}\x7f\u{a0}y" });
        let text = serde_json::to_string(&value).unwrap();
        let safe = json(&text);
        assert!(
            !safe.chars().any(|c| c.is_control()),
            "{safe:?} holds a control character"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&safe).unwrap(),
            value
        );
    }
}

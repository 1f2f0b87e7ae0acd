//! The CloudEvents `type` of a change, and back.
//!
//! Server-Sent Events written as CloudEvents (`SseOptions::cloud_events`
//! in `subscribe::sse`, feature `axum`) have the `type`
//!
//! ```text
//! {prefix}.{schema}.{table}.{action}
//! ```
//!
//! where `prefix` is the application's (a reverse-DNS name such as
//! `com.example.blog`), `action` is the [`Action`](super::Action) in lower
//! case (`insert`, `update`, `delete`, `truncate`, `entered`, `left`), and
//! the schema and the table are each written with [`encode_name`], so that
//! the whole `type` stays within the characters CloudEvents recommends
//! (lower-case `a`–`z`, `0`–`9` and `.`), two tables of the same name in two
//! schemas have different types, and the names read back exactly
//! ([`parse_event_type`]).
//!
//! # The encoding of a name
//!
//! Each byte of the name's UTF-8 that is a lower-case letter from `a` to `y`
//! or a digit is written as it is; every other byte (`z`, `_`, upper-case
//! letters, spaces, quotes, dots, non-ASCII bytes) is written as `z`
//! followed by the byte in two lower-case hexadecimal digits, as
//! percent-encoding does with `%`. Plain lower-case names stay as they are.
//!
//! | name | encoded |
//! | --- | --- |
//! | `public` | `public` |
//! | `posts` | `posts` |
//! | `post_comments` | `postz5fcomments` |
//! | `zones` | `z7aones` |
//! | `Weird "Quoted" Tablé` | `z57eirdz20z22z51uotedz22z20z54ablzc3za9` |
//!
//! So `public.posts` gives `com.example.blog.public.posts.insert`. The
//! encoding is one-to-one: [`decode_name`] refuses an escape of a byte that
//! is written as it is (`z61`), upper-case hexadecimal digits, and bytes
//! that are not UTF-8.
//!
//! ```
//! use walflow_runtime::subscribe::cloudevents::{event_type, parse_event_type};
//!
//! let ty = event_type("com.example.blog", "app", "post_comments", "insert");
//! assert_eq!(ty, "com.example.blog.app.postz5fcomments.insert");
//! let parsed = parse_event_type("com.example.blog", &ty).unwrap();
//! assert_eq!((&*parsed.schema, &*parsed.table, &*parsed.action), ("app", "post_comments", "insert"));
//! ```

use std::fmt::Write as _;

/// The escape that starts a byte written in hexadecimal.
const MARK: u8 = b'z';

/// Whether a byte is written as it is.
fn plain(b: u8) -> bool {
    (b.is_ascii_lowercase() && b != MARK) || b.is_ascii_digit()
}

/// A schema or table name in the characters a CloudEvents `type` should
/// use (see the [module documentation](self)): `a`–`y` and digits as they
/// are, any other byte as `z` and two hexadecimal digits.
pub fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "z{b:02x}");
        }
    }
    out
}

/// A `type` segment that is not a name written by [`encode_name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the CloudEvents type {text:?} cannot be read: {reason}")]
pub struct TypeNameError {
    /// The text that did not read (a segment, or the whole `type`).
    pub text: String,
    /// Why.
    pub reason: String,
}

/// The name [`encode_name`] wrote as `encoded`.
pub fn decode_name(encoded: &str) -> Result<String, TypeNameError> {
    let err = |reason: String| TypeNameError {
        text: encoded.to_owned(),
        reason,
    };
    if encoded.is_empty() {
        return Err(err("a name is not empty".into()));
    }
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if plain(b) {
            out.push(b);
            i += 1;
        } else if b == MARK {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
                .ok_or_else(|| {
                    err(format!(
                        "`z` at byte {i} is not followed by two lower-case hexadecimal digits"
                    ))
                })?;
            let hex = std::str::from_utf8(hex).unwrap_or_default();
            let byte = u8::from_str_radix(hex, 16).map_err(|e| err(e.to_string()))?;
            if plain(byte) {
                return Err(err(format!(
                    "`z{hex}` escapes `{}`, which is written as it is",
                    char::from(byte)
                )));
            }
            out.push(byte);
            i += 3;
        } else {
            return Err(err(format!(
                "{:?} at byte {i} is not a lower-case letter, a digit or an escape",
                encoded[i..].chars().next().unwrap_or_default()
            )));
        }
    }
    String::from_utf8(out).map_err(|_| err("the escaped bytes are not UTF-8".into()))
}

/// The `type` of a change of `schema`.`table`: `{prefix}.{schema}.{table}.{action}`,
/// both names written with [`encode_name`].
pub fn event_type(prefix: &str, schema: &str, table: &str, action: &str) -> String {
    format!(
        "{prefix}.{}.{}.{action}",
        encode_name(schema),
        encode_name(table)
    )
}

/// What a `type` written by [`event_type`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventType {
    /// The table's schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// The action (`insert`, `update`, `delete`, `truncate`, `entered`,
    /// `left`).
    pub action: String,
}

/// Reads a `type` written by [`event_type`] with `prefix`.
pub fn parse_event_type(prefix: &str, event_type: &str) -> Result<EventType, TypeNameError> {
    let err = |reason: String| TypeNameError {
        text: event_type.to_owned(),
        reason,
    };
    let rest = event_type
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(|| err(format!("it does not start with `{prefix}.`")))?;
    let parts: Vec<&str> = rest.split('.').collect();
    let [schema, table, action] = parts[..] else {
        return Err(err(format!(
            "expected `{prefix}.` then a schema, a table and an action separated by dots"
        )));
    };
    if action.is_empty() || !action.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(err(format!(
            "the action {action:?} is not a lower-case word"
        )));
    }
    Ok(EventType {
        schema: decode_name(schema)?,
        table: decode_name(table)?,
        action: action.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn plain_names_stay_readable() {
        assert_eq!(
            event_type("com.example.blog", "public", "posts", "insert"),
            "com.example.blog.public.posts.insert"
        );
        assert_eq!(encode_name("posts2"), "posts2");
        assert_eq!(encode_name("post_comments"), "postz5fcomments");
        assert_eq!(encode_name("zones"), "z7aones");
        assert_eq!(
            encode_name("Weird \"Quoted\" Tablé"),
            "z57eirdz20z22z51uotedz22z20z54ablzc3za9"
        );
    }

    #[test]
    fn schemas_tell_tables_of_one_name_apart() {
        assert_ne!(
            event_type("p", "a", "t", "insert"),
            event_type("p", "b", "t", "insert")
        );
        // A dot in a name does not shift the parts.
        assert_ne!(
            event_type("p", "a.b", "c", "insert"),
            event_type("p", "a", "b.c", "insert")
        );
    }

    #[test]
    fn what_is_not_an_encoding_is_refused() {
        for bad in [
            "", "Posts", "a_b", "z", "z5", "z5F", "z61", "zff", "a.b", "é",
        ] {
            assert!(decode_name(bad).is_err(), "{bad:?}");
        }
        let e = decode_name("z61").unwrap_err();
        assert!(e.to_string().contains("`z61` escapes `a`"), "{e}");
        assert!(parse_event_type("p", "q.public.posts.insert").is_err());
        assert!(parse_event_type("p", "p.public.posts").is_err());
        assert!(parse_event_type("p", "p.public.posts.Insert").is_err());
    }

    proptest! {
        #[test]
        fn names_read_back_exactly(
            schema in "\\PC{1,20}",
            table in ".{1,20}",
            action in "[a-z]{1,8}",
        ) {
            let ty = event_type("com.example", &schema, &table, &action);
            prop_assert!(
                ty.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.'),
                "{}", ty
            );
            let parsed = parse_event_type("com.example", &ty).unwrap();
            prop_assert_eq!(parsed.schema, schema);
            prop_assert_eq!(parsed.table, table);
            prop_assert_eq!(parsed.action, action);
        }
    }
}

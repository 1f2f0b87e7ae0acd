//! Quoting of SQL identifiers and literals.
//!
//! Every identifier (schema, table, column, publication, slot, role, database
//! name) and every string literal that walflow splices into SQL text goes
//! through [`quote_ident`], [`quote_literal`] or [`QualifiedName`]. Values that
//! can be sent as bind parameters are sent as bind parameters instead.
//!
//! PostgreSQL cannot store NUL characters in identifiers or text; a string
//! containing `\0` is still quoted faithfully and the server rejects it.
//!
//! ```
//! use walflow_runtime::ident::{quote_ident, quote_literal, QualifiedName};
//!
//! assert_eq!(quote_ident("posts"), r#""posts""#);
//! assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
//! assert_eq!(quote_literal("it's"), "'it''s'");
//! assert_eq!(QualifiedName::new("public", "posts").to_string(), r#""public"."posts""#);
//! ```

use std::borrow::Cow;
use std::fmt;

/// Quotes `s` as a PostgreSQL identifier: wraps it in double quotes and
/// doubles every embedded double quote.
///
/// The result is always quoted, so it is case-preserving: `quote_ident("Posts")`
/// names the table `Posts`, not `posts`.
pub fn quote_ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Quotes `s` as a PostgreSQL string literal, like the server's own
/// `quote_literal()`: single quotes are doubled, and if the string contains a
/// backslash it is written as an escape string (`E'...'`) with the
/// backslashes doubled, so the result is correct whatever the value of
/// `standard_conforming_strings`.
pub fn quote_literal(s: &str) -> String {
    let has_backslash = s.contains('\\');
    let mut out = String::with_capacity(s.len() + 3);
    if has_backslash {
        out.push('E');
    }
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Reserved key words of PostgreSQL (they cannot be used as bare names).
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// Whether `s` can be written as a bare (unquoted) identifier: it starts with
/// a lower-case ASCII letter or an underscore, continues with lower-case ASCII
/// letters, digits, underscores or `$`, and is not a reserved key word.
pub fn is_bare_ident(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_lowercase() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
        && !RESERVED.contains(&s)
}

/// Quotes `s` only when it needs quoting (see [`is_bare_ident`]).
///
/// Meant for human-facing text such as the fix suggested in an error message
/// (`ALTER ROLE app WITH REPLICATION`). SQL that walflow executes always uses
/// [`quote_ident`].
pub fn display_ident(s: &str) -> Cow<'_, str> {
    if is_bare_ident(s) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(quote_ident(s))
    }
}

/// A schema-qualified table name. [`Display`](fmt::Display) quotes both
/// parts, so the output can be spliced into SQL as is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    /// The schema, e.g. `public`.
    pub schema: String,
    /// The table (or other relation) inside the schema.
    pub table: String,
}

impl QualifiedName {
    /// A name from its two parts, taken verbatim (no case folding).
    pub fn new(schema: impl Into<String>, table: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            table: table.into(),
        }
    }

    /// A table in the `public` schema.
    pub fn public(table: impl Into<String>) -> Self {
        Self::new("public", table)
    }

    /// Splits `schema.table` at the first dot; a name without a dot is in the
    /// `public` schema. No unquoting or case folding is done: `"a.b"` cannot be
    /// expressed this way, use [`QualifiedName::new`].
    pub fn from_dotted(name: &str) -> Self {
        match name.split_once('.') {
            Some((schema, table)) => Self::new(schema, table),
            None => Self::public(name),
        }
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&self.table)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_plain_and_hostile_identifiers() {
        assert_eq!(quote_ident("posts"), "\"posts\"");
        assert_eq!(quote_ident(""), "\"\"");
        assert_eq!(
            quote_ident("a\"; drop table x; --"),
            "\"a\"\"; drop table x; --\""
        );
        assert_eq!(quote_ident("with space"), "\"with space\"");
        assert_eq!(quote_ident("Ünïcødé 表"), "\"Ünïcødé 表\"");
        assert_eq!(quote_ident("\"\""), "\"\"\"\"\"\"");
    }

    #[test]
    fn quotes_literals() {
        assert_eq!(quote_literal("abc"), "'abc'");
        assert_eq!(quote_literal(""), "''");
        assert_eq!(
            quote_literal("a'; drop table x; --"),
            "'a''; drop table x; --'"
        );
        assert_eq!(quote_literal(r"back\slash"), r"E'back\\slash'");
        assert_eq!(quote_literal("it's \\ here"), r"E'it''s \\ here'");
        assert_eq!(quote_literal("日本 語"), "'日本 語'");
    }

    #[test]
    fn qualified_name_quotes_both_parts() {
        let n = QualifiedName::new("my schema", "a\"; drop table x; --");
        assert_eq!(n.to_string(), "\"my schema\".\"a\"\"; drop table x; --\"");
        assert_eq!(
            QualifiedName::from_dotted("public.posts"),
            QualifiedName::public("posts")
        );
        assert_eq!(
            QualifiedName::from_dotted("s.t.u"),
            QualifiedName::new("s", "t.u")
        );
        assert_eq!(QualifiedName::from_dotted("posts").schema, "public");
    }

    #[test]
    fn display_ident_quotes_only_when_needed() {
        assert_eq!(display_ident("app_user"), "app_user");
        assert_eq!(display_ident("_x1$"), "_x1$");
        assert_eq!(display_ident("App"), "\"App\"");
        assert_eq!(display_ident("user"), "\"user\"");
        assert_eq!(display_ident("1abc"), "\"1abc\"");
        assert_eq!(display_ident("a b"), "\"a b\"");
        assert_eq!(display_ident(""), "\"\"");
        assert_eq!(display_ident("é"), "\"é\"");
    }
}

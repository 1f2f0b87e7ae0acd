//! [`Report`]: an error for `main` that prints as a person reads it.

use std::fmt;

use crate::declare::BoxError;

/// An error for `fn main() -> Result<(), Report>`, printed as a person reads
/// it rather than as a `Debug` dump.
///
/// Rust prints the error a `main` returns with `Debug`. For walflow's error
/// enums that is the variant and its fields
/// (`Preflight(WalLevel { wal_level: "replica" })`); a `Report` prints the
/// message instead, then each cause that the message does not already
/// include:
///
/// ```text
/// Error: wal_level is 'replica'; walflow needs 'logical' (set wal_level = logical and restart PostgreSQL)
/// ```
///
/// Any error converts into it with `?`, as into `anyhow::Error` (which works
/// as well: its `Debug` prints the same chain).
///
/// ```no_run
/// use walflow_runtime::Report;
///
/// #[tokio::main]
/// async fn main() -> Result<(), Report> {
///     let flow = walflow_runtime::Walflow::builder().start().await?;
///     flow.shutdown_on(tokio::signal::ctrl_c()).await?;
///     Ok(())
/// }
/// ```
pub struct Report(BoxError);

impl Report {
    /// Wraps an error.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self(error.into())
    }

    /// The error and its causes, outermost first, without the causes whose
    /// text the message before them already includes (walflow's messages
    /// name their cause, as `reading the queue: connection refused`).
    pub fn chain(&self) -> Vec<String> {
        chain(self.0.as_ref())
    }

    /// The error inside.
    pub fn into_inner(self) -> BoxError {
        self.0
    }
}

impl<E: Into<BoxError>> From<E> for Report {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

impl fmt::Display for Report {
    /// The message; `{:#}` adds the causes, separated by `: `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            f.write_str(&self.chain().join(": "))
        } else {
            fmt::Display::fmt(&self.0, f)
        }
    }
}

impl fmt::Debug for Report {
    /// The message, then each cause on a line of its own (what `main`
    /// prints after `Error: `).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chain = self.chain();
        let mut lines = chain.iter();
        if let Some(first) = lines.next() {
            f.write_str(first)?;
        }
        let causes: Vec<&String> = lines.collect();
        if !causes.is_empty() {
            f.write_str("\n\nCaused by:")?;
            for (i, cause) in causes.iter().enumerate() {
                if causes.len() == 1 {
                    write!(f, "\n    {cause}")?;
                } else {
                    write!(f, "\n    {i}: {cause}")?;
                }
            }
        }
        Ok(())
    }
}

/// The texts of `error` and its causes, outermost first, without the
/// causes whose text the one before already includes; database errors as
/// `pg_error::describe` puts them (no C source line).
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let text = crate::pg_error::text_of(error);
        if !text.is_empty()
            && !lines
                .last()
                .is_some_and(|previous| previous.contains(&text))
        {
            lines.push(text);
        }
        next = error.source();
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::Report;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("starting the flow: {source}")]
        Named { source: Inner },
        #[error("starting the flow")]
        Plain {
            #[source]
            source: Inner,
        },
    }

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Inner;

    #[test]
    fn prints_the_message_not_the_variant() {
        let report = Report::from(Outer::Named { source: Inner });
        assert_eq!(
            format!("{report:?}"),
            "starting the flow: connection refused"
        );
        assert_eq!(format!("{report}"), "starting the flow: connection refused");
    }

    #[test]
    fn prints_the_causes_the_message_leaves_out() {
        let report = Report::from(Outer::Plain { source: Inner });
        assert_eq!(
            format!("{report:?}"),
            "starting the flow\n\nCaused by:\n    connection refused"
        );
        assert_eq!(
            format!("{report:#}"),
            "starting the flow: connection refused"
        );
    }

    #[test]
    fn takes_text() {
        let report = Report::from("no DATABASE_URL");
        assert_eq!(format!("{report:?}"), "no DATABASE_URL");
    }
}

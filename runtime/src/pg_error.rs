//! Classifying database errors: about the connection, or the server going
//! away, rather than about the statement.

/// Whether a database error is about the connection (or a conflict), not
/// about the statement.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08")
                || c.starts_with("57P")
                || c == "40001"
                || c == "40P01"
                || c == "53300"
        }),
        _ => false,
    }
}

/// Whether a database error says the server is going away: walflow's
/// connection was terminated by an administrator command or a crash
/// shutdown (`57P01`, `57P02`), or the server refuses connections while it
/// starts or stops (`57P03`).
pub(crate) fn is_shutdown(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some("57P01" | "57P02" | "57P03")))
}

use std::time::Duration;

/// Runs `f` again (up to four more times, 50 ms apart and doubling) while
/// it fails with a connection error: after a server restart the pool may
/// still hold connections the server has closed, and the first statement
/// on each finds out.
pub(crate) async fn transient_retried<T, F, Fut>(mut f: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut pause = Duration::from_millis(50);
    for _ in 0..4 {
        match f().await {
            Err(e) if is_transient(&e) => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            done => return done,
        }
    }
    f().await
}

/// A database error as a person reads it: the server's message, detail,
/// hint and SQLSTATE, never the C source line that sqlx appends
/// (`... at line 334` is the server's `auth.c`, not a line of the query).
/// Any other error is sqlx's own text.
pub fn describe(e: &sqlx::Error) -> String {
    describe_in(e, None)
}

/// [`describe`], adding where in `query` the server points
/// (`at character 12 of the query: "SELEC id FROM ..."`).
pub(crate) fn describe_in(e: &sqlx::Error, query: Option<&str>) -> String {
    match e {
        sqlx::Error::Database(db) => match db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        {
            Some(pg) => describe_pg(pg, query),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    }
}

/// A server error's fields, as [`describe`] prints them.
pub(crate) fn describe_pg(pg: &sqlx::postgres::PgDatabaseError, query: Option<&str>) -> String {
    use sqlx::postgres::PgErrorPosition;
    let mut text = pg.message().to_owned();
    if let (Some(PgErrorPosition::Original(at)), Some(query)) = (pg.position(), query) {
        text.push_str(&format!(
            " at character {at} of the query: {}",
            excerpt(query, at)
        ));
    }
    text.push_str(&format!(" (SQLSTATE {})", pg.code()));
    if let Some(detail) = pg.detail() {
        text.push_str(&format!("; detail: {detail}"));
    }
    if let Some(hint) = pg.hint() {
        text.push_str(&format!("; hint: {hint}"));
    }
    text
}

/// The query around character `at` (1-based, as the server counts),
/// whitespace folded, marked with `→` where the server points.
fn excerpt(query: &str, at: usize) -> String {
    let chars: Vec<char> = query.chars().collect();
    let at = at.saturating_sub(1).min(chars.len());
    let fold = |s: &[char]| {
        s.iter()
            .collect::<String>()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let before = fold(&chars[at.saturating_sub(40)..at]);
    let after = fold(&chars[at..(at + 40).min(chars.len())]);
    let lead = if at > 40 { "…" } else { "" };
    let tail = if at + 40 < chars.len() { "…" } else { "" };
    let gap = if before.is_empty() { "" } else { " " };
    format!("\"{lead}{before}{gap}→{after}{tail}\"")
}

/// An error's text, with [`describe`] for database errors: what
/// [`Report`](crate::Report) and the dead letters show.
pub(crate) fn text_of(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(sql) = e.downcast_ref::<sqlx::Error>() {
        describe(sql)
    } else if let Some(pg) = e.downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        describe_pg(pg, None)
    } else if let Some(db) = e.downcast_ref::<Box<dyn sqlx::error::DatabaseError>>() {
        // What `sqlx::Error::Database` gives as its source.
        match db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            Some(pg) => describe_pg(pg, None),
            None => db.message().to_owned(),
        }
    } else {
        e.to_string()
    }
}

/// Displays a database error with [`describe`].
pub(crate) struct DbError<'a>(pub &'a sqlx::Error);

impl std::fmt::Display for DbError<'_> {
    /// Control characters escaped: a server message may quote row data
    /// (`Failing row contains (...)`), and this text reaches logs and
    /// terminals.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::text::escape_controls(&describe(self.0), &[]))
    }
}

#[cfg(test)]
mod describe_tests {
    use super::excerpt;

    #[test]
    fn points_into_the_query() {
        assert_eq!(
            excerpt("SELEC id FROM posts", 1),
            "\"→SELEC id FROM posts\""
        );
        let q = "INSERT INTO post_titles (id, title)\n  SELECT id, upper(title) FROM postz WHERE id = $1";
        let at = q.find("postz").unwrap() + 1;
        let shown = excerpt(q, at);
        assert!(shown.contains("FROM →postz WHERE"), "{shown}");
        assert!(shown.starts_with("\"…"), "{shown}");
    }
}

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

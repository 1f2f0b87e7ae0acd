//! One cluster per test binary, a fresh database per test.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool};

use super::{EmbeddedError, EmbeddedPostgres};
use crate::config::{Config, ConfigBuilder, redact_url};
use crate::ident::quote_ident;

static SHARED: OnceLock<Result<EmbeddedPostgres, String>> = OnceLock::new();

/// The process-wide embedded cluster, started on first use (on a blocking
/// thread, so it is not tied to the caller's tokio runtime).
///
/// It lives until the process exits; its reaper then stops the server and
/// removes its directory. If the start fails, every call returns the same
/// error.
pub async fn shared_cluster() -> Result<&'static EmbeddedPostgres, EmbeddedError> {
    let result = tokio::task::spawn_blocking(|| {
        SHARED.get_or_init(|| {
            EmbeddedPostgres::builder()
                .start_blocking()
                .map_err(|e| e.to_string())
        })
    })
    .await
    .map_err(|e| EmbeddedError::Shared(e.to_string()))?;
    result
        .as_ref()
        .map_err(|e| EmbeddedError::Shared(e.clone()))
}

/// A fresh database for one test, dropped (with its replication slots) when
/// this value is dropped.
///
/// In an integration test (`tests/*.rs`, with the `embedded` feature):
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use walflow_runtime::embedded::test_database;
///
/// // Inside `#[tokio::test] async fn ...`:
/// let db = test_database().await?; // fresh database, dropped at the end
/// let pool = db.pool().await?;
/// sqlx::query("CREATE TABLE posts (id bigint PRIMARY KEY)")
///     .execute(&pool)
///     .await?;
/// // URL of this database, replication slot named after it.
/// let config = db.config_builder().publication("events").build()?;
/// # let _ = config;
/// # Ok(())
/// # }
/// ```
pub struct TestDatabase {
    url: String,
    name: String,
    admin_url: String,
    dropped: bool,
}

/// A fresh database: on the server of `DATABASE_URL` if it is set (and not
/// empty), otherwise on the process-wide embedded cluster (see
/// [`shared_cluster`]).
///
/// Database names are `walflow_test_<random>_<pid>_<n>`: lower-case, so the
/// name is also a valid replication slot name, which
/// [`TestDatabase::config`] uses (slots are cluster-wide, so tests running in
/// parallel must not share one).
pub async fn test_database() -> Result<TestDatabase, EmbeddedError> {
    let admin_url = test_server_url().await?;
    let name = unique_name();
    let url = database_url(&admin_url, &name)?;
    let mut conn =
        PgConnection::connect(&admin_url)
            .await
            .map_err(|source| EmbeddedError::Sql {
                action: format!("connect to {}", redact_url(&admin_url)),
                source,
            })?;
    conn.execute(AssertSqlSafe(format!(
        "CREATE DATABASE {}",
        quote_ident(&name)
    )))
    .await
    .map_err(|source| EmbeddedError::Sql {
        action: format!("create database {name}"),
        source,
    })?;
    let _ = conn.close().await;
    Ok(TestDatabase {
        url,
        name,
        admin_url,
        dropped: false,
    })
}

/// The server [`test_database`] creates databases on: `DATABASE_URL` if it
/// is set (and not empty), otherwise the [`shared_cluster`]'s URL.
pub async fn test_server_url() -> Result<String, EmbeddedError> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Ok(url),
        _ => Ok(shared_cluster().await?.url()),
    }
}

fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "walflow_test_{:06x}_{}_{n}",
        nanos & 0xff_ffff,
        std::process::id()
    )
}

fn database_url(admin_url: &str, name: &str) -> Result<String, EmbeddedError> {
    let mut url = url::Url::parse(admin_url).map_err(|e| EmbeddedError::DatabaseUrl {
        url: redact_url(admin_url),
        reason: e.to_string(),
    })?;
    url.set_path(&format!("/{name}"));
    Ok(url.into())
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase")
            .field("url", &redact_url(&self.url))
            .field("name", &self.name)
            .finish()
    }
}

impl TestDatabase {
    /// URL of the database (with credentials).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Name of the database.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A [`Config`] builder pointing at this database, with the replication
    /// slot named after it (and everything else at its default).
    pub fn config_builder(&self) -> ConfigBuilder {
        Config::builder()
            .database_url(&self.url)
            .slot_name(&self.name)
    }

    /// [`config_builder`](Self::config_builder), built.
    pub fn config(&self) -> Config {
        self.config_builder()
            .build()
            .expect("test database names are valid slot names")
    }

    /// A small connection pool on this database.
    pub async fn pool(&self) -> Result<PgPool, EmbeddedError> {
        PgPoolOptions::new()
            .max_connections(5)
            .connect(&self.url)
            .await
            .map_err(|source| EmbeddedError::Sql {
                action: format!("connect to database {}", self.name),
                source,
            })
    }

    /// Drops the database now: terminates its sessions, drops its
    /// replication slots, then the database itself. Dropping the value does
    /// the same, on a helper thread.
    pub async fn drop_database(mut self) -> Result<(), EmbeddedError> {
        self.dropped = true;
        drop_database(&self.admin_url, &self.name).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop may run inside the test's runtime: do the async clean-up on a
        // thread of its own with its own runtime.
        let worker = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                match tokio::time::timeout(
                    Duration::from_secs(30),
                    drop_database(&admin_url, &name),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("cannot drop test database {name}: {e}"),
                    Err(_) => tracing::warn!("dropping test database {name} timed out"),
                }
            });
        });
        let _ = worker.join();
    }
}

async fn drop_database(admin_url: &str, name: &str) -> Result<(), EmbeddedError> {
    let sql = |action: &str| {
        let action = format!("{action} of test database {name}");
        move |source| EmbeddedError::Sql { action, source }
    };
    let mut conn = PgConnection::connect(admin_url)
        .await
        .map_err(sql("connect to drop"))?;
    // Slots keep the database alive; active ones must lose their walsender
    // first, and termination is asynchronous.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        sqlx::query(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE database = $1 AND active_pid IS NOT NULL",
        )
        .bind(name)
        .execute(&mut conn)
        .await
        .map_err(sql("terminate the walsenders"))?;
        let dropped = sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE database = $1 AND NOT active",
        )
        .bind(name)
        .execute(&mut conn)
        .await;
        // A slot can become active or vanish between the two statements.
        if let Err(e) = dropped
            && Instant::now() >= deadline
        {
            return Err(sql("drop the replication slots")(e));
        }
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots WHERE database = $1")
                .bind(name)
                .fetch_one(&mut conn)
                .await
                .map_err(sql("count the replication slots"))?;
        if left == 0 {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    conn.execute(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_ident(name)
    )))
    .await
    .map_err(sql("drop"))?;
    let _ = conn.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_slot_names_and_unique() {
        let a = unique_name();
        let b = unique_name();
        assert_ne!(a, b);
        crate::config::validate_slot_name(&a).unwrap();
        assert!(a.len() <= 63);
    }

    #[test]
    fn database_url_keeps_credentials_and_query() {
        assert_eq!(
            database_url("postgres://u:p%40@h:1/postgres?sslmode=disable", "x_1").unwrap(),
            "postgres://u:p%40@h:1/x_1?sslmode=disable"
        );
        let err = database_url("postgres://u:secret@h:bad/d", "x").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}

//! Shared test support: a fresh database per test on a logical-replication
//! PostgreSQL, and a listener wired to it.

#![allow(dead_code)]

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use walflow::embedded::{TestDatabase, test_database};
use walflow::listener::{
    Listener, ListenerError, ListenerMessage, ListenerOptions, PgWireConnector,
};
use walflow::setup::{SetupSpec, TableSpec, prepare};

pub mod browser;
pub mod http;
mod random;
#[allow(unused_imports)] // each test uses a part
pub use random::{Rng, seed};

/// A fresh database, dropped (with its slots) when the test ends.
pub struct Db {
    pub url: String,
    pub pool: PgPool,
    pub name: String,
    _guard: Option<TestDatabase>,
}

/// A fresh database on the test server: `DATABASE_URL`'s, or the throwaway
/// cluster this test binary starts.
pub async fn db() -> Db {
    let guard = test_database().await.expect("test database");
    let pool = guard.pool().await.expect("connect to the test database");
    Db {
        url: guard.url().to_owned(),
        name: guard.name().to_owned(),
        pool,
        _guard: Some(guard),
    }
}

impl Db {
    /// A database that already exists.
    pub async fn connect(url: &str) -> Db {
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect(url)
            .await
            .unwrap();
        let name = url::Url::parse(url)
            .unwrap()
            .path()
            .trim_start_matches('/')
            .to_owned();
        Db {
            url: url.to_owned(),
            pool,
            name,
            _guard: None,
        }
    }

    /// A slot name unique to this database (slots are cluster-wide).
    pub fn slot(&self, prefix: &str) -> String {
        let name = format!("{prefix}_{}", self.name);
        name[..name.len().min(63)].to_owned()
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Publishes `tables` (in `public`) on publication `events` and slot `slot`.
    pub async fn setup(&self, slot: &str, tables: &[&str]) {
        prepare(
            &self.pool,
            &SetupSpec {
                publication: "events".into(),
                slot: slot.into(),
                durable_slot: true,
                tables: tables
                    .iter()
                    .map(|t| TableSpec::new("public", *t))
                    .collect(),
            },
        )
        .await
        .unwrap();
    }

    pub async fn listener(&self, slot: &str) -> Result<Listener, ListenerError> {
        let mut opts = ListenerOptions::new(slot, "events");
        opts.heartbeat_interval = Some(Duration::from_millis(200));
        Listener::start(
            PgWireConnector::from_url(&self.url).unwrap(),
            opts,
            self.pool.clone(),
        )
        .await
    }
}

/// Receives the next message within `timeout`.
pub async fn next(l: &mut Listener, timeout: Duration) -> ListenerMessage {
    tokio::time::timeout(timeout, l.recv())
        .await
        .expect("no message in time")
        .expect("listener failed")
        .expect("listener stopped")
}

/// Receives messages until `n` transactions have committed.
pub async fn transactions(l: &mut Listener, n: usize) -> Vec<Vec<ListenerMessage>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    while out.len() < n {
        let m = next(l, Duration::from_secs(20)).await;
        let end = matches!(m, ListenerMessage::Commit(_));
        cur.push(m);
        if end {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// Polls `cond` until it holds, failing the test after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until no session holds `slot`: a killed predecessor's
/// WAL sender lets go of it a moment after its client died.
pub async fn wait_slot_released(url: &str, slot: &str) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    wait_until(Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let held: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_replication_slots
                                WHERE slot_name = $1 AND active)",
            )
            .bind(slot)
            .fetch_one(&pool)
            .await
            .unwrap();
            !held
        }
    })
    .await;
    pool.close().await;
}

/// Waits (bounded) until a child process started with piped stdout prints
/// `READY`.
pub async fn wait_ready(child: &mut std::process::Child) {
    use std::io::{BufRead, BufReader};
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .any(|line| line.unwrap().contains("READY"))
    });
    let ready = tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .expect("the child is ready within 60 s")
        .unwrap();
    if !ready {
        let status = child.wait().unwrap();
        panic!("the child exited before it was ready: {status}");
    }
}

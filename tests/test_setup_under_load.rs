//! A flow's first set-up while the application writes: the set-up waits for
//! its table locks and retries, and no application transaction fails.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;
use walflow::setup::{SetupError, SetupOptions, SetupSpec, TableSpec, prepare, prepare_with};

/// Tables without `REPLICA IDENTITY FULL` that the writers keep busy.
const TABLES: [&str; 5] = ["load_a", "load_b", "load_c", "load_d", "load_e"];
/// Writer connections, each updating only its own row of every table.
const WRITERS: usize = 8;
/// Writers whose transactions stay open longer than the set-up's lock
/// timeout, so that it has to give up and retry on the tables they hold.
const SLOW_WRITERS: usize = 1;
/// Tables each writer transaction updates.
const PER_TRANSACTION: usize = 3;
/// Upper bound on each writer's transactions.
const MAX_TRANSACTIONS: usize = 20_000;
/// Upper bound on each writer's running time.
const MAX_RUNNING: Duration = Duration::from_secs(120);

async fn create_tables(db: &common::Db) {
    for t in TABLES {
        db.exec(&format!(
            "CREATE TABLE {t} (id int8 PRIMARY KEY, n int8 NOT NULL DEFAULT 0)"
        ))
        .await;
        db.exec(&format!(
            "INSERT INTO {t} (id) SELECT g FROM generate_series(0, {}) g",
            WRITERS - 1
        ))
        .await;
    }
}

fn spec(db: &common::Db) -> SetupSpec {
    SetupSpec {
        publication: "events".into(),
        slot: db.slot("load"),
        durable_slot: true,
        tables: TABLES
            .iter()
            .rev()
            .map(|t| TableSpec::new("public", *t))
            .collect(),
    }
}

/// Writers running multi-table transactions in varying table orders.
struct Load {
    stop: Arc<AtomicBool>,
    committed: Arc<Vec<AtomicUsize>>,
    writers: Vec<JoinHandle<Vec<String>>>,
}

impl Load {
    /// Starts the writers and returns once each has committed a transaction.
    async fn start(db: &common::Db) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let committed: Arc<Vec<AtomicUsize>> =
            Arc::new((0..WRITERS).map(|_| AtomicUsize::new(0)).collect());
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let mut conn = PgConnection::connect(&db.url).await.unwrap();
            let stop = stop.clone();
            let committed = committed.clone();
            writers.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                let deadline = tokio::time::Instant::now() + MAX_RUNNING;
                for i in 0..MAX_TRANSACTIONS {
                    if stop.load(Ordering::Relaxed) || tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    match write_once(&mut conn, w, i).await {
                        Ok(()) => {
                            committed[w].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.push(format!("writer {w}, transaction {i}: {e}")),
                    }
                }
                errors
            }));
        }
        let load = Load {
            stop,
            committed,
            writers,
        };
        let counts = load.committed.clone();
        common::wait_until(Duration::from_secs(30), move || {
            let counts = counts.clone();
            async move { counts.iter().all(|c| c.load(Ordering::Relaxed) > 0) }
        })
        .await;
        load
    }

    fn total(&self) -> usize {
        self.committed
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits for `n` more commits, stops the writers and returns their errors
    /// and commit counts.
    async fn finish(self, n: usize) -> (Vec<String>, Vec<usize>) {
        let target = self.total() + n;
        let counts = self.committed.clone();
        common::wait_until(Duration::from_secs(30), move || {
            let counts = counts.clone();
            async move {
                counts
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .sum::<usize>()
                    >= target
            }
        })
        .await;
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for w in self.writers {
            errors.extend(w.await.unwrap());
        }
        let counts = self
            .committed
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        (errors, counts)
    }
}

/// One writer transaction: updates the writer's own row in `PER_TRANSACTION`
/// tables, in an order that changes with the writer and the iteration
/// (ascending or descending, from a rotating start), holding the transaction
/// open briefly between statements (longer for the first `SLOW_WRITERS`,
/// past the set-up's lock timeout). Writers never touch each other's rows and
/// take only mutually compatible table locks, so they cannot block each
/// other: only a set-up can make them wait.
async fn write_once(conn: &mut PgConnection, writer: usize, iteration: usize) -> sqlx::Result<()> {
    let start = writer + iteration;
    let mut tx = conn.begin().await?;
    for k in 0..PER_TRANSACTION {
        let idx = if start.is_multiple_of(2) {
            (start + k) % TABLES.len()
        } else {
            (start + TABLES.len() - k) % TABLES.len()
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {} SET n = n + 1 WHERE id = $1",
            TABLES[idx]
        )))
        .bind(writer as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_sleep($1)")
            .bind(if writer < SLOW_WRITERS { 0.15 } else { 0.01 })
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_set_up_under_load_fails_no_application_transaction() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("walflow=info")
        .with_test_writer()
        .try_init();
    let db = common::db().await;
    create_tables(&db).await;
    let load = Load::start(&db).await;

    let report = tokio::time::timeout(Duration::from_secs(90), prepare(&db.pool, &spec(&db)))
        .await
        .expect("the set-up finishes");
    let (errors, counts) = load.finish(WRITERS * 4).await;
    assert!(
        report.is_ok() && errors.is_empty(),
        "the set-up succeeds and no application transaction fails: set-up {report:?}, writers {errors:#?}"
    );
    let report = report.unwrap();
    assert!(
        counts.iter().all(|&c| c > 1),
        "every writer kept writing: {counts:?}"
    );

    let all: Vec<String> = TABLES.iter().map(|t| format!("public.{t}")).collect();
    assert!(report.publication_created);
    assert!(report.slot_created);
    assert_eq!(report.identity_set_full, all);
    assert_eq!(report.tables_added, all);
    assert!(report.tables_removed.is_empty());

    assert_eq!(
        identities(&db).await,
        TABLES
            .iter()
            .map(|t| (t.to_string(), "f".to_string()))
            .collect::<Vec<_>>()
    );
    let published: Vec<(String,)> = sqlx::query_as(
        "SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'events' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        published,
        TABLES.iter().map(|t| (t.to_string(),)).collect::<Vec<_>>()
    );
}

async fn identities(db: &common::Db) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT relname::text, relreplident::text FROM pg_class \
         WHERE relname LIKE 'load\\_%' AND relkind = 'r' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_table_locked_too_long_fails_the_set_up_naming_it_and_the_rest_follows_later() {
    let db = common::db().await;
    create_tables(&db).await;
    // An application transaction that keeps `load_c` locked.
    let mut app = PgConnection::connect(&db.url).await.unwrap();
    let mut held = app.begin().await.unwrap();
    sqlx::query("UPDATE load_c SET n = n + 1 WHERE id = 0")
        .execute(&mut *held)
        .await
        .unwrap();

    let mut options = SetupOptions::default();
    options.lock_wait_limit = Duration::from_secs(1);
    let err = prepare_with(&db.pool, &spec(&db), &options)
        .await
        .unwrap_err();
    let SetupError::LockUnavailable {
        table,
        action,
        waited,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(table, "public.load_c");
    assert_eq!(action, "set REPLICA IDENTITY FULL");
    assert!(*waited >= Duration::from_secs(1), "{waited:?}");
    assert!(err.to_string().starts_with("gave up after 1."), "{err}");
    assert!(err.to_string().contains("lock on `public.load_c`"), "{err}");

    // The application transaction was only delayed, never failed.
    sqlx::query("UPDATE load_c SET n = n + 1 WHERE id = 1")
        .execute(&mut *held)
        .await
        .unwrap();
    held.commit().await.unwrap();

    // The tables before it in the order were done; the next set-up does the rest.
    let done = identities(&db).await;
    assert_eq!(
        done,
        [
            ("load_a", "f"),
            ("load_b", "f"),
            ("load_c", "d"),
            ("load_d", "d"),
            ("load_e", "d")
        ]
        .map(|(t, i)| (t.to_owned(), i.to_owned()))
    );
    let report = prepare(&db.pool, &spec(&db)).await.unwrap();
    assert_eq!(
        report.identity_set_full,
        ["public.load_c", "public.load_d", "public.load_e"]
    );
    assert!(report.publication_created);
    assert_eq!(report.tables_added.len(), TABLES.len());
    assert!(identities(&db).await.iter().all(|(_, i)| i == "f"));
}

#[tokio::test]
async fn a_set_up_dropped_while_waiting_releases_its_lock() {
    let db = common::db().await;
    create_tables(&db).await;
    let mut app = PgConnection::connect(&db.url).await.unwrap();
    let mut held = app.begin().await.unwrap();
    sqlx::query("UPDATE load_a SET n = n + 1 WHERE id = 0")
        .execute(&mut *held)
        .await
        .unwrap();

    let pool = db.pool.clone();
    let setup_spec = spec(&db);
    let waiting = tokio::spawn(async move { prepare(&pool, &setup_spec).await });
    let advisory_held = || {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                > 0
        }
    };
    common::wait_until(Duration::from_secs(10), advisory_held).await;
    // It keeps retrying while `load_a` is held.
    assert!(!waiting.is_finished());
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());

    // The server releases the set-up lock with the dropped session.
    common::wait_until(Duration::from_secs(10), || {
        let held = advisory_held();
        async move { !held.await }
    })
    .await;
    held.commit().await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), prepare(&db.pool, &spec(&db)))
        .await
        .expect("the next set-up is not blocked")
        .unwrap();
    assert_eq!(report.identity_set_full.len(), TABLES.len());
}

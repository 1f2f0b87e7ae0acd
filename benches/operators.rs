//! Operator throughput and latency.
//!
//! ```text
//! cargo bench --bench operators
//! ```
//!
//! On a throwaway PostgreSQL (or `DATABASE_URL`): 1,000 posts, then 100,000
//! comments spread over them in random order, in transactions of 100 rows,
//! written while the flow is stopped; then the time for the blog operator
//! (the seed's MERGE) to drain that backlog (a) with `coalesce: true`,
//! (b) with `coalesce: false` (one query per event), and (c) the time
//! `pg_recvlogical` takes to read the same backlog on its own slot; (b) runs
//! with each queue storage: the stream storage (the default: no queue rows,
//! a progress record per unit transaction) and the durable queue
//! (`QueueStorage::Postgres`); (a) runs with the stream storage. The stream storage's drain is a
//! restart's: the backlog commits before the flow's redelivery horizon
//! (rule 12 of the queue protocol), so each unit looks its rows up in the
//! records read at start before it runs. Each drain measures the WAL of
//! walflow's own tables against the application's WAL for the backlog
//! (`walflow WAL / app WAL`), with the progress record's share per event,
//! and counts the transactions committed. Then the commit-to-handler latency of single-row commits
//! with each storage, beside a LISTEN/NOTIFY round trip and beside the
//! commit-to-listener time of a bare listener, measured in the same run.
//! Figures, not assertions.
//!
//! `WALFLOW_BENCH_COMMENTS` changes the number of comments; `WALFLOW_SEED`
//! their order (by default the same every run);
//! `WALFLOW_BENCH_LATENCY_ONLY` runs only the latency part;
//! `WALFLOW_BENCH_COALESCED_ONLY` only (a) and (c).

#![allow(dead_code)] // fields are read through serde

#[path = "../tests/common/blog.rs"]
mod blog;
mod support;

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use walflow::config::{ProcessStatusStorage, QueueStorage};
use walflow::listener::ListenerMessage;
use walflow::prelude::*;

// The blog model's `Counts` is the coalescing operator (a).
use blog::{Comment, Post, PostWithCommentsCount};

#[event_source(table = "pings")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Ping {
    id: i64,
}

on_event! {
    operator EveryEvent for PostWithCommentsCount {
        events: all,
        entities: [Comment, Post],
        id: [Comment.post_id, Post.id],
        delete_with: [Post],
        query: "MERGE INTO post_with_comments_counts dest
                USING (SELECT p.id, p.title, count(c.id) AS comments_count
                       FROM posts p LEFT JOIN comments c ON c.post_id = p.id
                       WHERE p.id = $1 GROUP BY p.id) src
                ON dest.id = src.id
                WHEN MATCHED THEN UPDATE SET title = src.title, comments_count = src.comments_count
                WHEN NOT MATCHED THEN INSERT (id, title, comments_count)
                     VALUES (src.id, src.title, src.comments_count)",
    }

    operator PingHandler {
        events: [insert],
        entities: [Ping],
        handler: on_ping,
    }
}

static PINGS: OnceLock<mpsc::UnboundedSender<Instant>> = OnceLock::new();

async fn on_ping(_event: Event<Ping>, _ctx: Ctx) -> Result<(), std::io::Error> {
    if let Some(tx) = PINGS.get() {
        let _ = tx.send(Instant::now());
    }
    Ok(())
}

/// The blog model's tables without `updated_at` (no process status to
/// keep), with an index on `post_id`, and the pings.
const SCHEMA: &str = "
    CREATE TABLE posts (id bigint PRIMARY KEY, title text NOT NULL);
    CREATE TABLE comments (id bigint PRIMARY KEY, post_id bigint NOT NULL);
    CREATE INDEX ON comments (post_id);
    CREATE TABLE post_with_comments_counts (id bigint PRIMARY KEY, title text NOT NULL,
                                            comments_count bigint NOT NULL);
    CREATE TABLE pings (id bigint PRIMARY KEY);
";

const POSTS: i64 = 1_000;
const ROWS_PER_TX: i64 = 100;
/// Single-row commits timed per latency figure.
const LATENCY_COMMITS: usize = 300;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async_main());
}

async fn async_main() {
    #[cfg(feature = "embedded")]
    let server;
    let base = match std::env::var("DATABASE_URL") {
        Ok(url) => url,
        #[cfg(feature = "embedded")]
        Err(_) => {
            server = walflow::embedded::EmbeddedPostgres::start()
                .await
                .expect("start PostgreSQL");
            server.url()
        }
        #[cfg(not(feature = "embedded"))]
        Err(_) => panic!("set DATABASE_URL"),
    };
    let comments: i64 = std::env::var("WALFLOW_BENCH_COMMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    println!(
        "walflow operator benchmark (PostgreSQL on loopback, {} cores): {POSTS} posts, \
         {comments} comments in random order, {ROWS_PER_TX} rows per transaction",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    if std::env::var_os("WALFLOW_BENCH_LATENCY_ONLY").is_some() {
        latency(&base).await;
        return;
    }
    let a = drain(&base, "a", "Counts", comments, true, QueueStorage::Stream).await;
    let (coalesced, recv) = (a.time, a.recv);
    if std::env::var_os("WALFLOW_BENCH_COALESCED_ONLY").is_some() {
        println!(
            "  (a) {coalesced:.2?}, (c) {:.2?}",
            recv.expect("pg_recvlogical timing")
        );
        return;
    }
    // (b) with each storage, the same backlog.
    let mut every = Vec::new();
    for (suffix, storage) in [
        ("b", QueueStorage::Stream),
        ("b_durable", QueueStorage::Postgres),
    ] {
        let drained = drain(&base, suffix, "EveryEvent", comments, false, storage).await;
        every.push((storage, drained));
    }
    let events = (POSTS + comments) as f64;
    let rate = |d: Duration| events / d.as_secs_f64();
    let time = |storage: QueueStorage| {
        every
            .iter()
            .find(|(s, _)| *s == storage)
            .map(|(_, d)| d.time)
            .expect("drained")
    };
    let durable = time(QueueStorage::Postgres);
    let stream = time(QueueStorage::Stream);
    println!("backlog drain ({} events):", events as u64);
    println!(
        "  (a) coalesce: true    {:>10.2?}  {:>9.0} events/s",
        coalesced,
        rate(coalesced)
    );
    for (storage, drained) in &every {
        let label = match storage {
            QueueStorage::Stream => "(b) coalesce: false",
            QueueStorage::Postgres => "    (durable queue)",
        };
        println!(
            "  {label}   {:>10.2?}  {:>9.0} events/s",
            drained.time,
            rate(drained.time)
        );
    }
    let recv = recv.expect("pg_recvlogical timing");
    println!(
        "  (c) pg_recvlogical    {:>10.2?}  {:>9.0} events/s",
        recv,
        rate(recv)
    );
    println!(
        "  (a)/(c) = {:.2}x (target <= 2)   (b)/(a) = {:.1}x (target >= 20)",
        coalesced.as_secs_f64() / recv.as_secs_f64(),
        stream.as_secs_f64() / coalesced.as_secs_f64()
    );
    println!(
        "  (b) durable/stream = {:.2}x (target >= 2)",
        durable.as_secs_f64() / stream.as_secs_f64()
    );
    if every.iter().all(|(_, d)| d.wal.is_some()) {
        println!(
            "walflow WAL / app WAL during (b) (walflow's tables per byte of the backlog's WAL):"
        );
        for (storage, drained) in &every {
            let wal = drained.wal.as_ref().expect("measured");
            let mut line = format!(
                "  {:<14} {:>6.3}   ({:.1} MiB of {:.1} MiB; {:.0} B per event",
                storage_name(*storage),
                wal.walflow as f64 / wal.app as f64,
                mib(wal.walflow),
                mib(wal.app),
                wal.walflow as f64 / events,
            );
            if drained.progress_writes > 0 {
                line.push_str(&format!(
                    "; progress record {:.1} B per event, {} records",
                    wal.progress as f64 / events,
                    drained.progress_writes
                ));
            }
            println!("{line})");
        }
    }

    latency(&base).await;
}

/// What one drain measured.
struct Drained {
    /// Start of the flow to the whole backlog applied.
    time: Duration,
    /// `pg_recvlogical` over the same backlog, when asked.
    recv: Option<Duration>,
    /// WAL bytes, when `pg_walinspect` is available.
    wal: Option<DrainWal>,
    /// Progress records written (inserted or moved): one per unit.
    progress_writes: i64,
}

/// WAL bytes of one drain.
struct DrainWal {
    /// The application's backlog.
    app: i64,
    /// walflow's tables during the drain.
    walflow: i64,
    /// `walflow.applied` (the progress record) during the drain.
    progress: i64,
}

/// How the output names a queue storage.
fn storage_name(storage: QueueStorage) -> &'static str {
    match storage {
        QueueStorage::Postgres => "durable queue",
        QueueStorage::Stream => "stream",
    }
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Writes the backlog with the flow stopped, then times the drain with
/// `storage`. With `recv`, also times `pg_recvlogical` over the same
/// backlog.
async fn drain(
    base: &str,
    suffix: &str,
    operator: &str,
    comments: i64,
    recv: bool,
    storage: QueueStorage,
) -> Drained {
    let (url, pool) = support::fresh_database(
        base,
        &format!("walflow_opbench_{}_{suffix}", std::process::id()),
    )
    .await;
    support::exec(&pool, SCHEMA).await;
    let slot = format!("bench_{suffix}");
    let builder = || {
        Walflow::builder()
            .database_url(&url)
            .slot_name(&slot)
            .operators([operator])
            .queue_storage(storage)
            .max_connections(20)
    };
    // Creates the publication and the slot, then stops.
    builder().start().await.unwrap().shutdown().await.unwrap();
    let recv_slot = format!("bench_recv_{suffix}");
    if recv {
        sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(&recv_slot)
            .execute(&pool)
            .await
            .unwrap();
    }

    let walinspect = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        .execute(&pool)
        .await
        .is_ok();
    let backlog_start = flush_lsn(&pool).await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    exec_conn(
        &mut conn,
        &format!("INSERT INTO posts SELECT i, 'post ' || i FROM generate_series(1, {POSTS}) i"),
    )
    .await;
    // The same comments every run unless WALFLOW_SEED says otherwise.
    let mut rng = support::Rng::new(support::seed_or(0x9E37_79B9_7F4A_7C15));
    let mut id = 0i64;
    while id < comments {
        let mut values = Vec::with_capacity(ROWS_PER_TX as usize);
        for _ in 0..ROWS_PER_TX.min(comments - id) {
            id += 1;
            values.push(format!("({id}, {})", 1 + rng.below(POSTS as u64)));
        }
        exec_conn(
            &mut conn,
            &format!("INSERT INTO comments VALUES {}", values.join(",")),
        )
        .await;
    }
    let end: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    let end_lsn: walflow::Lsn = end.parse().unwrap();
    let drain_start = flush_lsn(&pool).await;

    let t = Instant::now();
    let flow = builder().start().await.unwrap();
    // When the backlog is all in the queue (polled: a figure, not a gate).
    // Only the durable queue says it: the others hand rows over in memory.
    let queued = (storage == QueueStorage::Postgres).then(|| {
        let pool = pool.clone();
        let slot = slot.clone();
        tokio::spawn(async move {
            loop {
                let at: Option<i64> =
                    sqlx::query_scalar("SELECT enqueued_lsn FROM walflow.streams WHERE slot = $1")
                        .bind(&slot)
                        .fetch_optional(&pool)
                        .await
                        .unwrap();
                if at.is_some_and(|at| at as u64 >= end_lsn.0) {
                    return t.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    });
    flow.wait_processed(end_lsn, Duration::from_secs(3600))
        .await
        .unwrap();
    let drained = t.elapsed();
    let queued = match queued {
        Some(queued) => format!("all queued after {:.2?}", queued.await.unwrap()),
        None => "handed over in memory".to_owned(),
    };
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM walflow.queue")
        .fetch_one(&pool)
        .await
        .unwrap();
    flow.shutdown().await.unwrap();
    // Each run of the MERGE inserts or updates one row; each unit
    // transaction of the stream storage inserts one progress record (a
    // group of units, one). Closed sessions report their counts as they
    // exit, so they are awaited (bounded): every event's run without
    // coalescing, at least one per post with it.
    let expected = if operator == "EveryEvent" {
        POSTS + comments
    } else {
        POSTS
    };
    let asked = Instant::now();
    let (queued_rows, progress_writes, runs) = loop {
        let (queued_rows, progress_writes, runs): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT n_tup_ins FROM pg_stat_user_tables
                     WHERE schemaname = 'walflow' AND relname = 'queue'),
                    (SELECT n_tup_ins FROM pg_stat_user_tables
                     WHERE schemaname = 'walflow' AND relname = 'applied'),
                    (SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables
                     WHERE relname = 'post_with_comments_counts')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let written = match storage {
            QueueStorage::Postgres => queued_rows,
            QueueStorage::Stream => runs,
        };
        if (written >= expected && runs >= expected) || asked.elapsed() > Duration::from_secs(5) {
            break (queued_rows, progress_writes, runs);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let label = format!("[{operator}, {}]", storage_name(storage));
    let written = match storage {
        QueueStorage::Postgres => format!("{queued_rows} queue rows"),
        QueueStorage::Stream => {
            format!("{queued_rows} queue rows, {progress_writes} progress records written")
        }
    };
    println!(
        "  {label} {queued}, drained after {drained:.2?}; \
         {written}, {runs} query runs, {rows} rows left"
    );
    let wal = if walinspect {
        let drain_end = flush_lsn(&pool).await;
        let app = wal_by_relation(&pool, &backlog_start, &drain_start).await;
        let during = wal_by_relation(&pool, &drain_start, &drain_end).await;
        let total = |m: &Wal| m.values().sum::<i64>();
        let schema = |m: &Wal, k: &str| {
            m.iter()
                .filter(|((s, _), _)| s == k)
                .map(|(_, b)| b)
                .sum::<i64>()
        };
        let walflow = schema(&during, "walflow");
        // walflow's tables one by one, largest first.
        let mut tables: Vec<(&str, i64)> = during
            .iter()
            .filter(|((s, _), _)| s == "walflow")
            .map(|((_, t), b)| (t.as_str(), *b))
            .collect();
        tables.sort_by_key(|(_, b)| -b);
        let tables: Vec<String> = tables
            .iter()
            .map(|(t, b)| format!("{t} {:.2}", mib(*b)))
            .collect();
        println!(
            "  {label} WAL: the application's backlog {:.1} MiB; during the drain \
             walflow's tables {:.1} MiB ({:.2}x the application's: {}), the derived table \
             {:.1} MiB, records of no table (commits, messages) {:.1} MiB; {} transactions \
             committed",
            mib(total(&app)),
            mib(walflow),
            walflow as f64 / total(&app) as f64,
            if tables.is_empty() {
                "none".to_owned()
            } else {
                tables.join(", ")
            },
            mib(schema(&during, "public")),
            mib(schema(&during, "-")),
            commits(&pool, &drain_start, &drain_end).await,
        );
        Some(DrainWal {
            app: total(&app),
            walflow,
            progress: during
                .get(&("walflow".to_owned(), "applied".to_owned()))
                .copied()
                .unwrap_or(0),
        })
    } else {
        println!("  {label} WAL: pg_walinspect is not available (PostgreSQL 15 or newer)");
        None
    };
    let (n, total): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(comments_count), 0)::int8 FROM post_with_comments_counts",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (n, total),
        (POSTS, comments),
        "the derived table is complete"
    );

    let recv_time = if recv {
        let t = Instant::now();
        let status = Command::new("pg_recvlogical")
            .args(["-d", &url, "--slot", &recv_slot, "--start", "--no-loop"])
            .args(["-o", "proto_version=1", "-o", "publication_names=events"])
            .args(["--endpos", &end, "-f", "/dev/null"])
            .status()
            .expect("run pg_recvlogical");
        assert!(status.success(), "pg_recvlogical failed");
        let d = t.elapsed();
        walflow::setup::drop_slot(&pool, &recv_slot).await.unwrap();
        Some(d)
    } else {
        None
    };
    walflow::setup::drop_slot(&pool, &slot).await.unwrap();
    Drained {
        time: drained,
        recv: recv_time,
        wal,
        progress_writes,
    }
}

/// Commit-to-handler latency of single-row commits, beside a LISTEN/NOTIFY
/// round trip.
async fn latency(base: &str) {
    const N: usize = LATENCY_COMMITS;
    let (url, pool) =
        support::fresh_database(base, &format!("walflow_opbench_{}_lat", std::process::id())).await;
    support::exec(&pool, SCHEMA).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _ = PINGS.set(tx);
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut durable = handler_latency(
        &url,
        &pool,
        &mut conn,
        &mut rx,
        0,
        QueueStorage::Postgres,
        ProcessStatusStorage::Postgres,
    )
    .await;
    // The stream storage: nothing queued, a progress record per unit, the
    // slot acknowledged up to what is applied; the process status in
    // PostgreSQL, as with the durable queue.
    let mut stream = handler_latency(
        &url,
        &pool,
        &mut conn,
        &mut rx,
        2 * N as i64,
        QueueStorage::Stream,
        ProcessStatusStorage::Postgres,
    )
    .await;
    let next = 3 * N as i64;

    // The floor of any WAL consumer: commit to the commit message arriving
    // on a bare listener (no queue, no operator).
    let config = walflow::Config::builder()
        .database_url(&url)
        .slot_name("bench_latency_raw")
        .build()
        .unwrap();
    let (mut raw, _) = walflow::setup::listen(
        &config,
        vec![walflow::setup::TableSpec::new("public", "pings")],
    )
    .await
    .unwrap();
    let mut wal = Vec::with_capacity(N);
    for i in 0..N as i64 {
        let t = Instant::now();
        sqlx::query("INSERT INTO pings VALUES ($1)")
            .bind(next + i)
            .execute(&mut conn)
            .await
            .unwrap();
        loop {
            if let Some(ListenerMessage::Commit(c)) = raw.recv().await.unwrap() {
                wal.push(t.elapsed());
                raw.ack(c.end_lsn);
                break;
            }
        }
    }
    raw.shutdown().await.unwrap();
    walflow::setup::drop_slot(&pool, "bench_latency_raw")
        .await
        .unwrap();

    let mut listener = PgListener::connect(&url).await.unwrap();
    listener.listen("bench_ping").await.unwrap();
    let mut notify = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        sqlx::query("NOTIFY bench_ping")
            .execute(&mut conn)
            .await
            .unwrap();
        listener.recv().await.unwrap();
        notify.push(t.elapsed());
    }
    let p = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
    };
    let (h50, h99) = (p(&mut durable, 0.50), p(&mut durable, 0.99));
    let (s50, s99) = (p(&mut stream, 0.50), p(&mut stream, 0.99));
    let (n50, n99) = (p(&mut notify, 0.50), p(&mut notify, 0.99));
    let (w50, w99) = (p(&mut wal, 0.50), p(&mut wal, 0.99));
    let x = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("latency ({N} single-row commits):");
    println!("  commit → handler   p50 {h50:>10.2?}  p99 {h99:>10.2?}   (durable queue)");
    println!("    (stream)         p50 {s50:>10.2?}  p99 {s99:>10.2?}   (no queue rows)");
    println!("  commit → listener  p50 {w50:>10.2?}  p99 {w99:>10.2?}   (WAL sender floor)");
    println!("  LISTEN/NOTIFY      p50 {n50:>10.2?}  p99 {n99:>10.2?}");
    println!(
        "  stream / NOTIFY    p50 {:.2}x (target <= 2)   p99 {:.2}x (target <= 5)",
        x(s50, n50),
        x(s99, n99)
    );
    println!(
        "  handler / listener p50: durable {:.2}x, stream {:.2}x (target <= 1.5)",
        x(h50, w50),
        x(s50, w50)
    );
    println!(
        "  handler / listener p99: durable {:.2}x, stream {:.2}x (target <= 3)",
        x(h99, w99),
        x(s99, w99)
    );
}

/// Commit-to-handler times of `LATENCY_COMMITS` single-row commits, ids
/// from `first`, with the given storage.
async fn handler_latency(
    url: &str,
    pool: &sqlx::PgPool,
    conn: &mut sqlx::PgConnection,
    rx: &mut mpsc::UnboundedReceiver<Instant>,
    first: i64,
    queue: QueueStorage,
    status: ProcessStatusStorage,
) -> Vec<Duration> {
    let slot = format!("bench_latency_{first}");
    let flow = Walflow::builder()
        .database_url(url)
        .slot_name(&slot)
        .operators(["PingHandler"])
        .queue_storage(queue)
        .process_status_storage(status)
        .start()
        .await
        .unwrap();
    let mut times = Vec::with_capacity(LATENCY_COMMITS);
    for i in first..first + LATENCY_COMMITS as i64 {
        let t = Instant::now();
        sqlx::query("INSERT INTO pings VALUES ($1)")
            .bind(i)
            .execute(&mut *conn)
            .await
            .unwrap();
        let at = rx.recv().await.unwrap();
        times.push(at - t);
    }
    flow.shutdown().await.unwrap();
    walflow::setup::drop_slot(pool, &slot).await.unwrap();
    times
}

async fn exec_conn(conn: &mut sqlx::PgConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The server's WAL flush position, as text.
async fn flush_lsn(pool: &sqlx::PgPool) -> String {
    sqlx::query_scalar("SELECT pg_current_wal_flush_lsn()::text")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Commit records between two positions (transactions that wrote).
async fn commits(pool: &sqlx::PgPool, from: &str, to: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn)
         WHERE resource_manager = 'Transaction' AND record_type = 'COMMIT'",
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// WAL bytes by `(schema, table)`.
type Wal = std::collections::BTreeMap<(String, String), i64>;

/// Bytes of WAL records between two positions by the schema and table of
/// the first relation each record touches, an index counted with its table
/// (`-`: no relation, such as commit records; `?`: a relation of another
/// database), read with `pg_walinspect`.
async fn wal_by_relation(pool: &sqlx::PgPool, from: &str, to: &str) -> Wal {
    sqlx::query_as::<_, (String, String, i64)>(
        "WITH r AS (
             SELECT record_length,
                    (regexp_match(block_ref, 'rel [0-9]+/[0-9]+/([0-9]+)'))[1]::oid AS node
             FROM pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn))
         SELECT CASE WHEN r.node IS NULL THEN '-'
                     ELSE coalesce(n.nspname::text, '?') END,
                coalesce(t.relname::text, ''),
                sum(r.record_length)::int8
         FROM r LEFT JOIN pg_class c ON c.relfilenode = r.node
                LEFT JOIN pg_index i ON i.indexrelid = c.oid
                LEFT JOIN pg_class t ON t.oid = coalesce(i.indrelid, c.oid)
                LEFT JOIN pg_namespace n ON n.oid = t.relnamespace
         GROUP BY 1, 2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(schema, table, bytes)| ((schema, table), bytes))
    .collect()
}

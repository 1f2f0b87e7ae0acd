//! Listener throughput against `pg_recvlogical` and the in-backend ceiling.
//!
//! ```text
//! cargo bench --bench listener
//! ```
//!
//! Builds two backlogs on a throwaway PostgreSQL (or `DATABASE_URL`):
//! 1,000,000 rows in multi-row transactions, and 20,000 single-row
//! transactions. Each backlog is drained three ways from its own slot, in
//! the same run: walflow's listener (decoding every row into typed values),
//! `pg_recvlogical` (pgoutput, `-f /dev/null`), and
//! `pg_logical_slot_peek_binary_changes` inside the server (the ceiling).
//! Prints rows/s, the ratios and the listener's peak RSS. Figures, not
//! assertions.

use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::PgPool;
mod support;

use walflow::Lsn;
use walflow::listener::{Listener, ListenerMessage, ListenerOptions, PgWireConnector};
use walflow::setup::{SetupSpec, TableSpec, prepare};

const ROWS_MULTI: i64 = 1_000_000;
const ROWS_PER_TX: i64 = 10_000;
const SINGLE_TXS: i64 = 20_000;

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct BenchRow {
    id: i64,
    name: String,
    amount: String,
    created_at: chrono::DateTime<chrono::Utc>,
    flag: bool,
}

struct Figures {
    rows: u64,
    listener: Duration,
    recvlogical: Duration,
    in_backend: Duration,
    peak_rss_kib: u64,
    listener_cpu: Duration,
}

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
    let (url, pool) =
        support::fresh_database(&base, &format!("walflow_bench_{}", std::process::id())).await;
    support::exec(
        &pool,
        "CREATE TABLE bench_rows (id int8 PRIMARY KEY, name text NOT NULL, amount numeric NOT NULL, \
         created_at timestamptz NOT NULL, flag bool NOT NULL)",
    )
    .await;

    println!(
        "walflow listener benchmark (PostgreSQL on loopback, {} cores)",
        num_cpus()
    );
    println!();

    let multi = run_backlog(&url, &pool, "multi", |pool| async move {
        let mut id = 0;
        while id < ROWS_MULTI {
            let sql = format!(
                "INSERT INTO bench_rows SELECT g, 'name ' || g, (g * 1.25)::numeric(20,4), \
                 now() + g * interval '1 microsecond', g % 2 = 0 FROM generate_series({}, {}) g",
                id + 1,
                id + ROWS_PER_TX
            );
            support::exec(&pool, &sql).await;
            id += ROWS_PER_TX;
        }
    })
    .await;
    report(
        &format!("{ROWS_MULTI} rows in transactions of {ROWS_PER_TX}"),
        &multi,
    );

    support::exec(&pool, "TRUNCATE bench_rows").await;
    let single = run_backlog(&url, &pool, "single", |pool| async move {
        // Single-row transactions, written by a few concurrent sessions.
        let mut tasks = Vec::new();
        for w in 0..4 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while i < SINGLE_TXS {
                    sqlx::query(
                        "INSERT INTO bench_rows VALUES ($1, 'name ' || $1, ($1 * 1.25)::numeric(20,4), now(), $1 % 2 = 0)",
                    )
                    .bind(i + 10_000_000)
                    .execute(&pool)
                    .await
                    .unwrap();
                    i += 4;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    report(&format!("{SINGLE_TXS} single-row transactions"), &single);
}

async fn run_backlog<F, Fut>(url: &str, pool: &PgPool, name: &str, load: F) -> Figures
where
    F: FnOnce(PgPool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let slot_listener = format!("bench_{name}_walflow");
    let slot_recv = format!("bench_{name}_recvlogical");
    let slot_peek = format!("bench_{name}_peek");
    prepare(
        pool,
        &SetupSpec {
            publication: "bench".into(),
            slot: slot_listener.clone(),
            durable_slot: true,
            tables: vec![TableSpec::new("public", "bench_rows")],
        },
    )
    .await
    .unwrap();
    for s in [&slot_recv, &slot_peek] {
        walflow::setup::ensure_slot(pool, s).await.unwrap();
    }
    let t = Instant::now();
    load(pool.clone()).await;
    let end: Lsn = sqlx::query_scalar::<_, String>("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("[{name}] backlog written in {:.1?}", t.elapsed());

    // 1. walflow's listener, decoding every row.
    support::reset_peak_rss();
    let cpu_before = support::cpu_time();
    let mut opts = ListenerOptions::new(&slot_listener, "bench");
    opts.heartbeat_interval = None;
    let t = Instant::now();
    let mut listener = Listener::start(PgWireConnector::from_url(url).unwrap(), opts, pool.clone())
        .await
        .unwrap();
    let mut rows = 0u64;
    let mut buf = Vec::with_capacity(1024);
    'drain: loop {
        buf.clear();
        listener.recv_many(&mut buf, 1024).await.unwrap();
        for m in buf.drain(..) {
            match m {
                ListenerMessage::Change(ev) => {
                    let row: BenchRow = ev
                        .new
                        .as_ref()
                        .unwrap()
                        .deserialize_into(&ev.table)
                        .unwrap();
                    std::hint::black_box(row);
                    rows += 1;
                }
                ListenerMessage::Commit(c) => {
                    listener.ack(c.end_lsn);
                    if c.end_lsn >= end {
                        break 'drain;
                    }
                }
                _ => {}
            }
        }
    }
    let listener_time = t.elapsed();
    let listener_cpu = support::cpu_time().saturating_sub(cpu_before);
    listener.shutdown().await.unwrap();
    let peak_rss_kib = support::status_kib("VmHWM:");

    // 2. pg_recvlogical on its own slot.
    let t = Instant::now();
    let status = Command::new("pg_recvlogical")
        .args(["-d", url, "--slot", &slot_recv, "--start", "--no-loop"])
        .args(["-o", "proto_version=1", "-o", "publication_names=bench"])
        .args(["--endpos", &end.to_string(), "-f", "/dev/null"])
        .status()
        .expect("run pg_recvlogical");
    let recv_time = t.elapsed();
    assert!(status.success(), "pg_recvlogical failed");

    // 3. The in-backend ceiling: the server decodes without sending.
    let t = Instant::now();
    let _: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, NULL, \
         'proto_version', '1', 'publication_names', 'bench')",
    )
    .bind(&slot_peek)
    .bind(end.to_string())
    .fetch_one(pool)
    .await
    .unwrap();
    let peek_time = t.elapsed();

    for s in [&slot_listener, &slot_recv, &slot_peek] {
        walflow::setup::drop_slot(pool, s).await.unwrap();
    }
    Figures {
        rows,
        listener: listener_time,
        recvlogical: recv_time,
        in_backend: peek_time,
        peak_rss_kib,
        listener_cpu,
    }
}

fn report(title: &str, f: &Figures) {
    let rate = |d: Duration| f.rows as f64 / d.as_secs_f64();
    println!("{title}:");
    println!(
        "  walflow listener   {:>10.0} rows/s  ({:.2?})",
        rate(f.listener),
        f.listener
    );
    println!(
        "  pg_recvlogical     {:>10.0} rows/s  ({:.2?})",
        rate(f.recvlogical),
        f.recvlogical
    );
    println!(
        "  in-backend ceiling {:>10.0} rows/s  ({:.2?})",
        rate(f.in_backend),
        f.in_backend
    );
    println!(
        "  listener process CPU {:.2?} ({:.2} µs per row)",
        f.listener_cpu,
        f.listener_cpu.as_secs_f64() * 1e6 / f.rows as f64
    );
    println!(
        "  listener / pg_recvlogical = {:.2}x   listener / ceiling = {:.2}x   listener peak RSS = {:.1} MiB",
        f.recvlogical.as_secs_f64() / f.listener.as_secs_f64(),
        f.in_backend.as_secs_f64() / f.listener.as_secs_f64(),
        f.peak_rss_kib as f64 / 1024.0
    );
    println!();
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

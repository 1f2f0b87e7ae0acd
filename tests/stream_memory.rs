//! The stream storage's memory bound: a 1,000,000-row transaction runs
//! through an operator in a process whose peak RSS stays within 64 MiB,
//! once while the flow runs (the operator falls behind and spills to
//! `walflow.queue`) and once as the backlog a flow finds at start (held in
//! memory up to the consumer's bound, not spilled). Run only when asked
//! for (it takes minutes):
//!
//! ```text
//! WALFLOW_BIG=1 cargo test --release --test stream_memory -- --nocapture
//! ```
//!
//! `WALFLOW_BIG_STORAGE=postgres` runs the same with the durable queue,
//! for comparison.
//!
//! Without `WALFLOW_BIG` it says so and exits: a `harness = false` target,
//! so it is no test that passes without running. The binary is also the
//! child process running the flow; its peak RSS is read from
//! `/proc/<pid>/status` (`VmHWM`).

#![allow(dead_code)] // struct fields are read through serde

mod common;
#[path = "common/harness.rs"]
mod harness;

use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use walflow::config::QueueStorage;
use walflow::prelude::*;

const CHILD: &str = "WALFLOW_TEST_STREAM_MEMORY_CHILD";
const ROWS: i64 = 1_000_000;
const BOUND_MIB: u64 = 64;

/// A row of the big table.
#[event_source(table = "big_rows")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BigRow {
    /// Its id.
    pub id: i64,
}

/// A copy.
#[event_source(table = "big_copies")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BigCopied {
    /// Its id.
    pub id: i64,
}

on_event! {
    /// Copies each id (one query per event).
    operator BigCopy for BigCopied {
        events: [insert],
        entities: [BigRow],
        id: [BigRow.id],
        query: "INSERT INTO big_copies SELECT id FROM big_rows WHERE id = $1
                ON CONFLICT (id) DO NOTHING",
    }
}

fn main() -> ExitCode {
    if harness::is_child(CHILD) {
        return harness::child(child());
    }
    if std::env::args().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    if std::env::var_os("WALFLOW_BIG").is_none() {
        println!("stream storage memory bound not asked for (set WALFLOW_BIG=1 to run it)");
        return ExitCode::SUCCESS;
    }
    harness::child(a_million_row_transaction_runs_within_the_bound())
}

/// The flow, until killed.
async fn child() {
    let url = std::env::var("URL").unwrap();
    let slot = std::env::var("SLOT").unwrap();
    let _flow = Walflow::builder()
        .database_url(&url)
        .slot_name(&slot)
        .queue_storage(storage())
        .operators(["BigCopy"])
        .start()
        .await
        .expect("the flow starts");
    println!("READY");
    std::future::pending::<()>().await;
}

/// The queue storage: `WALFLOW_BIG_STORAGE`, the stream storage by default.
fn storage() -> QueueStorage {
    match std::env::var("WALFLOW_BIG_STORAGE").as_deref() {
        Ok("postgres") => QueueStorage::Postgres,
        _ => QueueStorage::Stream,
    }
}

fn spawn(db: &common::Db, slot: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .env("URL", &db.url)
        .env("SLOT", slot)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn peak_rss_mib(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        / 1024
}

async fn copies(db: &common::Db) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM big_copies")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Waits (bounded) until `n` copies exist, printing progress.
async fn wait_copies(db: &common::Db, n: i64) {
    let t = Instant::now();
    common::wait_until(Duration::from_secs(3600), || async {
        copies(db).await >= n
    })
    .await;
    eprintln!("  {n} copies after {:.1?}", t.elapsed());
}

async fn a_million_row_transaction_runs_within_the_bound() {
    let db = common::db().await;
    db.exec(
        "CREATE TABLE big_rows (id bigint PRIMARY KEY, pad text NOT NULL);
         CREATE TABLE big_copies (id bigint PRIMARY KEY);",
    )
    .await;
    let slot = db.slot("big");
    let insert = |from: i64| {
        format!(
            "INSERT INTO big_rows SELECT g, repeat('x', 120)
             FROM generate_series({}, {}) g",
            from + 1,
            from + ROWS
        )
    };

    // While the flow runs: the operator falls behind and spills.
    let mut child = spawn(&db, &slot);
    common::wait_ready(&mut child).await;
    // What the process takes before any event: the floor of the figures.
    eprintln!("started: peak RSS {} MiB", peak_rss_mib(&child));
    db.exec(&insert(0)).await;
    wait_copies(&db, ROWS).await;
    let live = peak_rss_mib(&child);
    eprintln!("{:?}", storage());
    eprintln!("live: peak RSS {live} MiB");
    child.kill().unwrap();
    child.wait().unwrap();

    // As the backlog a flow finds at start.
    db.exec(&insert(ROWS)).await;
    let mut child = spawn(&db, &slot);
    common::wait_ready(&mut child).await;
    // Started: the progress records of the killed run read.
    eprintln!("started again: peak RSS {} MiB", peak_rss_mib(&child));
    wait_copies(&db, 2 * ROWS).await;
    let backlog = peak_rss_mib(&child);
    eprintln!("backlog: peak RSS {backlog} MiB");
    child.kill().unwrap();
    child.wait().unwrap();

    assert!(
        live <= BOUND_MIB && backlog <= BOUND_MIB,
        "peak RSS {live} MiB live, {backlog} MiB as a backlog: more than {BOUND_MIB} MiB"
    );
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT id) FROM big_copies")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (2 * ROWS, 2 * ROWS));
}

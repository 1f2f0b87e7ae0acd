//! Exactly once across crashes: the runtime killed with SIGKILL at random
//! points during a random workload, and PostgreSQL restarted (cleanly, then
//! crashed) mid-workload. Afterwards the derived table equals a from-scratch
//! recompute and a non-idempotent counting operator (`n = n + 1`, no
//! coalescing) equals the true number of events.
//!
//! This target has its own `main` (`harness = false`): the binary is also
//! the child process running the flow until killed.

#![allow(dead_code)] // struct fields are read through serde

#[path = "common/blog.rs"]
mod blog;
mod common;
#[path = "common/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::Connection;
use walflow::embedded::{EmbeddedPostgres, ShutdownMode};
use walflow::prelude::*;

use blog::SCHEMA;
use common::Rng;

const OPERATORS: [&str; 2] = ["Counts", "Tally"];

/// Set in the child process.
const CHILD: &str = "WALFLOW_OPERATOR_CHILD";

fn main() -> ExitCode {
    if harness::is_child(CHILD) {
        return harness::child(child());
    }
    harness::run(harness::tests![
        exactly_once_when_the_runtime_is_killed,
        exactly_once_when_the_runtime_is_killed_without_process_status,
        exactly_once_when_postgres_restarts_mid_workload,
        exactly_once_when_killed_inside_a_big_transaction,
    ])
}

/// The child process (this binary, spawned by [`ready_child`]): runs the
/// flow on `URL`'s slot `SLOT` until killed, `READY` printed once it has
/// started.
async fn child() {
    let url = std::env::var("URL").unwrap();
    let slot = std::env::var("SLOT").unwrap();
    let status_field = std::env::var("STATUS_FIELD").ok();
    let durable = std::env::var("DURABLE").is_ok();
    let _flow = start(&url, &slot, status_field.as_deref(), durable).await;
    println!("READY");
    std::future::pending::<()>().await;
}

/// Starts the flow once the killed predecessor's session has let go of the
/// slot. `status_field`: the process status field, if not `updated_at`;
/// the operators then run one transaction at a time, so more ids wait and
/// more events are queued without rows of their own. `durable`: with the
/// durable queue, rather than the default storage.
async fn start(url: &str, slot: &str, status_field: Option<&str>, durable: bool) -> Walflow {
    common::wait_slot_released(url, slot).await;
    let builder = if durable {
        Walflow::builder().queue_storage(walflow::config::QueueStorage::Postgres)
    } else {
        Walflow::builder()
    };
    builder
        .database_url(url)
        .slot_name(slot)
        .min_restart_time(Duration::from_millis(20))
        .max_restart_time(Duration::from_millis(500))
        .operators(OPERATORS)
        .process_status_entity_field(status_field.unwrap_or("updated_at"))
        .concurrency(if status_field.is_some() { 1 } else { 2 })
        .start()
        .await
        .expect("the flow starts")
}

/// A random workload and the number of events `Tally` must count per post.
struct Workload {
    rng: Rng,
    posts: i64,
    next_comment: i64,
    comments: Vec<(i64, i64)>,
    expected: BTreeMap<i64, i64>,
}

impl Workload {
    fn new(seed: u64) -> Self {
        Workload {
            rng: Rng::new(seed),
            posts: 0,
            next_comment: 0,
            comments: Vec::new(),
            expected: BTreeMap::new(),
        }
    }

    /// One transaction of one to four random statements; returns its SQL
    /// and the counts it adds once committed.
    fn transaction(&mut self) -> (String, Vec<i64>) {
        let mut sql = String::from("BEGIN;");
        let mut counted = Vec::new();
        for _ in 0..=self.rng.below(4) {
            match self.rng.below(10) {
                0 | 1 => {
                    self.posts += 1;
                    sql += &format!("INSERT INTO posts VALUES ({0}, 'p{0}');", self.posts);
                }
                2..=5 if self.posts > 0 => {
                    self.next_comment += 1;
                    let post = 1 + self.rng.below(self.posts as u64) as i64;
                    sql += &format!(
                        "INSERT INTO comments VALUES ({}, {post});",
                        self.next_comment
                    );
                    self.comments.push((self.next_comment, post));
                    counted.push(post);
                }
                6 if !self.comments.is_empty() => {
                    let i = self.rng.below(self.comments.len() as u64) as usize;
                    let (id, post) = self.comments.swap_remove(i);
                    sql += &format!("DELETE FROM comments WHERE id = {id};");
                    counted.push(post);
                }
                7 if !self.comments.is_empty() => {
                    let i = self.rng.below(self.comments.len() as u64) as usize;
                    let to = 1 + self.rng.below(self.posts as u64) as i64;
                    let (id, from) = self.comments[i];
                    self.comments[i].1 = to;
                    sql += &format!("UPDATE comments SET post_id = {to} WHERE id = {id};");
                    counted.push(to);
                    if from != to {
                        counted.push(from);
                    }
                }
                8 if self.posts > 0 => {
                    let post = 1 + self.rng.below(self.posts as u64) as i64;
                    sql += &format!("UPDATE posts SET title = title || '+' WHERE id = {post};");
                }
                9 if self.posts > 3 => {
                    let post = 1 + self.rng.below(self.posts as u64) as i64;
                    sql += &format!("DELETE FROM posts WHERE id = {post};");
                }
                _ => {}
            }
        }
        sql += "COMMIT;";
        (sql, counted)
    }

    /// Runs `n` transactions on `conn`.
    async fn run(&mut self, conn: &mut sqlx::PgConnection, n: usize) {
        for _ in 0..n {
            let (sql, counted) = self.transaction();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            for post in counted {
                *self.expected.entry(post).or_default() += 1;
            }
        }
    }
}

/// Waits until everything committed is applied, then compares the derived
/// tables with a recompute and the true event counts.
async fn check(
    flow: &Walflow,
    pool: &sqlx::PgPool,
    expected: &BTreeMap<i64, i64>,
    process_status: bool,
) {
    let lsn = flow.current_lsn().await.unwrap();
    if let Err(e) = flow.wait_processed(lsn, Duration::from_secs(120)).await {
        // What is stuck, for the failure message.
        let queue: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT operator, count(*), min(commit_lsn) FROM walflow.queue GROUP BY 1",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        panic!("{e}; queued rows left (operator, rows, first commit LSN): {queue:?}");
    }
    let derived: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT id, title, comments_count FROM post_with_comments_counts ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let recomputed: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT p.id, p.title, count(c.id) FROM posts p LEFT JOIN comments c ON c.post_id = p.id
         GROUP BY p.id ORDER BY p.id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(derived, recomputed);
    let tally: BTreeMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>("SELECT post_id, n FROM tally")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(&tally, expected, "every event counted exactly once");
    for op in OPERATORS {
        assert!(flow.dead_letters(op).await.unwrap().is_empty(), "{op}");
    }
    // Every event's process status finished exactly once: none is left
    // waiting, and the newest comment counts as processed.
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM walflow.pending_status")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(waiting, 0, "events still waiting for their process status");
    let newest: Option<i64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM max(updated_at)) * 1000000)::int8 FROM comments",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    if let Some(newest) = newest
        && process_status
    {
        assert!(flow.processed("comments", newest).await.unwrap());
    }
}

/// Runs [`child`] in a child process and waits (bounded) until its flow
/// has started.
async fn ready_child(url: &str, slot: &str, status_field: Option<&str>, durable: bool) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .env("URL", url)
        .env("SLOT", slot)
        .envs(status_field.map(|f| ("STATUS_FIELD", f)))
        .envs(durable.then_some(("DURABLE", "1")))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_ready(&mut child).await;
    child
}

async fn exactly_once_when_the_runtime_is_killed() {
    killed_five_times(None).await;
}

/// Without a process status field, events of a pending id are queued
/// without rows of their own (the coalescing operator's pending row covers
/// them): killed at random points, nothing is lost either.
async fn exactly_once_when_the_runtime_is_killed_without_process_status() {
    killed_five_times(Some("no_such_field")).await;
}

async fn killed_five_times(status_field: Option<&str>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let slot = db.slot("opkill");
    let mut rng = Rng::new(common::seed());

    // The first child creates the slot before anything is written.
    let t0 = std::time::Instant::now();
    let mut child = ready_child(&db.url, &slot, status_field, false).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let url = db.url.clone();
        let stop = stop.clone();
        let seed = rng.next();
        async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let mut w = Workload::new(seed);
            let mut n = 0;
            while n < 400 || (n < 1500 && !stop.load(Ordering::Acquire)) {
                w.run(&mut conn, 10).await;
                n += 10;
                tokio::task::yield_now().await;
            }
            w.expected
        }
    });

    for round in 0..5 {
        if round > 0 {
            child = ready_child(&db.url, &slot, status_field, false).await;
        }
        // A random kill point: not a synchronization.
        tokio::time::sleep(Duration::from_millis(30 + rng.below(400))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        eprintln!("round {round} killed at {:?}", t0.elapsed());
    }
    stop.store(true, Ordering::Release);
    let expected = writer.await.unwrap();

    eprintln!("workload done at {:?}", t0.elapsed());
    let flow = start(&db.url, &slot, status_field, false).await;
    eprintln!("restarted at {:?}", t0.elapsed());
    check(&flow, &db.pool, &expected, status_field.is_none()).await;
    eprintln!("checked at {:?}", t0.elapsed());
    flow.shutdown().await.unwrap();
}

async fn exactly_once_when_postgres_restarts_mid_workload() {
    // A cluster of its own: restarting the shared one would disturb other tests.
    let pg = EmbeddedPostgres::start().await.unwrap();
    let url = pg.create_database("oprestart").await.unwrap();
    let db = common::Db::connect(&url).await;
    db.exec(SCHEMA).await;
    let slot = db.slot("oprestart");
    let flow = start(&url, &slot, None, false).await;
    let mut w = Workload::new(common::seed());

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    w.run(&mut conn, 150).await;
    drop(conn);
    // The flow is still draining the backlog.
    let t = std::time::Instant::now();
    pg.restart(ShutdownMode::Fast).await.unwrap();
    eprintln!("restart took {:?}", t.elapsed());
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    w.run(&mut conn, 150).await;
    drop(conn);
    pg.restart(ShutdownMode::Immediate).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    w.run(&mut conn, 150).await;

    let t = std::time::Instant::now();
    check(&flow, &db.pool, &w.expected, true).await;
    eprintln!("check took {:?}", t.elapsed());
    flow.shutdown().await.unwrap();
}

/// With the durable queue, a transaction too big to hold is queued in
/// chunks before its commit is seen. The runtime is killed after a chunk is queued and before the
/// transaction is: the restarted runtime queues the rest, and nothing is
/// applied twice or lost.
async fn exactly_once_when_killed_inside_a_big_transaction() {
    const POSTS: i64 = 50;
    const COMMENTS: i64 = 30_000;
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let slot = db.slot("opchunk");
    let mut child = ready_child(&db.url, &slot, None, true).await;
    db.exec(&format!(
        "INSERT INTO posts SELECT i, 'p' || i FROM generate_series(1, {POSTS}) i;
         INSERT INTO comments SELECT i, 1 + i % {POSTS} FROM generate_series(1, {COMMENTS}) i;"
    ))
    .await;
    // Where the queue stands inside the transaction: the last queued change.
    let partial = || async {
        sqlx::query_scalar::<_, Option<i32>>(
            "SELECT partial_seq FROM walflow.streams WHERE slot = $1",
        )
        .bind(&slot)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
        .flatten()
    };
    common::wait_until(Duration::from_secs(60), || async {
        partial().await.is_some()
    })
    .await;
    child.kill().unwrap(); // SIGKILL, with part of the transaction queued
    child.wait().unwrap();
    let first = partial().await.expect("killed inside the transaction");
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM walflow.queue WHERE slot = $1")
        .bind(&slot)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(queued > 0, "a chunk of the transaction was queued");

    // Again once the restarted runtime has queued more (or all) of it.
    let mut child = ready_child(&db.url, &slot, None, true).await;
    common::wait_until(Duration::from_secs(60), || async {
        partial().await.is_none_or(|seq| seq > first)
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    let flow = start(&db.url, &slot, None, true).await;
    let expected: BTreeMap<i64, i64> = (1..=POSTS).map(|p| (p, COMMENTS / POSTS)).collect();
    check(&flow, &db.pool, &expected, true).await;
    flow.shutdown().await.unwrap();
}

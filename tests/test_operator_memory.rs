//! `queue_storage = stream` and `process_status_storage = memory`,
//! together and each with the other in PostgreSQL: the same operator semantics
//! (derived table, every event counted once, delete barrier, process
//! status, LSN fence, dead letters and their replay) without walflow's
//! queue or status tables.

#![allow(dead_code)] // struct fields are read through serde

#[path = "common/blog.rs"]
mod blog;
mod common;

use std::time::Duration;

use walflow::config::{ProcessStatusStorage, QueueStorage};
use walflow::prelude::*;

use blog::Comment;

on_event! {
    /// Fails on comment 13 until told otherwise.
    operator Picky {
        events: [insert],
        entities: [Comment],
        id: [Comment.id],
        handler: picky,
    }
}

/// Records what it is given in `seen`; fails on comment 13 until `welcome`
/// says otherwise (state in each test's own database: tests run at once).
async fn picky(event: Event<Comment>, ctx: Ctx) -> Result<(), walflow::BoxError> {
    let id = event.record().expect("row").id;
    let welcome: bool = sqlx::query_scalar("SELECT ok FROM welcome")
        .fetch_one(ctx.pool())
        .await?;
    if id == 13 && !welcome {
        return Err("comment 13 is not welcome yet".into());
    }
    sqlx::query("INSERT INTO seen VALUES ($1)")
        .bind(id)
        .execute(ctx.pool())
        .await?;
    Ok(())
}

const SCHEMA: &str = "
    CREATE TABLE seen (id bigint NOT NULL);
    CREATE TABLE welcome (ok bool NOT NULL);
    INSERT INTO welcome VALUES (false);
";

async fn table_rows(db: &common::Db, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM walflow.{table}"
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn queue_in_postgres_with_memory_status() {
    run(QueueStorage::Postgres, ProcessStatusStorage::Memory).await;
}

#[tokio::test]
async fn stream_with_status_in_postgres() {
    run(QueueStorage::Stream, ProcessStatusStorage::Postgres).await;
}

#[tokio::test]
async fn stream_with_memory_status() {
    run(QueueStorage::Stream, ProcessStatusStorage::Memory).await;
}

async fn seen(db: &common::Db) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM seen ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

async fn run(queue: QueueStorage, status: ProcessStatusStorage) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let db = common::db().await;
    db.exec(blog::SCHEMA).await;
    db.exec(SCHEMA).await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("memq"))
        .queue_storage(queue)
        .process_status_storage(status)
        .min_restart_time(Duration::from_millis(10))
        .max_retries(1)
        .operators(["Counts", "Tally", "Picky"])
        .start()
        .await
        .expect("the flow starts");

    db.exec(
        "INSERT INTO posts (id, title) SELECT i, 'p' || i FROM generate_series(1, 5) i;
         INSERT INTO comments (id, post_id) SELECT i, 1 + i % 5 FROM generate_series(1, 40) i;",
    )
    .await;
    // Moved comments (old and new post counted), deletes, a title change,
    // and a post deleted then created again: the delete is a barrier.
    db.exec("UPDATE comments SET post_id = 1 WHERE id IN (2, 3)")
        .await;
    db.exec("DELETE FROM comments WHERE id IN (4, 5)").await;
    db.exec("UPDATE posts SET title = 'renamed' WHERE id = 2")
        .await;
    db.exec(
        "BEGIN;
         INSERT INTO comments (id, post_id) VALUES (100, 4);
         DELETE FROM comments WHERE post_id = 4;
         DELETE FROM posts WHERE id = 4;
         INSERT INTO posts (id, title) VALUES (4, 'again');
         INSERT INTO comments (id, post_id) VALUES (101, 4);
         COMMIT;",
    )
    .await;
    db.exec(
        "UPDATE comments SET updated_at = '2030-01-01 00:00:00+00' WHERE id = 1;
         UPDATE posts SET updated_at = '2030-01-01 00:00:00+00' WHERE id = 1;",
    )
    .await;

    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(30))
        .await
        .unwrap();

    let derived: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT id, title, comments_count FROM post_with_comments_counts ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let recomputed: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT p.id, p.title, count(c.id) FROM posts p LEFT JOIN comments c ON c.post_id = p.id
         GROUP BY p.id ORDER BY p.id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(derived, recomputed);

    // Comment events per post: 40 inserts (8 per post), two moves from
    // posts 3 and 4 to post 1 (both counted), two deletes (posts 5 and 1),
    // then post 4: insert 100, deletes of its 7 remaining comments and of
    // 100, insert 101; and comment 1's update (post 2).
    let tally: Vec<(i64, i64)> = sqlx::query_as("SELECT post_id, n FROM tally ORDER BY post_id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        tally,
        vec![
            (1, 8 + 2 + 1),
            (2, 8 + 1),
            (3, 8 + 1),
            (4, 8 + 1 + 1 + 8 + 1),
            (5, 8 + 1)
        ]
    );

    // The process status, wherever it is kept.
    let y2030 = 1_893_456_000_000_000i64;
    assert!(flow.processed("comments", y2030).await.unwrap());
    assert!(flow.processed("posts", y2030).await.unwrap());
    assert!(!flow.processed("posts", y2030 + 1).await.unwrap());

    // Comment 13 was dead-lettered; the others went on. Replayed, it runs.
    let dead = flow.dead_letters("Picky").await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].mapped_id, "13");
    let before = seen(&db).await;
    assert!(!before.contains(&13));
    assert_eq!(before.len(), 41);
    db.exec("UPDATE welcome SET ok = true").await;
    assert!(flow.retry_dead_letter(dead[0].id).await.unwrap());
    // The handler's write shows first; with the stream storage the dead
    // letter goes when the replay's unit commits.
    common::wait_until(Duration::from_secs(10), || async {
        seen(&db).await.contains(&13) && flow.dead_letters("Picky").await.unwrap().is_empty()
    })
    .await;

    // What is kept in memory never touches its tables; what is kept in
    // PostgreSQL does.
    // (The stream storage writes no queue row either.)
    let memory_queue = queue == QueueStorage::Stream;
    let memory_status = status == ProcessStatusStorage::Memory;
    assert_eq!(table_rows(&db, "streams").await == 0, memory_queue);
    assert_eq!(table_rows(&db, "queue").await, 0);
    assert_eq!(table_rows(&db, "process_status").await == 0, memory_status);
    assert_eq!(table_rows(&db, "pending_status").await, 0);
    flow.shutdown().await.unwrap();
}

/// A row whose handler waits at the gate.
#[event_source(table = "gated")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Gated {
    /// Its id.
    pub id: i64,
}

on_event! {
    /// Waits at the gate, then counts.
    operator AtTheGate {
        events: [insert],
        entities: [Gated],
        id: [Gated.id],
        handler: at_the_gate,
    }
}

/// Opened by `a_full_memory_queue_lets_a_fast_shutdown_finish`.
static GATE: std::sync::LazyLock<tokio::sync::watch::Sender<bool>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(false).0);
static PASSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn at_the_gate(_: Event<Gated>, _: Ctx) -> Result<(), walflow::BoxError> {
    let _ = GATE.subscribe().wait_for(|open| *open).await;
    PASSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

async fn current_wal_lsn(db: &common::Db) -> String {
    sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn confirmed_at_least(db: &common::Db, slot: &str, lsn: &str) -> bool {
    sqlx::query_scalar(
        "SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .bind(lsn)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// A flow whose room is full (a backlog delivered at start, held by a
/// gated handler: a backlog is not behind by its size, and `spill_after`
/// is an hour, so nothing spills) waits for room without touching the
/// database; a fast shutdown must still finish (the flow lets go of the
/// replication connection), and once the server is back and room is made,
/// every event arrives once.
#[tokio::test]
async fn a_full_flow_lets_a_fast_shutdown_finish() {
    // A bound past which the fast shutdown would turn into an immediate one.
    const STOP_WITHIN: Duration = Duration::from_secs(30);
    let pg = walflow::embedded::EmbeddedPostgres::builder()
        .timeout(STOP_WITHIN)
        .start()
        .await
        .unwrap();
    let db = common::Db::connect(&pg.create_database("gate").await.unwrap()).await;
    db.exec("CREATE TABLE gated (id bigint PRIMARY KEY)").await;
    let slot = db.slot("gate");
    let start = || {
        Walflow::builder()
            .database_url(&db.url)
            .slot_name(&slot)
            .queue_storage(QueueStorage::Stream)
            .process_status_storage(ProcessStatusStorage::Memory)
            .spill_after(Duration::from_secs(3600))
            .min_restart_time(Duration::from_millis(20))
            .max_restart_time(Duration::from_millis(500))
            .operators(["AtTheGate"])
            .start()
    };
    // The first start creates the slot; what is written while no flow
    // runs is the next start's backlog.
    start()
        .await
        .expect("the flow starts")
        .shutdown()
        .await
        .unwrap();
    // More than the room (20,000 rows) in one transaction: handed over
    // (room is checked before each batch), and held at the gate.
    db.exec("INSERT INTO gated SELECT generate_series(1, 20001)")
        .await;
    // Behind it, a transaction the flow receives and cannot hand over: it
    // waits for room, unacknowledged, without touching the database.
    db.exec("INSERT INTO gated SELECT generate_series(20002, 20010)")
        .await;
    let second = current_wal_lsn(&db).await;
    let flow = start().await.expect("the flow starts");
    common::wait_until(Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT coalesce(bool_or(r.sent_lsn >= $2::pg_lsn), false)
             FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
             WHERE s.slot_name = $1",
        )
        .bind(&slot)
        .bind(&second)
        .fetch_one(&db.pool)
        .await
        .unwrap()
    })
    .await;
    assert!(
        !confirmed_at_least(&db, &slot, &second).await,
        "the transactions are held back while the room is full"
    );
    db.pool.close().await;

    let t = std::time::Instant::now();
    pg.restart(walflow::embedded::ShutdownMode::Fast)
        .await
        .unwrap();
    assert!(
        t.elapsed() < STOP_WITHIN,
        "the fast shutdown completed by itself (took {:?})",
        t.elapsed()
    );

    GATE.send_replace(true);
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        PASSED.load(std::sync::atomic::Ordering::Relaxed),
        20_010,
        "every event once"
    );
    flow.shutdown().await.unwrap();
}

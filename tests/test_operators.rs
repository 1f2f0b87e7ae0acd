//! Operators end to end on a real PostgreSQL: EventStreamex's operator cases
//! (merge into a derived table, kind filter, unlisted entity, multi-step
//! handler, delete rules), the moved comment, coalescing with the delete
//! barrier, process status and the LSN fence.

#![allow(dead_code)] // struct fields are read through serde

#[path = "common/blog.rs"]
mod blog;
mod common;

use std::sync::Mutex;
use std::time::Duration;

use walflow::prelude::*;
use walflow::subscribe::Scope;

use blog::{Comment, Post, PostWithCommentsCount};

#[event_source(table = "tags")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Tag {
    id: i64,
}

#[event_source(table = "topics")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Topic {
    id: i64,
}

#[event_source(table = "notes")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Note {
    id: i64,
    topic: i64,
}

#[event_source(table = "topic_counts")]
#[derive(Debug, Clone, serde::Deserialize)]
struct TopicCount {
    id: i64,
    n: i64,
}

on_event! {
    /// Notes per topic (tables without `updated_at`: no process status).
    operator TopicCounts for TopicCount {
        events: all,
        entities: [Topic, Note],
        id: [Topic.id, Note.topic],
        delete_with: [Topic],
        coalesce: true,
        query: "INSERT INTO topic_counts (id, n)
                SELECT t.id, (SELECT count(*) FROM notes WHERE topic = t.id)
                FROM topics t WHERE t.id = $1
                ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n, runs = topic_counts.runs + 1",
    }

    /// Counts query runs per post, merging pending runs.
    operator CoalescedRuns for PostWithCommentsCount {
        events: all,
        entities: [Comment],
        id: [Comment.post_id],
        coalesce: true,
        query: "INSERT INTO runs (op, post_id, n) VALUES ('coalesced', $1, 1)
                ON CONFLICT (op, post_id) DO UPDATE SET n = runs.n + 1",
    }

    /// Counts query runs per post, one per event.
    operator EveryRun for PostWithCommentsCount {
        events: all,
        entities: [Comment],
        id: [Comment.post_id],
        query: "INSERT INTO runs (op, post_id, n) VALUES ('every', $1, 1)
                ON CONFLICT (op, post_id) DO UPDATE SET n = runs.n + 1",
    }

    /// Listens to inserts and deletes of posts only.
    operator PostInsertDelete {
        events: [insert, delete],
        entities: [Post],
        handler: record_kind,
    }

    /// A derived row kept by hand: a post creates it, its comments count up,
    /// a post update deletes it. Writes through the runtime's transaction.
    operator MultiStep {
        events: [insert, update],
        entities: [Comment, Post],
        id: [Comment.post_id, Post.id],
        handler: multi_step,
    }

    /// Told about truncates of tags.
    operator TagTruncations {
        events: [truncate],
        entities: [Tag],
        handler: on_truncate,
    }
}

#[event_enum]
enum BlogEvent {
    Comment(Event<Comment>),
    Post(Event<Post>),
}

static TRUNCATES: Mutex<Vec<String>> = Mutex::new(Vec::new());

async fn on_truncate(event: Event<Tag>, _ctx: Ctx) -> Result<(), std::io::Error> {
    assert_eq!(event.kind(), EventKind::Truncate);
    TRUNCATES
        .lock()
        .unwrap()
        .push(event.meta().table.to_string());
    Ok(())
}

static KINDS: Mutex<Vec<(String, i64)>> = Mutex::new(Vec::new());

async fn record_kind(event: Event<Post>, _ctx: Ctx) -> Result<(), std::io::Error> {
    let id = event.record().map(|p| p.id).unwrap_or(-1);
    KINDS
        .lock()
        .unwrap()
        .push((event.kind().as_str().to_owned(), id));
    Ok(())
}

async fn multi_step(event: BlogEvent, ctx: Ctx) -> Result<(), walflow::BoxError> {
    let mut tx = ctx.transaction().await?;
    match (&event, event.kind()) {
        (BlogEvent::Post(p), EventKind::Insert) => {
            let post = p.record().expect("row");
            sqlx::query("INSERT INTO post_stats (id, n) VALUES ($1, 0)")
                .bind(post.id)
                .execute(&mut *tx)
                .await?;
        }
        (BlogEvent::Post(p), _) => {
            let post = p.record().expect("row");
            sqlx::query("DELETE FROM post_stats WHERE id = $1")
                .bind(post.id)
                .execute(&mut *tx)
                .await?;
        }
        (BlogEvent::Comment(c), EventKind::Insert) => {
            let comment = c.record().expect("row");
            sqlx::query("UPDATE post_stats SET n = n + 1 WHERE id = $1")
                .bind(comment.post_id)
                .execute(&mut *tx)
                .await?;
        }
        (BlogEvent::Comment(_), _) => {}
    }
    Ok(())
}

/// The tables besides the blog model's.
const SCHEMA: &str = "
    CREATE TABLE tags (id bigint PRIMARY KEY);
    CREATE TABLE runs (op text, post_id bigint, n int NOT NULL, PRIMARY KEY (op, post_id));
    CREATE TABLE post_stats (id bigint PRIMARY KEY, n int NOT NULL);
    CREATE TABLE topics (id bigint PRIMARY KEY);
    CREATE TABLE notes (id bigint PRIMARY KEY, topic bigint NOT NULL);
    CREATE TABLE topic_counts (id bigint PRIMARY KEY, n bigint NOT NULL,
                               runs int NOT NULL DEFAULT 1);
";

/// The blog model's tables and the others.
async fn schema(db: &common::Db) {
    db.exec(blog::SCHEMA).await;
    db.exec(SCHEMA).await;
}

async fn start(db: &common::Db, prefix: &str, ops: &[&str]) -> Walflow {
    schema(db).await;
    Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot(prefix))
        .min_restart_time(Duration::from_millis(50))
        .operators(ops.iter().copied())
        .start()
        .await
        .expect("the flow starts")
}

async fn fence(flow: &Walflow) {
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(20))
        .await
        .unwrap();
}

async fn counts(db: &common::Db) -> Vec<(i64, String, i64)> {
    sqlx::query_as("SELECT id, title, comments_count FROM post_with_comments_counts ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

fn row(id: i64, title: &str, n: i64) -> (i64, String, i64) {
    (id, title.to_owned(), n)
}

#[tokio::test]
async fn merge_operator_keeps_the_derived_table_in_step() {
    let db = common::db().await;
    let flow = start(&db, "merge", &["Counts"]).await;

    // A child before its parent: nothing to merge.
    db.exec("INSERT INTO comments (id, post_id) VALUES (1, 1)")
        .await;
    fence(&flow).await;
    assert_eq!(counts(&db).await, vec![]);

    // The parent creates the row, with the earlier child counted.
    db.exec("INSERT INTO posts (id, title) VALUES (1, 'first')")
        .await;
    fence(&flow).await;
    assert_eq!(counts(&db).await, vec![row(1, "first", 1)]);

    db.exec("INSERT INTO comments (id, post_id) VALUES (2, 1)")
        .await;
    fence(&flow).await;
    assert_eq!(counts(&db).await, vec![row(1, "first", 2)]);

    // A child of an unknown parent changes nothing.
    db.exec("INSERT INTO comments (id, post_id) VALUES (3, 99)")
        .await;
    fence(&flow).await;
    assert_eq!(counts(&db).await, vec![row(1, "first", 2)]);

    // A child delete re-runs the query.
    db.exec("DELETE FROM comments WHERE id = 2").await;
    fence(&flow).await;
    assert_eq!(counts(&db).await, vec![row(1, "first", 1)]);

    // The parent's title propagates.
    db.exec("UPDATE posts SET title = 'renamed' WHERE id = 1")
        .await;
    fence(&flow).await;
    assert_eq!(counts(&db).await, vec![row(1, "renamed", 1)]);

    // A comment moved to another post: both parents are recomputed.
    db.exec("INSERT INTO posts (id, title) VALUES (2, 'second')")
        .await;
    db.exec("UPDATE comments SET post_id = 2 WHERE id = 1")
        .await;
    fence(&flow).await;
    assert_eq!(
        counts(&db).await,
        vec![row(1, "renamed", 0), row(2, "second", 1)]
    );

    // A `delete_with` delete deletes the derived row.
    db.exec("DELETE FROM posts WHERE id = 1").await;
    fence(&flow).await;
    assert_eq!(counts(&db).await, vec![row(2, "second", 1)]);

    assert!(flow.dead_letters("Counts").await.unwrap().is_empty());
    flow.shutdown().await.unwrap();
}

#[tokio::test]
async fn coalescing_merges_pending_runs_with_deletes_as_barriers() {
    let db = common::db().await;
    let flow = start(&db, "coalesce", &["CoalescedRuns", "EveryRun"]).await;
    // One transaction: insert, insert, insert, delete, insert, insert for
    // post 7 → runs [3 inserts] [delete] [2 inserts].
    db.exec(
        "BEGIN;
         INSERT INTO comments (id, post_id) VALUES (1, 7), (2, 7), (3, 7);
         DELETE FROM comments WHERE id = 2;
         INSERT INTO comments (id, post_id) VALUES (4, 7);
         INSERT INTO comments (id, post_id) VALUES (5, 7);
         COMMIT;",
    )
    .await;
    fence(&flow).await;
    let runs: Vec<(String, i32)> =
        sqlx::query_as("SELECT op, n FROM runs WHERE post_id = 7 ORDER BY op")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        runs,
        vec![("coalesced".to_owned(), 3), ("every".to_owned(), 6)]
    );
    flow.shutdown().await.unwrap();
}

#[tokio::test]
async fn kind_filter_and_unlisted_entities() {
    let db = common::db().await;
    let flow = start(&db, "kinds", &["PostInsertDelete"]).await;
    db.exec("INSERT INTO posts (id, title) VALUES (41, 'a')")
        .await;
    db.exec("UPDATE posts SET title = 'b' WHERE id = 41").await;
    db.exec("INSERT INTO comments (id, post_id) VALUES (1, 41)")
        .await;
    db.exec("DELETE FROM posts WHERE id = 41").await;
    fence(&flow).await;
    let kinds: Vec<_> = KINDS
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, id)| *id == 41)
        .cloned()
        .collect();
    assert_eq!(
        kinds,
        vec![("insert".to_owned(), 41), ("delete".to_owned(), 41)]
    );
    flow.shutdown().await.unwrap();
}

#[tokio::test]
async fn multi_step_handler_writes_with_its_progress() {
    let db = common::db().await;
    let flow = start(&db, "multistep", &["MultiStep"]).await;
    db.exec("INSERT INTO posts (id, title) VALUES (1, 'a'), (2, 'b')")
        .await;
    db.exec("INSERT INTO comments (id, post_id) VALUES (1, 1), (2, 1), (3, 2)")
        .await;
    fence(&flow).await;
    let stats: Vec<(i64, i32)> = sqlx::query_as("SELECT id, n FROM post_stats ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(stats, vec![(1, 2), (2, 1)]);
    db.exec("UPDATE posts SET title = 'c' WHERE id = 1").await;
    fence(&flow).await;
    let stats: Vec<(i64, i32)> = sqlx::query_as("SELECT id, n FROM post_stats ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(stats, vec![(2, 1)]);
    flow.shutdown().await.unwrap();
}

#[tokio::test]
async fn process_status_is_a_maximum_over_finished_events() {
    let db = common::db().await;
    let flow = start(&db, "status", &["Counts"]).await;
    let t1 = 1_700_000_000_000_001i64; // µs
    assert!(!flow.processed("posts", t1).await.unwrap());
    db.exec(
        "INSERT INTO posts (id, title, updated_at)
         VALUES (1, 'a', '2023-11-14 22:13:20.000001+00')",
    )
    .await;
    fence(&flow).await;
    assert!(flow.processed("posts", t1).await.unwrap());
    assert!(flow.processed("public.posts", t1 - 1).await.unwrap());
    assert!(!flow.processed("posts", t1 + 1).await.unwrap());

    // An older timestamp later does not move the status back.
    db.exec(
        "INSERT INTO posts (id, title, updated_at)
         VALUES (2, 'b', '2020-09-13 12:26:40+00')",
    )
    .await;
    fence(&flow).await;
    assert!(flow.processed("posts", t1).await.unwrap());

    // A newer one moves it forward; comments are tracked separately.
    db.exec(
        "INSERT INTO comments (id, post_id, updated_at)
         VALUES (1, 1, '2027-01-15 08:00:00+00')",
    )
    .await;
    fence(&flow).await;
    assert!(
        flow.processed("comments", 1_800_000_000_000_000)
            .await
            .unwrap()
    );
    assert!(
        !flow
            .processed("posts", 1_800_000_000_000_000)
            .await
            .unwrap()
    );
    // A table without the field records nothing.
    assert!(!flow.processed("tags", 0).await.unwrap());
    flow.shutdown().await.unwrap();
}

#[tokio::test]
async fn lsn_fence_waits_for_every_operator() {
    let db = common::db().await;
    let flow = start(&db, "fence", &["Counts", "EveryRun", "MultiStep"]).await;
    // Nothing written yet: the fence returns (it moves the slot itself).
    fence(&flow).await;
    for i in 0..20 {
        db.exec(&format!(
            "INSERT INTO posts (id, title) VALUES ({i}, 't{i}');
             INSERT INTO comments (id, post_id) VALUES ({i}, {i}), ({}, {i});",
            i + 100
        ))
        .await;
    }
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(20))
        .await
        .unwrap();
    // Everything committed before the fence is applied by every operator.
    assert_eq!(counts(&db).await.len(), 20);
    let every: i64 = sqlx::query_scalar("SELECT sum(n) FROM runs WHERE op = 'every'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(every, 40);
    let stats: i64 = sqlx::query_scalar("SELECT sum(n) FROM post_stats")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stats, 40);
    // "0/0" is long past.
    flow.wait_processed(walflow::Lsn::ZERO, Duration::from_secs(5))
        .await
        .unwrap();
    flow.shutdown().await.unwrap();
}

#[tokio::test]
async fn truncate_reaches_handlers_that_list_it_and_spares_query_operators() {
    let db = common::db().await;
    let flow = start(&db, "truncate", &["TagTruncations", "Counts"]).await;
    db.exec("INSERT INTO tags VALUES (1), (2)").await;
    db.exec("INSERT INTO posts (id, title) VALUES (1, 'a')")
        .await;
    fence(&flow).await;
    db.exec("TRUNCATE tags").await;
    // A query operator does not run on truncate (it logs that its target may
    // be stale).
    db.exec("TRUNCATE posts").await;
    fence(&flow).await;
    assert_eq!(*TRUNCATES.lock().unwrap(), vec!["tags".to_owned()]);
    assert_eq!(counts(&db).await, vec![row(1, "a", 0)]);
    assert!(flow.dead_letters("Counts").await.unwrap().is_empty());
    flow.shutdown().await.unwrap();
}

/// Commits `sql` and waits until the consumer has queued it.
async fn commit_queued(db: &common::Db, slot: &str, sql: &str) {
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *tx)
        .await
        .unwrap();
    // Below this transaction's commit record.
    let before: i64 = sqlx::query_scalar("SELECT (pg_current_wal_insert_lsn() - '0/0')::int8")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    common::wait_until(Duration::from_secs(20), || async {
        let queued: Option<i64> =
            sqlx::query_scalar("SELECT enqueued_lsn FROM walflow.streams WHERE slot = $1")
                .bind(slot)
                .fetch_optional(&db.pool)
                .await
                .unwrap();
        queued.is_some_and(|q| q >= before)
    })
    .await;
}

/// Starts `TopicCounts` on a fresh schema, with the durable queue: the
/// tests that use it look at its queue rows (rules 4 and 6 of the queue
/// protocol, which are about the durable queue).
async fn start_topics(db: &common::Db, slot: &str, concurrency: Option<usize>) -> Walflow {
    schema(db).await;
    let builder = Walflow::builder()
        .queue_storage(walflow::config::QueueStorage::Postgres)
        .database_url(&db.url)
        .slot_name(slot)
        .operators(["TopicCounts"]);
    match concurrency {
        Some(n) => builder.concurrency(n),
        None => builder,
    }
    .start()
    .await
    .unwrap()
}

/// Locks topic `id`'s derived row in a transaction of its own: a run of
/// the topic's query waits on it.
async fn hold_topic_count(db: &common::Db, id: i64) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM topic_counts WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Waits until `n` sessions wait for a lock.
async fn lock_waiters(db: &common::Db, n: i64) {
    common::wait_until(Duration::from_secs(20), || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
            >= n
    })
    .await;
}

/// Waits until topic `id`'s derived count is `n`.
async fn topic_count_reaches(db: &common::Db, id: i64, n: i64) {
    common::wait_until(Duration::from_secs(20), || async {
        sqlx::query_scalar::<_, i64>("SELECT n FROM topic_counts WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap()
            == n
    })
    .await;
}

#[tokio::test]
async fn events_of_an_id_already_pending_need_no_queue_row() {
    let db = common::db().await;
    let slot = db.slot("absorb");
    let flow = start_topics(&db, &slot, Some(1)).await;
    db.exec("INSERT INTO topics VALUES (1)").await;
    fence(&flow).await;

    // Topic 1's next run waits on a row lock this test holds: the
    // operator's one transaction is busy, so what follows stays pending.
    let gate = hold_topic_count(&db, 1).await;
    db.exec("INSERT INTO notes VALUES (100, 1)").await;
    lock_waiters(&db, 1).await;

    // Transactions queued one by one. Topic 2: the notes after its insert
    // run with it; in the fourth transaction the delete is a barrier, so the
    // insert after it cannot run with the first one. Topic 3: the same
    // across transactions.
    for sql in [
        "INSERT INTO topics VALUES (2)",
        "INSERT INTO notes VALUES (10, 2)",
        "INSERT INTO notes VALUES (11, 2)",
        "DELETE FROM topics WHERE id = 2; INSERT INTO topics VALUES (2);
         INSERT INTO notes VALUES (12, 2)",
        "INSERT INTO topics VALUES (3)",
        "DELETE FROM topics WHERE id = 3",
        "INSERT INTO topics VALUES (3)",
    ] {
        commit_queued(&db, &slot, sql).await;
    }
    // Topic 1's row is still there, its run waiting.
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT id::jsonb ->> 'Int8', kind FROM walflow.queue WHERE operator = 'TopicCounts'
         ORDER BY commit_lsn, seq, part",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let rows: Vec<(&str, &str)> = rows.iter().map(|(i, k)| (&**i, &**k)).collect();
    assert_eq!(
        rows,
        vec![
            ("1", "insert"),
            ("2", "insert"),
            ("2", "delete"),
            ("2", "insert"),
            ("3", "insert"),
            ("3", "delete"),
            ("3", "insert"),
        ]
    );

    gate.commit().await.unwrap();
    fence(&flow).await;
    let counts: Vec<(i64, i64)> = sqlx::query_as("SELECT id, n FROM topic_counts ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(counts, vec![(1, 1), (2, 3), (3, 0)]);
    flow.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_event_its_id_s_last_run_already_saw_needs_no_run() {
    let db = common::db().await;
    let slot = db.slot("covered");
    let flow = start_topics(&db, &slot, Some(1)).await;
    db.exec("INSERT INTO topics VALUES (1), (7)").await;
    fence(&flow).await;

    // The operator's one transaction waits on a row lock held here.
    let gate = hold_topic_count(&db, 1).await;
    db.exec("INSERT INTO notes VALUES (100, 1)").await;
    lock_waiters(&db, 1).await;
    // Topic 7's row is queued, and waits.
    commit_queued(&db, &slot, "INSERT INTO notes VALUES (30, 7)").await;
    // Queueing now waits too: the next change (not the operator's) is
    // received and its queueing holds the consumer's next batch back.
    let mut streams = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM walflow.streams WHERE slot = $1 FOR UPDATE")
        .bind(&slot)
        .execute(&mut *streams)
        .await
        .unwrap();
    db.exec("INSERT INTO topic_counts (id, n) VALUES (999, 0)")
        .await;
    lock_waiters(&db, 2).await;
    // Received, not yet handed over.
    let before = flow.subscriptions().position();
    db.exec("INSERT INTO notes VALUES (31, 7)").await;
    flow.wait_for::<Note>(Scope::id(31), before, Duration::from_secs(20))
        .await
        .unwrap();

    // Topic 7's run starts after note 31 was committed, so it counts it.
    gate.commit().await.unwrap();
    topic_count_reaches(&db, 7, 2).await;
    // Note 31 is handed over after that run: it needs no run of its own.
    streams.commit().await.unwrap();
    fence(&flow).await;
    let counts: Vec<(i64, i64, i32)> =
        sqlx::query_as("SELECT id, n, runs FROM topic_counts WHERE id <> 999 ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(counts, vec![(1, 1, 2), (7, 2, 2)]);
    flow.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_coalescing_run_whose_rows_another_executor_finished_recomputes_its_id() {
    let db = common::db().await;
    let flow = start_topics(&db, &db.slot("regone"), None).await;
    db.exec("INSERT INTO topics VALUES (7)").await;
    fence(&flow).await;

    // The run for note 40 waits on topic 7's derived row, locked here.
    let mut other = hold_topic_count(&db, 7).await;
    db.exec("INSERT INTO notes VALUES (40, 7)").await;
    lock_waiters(&db, 1).await;
    // "Another executor" finishes that queue row with a stale result.
    sqlx::query("UPDATE topic_counts SET n = -1 WHERE id = 7")
        .execute(&mut *other)
        .await
        .unwrap();
    let finished = sqlx::query("DELETE FROM walflow.queue WHERE operator = 'TopicCounts'")
        .execute(&mut *other)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(finished, 1);
    other.commit().await.unwrap();

    // The waiting run finds its row gone, rolls back, and recomputes.
    topic_count_reaches(&db, 7, 1).await;
    flow.shutdown().await.unwrap();
}

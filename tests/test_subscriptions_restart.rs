//! A listener restart in the middle of a transaction while local
//! subscribers are attached (PostgreSQL restarted while a big transaction
//! streams): the transaction comes again from its start, and each of its
//! changes still reaches each subscriber exactly once.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use walflow::prelude::*;
use walflow::subscribe::{Action, Scope};

#[event_source(table = "marks")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Mark {
    id: i64,
    n: i64,
}

#[event_source(table = "filler")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Filler {
    id: i64,
    grp: i64,
}

#[event_source(table = "filler_counts", id = "grp")]
#[derive(Debug, Clone, serde::Deserialize)]
#[allow(dead_code)] // the operator's target, read back through SQL
struct FillerCount {
    grp: i64,
    n: i64,
}

on_event! {
    /// Gives the consumer queue rows to write while the transaction streams
    /// (one per filler row before coalescing).
    operator Fill for FillerCount {
        events: all,
        entities: [Filler],
        id: [Filler.grp],
        coalesce: true,
        query: "INSERT INTO filler_counts SELECT $1, count(*) FROM filler WHERE grp = $1
                ON CONFLICT (grp) DO UPDATE SET n = excluded.n",
    }
}

/// Rows between the transaction's first and last change: more than the
/// consumer holds while a flush is under way (50,000 queue rows), so with its
/// flushes held back it stops receiving inside the transaction.
const FILLER: i64 = 80_000;

async fn walsender(db: &common::Db) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'restart_subs'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_inside_a_transaction_delivers_each_change_once() {
    // A cluster of its own: restarting the shared one would disturb other tests.
    let pg = walflow::embedded::EmbeddedPostgres::start().await.unwrap();
    let db = common::Db::connect(&pg.create_database("restart_subs").await.unwrap()).await;
    db.exec(
        "CREATE TABLE marks (id int8 PRIMARY KEY, n int8 NOT NULL);
         CREATE TABLE filler (id int8 PRIMARY KEY, grp int8 NOT NULL);
         CREATE TABLE filler_counts (grp int8 PRIMARY KEY, n int8 NOT NULL);
         INSERT INTO marks VALUES (1, 0), (2, 0)",
    )
    .await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name("restart_subs")
        .min_restart_time(Duration::from_millis(10))
        .start()
        .await
        .expect("the flow starts");
    let mut one = flow.subscribe::<Mark>(Scope::id(1));
    let mut all = flow.subscribe::<Mark>(Scope::All);
    let first = walsender(&db).await.expect("the flow streams");

    // The consumer's flushes are held back: it receives part of the next
    // transaction, then waits, inside it.
    let mut hold = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE walflow.queue IN SHARE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();

    // One transaction: mark 1, many filler rows, mark 2.
    let writer = tokio::spawn({
        let pool = db.pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("UPDATE marks SET n = 1 WHERE id = 1")
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query("INSERT INTO filler SELECT g, g % 2 FROM generate_series(1, $1) g")
                .bind(FILLER)
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query("UPDATE marks SET n = 1 WHERE id = 2")
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await
        }
    });
    // Its first change reached the subscribers: the transaction is being
    // received, and cannot be received whole while the flushes are held
    // back. PostgreSQL restarts then: the consumer lets go of its listener
    // and starts another, which receives the transaction again from its
    // start.
    let d = tokio::time::timeout(Duration::from_secs(60), one.next())
        .await
        .expect("the first change in time")
        .expect("the stream goes on")
        .expect("no lag");
    assert_eq!((d.action, d.row().unwrap().id), (Action::Update, 1));
    let end_before = flow.subscriptions().processed();
    pg.restart(walflow::embedded::ShutdownMode::Fast)
        .await
        .expect("PostgreSQL restarts");
    drop(hold);
    // Changes are sent once their transaction commits: it did, though the
    // restart may have cut the writer's session before it heard so.
    let _ = writer.await;
    let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM filler")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        committed, FILLER,
        "the transaction committed before the restart"
    );
    // Its commit had not been published when the server went: the restart
    // fell inside it.
    let lsn = flow.current_lsn().await.unwrap();
    assert!(
        end_before.is_none_or(|e| e < lsn),
        "the transaction was published before the restart"
    );

    // A later transaction marks the end of what the subscribers can get.
    db.exec("UPDATE marks SET n = 2 WHERE id = 1").await;
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(120))
        .await
        .expect("the flow catches up");
    common::wait_until(Duration::from_secs(30), || async {
        walsender(&db).await.is_some_and(|pid| pid != first)
    })
    .await;

    let mut seen_one = Vec::new();
    loop {
        let d = tokio::time::timeout(Duration::from_secs(30), one.next())
            .await
            .expect("a change in time")
            .expect("the stream goes on")
            .expect("no lag");
        let row = d.row().unwrap();
        seen_one.push((row.id, row.n));
        if row.n == 2 {
            break;
        }
    }
    assert_eq!(
        seen_one,
        [(1, 2)],
        "mark 1 (n = 1) was delivered once, above"
    );

    let mut seen_all = Vec::new();
    loop {
        let d = tokio::time::timeout(Duration::from_secs(30), all.next())
            .await
            .expect("a change in time")
            .expect("the stream goes on")
            .expect("no lag");
        let row = d.row().unwrap();
        seen_all.push((row.id, row.n));
        if row.n == 2 {
            break;
        }
    }
    assert_eq!(seen_all, [(1, 1), (2, 1), (1, 2)]);
    // The operator saw the whole transaction too.
    let counts: Vec<(i64, i64)> = sqlx::query_as("SELECT grp, n FROM filler_counts ORDER BY grp")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(counts, [(0, FILLER / 2), (1, FILLER / 2)]);
    flow.shutdown().await.unwrap();
}

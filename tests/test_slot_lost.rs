//! A slot invalidated by `max_slot_wal_keep_size` while the flow was
//! stopped: the next start says what happened and the way out, and the way
//! out (drop the slot, start again) works. Invalidated while the flow runs:
//! its health turns `failed`, with the same message.

mod common;

use std::time::Duration;

use walflow::preflight::PreflightError;
use walflow::prelude::*;
use walflow::{FlowError, HealthState};

#[event_source(table = "notes")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Note {
    id: i64,
}

const SLOT: &str = "lost_slot";

async fn wal_status(db: &common::Db) -> Option<String> {
    sqlx::query_scalar("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1")
        .bind(SLOT)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
        .flatten()
}

/// A cluster of its own (the setting applies to every slot of a server)
/// keeping at most 1 MB of WAL for slots, and a database `name` on it with
/// the `notes` table.
async fn lossy_server(name: &str) -> (walflow::embedded::EmbeddedPostgres, common::Db) {
    let pg = walflow::embedded::EmbeddedPostgres::builder()
        .setting("max_slot_wal_keep_size", "1MB")
        .setting("wal_keep_size", "0")
        .start()
        .await
        .unwrap();
    let db = common::Db::connect(&pg.create_database(name).await.unwrap()).await;
    db.exec("CREATE TABLE notes (id int8 PRIMARY KEY, pad text NOT NULL)")
        .await;
    (pg, db)
}

/// Writes WAL, switched and checkpointed, until the server has removed
/// what the slot still needs (`wal_status = 'lost'`).
async fn lose_slot(db: &common::Db) {
    common::wait_until(Duration::from_secs(120), || async {
        db.exec(
            "INSERT INTO notes SELECT g, repeat('x', 1000)
               FROM generate_series(coalesce((SELECT max(id) FROM notes), 0) + 1,
                                    coalesce((SELECT max(id) FROM notes), 0) + 2000) g",
        )
        .await;
        db.exec("SELECT pg_switch_wal()").await;
        db.exec("CHECKPOINT").await;
        wal_status(db).await.as_deref() == Some("lost")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_lost_while_the_flow_was_down_is_reported_and_recovered_from() {
    let (_pg, db) = lossy_server("lost").await;
    let start = || {
        Walflow::builder()
            .database_url(&db.url)
            .slot_name(SLOT)
            .start()
    };
    let flow = start().await.expect("the flow starts");
    flow.shutdown().await.unwrap();
    common::wait_slot_released(&db.url, SLOT).await;

    // Enough WAL, switched and checkpointed, for the server to remove what
    // the idle slot still needs.
    lose_slot(&db).await;

    let err = start().await.expect_err("a lost slot is refused");
    match &err {
        FlowError::Preflight(PreflightError::SlotLost { slot }) => assert_eq!(slot, SLOT),
        other => panic!("expected SlotLost, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("SELECT pg_drop_replication_slot('{SLOT}')")),
        "{msg}"
    );

    // The way out the message names.
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(SLOT)
        .execute(&db.pool)
        .await
        .unwrap();
    let flow = start().await.expect("the flow starts on a new slot");
    let mut notes = flow.subscribe::<Note>(walflow::subscribe::Scope::All);
    db.exec("INSERT INTO notes VALUES (-1, 'after')").await;
    let got = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::StreamExt::next(&mut notes),
    )
    .await
    .expect("a change in time")
    .expect("the stream goes on")
    .expect("no lag");
    assert_eq!(got.row().unwrap().id, -1);
    assert_eq!(wal_status(&db).await.as_deref(), Some("reserved"));
    flow.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_lost_while_the_flow_runs_makes_it_failed() {
    let (_pg, db) = lossy_server("lost_running").await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(SLOT)
        .health_interval(Duration::from_millis(100))
        .start()
        .await
        .expect("the flow starts");
    common::wait_until(Duration::from_secs(30), || async { flow.health().ready }).await;

    // The flow cannot record what it received, so it acknowledges nothing
    // while the server writes WAL past max_slot_wal_keep_size.
    let mut hold = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE walflow.queue, walflow.streams IN SHARE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    lose_slot(&db).await;

    common::wait_until(Duration::from_secs(30), || async {
        flow.health().state == HealthState::Failed
    })
    .await;
    let health = flow.health();
    assert!(!health.alive && !health.ready, "{health:?}");
    let detail = health.detail.unwrap();
    assert!(
        detail.contains(SLOT) && detail.contains("pg_drop_replication_slot"),
        "{detail}"
    );
    hold.rollback().await.unwrap();
    flow.shutdown().await.unwrap();
}

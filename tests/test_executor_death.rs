//! An executor whose own loop dies (not a unit: units catch their panics)
//! with the stream storage: the rows it held die with it, so the flow fails
//! loudly — health `failed` naming the operator, and the flow stops —
//! instead of running on without them; they were not acknowledged, so the
//! next flow on the slot applies them, once.
//!
//! Its own test binary: the panic point is armed for the whole process.

#![allow(dead_code)] // struct fields are read through serde

#[path = "common/blog.rs"]
mod blog;
mod common;

use std::time::Duration;

use walflow::config::{ProcessStatusStorage, QueueStorage};
use walflow::prelude::*;
use walflow::telemetry::HealthState;

#[tokio::test]
async fn an_executor_dying_with_the_stream_storage_fails_the_flow() {
    // SAFETY: the only test of this binary, set before anything reads it.
    unsafe { std::env::set_var("WALFLOW_PANIC_AT", "executor.loop") };
    let db = common::db().await;
    db.exec(blog::SCHEMA).await;
    let start = || {
        Walflow::builder()
            .database_url(&db.url)
            .slot_name(db.slot("death"))
            .queue_storage(QueueStorage::Stream)
            .process_status_storage(ProcessStatusStorage::Memory)
            .operators(["Tally"])
            .start()
    };
    let flow = start().await.expect("the flow starts");
    db.exec("INSERT INTO comments (id, post_id) VALUES (1, 1)")
        .await;
    common::wait_until(Duration::from_secs(30), || async {
        flow.health().state == HealthState::Failed
    })
    .await;
    let detail = flow.health().detail.unwrap_or_default();
    assert!(
        detail.contains("operator `Tally`'s executor died")
            && detail.contains("not acknowledged and come again"),
        "{detail}"
    );
    // The flow stopped by itself: shutting it down returns at once.
    tokio::time::timeout(Duration::from_secs(10), flow.shutdown())
        .await
        .expect("the flow had stopped")
        .unwrap();

    // The panic point fires once per process: the next flow runs, and the
    // event the dead executor held comes again and is applied once.
    let flow = start().await.expect("the next flow starts");
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(30))
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT n FROM tally WHERE post_id = 1")
        .fetch_one(&db.pool)
        .await
        .expect("the held event was applied after the restart");
    assert_eq!(n, 1, "applied once");
    flow.shutdown().await.unwrap();
}

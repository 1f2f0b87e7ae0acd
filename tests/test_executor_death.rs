//! An executor whose own loop dies (not a unit: units catch their panics)
//! with the memory queue: the rows it held were acknowledged and die with
//! it, so the flow fails loudly — health `failed` naming the operator, and
//! the flow stops — instead of running on without them.
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
async fn an_executor_dying_with_the_memory_queue_fails_the_flow() {
    // SAFETY: the only test of this binary, set before anything reads it.
    unsafe { std::env::set_var("WALFLOW_PANIC_AT", "executor.loop") };
    let db = common::db().await;
    db.exec(blog::SCHEMA).await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("death"))
        .queue_storage(QueueStorage::Memory)
        .process_status_storage(ProcessStatusStorage::Memory)
        .operators(["Tally"])
        .start()
        .await
        .expect("the flow starts");
    db.exec("INSERT INTO comments (id, post_id) VALUES (1, 1)")
        .await;
    common::wait_until(Duration::from_secs(30), || async {
        flow.health().state == HealthState::Failed
    })
    .await;
    let detail = flow.health().detail.unwrap_or_default();
    assert!(
        detail.contains("operator `Tally`'s executor died") && detail.contains("memory queue"),
        "{detail}"
    );
    // The flow stopped by itself: shutting it down returns at once.
    tokio::time::timeout(Duration::from_secs(10), flow.shutdown())
        .await
        .expect("the flow had stopped")
        .unwrap();
}

//! `wait_processed` at its edges: a writer whose commit is asynchronous
//! (`synchronous_commit = off`), a handler whose writes feed a query
//! operator (it declares them with `writes`), and queue rows of an operator
//! that no running node declares.

#![allow(dead_code)] // struct fields are read through serde

mod common;

use std::time::Duration;

use sqlx::Connection;
use walflow::prelude::*;

// An async-commit writer.

#[event_source(table = "fence_items")]
#[derive(Debug, Clone, serde::Deserialize)]
struct FenceItem {
    id: i64,
    n: i64,
}

#[event_source(table = "fence_copies")]
#[derive(Debug, Clone, serde::Deserialize)]
struct FenceCopy {
    id: i64,
    n: i64,
}

on_event! {
    /// Copies an item, a little slowly: a fence that returns before the
    /// item's own unit ran sees no copy.
    operator FenceCopier for FenceCopy {
        events: all,
        entities: [FenceItem],
        delete_with: [FenceItem],
        query: "WITH pause AS (SELECT pg_sleep(0.2))
                INSERT INTO fence_copies (id, n)
                SELECT i.id, i.n FROM fence_items i, pause WHERE i.id = $1
                ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n",
    }
}

const FENCE_SCHEMA: &str = "
    CREATE TABLE fence_items (id bigint PRIMARY KEY, n bigint NOT NULL);
    CREATE TABLE fence_copies (id bigint PRIMARY KEY, n bigint NOT NULL);";

async fn copy_of(pool: &sqlx::PgPool, id: i64) -> Option<i64> {
    sqlx::query_scalar("SELECT n FROM fence_copies WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// After a commit with `synchronous_commit = off`, the WAL *write* position
/// can lie before the commit's own record (the WAL writer writes it later:
/// here up to 10 s later). `current_lsn()` is the insert position, so the
/// fence waits for that commit.
#[tokio::test]
async fn an_async_commit_is_waited_for() {
    let pg = walflow::embedded::EmbeddedPostgres::builder()
        .setting("wal_writer_delay", "10s")
        .start()
        .await
        .unwrap();
    let flow = Walflow::builder()
        .database_url(pg.url())
        .slot_name("fence_async")
        .operators(["FenceCopier"])
        .setup_sql(FENCE_SCHEMA)
        .start()
        .await
        .unwrap();
    let pool = flow.pool().clone();
    sqlx::query("INSERT INTO fence_items (id, n) VALUES (1, 1)")
        .execute(&pool)
        .await
        .unwrap();
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(copy_of(&pool, 1).await, Some(1));

    let mut writer = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
    sqlx::raw_sql("SET synchronous_commit = off")
        .execute(&mut writer)
        .await
        .unwrap();
    for round in 2..5 {
        sqlx::query("INSERT INTO fence_items (id, n) VALUES ($1, $1)")
            .bind(round)
            .execute(&mut writer)
            .await
            .unwrap();
        let lsn = flow.current_lsn().await.unwrap();
        flow.wait_processed(lsn, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(
            copy_of(&pool, round).await,
            Some(round),
            "wait_processed({lsn}) returned before the async-commit write of item {round} \
             was applied"
        );
    }
    writer.close().await.unwrap();
    flow.shutdown().await.unwrap();
}

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

// A handler whose writes feed a query operator.

#[event_source(table = "chain_sources")]
#[derive(Debug, Clone, serde::Deserialize)]
struct ChainSource {
    id: i64,
    n: i64,
}

#[event_source(table = "chain_mirrors")]
#[derive(Debug, Clone, serde::Deserialize)]
struct ChainMirror {
    id: i64,
    n: i64,
}

#[event_source(table = "chain_totals")]
#[derive(Debug, Clone, serde::Deserialize)]
struct ChainTotal {
    id: i64,
    total: i64,
}

on_event! {
    /// First level: a handler mirroring each source row into
    /// `chain_mirrors`, which it declares.
    operator ChainMirrorer {
        events: [insert, update],
        entities: [ChainSource],
        writes: [ChainMirror],
        handler: mirror,
    }

    /// Second level: fed by the handler's writes.
    operator ChainTotals for ChainTotal {
        events: all,
        entities: [ChainMirror],
        delete_with: [ChainMirror],
        coalesce: true,
        query: "INSERT INTO chain_totals (id, total)
                SELECT id, n * 10 FROM chain_mirrors WHERE id = $1
                ON CONFLICT (id) DO UPDATE SET total = EXCLUDED.total",
    }
}

async fn mirror(event: Event<ChainSource>, ctx: Ctx) -> Result<(), sqlx::Error> {
    let Some(source) = event.record() else {
        return Ok(());
    };
    // Slower than the fence's poll: a fence that did not wait for this
    // handler's run would return first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut tx = ctx.transaction().await?;
    sqlx::query(
        "INSERT INTO chain_mirrors (id, n) VALUES ($1, $2)
         ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n",
    )
    .bind(source.id)
    .bind(source.n)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn total_of(pool: &sqlx::PgPool, id: i64) -> Option<i64> {
    sqlx::query_scalar("SELECT total FROM chain_totals WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// One `wait_processed` after a source write returns only once the
/// handler's declared write has reached the query operator downstream.
#[tokio::test]
async fn a_handler_s_declared_writes_are_waited_through() {
    let db = common::db().await;
    db.exec(
        "CREATE TABLE chain_sources (id bigint PRIMARY KEY, n bigint NOT NULL);
         CREATE TABLE chain_mirrors (id bigint PRIMARY KEY, n bigint NOT NULL);
         CREATE TABLE chain_totals (id bigint PRIMARY KEY, total bigint NOT NULL);",
    )
    .await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("fence_chain"))
        .operators(["ChainMirrorer", "ChainTotals"])
        .start()
        .await
        .unwrap();
    for round in 1..4 {
        db.exec(&format!(
            "INSERT INTO chain_sources (id, n) VALUES (1, {round})
             ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n"
        ))
        .await;
        let lsn = flow.current_lsn().await.unwrap();
        flow.wait_processed(lsn, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(
            total_of(&db.pool, 1).await,
            Some(round * 10),
            "wait_processed({lsn}) returned before the handler's write of round {round} \
             reached chain_totals"
        );
    }
    flow.shutdown().await.unwrap();
}

// Rows of an operator that no running flow declares.

#[event_source(table = "gate_items")]
#[derive(Debug, Clone, serde::Deserialize)]
struct GateItem {
    id: i64,
}

#[event_source(table = "gate_copies")]
#[derive(Debug, Clone, serde::Deserialize)]
struct GateCopy {
    id: i64,
}

on_event! {
    operator GateCopier for GateCopy {
        events: [insert],
        entities: [GateItem],
        query: "INSERT INTO gate_copies (id) SELECT id FROM gate_items WHERE id = $1
                ON CONFLICT (id) DO NOTHING",
    }

    /// Fails every time: its rows stay queued (retried far apart).
    operator GateStuck {
        events: [insert],
        entities: [GateItem],
        handler: stuck,
    }
}

async fn stuck(_event: Event<GateItem>, _ctx: Ctx) -> Result<(), std::io::Error> {
    Err(std::io::Error::other("stuck"))
}

async fn queued(pool: &sqlx::PgPool, slot: &str, operator: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM walflow.queue WHERE slot = $1 AND operator = $2")
        .bind(slot)
        .bind(operator)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn gate_flow(db: &common::Db, slot: &str, operators: &[&str]) -> Walflow {
    Walflow::builder()
        .database_url(&db.url)
        .slot_name(slot)
        .operators(operators.iter().copied())
        .min_restart_time(Duration::from_secs(600))
        .max_restart_time(Duration::from_secs(600))
        .start()
        .await
        .unwrap()
}

/// A flow ran `GateCopier` and `GateStuck`, and stopped with a row of
/// `GateStuck` queued; the next flow declares only `GateCopier`. Its fence
/// is reached (the row would hold it forever), and the row is still queued,
/// not dropped.
#[tokio::test]
async fn rows_of_an_operator_no_flow_declares_do_not_hold_the_fence() {
    let db = common::db().await;
    db.exec(
        "CREATE TABLE gate_items (id bigint PRIMARY KEY);
         CREATE TABLE gate_copies (id bigint PRIMARY KEY);",
    )
    .await;
    let slot = db.slot("fence_gate");
    let first = gate_flow(&db, &slot, &["GateCopier", "GateStuck"]).await;
    db.exec("INSERT INTO gate_items (id) VALUES (1)").await;
    let lsn = first.current_lsn().await.unwrap();
    common::wait_until(Duration::from_secs(20), || async {
        queued(&db.pool, &slot, "GateCopier").await == 0
            && queued(&db.pool, &slot, "GateStuck").await == 1
    })
    .await;
    // While a flow declares it, its row holds the fence.
    assert!(matches!(
        first.wait_processed(lsn, Duration::from_millis(500)).await,
        Err(walflow::FlowError::Timeout { .. })
    ));
    first.shutdown().await.unwrap();

    let second = gate_flow(&db, &slot, &["GateCopier"]).await;
    db.exec("INSERT INTO gate_items (id) VALUES (2)").await;
    let lsn = second.current_lsn().await.unwrap();
    second
        .wait_processed(lsn, Duration::from_secs(20))
        .await
        .unwrap();
    let copies: Vec<i64> = sqlx::query_scalar("SELECT id FROM gate_copies ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(copies, [1, 2]);
    assert_eq!(
        queued(&db.pool, &slot, "GateStuck").await,
        1,
        "the row of an operator the flow does not declare is kept"
    );
    second.shutdown().await.unwrap();
}

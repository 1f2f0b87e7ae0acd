//! The stream storage (`QueueStorage::Stream`, the default; rule 12 of the
//! queue protocol): no queue row is written for an operator that keeps up,
//! the slot is acknowledged only up to what the operators applied or
//! spilled, a node without the slot answers the fence from the database,
//! events held when a flow stops come again and are applied once, what was
//! applied before is not run again, the progress records are pruned once
//! the slot is past them, a slow operator spills to `walflow.queue`
//! without holding back the slot, rows the durable queue left run after a
//! switch, and a backlog delivered at start larger than `spill_rows` runs
//! from memory while rows held past it while running spill.
//!
//! Kills, crash points and PostgreSQL restarts with this storage are in
//! `tests/test_convergence.rs` (every case but its `durable_*` ones).

#![allow(dead_code)] // struct fields are read through serde

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use walflow::config::QueueStorage;
use walflow::prelude::*;

/// A row whose handler waits at the gate.
#[event_source(table = "held")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Held {
    /// Its id.
    pub id: i64,
}

on_event! {
    /// Waits at the gate, then records the row in `applied` through the
    /// unit's own transaction (exactly once).
    operator HeldAtTheGate {
        events: [insert],
        entities: [Held],
        id: [Held.id],
        handler: held_at_the_gate,
    }
}

/// Opened by `acknowledged_only_once_applied`.
static GATE: std::sync::LazyLock<tokio::sync::watch::Sender<bool>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(false).0);

async fn held_at_the_gate(event: Event<Held>, ctx: Ctx) -> Result<(), walflow::BoxError> {
    let _ = GATE.subscribe().wait_for(|open| *open).await;
    let id = event.record().expect("row").id;
    let mut tx = ctx.transaction().await?;
    sqlx::query("INSERT INTO applied (id, n) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = applied.n + 1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A job, failing while `FAILING` says so when its id is odd.
#[event_source(table = "jobs")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Job {
    /// Its id.
    pub id: i64,
}

on_event! {
    /// Fails on odd ids while `FAILING` is set; records each run that
    /// succeeds in `done`, through the unit's transaction.
    operator Jobs {
        events: [insert],
        entities: [Job],
        id: [Job.id],
        handler: run_job,
    }
}

static FAILING: AtomicBool = AtomicBool::new(true);
static RUNS: AtomicU64 = AtomicU64::new(0);

async fn run_job(event: Event<Job>, ctx: Ctx) -> Result<(), walflow::BoxError> {
    let id = event.record().expect("row").id;
    RUNS.fetch_add(1, Ordering::SeqCst);
    if id % 2 == 1 && FAILING.load(Ordering::SeqCst) {
        return Err(format!("job {id} fails for now").into());
    }
    let mut tx = ctx.transaction().await?;
    sqlx::query(
        "INSERT INTO done (id, n) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = done.n + 1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn confirmed_before(db: &common::Db, slot: &str, lsn: &str) -> bool {
    sqlx::query_scalar(
        "SELECT confirmed_flush_lsn < $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .bind(lsn)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn count(db: &common::Db, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// While a handler holds its events, the slot's confirmed position stays
/// before them, even as the server's keepalives are answered; once they
/// are applied it moves past them, no queue row was ever written, and the
/// progress records are pruned once the slot is past them.
#[tokio::test]
async fn acknowledged_only_once_applied() {
    let pg = walflow::embedded::EmbeddedPostgres::builder()
        // Idle, the WAL sender sends a keepalive every 2.5 s: the flow
        // answers with its position.
        .setting("wal_sender_timeout", "5s")
        .start()
        .await
        .unwrap();
    let db = common::Db::connect(&pg.create_database("stream").await.unwrap()).await;
    db.exec(
        "CREATE TABLE held (id bigint PRIMARY KEY);
         CREATE TABLE applied (id bigint PRIMARY KEY, n int NOT NULL);",
    )
    .await;
    let slot = db.slot("stream");
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(&slot)
        .queue_storage(QueueStorage::Stream)
        .operators(["HeldAtTheGate"])
        .start()
        .await
        .expect("the flow starts");
    let before: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    db.exec("INSERT INTO held SELECT generate_series(1, 3)")
        .await;
    let after: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // The transaction was sent, and the flow has answered the server
    // since (a standby status update after the send).
    common::wait_until(Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT coalesce(bool_or(r.sent_lsn >= $2::pg_lsn), false)
             FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
             WHERE s.slot_name = $1",
        )
        .bind(&slot)
        .bind(&after)
        .fetch_one(&db.pool)
        .await
        .unwrap()
    })
    .await;
    let sent_seen: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    common::wait_until(Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT coalesce(bool_or(r.reply_time > $2), false)
             FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
             WHERE s.slot_name = $1",
        )
        .bind(&slot)
        .bind(sent_seen)
        .fetch_one(&db.pool)
        .await
        .unwrap()
    })
    .await;
    assert!(
        confirmed_before(&db, &slot, &after).await,
        "the slot is not acknowledged past events not applied"
    );
    assert!(
        !confirmed_before(&db, &slot, &before).await,
        "what came before is acknowledged"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM walflow.queue").await, 0);

    // A node that does not hold the slot answers the fence from the
    // database alone: the slot's confirmed position, then the spilled
    // rows. While the events are held it does not pass them.
    let node = Walflow::builder()
        .database_url(&db.url)
        .slot_name(&slot)
        .pubsub(walflow::config::PubSub::Postgres)
        .subscriber_only()
        .start()
        .await
        .expect("the subscriber-only node starts");
    let lsn = flow.current_lsn().await.unwrap();
    assert!(
        matches!(
            node.wait_processed(lsn, Duration::from_secs(3)).await,
            Err(walflow::FlowError::Timeout { .. })
        ),
        "the fence of a node without the slot does not pass events not applied"
    );

    GATE.send_replace(true);
    let lsn = flow.current_lsn().await.unwrap();
    node.wait_processed(lsn, Duration::from_secs(30))
        .await
        .expect("the node's fence passes once the events are applied");
    assert_eq!(
        count(&db, "SELECT count(*) FROM applied WHERE n = 1").await,
        3,
        "each event applied once, before the node's fence passed"
    );
    node.shutdown().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(30))
        .await
        .unwrap();
    common::wait_until(Duration::from_secs(60), || async {
        !confirmed_before(&db, &slot, &after).await
    })
    .await;
    assert_eq!(count(&db, "SELECT count(*) FROM walflow.queue").await, 0);
    // Pruned once the slot is past them (every ten seconds).
    common::wait_until(Duration::from_secs(60), || async {
        count(&db, "SELECT count(*) FROM walflow.applied").await == 0
    })
    .await;
    flow.shutdown().await.unwrap();
}

/// Events in retry backoff are spilled to the queue; when the flow stops,
/// the next flow on the slot runs them from there once, and does not run
/// again what the first one applied (delivered again or not).
#[tokio::test]
async fn events_held_at_a_stop_come_again_and_apply_once() {
    let db = common::db().await;
    db.exec(
        "CREATE TABLE jobs (id bigint PRIMARY KEY);
         CREATE TABLE done (id bigint PRIMARY KEY, n int NOT NULL);",
    )
    .await;
    let slot = db.slot("jobs");
    let start = || {
        Walflow::builder()
            .database_url(&db.url)
            .slot_name(&slot)
            .queue_storage(QueueStorage::Stream)
            .min_restart_time(Duration::from_secs(3600))
            .max_restart_time(Duration::from_secs(3600))
            .max_retries(100)
            .operators(["Jobs"])
            .start()
    };
    let flow = start().await.expect("the flow starts");
    db.exec("INSERT INTO jobs SELECT generate_series(1, 10)")
        .await;
    // The even jobs are applied; the odd ones wait an hour to try again,
    // their rows spilled to the queue (a failing id does not hold back the
    // slot).
    common::wait_until(Duration::from_secs(30), || async {
        count(&db, "SELECT count(*) FROM done").await == 5
            && count(&db, "SELECT count(*) FROM walflow.queue").await == 5
    })
    .await;
    flow.shutdown().await.unwrap();

    FAILING.store(false, Ordering::SeqCst);
    let runs = RUNS.load(Ordering::SeqCst);
    let flow = start().await.expect("the flow starts again");
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(30))
        .await
        .unwrap();
    let done: Vec<(i64, i32)> = sqlx::query_as("SELECT id, n FROM done ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(done, (1..=10).map(|id| (id, 1)).collect::<Vec<_>>());
    assert_eq!(
        RUNS.load(Ordering::SeqCst) - runs,
        5,
        "only the odd jobs ran again: the even ones were skipped by their progress record"
    );
    flow.shutdown().await.unwrap();
}

on_event! {
    /// Fails while `park.ok` is false (state in each test's own database).
    operator Parked {
        events: [insert],
        entities: [Job],
        id: [Job.id],
        handler: parked,
    }
}

async fn parked(event: Event<Job>, ctx: Ctx) -> Result<(), walflow::BoxError> {
    let id = event.record().expect("row").id;
    let mut tx = ctx.transaction().await?;
    let ok: bool = sqlx::query_scalar("SELECT ok FROM park")
        .fetch_one(&mut *tx)
        .await?;
    if !ok {
        return Err(format!("job {id} is parked").into());
    }
    sqlx::query(
        "INSERT INTO done (id, n) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = done.n + 1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Rows the durable queue left in `walflow.queue` are what the stream
/// storage spills: a flow that switches storage runs them from there, once,
/// in order with what the slot delivers again.
#[tokio::test]
async fn rows_the_durable_queue_left_run_after_a_switch() {
    let db = common::db().await;
    db.exec(
        "CREATE TABLE jobs (id bigint PRIMARY KEY);
         CREATE TABLE done (id bigint PRIMARY KEY, n int NOT NULL);
         CREATE TABLE park (ok bool NOT NULL);
         INSERT INTO park VALUES (false);",
    )
    .await;
    let slot = db.slot("left");
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(&slot)
        .min_restart_time(Duration::from_secs(3600))
        .max_restart_time(Duration::from_secs(3600))
        .max_retries(100)
        .operators(["Parked"])
        .start()
        .await
        .expect("the durable queue starts");
    db.exec("INSERT INTO jobs SELECT generate_series(1, 5)")
        .await;
    common::wait_until(Duration::from_secs(30), || async {
        count(&db, "SELECT count(*) FROM walflow.queue").await == 5
    })
    .await;
    flow.shutdown().await.unwrap();
    db.exec("UPDATE park SET ok = true").await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(&slot)
        .queue_storage(QueueStorage::Stream)
        .operators(["Parked"])
        .start()
        .await
        .expect("the stream storage starts");
    db.exec("INSERT INTO jobs SELECT generate_series(6, 8)")
        .await;
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(30))
        .await
        .unwrap();
    let done: Vec<(i64, i32)> = sqlx::query_as("SELECT id, n FROM done ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(done, (1..=8).map(|id| (id, 1)).collect::<Vec<_>>());
    assert_eq!(count(&db, "SELECT count(*) FROM walflow.queue").await, 0);
    flow.shutdown().await.unwrap();
}

/// A row of the spill test's table.
#[event_source(table = "work")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Work {
    /// Its id.
    pub id: i64,
}

on_event! {
    /// Takes its time: falls behind and spills.
    operator Slow {
        events: [insert],
        entities: [Work],
        id: [Work.id],
        handler: slow,
    }
}

on_event! {
    /// Keeps up.
    operator Fast {
        events: [insert],
        entities: [Work],
        id: [Work.id],
        handler: fast,
    }
}

async fn slow(event: Event<Work>, ctx: Ctx) -> Result<(), walflow::BoxError> {
    tokio::time::sleep(Duration::from_millis(100)).await;
    record(&ctx, "slow_done", event.record().expect("row").id).await
}

async fn fast(event: Event<Work>, ctx: Ctx) -> Result<(), walflow::BoxError> {
    record(&ctx, "fast_done", event.record().expect("row").id).await
}

async fn record(ctx: &Ctx, table: &str, id: i64) -> Result<(), walflow::BoxError> {
    let mut tx = ctx.transaction().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (id, n) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = {table}.n + 1"
    )))
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// One operator falls behind while another keeps up: the slow one's held
/// events are spilled to `walflow.queue`, so the slot's confirmed position
/// passes them while they wait; the fast one has applied everything long
/// before; the slow one catches up, each event applied once, and leaves
/// nothing in the queue.
#[tokio::test]
async fn a_slow_operator_spills_and_does_not_hold_back_the_slot() {
    let db = common::db().await;
    db.exec(
        "CREATE TABLE work (id bigint PRIMARY KEY);
         CREATE TABLE slow_done (id bigint PRIMARY KEY, n int NOT NULL);
         CREATE TABLE fast_done (id bigint PRIMARY KEY, n int NOT NULL);",
    )
    .await;
    let slot = db.slot("spill");
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(&slot)
        .queue_storage(QueueStorage::Stream)
        .spill_rows(20)
        .spill_after(Duration::from_millis(500))
        .operator_concurrency("Slow", 1)
        .operators(["Slow", "Fast"])
        .start()
        .await
        .expect("the flow starts");
    const N: i64 = 150;
    for i in 1..=N {
        db.exec(&format!("INSERT INTO work VALUES ({i})")).await;
    }
    let written: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // The fast operator is done, the slot's position is past every event,
    // and the slow one still has some to do, in the queue.
    common::wait_until(Duration::from_secs(60), || async {
        count(&db, "SELECT count(*) FROM fast_done").await == N
            && !confirmed_before(&db, &slot, &written).await
    })
    .await;
    let slow_done = count(&db, "SELECT count(*) FROM slow_done").await;
    let spilled = count(
        &db,
        "SELECT count(*) FROM walflow.queue WHERE operator = 'Slow'",
    )
    .await;
    assert!(
        slow_done < N && spilled > 0,
        "the slow operator is behind ({slow_done} of {N} done) with its events spilled ({spilled} rows)"
    );
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(120))
        .await
        .unwrap();
    for table in ["slow_done", "fast_done"] {
        assert_eq!(
            count(&db, &format!("SELECT count(*) FROM {table} WHERE n = 1")).await,
            N,
            "{table}: each event once"
        );
    }
    assert_eq!(count(&db, "SELECT count(*) FROM walflow.queue").await, 0);
    flow.shutdown().await.unwrap();
}

/// A row of a table filled while no flow ran.
#[event_source(table = "backlog")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Backlog {
    /// Its id.
    pub id: i64,
}

on_event! {
    /// Waits at `BACKLOG_GATE`, then records the row in `backlog_done`.
    operator Backlogged {
        events: [insert],
        entities: [Backlog],
        id: [Backlog.id],
        handler: backlogged,
    }
}

/// Open, except while `a_backlog_at_start_is_not_falling_behind` makes the
/// operator fall behind.
static BACKLOG_GATE: std::sync::LazyLock<tokio::sync::watch::Sender<bool>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(true).0);

async fn backlogged(event: Event<Backlog>, ctx: Ctx) -> Result<(), walflow::BoxError> {
    let _ = BACKLOG_GATE.subscribe().wait_for(|open| *open).await;
    record(&ctx, "backlog_done", event.record().expect("row").id).await
}

/// The operator's `walflow_operator_spilled_rows_total`.
async fn spilled_rows(flow: &Walflow, operator: &str) -> u64 {
    let addr = flow.metrics_addr().expect("an endpoint");
    let (status, body) = common::http::get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let prefix = format!("walflow_operator_spilled_rows_total{{operator=\"{operator}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {prefix}in {body}"))
        .parse()
        .expect("a count")
}

/// Rows written while no flow ran, many more than `spill_rows`, are the
/// backlog the slot delivers at start: the operator runs them from memory
/// (spilling them would only copy the WAL into a table) and each applies
/// once. Rows that pile up while it runs do spill past `spill_rows`.
#[tokio::test]
async fn a_backlog_at_start_is_not_falling_behind() {
    let db = common::db().await;
    db.exec(
        "CREATE TABLE backlog (id bigint PRIMARY KEY);
         CREATE TABLE backlog_done (id bigint PRIMARY KEY, n int NOT NULL);",
    )
    .await;
    let slot = db.slot("backlog");
    let start = || {
        Walflow::builder()
            .database_url(&db.url)
            .slot_name(&slot)
            .queue_storage(QueueStorage::Stream)
            .spill_rows(20)
            .spill_after(Duration::from_secs(600))
            .operators(["Backlogged"])
            .metrics_endpoint(([127, 0, 0, 1], 0))
            .start()
    };
    // The slot exists; then 400 rows arrive while nothing runs.
    start().await.unwrap().shutdown().await.unwrap();
    const N: i64 = 400;
    for i in 0..4 {
        db.exec(&format!(
            "INSERT INTO backlog SELECT generate_series({} + 1, {} + 100)",
            i * 100,
            i * 100
        ))
        .await;
    }
    let flow = start().await.expect("the flow starts");
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM backlog_done WHERE n = 1").await,
        N
    );
    assert_eq!(
        spilled_rows(&flow, "Backlogged").await,
        0,
        "the backlog ran from memory"
    );

    // Held while running: past `spill_rows`, the rows spill.
    BACKLOG_GATE.send_replace(false);
    db.exec("INSERT INTO backlog SELECT generate_series(1001, 1100)")
        .await;
    common::wait_until(Duration::from_secs(60), || async {
        spilled_rows(&flow, "Backlogged").await > 0
    })
    .await;
    BACKLOG_GATE.send_replace(true);
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM backlog_done WHERE n = 1").await,
        N + 100
    );
    assert_eq!(count(&db, "SELECT count(*) FROM walflow.queue").await, 0);
    flow.shutdown().await.unwrap();
}

//! The metrics endpoint: `/metrics` scraped over HTTP and parsed as
//! Prometheus' text format, `/healthz` and `/readyz`, and `flow.health()`.
//!
//! - events, transactions, runs and commit-to-apply latency follow a write;
//! - a poison event moves the retry, failure and dead-letter counters and
//!   the dead-letter gauge;
//! - the queue depth rises while an operator is held, and falls after (with
//!   the durable queue and with the stream storage);
//! - readiness goes false while the flow is behind by more than
//!   `ready_lag_bytes` (degraded past `max_slot_lag_bytes`), and true once
//!   caught up; the slot lag falls after the drain;
//! - a dropped replication connection counts a reconnection;
//! - during start-up the endpoint answers alive but not ready;
//! - every metric has its `# HELP` line, the description of
//!   `walflow::telemetry::METRICS`;
//! - a fresh flow shows its operators' counters at 0 before anything
//!   failed.

#![allow(dead_code)] // struct fields are read through serde

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use common::http::get;
use tokio::sync::Semaphore;
use walflow::prelude::*;
use walflow::subscribe::Scope;
use walflow::{HealthState, Walflow};

const TIMEOUT: Duration = Duration::from_secs(60);

#[event_source(table = "metric_items")]
#[derive(Debug, Clone, serde::Deserialize)]
struct MetricItem {
    id: i64,
    pad: String,
}

#[event_source(table = "metric_copies")]
#[derive(Debug, Clone, serde::Deserialize)]
struct MetricCopy {
    id: i64,
}

#[event_source(table = "metric_bulk")]
#[derive(Debug, Clone, serde::Deserialize)]
struct MetricBulk {
    id: i64,
    pad: String,
}

#[event_source(table = "metric_bulk_copies")]
#[derive(Debug, Clone, serde::Deserialize)]
struct MetricBulkCopy {
    id: i64,
}

#[event_source(table = "metric_held")]
#[derive(Debug, Clone, serde::Deserialize)]
struct MetricHeld {
    id: i64,
}

#[event_source(table = "metric_held_mem")]
#[derive(Debug, Clone, serde::Deserialize)]
struct MetricHeldMem {
    id: i64,
}

#[event_source(table = "metric_fresh")]
#[derive(Debug, Clone, serde::Deserialize)]
struct MetricFresh {
    id: i64,
}

#[event_source(table = "metric_poison")]
#[derive(Debug, Clone, serde::Deserialize)]
struct MetricPoison {
    id: i64,
}

on_event! {
    operator MetricsCopy for MetricCopy {
        events: all,
        entities: [MetricItem],
        delete_with: [MetricItem],
        query: "INSERT INTO metric_copies SELECT id FROM metric_items WHERE id = $1
                ON CONFLICT (id) DO NOTHING",
    }

    operator MetricsBulk for MetricBulkCopy {
        events: all,
        entities: [MetricBulk],
        delete_with: [MetricBulk],
        query: "INSERT INTO metric_bulk_copies SELECT id FROM metric_bulk WHERE id = $1
                ON CONFLICT (id) DO NOTHING",
    }

    operator MetricsHold {
        events: [insert],
        entities: [MetricHeld],
        handler: hold,
    }

    operator MetricsHoldMemory {
        events: [insert],
        entities: [MetricHeldMem],
        handler: hold_memory,
    }

    operator MetricsFresh {
        events: [insert],
        entities: [MetricFresh],
        handler: fresh,
    }

    operator MetricsPoison {
        events: [insert],
        entities: [MetricPoison],
        handler: poison,
    }
}

/// Permits for `hold`: each call takes one (and gives it back).
static GATE: Semaphore = Semaphore::const_new(0);

async fn hold(_event: Event<MetricHeld>, _ctx: Ctx) -> Result<(), std::io::Error> {
    let _permit = GATE.acquire().await.expect("the gate stays open");
    Ok(())
}

/// Permits for `hold_memory`.
static MEMORY_GATE: Semaphore = Semaphore::const_new(0);

async fn hold_memory(_event: Event<MetricHeldMem>, _ctx: Ctx) -> Result<(), std::io::Error> {
    let _permit = MEMORY_GATE.acquire().await.expect("the gate stays open");
    Ok(())
}

async fn fresh(_event: Event<MetricFresh>, _ctx: Ctx) -> Result<(), std::io::Error> {
    Ok(())
}

/// Ids `poison` fails on.
static POISONED: Mutex<Option<HashSet<i64>>> = Mutex::new(None);

async fn poison(event: Event<MetricPoison>, _ctx: Ctx) -> Result<(), std::io::Error> {
    let id = event.record().unwrap().id;
    if POISONED
        .lock()
        .unwrap()
        .get_or_insert_default()
        .contains(&id)
    {
        return Err(std::io::Error::other(format!("item {id} is poison")));
    }
    Ok(())
}

const SCHEMA: &str = "
    CREATE TABLE metric_items (id bigint PRIMARY KEY, pad text NOT NULL);
    CREATE TABLE metric_copies (id bigint PRIMARY KEY);
    CREATE TABLE metric_bulk (id bigint PRIMARY KEY, pad text NOT NULL);
    CREATE TABLE metric_bulk_copies (id bigint PRIMARY KEY);
    CREATE TABLE metric_held (id bigint PRIMARY KEY);
    CREATE TABLE metric_held_mem (id bigint PRIMARY KEY);
    CREATE TABLE metric_poison (id bigint PRIMARY KEY);
    CREATE TABLE metric_fresh (id bigint PRIMARY KEY);
";

/// The scrape of `/metrics`, parsed.
async fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("exposition format")
}

/// The value of the samples `name` whose labels include `labels`, added up
/// (0 when there is none): a counter's or gauge's value, a histogram's
/// count (its `+Inf` bucket).
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h
                .iter()
                .find(|b| b.less_than == f64::INFINITY)
                .map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => panic!("{name} is a summary"),
        })
        .sum()
}

/// Waits until the scraped value of `name` with `labels` satisfies `cond`.
async fn wait_metric(
    addr: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    cond: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let v = value(&scrape(addr).await, name, labels);
        if cond(v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} stayed at {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn fence(flow: &Walflow) {
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, TIMEOUT).await.unwrap();
}

/// A flow running `operators` (the tests of this file run at once, and
/// the metrics of one process add up: each test has operators of its own).
async fn start(db: &common::Db, slot: &str, operators: &[&str]) -> Walflow {
    Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot(slot))
        .operators(operators.iter().copied())
        .health_interval(Duration::from_millis(100))
        .status_interval(Duration::from_millis(100))
        .ready_lag_bytes(512 * 1024)
        .max_slot_lag_bytes(2 * 1024 * 1024)
        .min_restart_time(Duration::from_millis(10))
        .max_restart_time(Duration::from_millis(20))
        .max_retries(1)
        .metrics_endpoint(([127, 0, 0, 1], 0))
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_events_runs_failures_and_queues() {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let flow = start(
        &db,
        "metrics",
        &["MetricsCopy", "MetricsHold", "MetricsPoison"],
    )
    .await;
    let addr = flow.metrics_addr().expect("an endpoint");

    // Events, transactions, runs, latency.
    db.exec("INSERT INTO metric_items SELECT g, 'x' FROM generate_series(1, 3) g")
        .await;
    fence(&flow).await;
    // A unit is counted once its transaction has committed, so just after
    // the fence (which sees the commit) the counters may still be behind;
    // the latency is recorded last.
    let copy = [("operator", "MetricsCopy")];
    wait_metric(addr, "walflow_commit_to_apply_seconds", &copy, |v| v >= 3.0).await;
    let s = scrape(addr).await;
    let items = [("table", "public.metric_items"), ("kind", "insert")];
    assert!(value(&s, "walflow_events_total", &items) >= 3.0);
    assert!(value(&s, "walflow_transactions_total", &[]) >= 1.0);
    assert_eq!(value(&s, "walflow_operator_runs_total", &copy), 3.0);
    assert_eq!(value(&s, "walflow_commit_to_apply_seconds", &copy), 3.0);
    assert_eq!(value(&s, "walflow_operator_failures_total", &copy), 0.0);

    // A poison event: one retry, two failed attempts, one dead letter.
    POISONED.lock().unwrap().get_or_insert_default().insert(7);
    db.exec("INSERT INTO metric_poison VALUES (7), (8)").await;
    let poison = [("operator", "MetricsPoison")];
    wait_metric(addr, "walflow_dead_letters", &poison, |v| v == 1.0).await;
    wait_metric(addr, "walflow_operator_runs_total", &poison, |v| v >= 1.0).await;
    let s = scrape(addr).await;
    assert_eq!(value(&s, "walflow_operator_retries_total", &poison), 1.0);
    assert_eq!(value(&s, "walflow_operator_failures_total", &poison), 2.0);
    assert_eq!(
        value(&s, "walflow_operator_dead_letters_total", &poison),
        1.0
    );
    assert_eq!(value(&s, "walflow_operator_runs_total", &poison), 1.0);
    assert_eq!(flow.dead_letters("MetricsPoison").await.unwrap().len(), 1);

    // Queue depth while an operator is held, and after.
    let held = [("operator", "MetricsHold")];
    db.exec("INSERT INTO metric_held SELECT g FROM generate_series(1, 5) g")
        .await;
    wait_metric(addr, "walflow_queue_rows", &held, |v| v == 5.0).await;
    wait_metric(addr, "walflow_queue_oldest_age_seconds", &held, |v| v > 0.0).await;
    assert_eq!(
        value(&scrape(addr).await, "walflow_operator_runs_total", &held),
        0.0
    );
    GATE.add_permits(1);
    wait_metric(addr, "walflow_queue_rows", &held, |v| v == 0.0).await;
    assert_eq!(
        value(
            &scrape(addr).await,
            "walflow_queue_oldest_age_seconds",
            &held
        ),
        0.0
    );
    wait_metric(addr, "walflow_operator_runs_total", &held, |v| v == 5.0).await;

    // Subscribers.
    let before = value(&scrape(addr).await, "walflow_subscribers", &[]);
    let sub = flow.subscribe::<MetricItem>(Scope::All);
    assert_eq!(
        value(&scrape(addr).await, "walflow_subscribers", &[]),
        before + 1.0
    );
    drop(sub);
    assert_eq!(
        value(&scrape(addr).await, "walflow_subscribers", &[]),
        before
    );

    // A dropped replication connection is counted, and the flow is ready
    // again once it is back.
    let reconnects = [("connection", "replication")];
    let n = value(&scrape(addr).await, "walflow_reconnects_total", &reconnects);
    sqlx::query(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(flow.config().slot_name())
    .execute(&db.pool)
    .await
    .unwrap();
    wait_metric(addr, "walflow_reconnects_total", &reconnects, |v| v > n).await;
    common::wait_until(TIMEOUT, || async { flow.health().ready }).await;

    flow.shutdown().await.unwrap();
    assert_eq!(flow.health().state, HealthState::Stopped);
    assert!(!flow.health().alive);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_slot_lag() {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let flow = start(&db, "ready", &["MetricsBulk"]).await;
    let addr = flow.metrics_addr().expect("an endpoint");
    common::wait_until(TIMEOUT, || async { flow.health().ready }).await;
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["state"], "ready");
    assert_eq!(health["ready_lag_bytes"], 512 * 1024);

    // The consumer cannot queue (so cannot acknowledge) while the queue is
    // locked: about 4 MB of WAL written meanwhile is lag.
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE walflow.queue IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    // Rows are written until the lag passes `max_slot_lag_bytes` (2 MiB).
    let slot = [("slot", flow.config().slot_name())];
    let mut written = 0;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while value(&scrape(addr).await, "walflow_slot_lag_bytes", &slot) <= 2.0 * 1024.0 * 1024.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no lag after {written} rows"
        );
        sqlx::query(
            "INSERT INTO metric_bulk SELECT g, repeat('x', 1000) FROM generate_series($1, $1 + 999) g",
        )
        .bind(written + 1)
        .execute(&db.pool)
        .await
        .unwrap();
        written += 1000;
        // The next reading (every 100 ms) sees it.
        let before = flow.health().checked_at;
        common::wait_until(TIMEOUT, || async { flow.health().checked_at != before }).await;
    }
    wait_metric(addr, "walflow_slot_lag_over_limit", &slot, |v| v == 1.0).await;
    common::wait_until(TIMEOUT, || async {
        flow.health().state == HealthState::Degraded
    })
    .await;
    let health = flow.health();
    assert!(health.alive && !health.ready, "{health:?}");
    assert!(health.lag_bytes.unwrap() > 2 * 1024 * 1024, "{health:?}");
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["state"], "degraded");
    assert!(
        json["detail"]
            .as_str()
            .unwrap()
            .contains("max_slot_lag_bytes")
    );
    assert_eq!(get(addr, "/healthz").await.0, 200);

    // Released: it drains, catches up and is ready again.
    lock.rollback().await.unwrap();
    common::wait_until(TIMEOUT, || async { flow.health().ready }).await;
    let lag = wait_metric(addr, "walflow_slot_lag_bytes", &slot, |v| {
        v < 512.0 * 1024.0
    })
    .await;
    assert!(lag >= 0.0);
    assert_eq!(
        value(&scrape(addr).await, "walflow_slot_lag_over_limit", &slot),
        0.0
    );
    assert_eq!(get(addr, "/readyz").await.0, 200);
    fence(&flow).await;
    let copies: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_bulk_copies")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(copies, written);
    flow.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_start_up_the_endpoint_is_alive_but_not_ready() {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    // A free port, taken again by the flow's endpoint.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // The set-up SQL holds the start until the row is deleted.
    db.exec("CREATE TABLE start_gate (id int PRIMARY KEY); INSERT INTO start_gate VALUES (1)")
        .await;
    let mut gate = db.pool.begin().await.unwrap();
    sqlx::query("SELECT * FROM start_gate FOR UPDATE")
        .execute(&mut *gate)
        .await
        .unwrap();
    let starting = tokio::spawn({
        let url = db.url.clone();
        let slot = db.slot("starting");
        async move {
            Walflow::builder()
                .database_url(url)
                .slot_name(slot)
                .operators(["MetricsBulk"])
                .health_interval(Duration::from_millis(100))
                .setup_sql("SELECT * FROM start_gate FOR UPDATE")
                .metrics_endpoint(addr)
                .start()
                .await
                .unwrap()
        }
    });
    // Bounded: the endpoint comes up before the start goes on.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the endpoint did not come up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = get(addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["state"], "starting");
    assert_eq!(json["detail"], "connecting");
    assert!(!starting.is_finished());

    gate.rollback().await.unwrap();
    let flow = starting.await.unwrap();
    common::wait_until(TIMEOUT, || async { flow.health().ready }).await;
    assert_eq!(get(addr, "/readyz").await.0, 200);
    flow.shutdown().await.unwrap();
    // The endpoint is gone with the flow.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_stream_storage_the_depth_is_what_the_executor_holds() {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("memory"))
        .operators(["MetricsHoldMemory"])
        .queue_storage(walflow::config::QueueStorage::Stream)
        .health_interval(Duration::from_millis(100))
        .metrics_endpoint(([127, 0, 0, 1], 0))
        .start()
        .await
        .unwrap();
    let addr = flow.metrics_addr().expect("an endpoint");
    let held = [("operator", "MetricsHoldMemory")];
    db.exec("INSERT INTO metric_held_mem SELECT g FROM generate_series(1, 4) g")
        .await;
    wait_metric(addr, "walflow_queue_rows", &held, |v| v == 4.0).await;
    wait_metric(addr, "walflow_queue_oldest_age_seconds", &held, |v| v > 0.0).await;
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM walflow.queue")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(queued, 0, "the stream storage writes no queue rows");
    MEMORY_GATE.add_permits(1);
    wait_metric(addr, "walflow_queue_rows", &held, |v| v == 0.0).await;
    wait_metric(addr, "walflow_queue_oldest_age_seconds", &held, |v| {
        v == 0.0
    })
    .await;
    assert_eq!(
        value(&scrape(addr).await, "walflow_operator_runs_total", &held),
        4.0
    );
    flow.shutdown().await.unwrap();
}

/// The samples of `name` whose labels include `labels` (present, whatever
/// their value).
fn samples<'a>(
    scrape: &'a prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<&'a prometheus_parse::Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_flow_shows_its_counters_at_zero_and_every_metric_is_described() {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("fresh"))
        .operators(["MetricsFresh"])
        .pubsub(walflow::config::PubSub::Postgres)
        .health_interval(Duration::from_millis(100))
        .metrics_endpoint(([127, 0, 0, 1], 0))
        .start()
        .await
        .unwrap();
    let addr = flow.metrics_addr().expect("an endpoint");

    // Before any event: the operator's counters are there, at 0.
    let s = scrape(addr).await;
    let fresh = [("operator", "MetricsFresh")];
    for name in [
        "walflow_operator_runs_total",
        "walflow_operator_retries_total",
        "walflow_operator_failures_total",
        "walflow_operator_dead_letters_total",
    ] {
        let found = samples(&s, name, &fresh);
        assert_eq!(found.len(), 1, "{name}{fresh:?} is not scraped at start");
        assert!(
            matches!(found[0].value, prometheus_parse::Value::Counter(v) if v == 0.0),
            "{name}{fresh:?}: {:?}",
            found[0].value
        );
    }
    assert_eq!(
        samples(&s, "walflow_commit_to_apply_seconds", &fresh).len(),
        1,
        "the latency histogram is there, empty"
    );
    assert_eq!(value(&s, "walflow_commit_to_apply_seconds", &fresh), 0.0);
    for kind in ["insert", "update", "delete"] {
        let labels = [("table", "public.metric_fresh"), ("kind", kind)];
        let found = samples(&s, "walflow_events_total", &labels);
        assert_eq!(found.len(), 1, "walflow_events_total{labels:?} at start");
    }
    let replication = [("connection", "replication")];
    assert_eq!(
        samples(&s, "walflow_reconnects_total", &replication).len(),
        1
    );
    // Labels name operators, tables, kinds, slots and connections only.
    for sample in &s.samples {
        for (label, _) in sample.labels.iter() {
            assert!(
                ["operator", "table", "kind", "slot", "connection", "le"].contains(&label.as_str()),
                "{} has the label {label}",
                sample.metric
            );
        }
    }

    // With a subscriber, a broadcast transaction and a health reading,
    // every metric has samples; each has its description.
    let _sub = flow.subscribe::<MetricFresh>(Scope::All);
    db.exec("INSERT INTO metric_fresh VALUES (1)").await;
    fence(&flow).await;
    wait_metric(addr, "walflow_operator_runs_total", &fresh, |v| v == 1.0).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let s = loop {
        let s = scrape(addr).await;
        let missing: Vec<_> = walflow::telemetry::METRICS
            .iter()
            .filter(|(name, ..)| !s.samples.iter().any(|x| x.metric.starts_with(name)))
            .map(|(name, ..)| *name)
            .collect();
        if missing.is_empty() {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no samples of {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (_, body) = get(addr, "/metrics").await;
    for (name, _, _, help) in walflow::telemetry::METRICS {
        assert_eq!(
            s.docs.get(*name).map(String::as_str),
            Some(*help),
            "the help of {name} in:\n{body}"
        );
        assert!(
            body.lines().any(|l| l == format!("# HELP {name} {help}")),
            "no `# HELP {name}` line in:\n{body}"
        );
    }
    // Failures still count from there.
    assert_eq!(value(&s, "walflow_operator_failures_total", &fresh), 0.0);
    flow.shutdown().await.unwrap();
}

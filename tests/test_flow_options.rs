//! Flow options and lifecycle on a real PostgreSQL: `durable_slot(false)`
//! (a temporary slot: gone once the flow stops, changes made while it is
//! down are lost), `operator_concurrency` (a limit of 1 is never exceeded,
//! a higher one is used under a backlog), and a flow dropped without
//! `shutdown` (its successor on the slot applies every event exactly once).

#![allow(dead_code)] // struct fields are read through serde

#[path = "common/blog.rs"]
mod blog;
mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Barrier, watch};
use walflow::prelude::*;

const TIMEOUT: Duration = Duration::from_secs(30);

#[event_source(table = "jobs")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Job {
    id: i64,
}

on_event! {
    /// Limited to one unit at a time.
    operator Single {
        events: [insert],
        entities: [Job],
        handler: single,
    }

    /// Limited to `WIDE` units at a time.
    operator Wide {
        events: [insert],
        entities: [Job],
        handler: wide,
    }
}

/// How many units `Wide` may run at once, and meets at its barrier.
const WIDE: usize = 4;
/// Jobs written: a backlog for both operators (whole rounds of `WIDE`).
const JOBS: i64 = 2 * WIDE as i64;

/// Units running now and the most seen at once, per operator.
struct Entries {
    now: AtomicUsize,
    max: AtomicUsize,
    done: AtomicUsize,
}

impl Entries {
    const fn new() -> Self {
        Entries {
            now: AtomicUsize::new(0),
            max: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        }
    }

    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.done.fetch_add(1, Ordering::SeqCst);
    }
}

static SINGLE: Entries = Entries::new();
static WIDE_ENTRIES: Entries = Entries::new();
/// Set by the test once it has seen the backlog wait for `Single`.
static SINGLE_RELEASED: OnceLock<watch::Sender<bool>> = OnceLock::new();
/// `Wide`'s units go on only `WIDE` at a time: fewer running at once never
/// get past it.
static WIDE_BARRIER: OnceLock<Barrier> = OnceLock::new();

fn single_released() -> &'static watch::Sender<bool> {
    SINGLE_RELEASED.get_or_init(|| watch::channel(false).0)
}

/// Holds until the test releases it, so that with a higher limit the next
/// units of the backlog would enter meanwhile.
async fn single(_: Event<Job>, _: Ctx) -> Result<(), std::io::Error> {
    SINGLE.enter();
    let mut released = single_released().subscribe();
    released.wait_for(|r| *r).await.expect("the sender lives");
    SINGLE.leave();
    Ok(())
}

async fn wide(_: Event<Job>, _: Ctx) -> Result<(), std::io::Error> {
    WIDE_ENTRIES.enter();
    WIDE_BARRIER.get_or_init(|| Barrier::new(WIDE)).wait().await;
    WIDE_ENTRIES.leave();
    Ok(())
}

/// The posts' counts of comment events `Tally` recorded.
async fn tally(db: &common::Db) -> BTreeMap<i64, i64> {
    sqlx::query_as::<_, (i64, i64)>("SELECT post_id, n FROM tally")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn processed(flow: &Walflow) {
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, TIMEOUT).await.unwrap();
}

/// The slot's row in `pg_replication_slots`: whether it is temporary.
async fn slot_temporary(db: &common::Db, slot: &str) -> Option<bool> {
    sqlx::query_scalar("SELECT temporary FROM pg_replication_slots WHERE slot_name = $1")
        .bind(slot)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_flow_without_a_durable_slot_streams_through_a_temporary_one() {
    let db = common::db().await;
    db.exec(blog::SCHEMA).await;
    let slot = db.slot("temporary");
    let start = || {
        Walflow::builder()
            .database_url(&db.url)
            .slot_name(&slot)
            .durable_slot(false)
            .operators(["Tally"])
            .start()
    };

    let flow = start().await.expect("the flow starts");
    assert_eq!(slot_temporary(&db, &slot).await, Some(true));
    db.exec("INSERT INTO comments (id, post_id) VALUES (1, 1)")
        .await;
    processed(&flow).await;
    assert_eq!(tally(&db).await, BTreeMap::from([(1, 1)]));
    flow.shutdown().await.unwrap();
    // The slot goes with the session that held it.
    common::wait_until(TIMEOUT, || async {
        slot_temporary(&db, &slot).await.is_none()
    })
    .await;

    // Made while the flow is down: lost.
    db.exec("INSERT INTO comments (id, post_id) VALUES (2, 2)")
        .await;

    let flow = start().await.expect("the flow starts again");
    db.exec("INSERT INTO comments (id, post_id) VALUES (3, 3)")
        .await;
    processed(&flow).await;
    assert_eq!(
        tally(&db).await,
        BTreeMap::from([(1, 1), (3, 1)]),
        "the comment made while the flow was down is not delivered"
    );
    assert!(flow.dead_letters("Tally").await.unwrap().is_empty());
    flow.shutdown().await.unwrap();
    common::wait_until(TIMEOUT, || async {
        slot_temporary(&db, &slot).await.is_none()
    })
    .await;
}

#[tokio::test]
async fn operator_concurrency_limits_each_operator() {
    let db = common::db().await;
    db.exec("CREATE TABLE jobs (id bigint PRIMARY KEY)").await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("concurrency"))
        .operators(["Single", "Wide"])
        .operator_concurrency("Single", 1)
        .operator_concurrency("Wide", WIDE)
        .start()
        .await
        .expect("the flow starts");
    db.exec(&format!(
        "INSERT INTO jobs SELECT i FROM generate_series(1, {JOBS}) i"
    ))
    .await;

    // `Wide` gets through its backlog only by running `WIDE` units at once;
    // `Single` holds its first unit meanwhile.
    common::wait_until(TIMEOUT, || async {
        WIDE_ENTRIES.done.load(Ordering::SeqCst) == JOBS as usize
            && SINGLE.now.load(Ordering::SeqCst) > 0
    })
    .await;
    assert_eq!(WIDE_ENTRIES.max.load(Ordering::SeqCst), WIDE);

    // With the rest of its backlog queued behind that unit, `Single` let
    // none of it in.
    assert_eq!(SINGLE.max.load(Ordering::SeqCst), 1);
    assert_eq!(
        SINGLE.done.load(Ordering::SeqCst),
        0,
        "the backlog waits for `Single`"
    );
    single_released().send_replace(true);
    processed(&flow).await;
    assert_eq!(SINGLE.done.load(Ordering::SeqCst), JOBS as usize);
    assert_eq!(SINGLE.max.load(Ordering::SeqCst), 1);
    flow.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_flow_dropped_without_shutdown_leaves_its_successor_every_event_once() {
    let db = common::db().await;
    db.exec(blog::SCHEMA).await;
    let slot = db.slot("dropped");
    let start = || {
        Walflow::builder()
            .database_url(&db.url)
            .slot_name(&slot)
            .operators(["Tally"])
            .start()
    };
    // Comment `i` on post `1 + i % 4`.
    let comments = |from: i64, to: i64| {
        format!(
            "INSERT INTO comments (id, post_id)
             SELECT i, 1 + i % 4 FROM generate_series({from}, {to}) i"
        )
    };

    let flow = start().await.expect("the flow starts");
    db.exec(&comments(1, 40)).await;
    processed(&flow).await;
    assert_eq!(
        tally(&db).await,
        BTreeMap::from([(1, 10), (2, 10), (3, 10), (4, 10)])
    );
    // More, one transaction each, then the flow is dropped while it may
    // still be receiving, queueing or applying them.
    for i in 41..=80 {
        db.exec(&comments(i, i)).await;
    }
    drop(flow);

    common::wait_slot_released(&db.url, &slot).await;
    let flow = start().await.expect("a new flow starts on the slot");
    db.exec(&comments(81, 120)).await;
    processed(&flow).await;
    assert_eq!(
        tally(&db).await,
        BTreeMap::from([(1, 30), (2, 30), (3, 30), (4, 30)]),
        "every comment counted exactly once"
    );
    assert!(flow.dead_letters("Tally").await.unwrap().is_empty());
    flow.shutdown().await.unwrap();
}

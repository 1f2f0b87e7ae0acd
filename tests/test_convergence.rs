//! Convergence: derived tables equal a from-scratch recompute, and a
//! non-idempotent counter equals the true number of events, under a random
//! multi-statement workload (several events per id per transaction, moves,
//! deletes of parents that cascade to children), one or four writers, with
//! and without `coalesce`, with the runtime killed (`kill -9`) at random
//! moments — starting included.
//!
//! The model: `posts`, `comments (post_id)`, `ratings (comment_id, stars)`;
//! a first-level derived table per comment (`comment_stats`: its post, its
//! ratings count and stars sum), a second level per post built from the
//! first (`post_stats`: a chain), and a counter of post events
//! (`post_events`, `n = n + 1`, never coalesced) checked against a
//! trigger-maintained truth.
//!
//! Sizes are bounded for the test suite; a longer soak is
//! `tests/convergence_soak.rs`. Every run prints its seed;
//! `WALFLOW_SEED=<n>` replays the same statement choices (concurrent
//! writers interleave differently).
//!
//! The model and the run are in `tests/common/convergence.rs`. This target
//! has its own `main` (`harness = false`): the binary is also the child
//! process running the flow until killed.

mod common;
#[path = "common/convergence.rs"]
mod convergence;
#[path = "common/harness.rs"]
mod harness;

use std::process::ExitCode;
use std::time::Duration;

use sqlx::Connection;

use convergence::{Run, SCHEMA, Storage, start};

fn main() -> ExitCode {
    if harness::is_child(convergence::CHILD) {
        return harness::child(convergence::child());
    }
    harness::run(harness::tests![
        one_writer_coalescing,
        one_writer_one_event_at_a_time,
        four_writers_coalescing,
        four_writers_killed_coalescing,
        four_writers_killed_one_event_at_a_time,
        one_writer_killed_coalescing,
        four_writers_postgres_restarted_coalescing,
        four_writers_postgres_restarted_one_event_at_a_time,
        postgres_restarted_immediately_with_async_commit,
        crash_points,
        operators_wait_until_the_transaction_is_visible,
        spilling_four_writers_killed_coalescing,
        spilling_four_writers_killed_one_event_at_a_time,
        spilling_four_writers_postgres_restarted_one_event_at_a_time,
        spilling_crash_points,
        durable_four_writers_killed_one_event_at_a_time,
        durable_four_writers_postgres_restarted_coalescing,
        durable_crash_points,
    ])
}

const TXNS: u64 = 600;

/// One test per configuration: writers, kills, `coalesce`, PostgreSQL
/// restarts, and the queue storage: the default (the stream storage, or
/// the one `WALFLOW_QUEUE_STORAGE` names), the stream storage with small
/// spill bounds (`spilling_*`: operators spill and return all the time), or
/// the durable queue (`durable_*`).
macro_rules! runs {
    ($($name:ident: $writers:expr, $kills:expr, $coalesce:expr, $restarts:expr, $storage:ident;)*) => {$(
        async fn $name() {
            Run {
                writers: $writers,
                transactions: TXNS,
                kills: $kills,
                coalesce: $coalesce,
                restarts: $restarts,
                async_commit: false,
                crash_at: None,
                storage: Storage::$storage,
            }
            .go()
            .await;
        }
    )*};
}

runs! {
    one_writer_coalescing: 1, 0, true, false, Default;
    one_writer_one_event_at_a_time: 1, 0, false, false, Default;
    four_writers_coalescing: 4, 0, true, false, Default;
    four_writers_killed_coalescing: 4, 4, true, false, Default;
    // A non-idempotent counter exact across eight `kill -9`s.
    four_writers_killed_one_event_at_a_time: 4, 8, false, false, Default;
    one_writer_killed_coalescing: 1, 4, true, false, Default;
    four_writers_postgres_restarted_coalescing: 4, 0, true, true, Default;
    four_writers_postgres_restarted_one_event_at_a_time: 4, 0, false, true, Default;
    spilling_four_writers_killed_coalescing: 4, 4, true, false, Spilling;
    spilling_four_writers_killed_one_event_at_a_time: 4, 4, false, false, Spilling;
    spilling_four_writers_postgres_restarted_one_event_at_a_time: 4, 0, false, true, Spilling;
    durable_four_writers_killed_one_event_at_a_time: 4, 4, false, false, Durable;
    durable_four_writers_postgres_restarted_coalescing: 4, 0, true, true, Durable;
}

/// The server commits asynchronously (`synchronous_commit = off`, a 10 s
/// WAL writer delay) and is restarted in immediate mode right after the
/// flow acknowledged a transaction: walflow's own commits are durable
/// nonetheless, so nothing acknowledged is lost.
async fn postgres_restarted_immediately_with_async_commit() {
    Run {
        writers: 4,
        transactions: TXNS,
        kills: 0,
        coalesce: false,
        restarts: true,
        async_commit: true,
        crash_at: None,
        storage: Storage::Default,
    }
    .go()
    .await;
}

/// Each crash point of the queue protocol the default storage meets, under
/// the random workload: the flow dies there (as `kill -9` would) three
/// times, on a random hit. With the default spill bounds, which this
/// workload may never reach, the spill's own points are
/// `spilling_crash_points`'.
async fn crash_points() {
    let stream = Storage::Default.stream();
    let points: Vec<&'static str> = walflow::crash_point::POINTS
        .iter()
        .copied()
        .filter(|p| !stream || !matches!(*p, "stream.spilled" | "stream.returned"))
        .collect();
    crash_points_of(Storage::Default, &points).await;
}

/// The crash points whose meaning the stream storage changes, with small
/// spill bounds: around a unit's commit (nothing but the progress record
/// says it applied), the acknowledgements (the slot's position is what
/// units applied or spilled), the skip of what is delivered again, in the
/// middle of a spill and as an operator returns from the queue to memory.
async fn spilling_crash_points() {
    crash_points_of(
        Storage::Spilling,
        &[
            "unit.before_commit",
            "unit.after_commit",
            "queue.acked",
            "stream.acked",
            "stream.skipped",
            "stream.spilled",
            "stream.returned",
        ],
    )
    .await;
}

/// Each crash point the durable queue meets.
async fn durable_crash_points() {
    crash_points_of(Storage::Durable, walflow::crash_point::POINTS).await;
}

/// The crash points the storage meets: the stream storage reads nothing
/// back from the queue, and acknowledges and skips what the durable queue
/// does not.
async fn crash_points_of(storage: Storage, points: &[&'static str]) {
    let stream = storage.stream();
    // `WALFLOW_CRASH_POINT=<point>` runs that one alone.
    let only = std::env::var("WALFLOW_CRASH_POINT").ok();
    for point in points {
        if only.as_deref().is_some_and(|p| p != *point) {
            continue;
        }
        let met = if stream {
            *point != "executor.fetched"
        } else {
            !point.starts_with("stream.")
        };
        if !met {
            continue;
        }
        eprintln!("crash point `{point}`");
        // One event at a time, transactions of 60,000 comments take
        // long to drain; the chunks are queued alike either way.
        let modes: &[bool] = if *point == "queue.partial" {
            &[true]
        } else {
            &[true, false]
        };
        for &coalesce in modes {
            Run {
                writers: 2,
                transactions: 300,
                kills: if *point == "queue.partial" { 2 } else { 3 },
                coalesce,
                restarts: false,
                async_commit: false,
                crash_at: Some(point),
                storage,
            }
            .go()
            .await;
        }
    }
}

/// The commit of a transaction is flushed and sent before the transaction
/// is visible; with synchronous replication, until the standby confirms.
/// Here the standby does not exist: the writer's commit is decoded while
/// the writer waits, invisible, until the test cancels the wait. No
/// operator may run on it before (the counter, which reads no source row,
/// would count it at once), and every operator runs on it after.
async fn operators_wait_until_the_transaction_is_visible() {
    // A cluster of its own: the synchronous standby setting is server-wide.
    let pg = walflow::embedded::EmbeddedPostgres::builder()
        .setting("synchronous_standby_names", "walflow_absent_standby")
        // walflow's own commits do not wait; the writer's alone does.
        .setting("synchronous_commit", "local")
        .setting("track_functions", "pl")
        .start()
        .await
        .unwrap();
    let url = pg.create_database("visibility").await.unwrap();
    let db = common::Db::connect(&url).await;
    db.exec(SCHEMA).await;
    let slot = db.slot("visibility");
    let flow = start(&url, &slot, true).await;
    db.exec("INSERT INTO posts (id, title) VALUES (1, 'p'); INSERT INTO comments (id, post_id) VALUES (1, 1);")
        .await;
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(30))
        .await
        .unwrap();
    let counted = || async {
        sqlx::query_scalar::<_, i64>("SELECT n FROM post_events WHERE post_id = 1")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    assert_eq!(counted().await, 1);

    // The writer's commit waits for the absent standby.
    let mut writer = sqlx::PgConnection::connect(&url).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut writer)
        .await
        .unwrap();
    let write = tokio::spawn(async move {
        sqlx::raw_sql(
            "SET synchronous_commit = on;
             BEGIN;
             UPDATE posts SET title = 'retitled' WHERE id = 1;
             INSERT INTO comments (id, post_id) VALUES (2, 1);
             INSERT INTO ratings (comment_id, stars) VALUES (2, 5);
             COMMIT;",
        )
        .execute(&mut writer)
        .await
        .unwrap();
    });
    common::wait_until(Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep')",
        )
        .bind(pid)
        .fetch_one(&db.pool)
        .await
        .unwrap()
    })
    .await;
    // Its commit record is flushed: everything up to here is sent to the
    // flow, and the flow finds the transaction invisible, again and again.
    let committed = flow.current_lsn().await.unwrap();
    let polls = || async {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT sum(calls)::int8 FROM pg_stat_user_functions WHERE funcname = 'invisible_xids'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
        .unwrap_or(0)
    };
    common::wait_until(Duration::from_secs(30), || async { polls().await >= 3 }).await;
    let visible: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM comments WHERE id = 2)")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!visible, "the writer's transaction is not visible yet");
    assert_eq!(
        counted().await,
        1,
        "no operator ran on the invisible transaction"
    );
    let queued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM walflow.queue WHERE commit_lsn <= $1::text::pg_lsn - '0/0'::pg_lsn",
    )
    .bind(committed.to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(queued, 0, "nothing of it is queued while it is invisible");

    // Cancelling the wait makes it visible ("already committed locally").
    sqlx::query("SELECT pg_cancel_backend($1)")
        .bind(pid)
        .execute(&db.pool)
        .await
        .unwrap();
    write.await.unwrap();
    flow.wait_processed(committed, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(counted().await, 2, "the counter ran once on it");
    let stats: (String, i64, i64, i64) = sqlx::query_as(
        "SELECT title, comments_count, ratings_count, stars_sum FROM post_stats WHERE id = 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        stats,
        ("retitled".to_owned(), 2, 1, 5),
        "both levels saw it"
    );
    flow.shutdown().await.unwrap();
}

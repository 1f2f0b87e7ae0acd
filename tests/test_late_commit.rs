//! The stream storage's record barrier (rule 12 of the queue protocol): a
//! killed flow's unit whose `COMMIT` was sent but not yet done commits
//! after the next flow on the slot started. The next flow's start waits
//! for it, then reads its progress record, so the event it applied is not
//! applied again.
//!
//! The late commit is made deterministic: a deferred constraint trigger on
//! the handler's table takes an advisory lock the test holds, so the
//! unit's `COMMIT` waits in the server. The flow that sent it (a child
//! process) is killed with SIGKILL meanwhile; its server session keeps
//! waiting, the lock still held, until the test lets it go.
//!
//! Its own `main` (`harness = false`): the binary is also the child.

#![allow(dead_code)] // struct fields are read through serde

mod common;
#[path = "common/harness.rs"]
mod harness;

use std::process::ExitCode;
use std::process::{Command, Stdio};
use std::time::Duration;

use walflow::config::QueueStorage;
use walflow::prelude::*;

const CHILD: &str = "WALFLOW_TEST_LATE_COMMIT_CHILD";

/// The advisory lock the deferred trigger waits for.
const HOLD: i64 = 424_242;

const SCHEMA: &str = "
CREATE TABLE late_jobs (id bigint PRIMARY KEY);
CREATE TABLE late_done (id bigint PRIMARY KEY, n int NOT NULL);
CREATE FUNCTION late_hold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(424242);
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER late_hold AFTER INSERT OR UPDATE ON late_done
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION late_hold();
";

/// A job.
#[event_source(table = "late_jobs")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LateJob {
    /// Its id.
    pub id: i64,
}

on_event! {
    /// Counts each job in `late_done`, through the unit's transaction.
    operator LateJobs {
        events: [insert],
        entities: [LateJob],
        id: [LateJob.id],
        handler: late_job,
    }
}

async fn late_job(event: Event<LateJob>, ctx: Ctx) -> Result<(), walflow::BoxError> {
    let mut tx = ctx.transaction().await?;
    sqlx::query(
        "INSERT INTO late_done (id, n) VALUES ($1, 1)
         ON CONFLICT (id) DO UPDATE SET n = late_done.n + 1",
    )
    .bind(event.record().expect("row").id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn start(url: &str, slot: &str) -> walflow::WalflowBuilder {
    Walflow::builder()
        .database_url(url)
        .slot_name(slot)
        .queue_storage(QueueStorage::Stream)
        .operators(["LateJobs"])
}

fn main() -> ExitCode {
    if harness::is_child(CHILD) {
        return harness::child(child());
    }
    harness::run(harness::tests![
        a_unit_that_commits_after_its_flow_was_killed_is_not_applied_again
    ])
}

/// In the child process (the test binary run again): a flow on the slot,
/// `READY` once started, then nothing until killed.
async fn child() {
    let url = std::env::var("URL").unwrap();
    let slot = std::env::var("SLOT").unwrap();
    let _flow = start(&url, &slot).start().await.expect("the flow starts");
    println!("READY");
    std::future::pending::<()>().await;
}

async fn scalar_bool(db: &common::Db, sql: &str, slot: &str) -> bool {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(slot)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn a_unit_that_commits_after_its_flow_was_killed_is_not_applied_again() {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let slot = db.slot("late");
    // The slot and publication exist; the test holds the trigger's lock.
    start(&db.url, &slot)
        .start()
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    let mut holder = db.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(HOLD)
        .execute(&mut *holder)
        .await
        .unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .env("URL", &db.url)
        .env("SLOT", &slot)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_ready(&mut child).await;
    db.exec("INSERT INTO late_jobs VALUES (1)").await;
    // The child's unit applied job 1, wrote its record and sent `COMMIT`,
    // which waits for the test's lock.
    common::wait_until(Duration::from_secs(60), || async {
        scalar_bool(
            &db,
            "SELECT EXISTS (SELECT 1 FROM pg_locks
                            WHERE locktype = 'advisory' AND objid = $1::int8::oid
                              AND objsubid = 1 AND NOT granted)",
            &HOLD.to_string(),
        )
        .await
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    common::wait_until(Duration::from_secs(60), || async {
        !scalar_bool(
            &db,
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &slot,
        )
        .await
    })
    .await;

    // The next flow's start waits for the killed flow's unit.
    let next = tokio::spawn(start(&db.url, &slot).start());
    common::wait_until(Duration::from_secs(60), || async {
        scalar_bool(
            &db,
            "SELECT EXISTS (SELECT 1 FROM pg_locks
                            WHERE locktype = 'advisory' AND objsubid = 2 AND NOT granted
                              AND mode = 'ExclusiveLock'
                              AND classid = hashtext('walflow.applied')::oid
                              AND objid = hashtext($1)::oid)",
            &slot,
        )
        .await
    })
    .await;
    assert!(!next.is_finished(), "the start waits at the record barrier");
    let n: Option<i32> = sqlx::query_scalar("SELECT n FROM late_done WHERE id = 1")
        .fetch_optional(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, None, "the killed flow's unit has not committed yet");

    // Let it commit: the next flow starts, finds its record, and skips
    // job 1, delivered again.
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(HOLD)
        .execute(&mut *holder)
        .await
        .unwrap();
    let flow = tokio::time::timeout(Duration::from_secs(60), next)
        .await
        .expect("the flow starts once the late unit committed")
        .unwrap()
        .expect("the flow starts");
    db.exec("INSERT INTO late_jobs VALUES (2)").await;
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(60))
        .await
        .unwrap();
    let done: Vec<(i64, i32)> = sqlx::query_as("SELECT id, n FROM late_done ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(done, vec![(1, 1), (2, 1)], "each job once");
    flow.shutdown().await.unwrap();
}

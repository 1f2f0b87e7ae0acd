//! Failing operators: the retry schedule, a poison event dead-lettered while
//! other ids and operators go on (then replayed), a panicking handler, a row
//! that does not decode, a failing query.

#![allow(dead_code)] // struct fields are read through serde

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use walflow::Position;
use walflow::config::{ErrorLogger, FailureInfo, RetryInfo};
use walflow::prelude::*;

#[event_source(table = "jobs")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Job {
    id: i64,
    name: String,
}

#[event_source(table = "job_copies")]
#[derive(Debug, Clone, serde::Deserialize)]
struct JobCopy {
    id: i64,
    name: String,
}

#[event_source(table = "gadgets")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Gadget {
    id: i64,
    label: i32,
}

on_event! {
    operator Flaky {
        events: [insert],
        entities: [Job],
        handler: flaky,
    }

    operator Panicky {
        events: [insert],
        entities: [Job],
        handler: panicky,
    }

    operator CopyJobs for JobCopy {
        events: all,
        entities: [Job],
        delete_with: [Job],
        query: "INSERT INTO job_copies SELECT id, name FROM jobs WHERE id = $1
                ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name",
    }

    operator FailingQuery for JobCopy {
        events: [insert],
        entities: [Job],
        query: "UPDATE job_copies SET name = name WHERE id = 1 / ($1::bigint - 5)",
    }

    /// A misspelled column: the server points into the query.
    operator MisspelledQuery for JobCopy {
        events: [insert],
        entities: [Job],
        query: "UPDATE job_copies SET name = nmae WHERE id = $1",
    }

    operator Strict {
        events: all,
        entities: [Gadget],
        handler: strict,
    }
}

/// Ids `flaky` fails on.
static POISONED: Mutex<Option<HashSet<i64>>> = Mutex::new(None);
/// When `flaky` was called, per id.
static FLAKY_CALLS: Mutex<Option<HashMap<i64, Vec<Instant>>>> = Mutex::new(None);
/// When `flaky` succeeded, per id.
static FLAKY_DONE: Mutex<Option<HashMap<i64, Instant>>> = Mutex::new(None);
/// The event id `flaky` was called with, per job id and call.
static FLAKY_IDS: Mutex<Option<HashMap<i64, Vec<Position>>>> = Mutex::new(None);
static PANICKY_DONE: Mutex<Vec<i64>> = Mutex::new(Vec::new());

async fn flaky(event: Event<Job>, ctx: Ctx) -> Result<(), std::io::Error> {
    let id = event.record().unwrap().id;
    assert_eq!(event.id(), ctx.position());
    FLAKY_IDS
        .lock()
        .unwrap()
        .get_or_insert_default()
        .entry(id)
        .or_default()
        .push(event.id());
    FLAKY_CALLS
        .lock()
        .unwrap()
        .get_or_insert_default()
        .entry(id)
        .or_default()
        .push(Instant::now());
    if POISONED
        .lock()
        .unwrap()
        .get_or_insert_default()
        .contains(&id)
    {
        return Err(std::io::Error::other(format!("job {id} is poison")));
    }
    FLAKY_DONE
        .lock()
        .unwrap()
        .get_or_insert_default()
        .insert(id, Instant::now());
    Ok(())
}

async fn panicky(event: Event<Job>, _ctx: Ctx) -> Result<(), std::io::Error> {
    let id = event.record().unwrap().id;
    if id == 10 {
        panic!("job 10 makes the handler panic");
    }
    PANICKY_DONE.lock().unwrap().push(id);
    Ok(())
}

async fn strict(_event: Event<Gadget>, _ctx: Ctx) -> Result<(), std::io::Error> {
    Ok(())
}

/// What the error logger was told: (operator, attempt, next wait or None
/// for the final failure).
static LOGGED: Mutex<Vec<(String, u32, Option<Duration>)>> = Mutex::new(Vec::new());

struct Recorder;

impl ErrorLogger for Recorder {
    fn log_retry(&self, info: &RetryInfo<'_>) {
        LOGGED
            .lock()
            .unwrap()
            .push((info.operator.to_owned(), info.attempt, Some(info.next_wait)));
    }
    fn log_failed(&self, info: &FailureInfo<'_>) {
        LOGGED
            .lock()
            .unwrap()
            .push((info.operator.to_owned(), info.attempt, None));
    }
}

const SCHEMA: &str = "
    CREATE TABLE jobs (id bigint PRIMARY KEY, name text NOT NULL);
    CREATE TABLE job_copies (id bigint PRIMARY KEY, name text NOT NULL);
    CREATE TABLE gadgets (id bigint PRIMARY KEY, label text NOT NULL);
";

async fn fence(flow: &Walflow) {
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(30))
        .await
        .unwrap();
}

fn logged(op: &str) -> Vec<(u32, Option<Duration>)> {
    LOGGED
        .lock()
        .unwrap()
        .iter()
        .filter(|(o, _, _)| o == op)
        .map(|(_, a, w)| (*a, *w))
        .collect()
}

#[tokio::test]
async fn poison_event_follows_the_retry_schedule_then_is_dead_lettered_and_replayed() {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    POISONED.lock().unwrap().get_or_insert_default().insert(1);
    let ms = Duration::from_millis;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("poison"))
        .min_restart_time(ms(50))
        .backoff_multiplicator(2.0)
        .max_restart_time(ms(120))
        .max_retries(3)
        .error_logger(Recorder)
        .operators(["Flaky", "CopyJobs"])
        .start()
        .await
        .unwrap();
    db.exec("INSERT INTO jobs VALUES (1, 'poison'), (2, 'b'), (3, 'c')")
        .await;
    fence(&flow).await;

    // 1 + max_retries attempts, waits 50, 100, then capped at 120 ms.
    let calls = FLAKY_CALLS.lock().unwrap().as_ref().unwrap()[&1].clone();
    assert_eq!(calls.len(), 4, "{calls:?}");
    for (gap, want) in calls.windows(2).zip([ms(50), ms(100), ms(120)]) {
        let gap = gap[1] - gap[0];
        assert!(
            gap >= want && gap < want + ms(500),
            "gap {gap:?}, want {want:?}"
        );
    }
    assert_eq!(
        logged("Flaky"),
        vec![
            (1, Some(ms(50))),
            (2, Some(ms(100))),
            (3, Some(ms(120))),
            (4, None)
        ]
    );
    // The other ids did not wait for the poison one to be given up.
    let done = FLAKY_DONE.lock().unwrap().clone().unwrap();
    assert!(done[&2] < calls[3] && done[&3] < calls[3]);
    // The other operator applied everything.
    let copies: i64 = sqlx::query_scalar("SELECT count(*) FROM job_copies")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(copies, 3);

    let dead = flow.dead_letters("Flaky").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].mapped_id, "1");
    assert_eq!(dead[0].table, "public.jobs");
    assert_eq!(dead[0].attempts, 4);
    assert!(
        dead[0].error.contains("job 1 is poison"),
        "{}",
        dead[0].error
    );
    assert!(flow.dead_letters("CopyJobs").await.unwrap().is_empty());

    // Fixed: replay it.
    POISONED.lock().unwrap().get_or_insert_default().remove(&1);
    assert!(flow.retry_dead_letter(dead[0].id).await.unwrap());
    assert!(!flow.retry_dead_letter(dead[0].id).await.unwrap());
    fence(&flow).await;
    assert!(
        FLAKY_DONE
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .contains_key(&1)
    );
    assert!(flow.dead_letters("Flaky").await.unwrap().is_empty());

    // Every delivery of job 1's insert, the retries and the replay read
    // back from the dead letters, carried one id: the dead letter's.
    let ids = FLAKY_IDS.lock().unwrap().clone().unwrap();
    assert_eq!(ids[&1].len(), 5, "{ids:?}");
    assert!(ids[&1].iter().all(|id| *id == dead[0].position), "{ids:?}");
    assert!(ids[&2][0] != dead[0].position && ids[&2][0] != ids[&3][0]);
    flow.shutdown().await.unwrap();
}

#[tokio::test]
async fn panicking_handler_does_not_take_the_runtime_down() {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("panic"))
        .min_restart_time(Duration::from_millis(20))
        .max_retries(1)
        .operators(["Panicky"])
        .start()
        .await
        .unwrap();
    db.exec("INSERT INTO jobs VALUES (10, 'boom'), (11, 'fine')")
        .await;
    fence(&flow).await;
    let dead = flow.dead_letters("Panicky").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    assert!(
        dead[0].error.contains("panicked") && dead[0].error.contains("job 10"),
        "{}",
        dead[0].error
    );
    // Still running.
    db.exec("INSERT INTO jobs VALUES (12, 'after')").await;
    fence(&flow).await;
    let mut done = PANICKY_DONE.lock().unwrap().clone();
    done.sort();
    assert_eq!(done, vec![11, 12]);
    flow.shutdown().await.unwrap();
}

#[tokio::test]
async fn undecodable_row_and_failing_query_are_dead_lettered() {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("decode"))
        .min_restart_time(Duration::from_millis(10))
        .max_retries(2)
        .operators(["Strict", "FailingQuery", "CopyJobs", "MisspelledQuery"])
        .start()
        .await
        .unwrap();
    db.exec("INSERT INTO gadgets VALUES (1, 'not a number')")
        .await;
    db.exec("INSERT INTO jobs VALUES (4, 'a'), (5, 'b'), (6, 'c')")
        .await;
    fence(&flow).await;

    // Not retried: retrying cannot make it fit.
    let dead = flow.dead_letters("Strict").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 1);
    let error = &dead[0].error;
    assert!(
        error.contains("gadgets") && error.contains("label") && error.contains("i32"),
        "{error}"
    );

    // A failing query: retried, dead-lettered with the database's error,
    // the other ids applied.
    let dead = flow.dead_letters("FailingQuery").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].mapped_id, "5");
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0].error.contains("division by zero"),
        "{}",
        dead[0].error
    );
    // The server's message and SQLSTATE, not PostgreSQL's C source line.
    assert!(
        dead[0].error.contains("(SQLSTATE 22012)"),
        "{}",
        dead[0].error
    );
    assert!(!dead[0].error.contains(" at line "), "{}", dead[0].error);

    // Where in the operator's query the server points.
    let dead = flow.dead_letters("MisspelledQuery").await.unwrap();
    assert_eq!(dead.len(), 3, "{dead:?}");
    let error = &dead[0].error;
    assert!(error.contains("column \"nmae\" does not exist"), "{error}");
    assert!(
        error.contains(
            "at character 30 of the query: \"UPDATE job_copies SET name = →nmae WHERE id = $1\""
        ),
        "{error}"
    );
    assert!(error.contains("(SQLSTATE 42703)"), "{error}");
    flow.shutdown().await.unwrap();
}

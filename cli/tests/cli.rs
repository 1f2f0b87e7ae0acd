//! The `walflow` command end to end, against a running flow on a throwaway
//! PostgreSQL: a handler operator fails on "poison" jobs while a flag is
//! set, so dead letters are made, then every command is run as a user
//! would.

#![allow(dead_code)] // struct fields are read through serde

use std::process::Output;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use assert_cmd::prelude::*;
use predicates::prelude::*;
use serde_json::Value as Json;
use sqlx::PgPool;
use walflow::admin::{self, RequestState};
use walflow::embedded::{TestDatabase, test_database};
use walflow::prelude::*;

#[event_source(table = "jobs")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Job {
    id: i64,
    name: String,
}

on_event! {
    operator Flaky {
        events: [insert],
        entities: [Job],
        handler: flaky,
    }
}

/// While set, `flaky` fails on jobs named `poison`.
static POISON: AtomicBool = AtomicBool::new(true);
/// The jobs `flaky` succeeded on.
static DONE: Mutex<Vec<i64>> = Mutex::new(Vec::new());

async fn flaky(event: Event<Job>, _ctx: Ctx) -> Result<(), std::io::Error> {
    let job = event.record().expect("an insert carries its row");
    if POISON.load(Ordering::SeqCst) && job.name == "poison" {
        return Err(std::io::Error::other(format!("job {} is poison", job.id)));
    }
    DONE.lock().unwrap().push(job.id);
    Ok(())
}

fn done(id: i64) -> bool {
    DONE.lock().unwrap().contains(&id)
}

/// Runs `walflow` with `args` on the database at `url` (the slot given in
/// `args` when needed), without a terminal, off the runtime's threads.
async fn walflow(url: &str, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_walflow"));
    cmd.env_remove("DATABASE_URL")
        .env_remove("WALFLOW_SLOT_NAME")
        .arg("--database-url")
        .arg(url)
        .args(args);
    tokio::task::spawn_blocking(move || cmd.output().expect("walflow runs"))
        .await
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts the command succeeded and returns its standard output.
fn ok(out: Output) -> String {
    let text = stdout(&out);
    out.assert().success();
    text
}

/// Asserts the command failed with exit status 1 and one `error: ` line
/// containing `needle`.
fn fails(out: Output, needle: &str) {
    out.assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::starts_with("error: "))
        .stderr(predicate::str::contains(needle))
        .stderr(predicate::str::contains("panicked").not());
}

/// Polls `cond` until it holds, failing after `timeout`.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn dead_ids(pool: &PgPool, slot: &str) -> Vec<i64> {
    admin::dead_letters(pool, slot, None)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect()
}

async fn wait_dead_letters(pool: &PgPool, slot: &str, n: usize) -> Vec<i64> {
    wait_until(
        &format!("{n} dead letters"),
        Duration::from_secs(30),
        || async { dead_ids(pool, slot).await.len() == n },
    )
    .await;
    dead_ids(pool, slot).await
}

async fn slot_active(pool: &PgPool, slot: &str) -> bool {
    sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
        .bind(slot)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn fresh() -> (TestDatabase, PgPool) {
    let db = test_database().await.expect("a test database");
    let pool = db.pool().await.expect("a pool on it");
    (db, pool)
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_against_a_running_flow() {
    let (db, pool) = fresh().await;
    let url = db.url().to_owned();
    let slot = db.name().to_owned();
    let s = slot.as_str();
    exec(
        &pool,
        "CREATE TABLE jobs (id bigint PRIMARY KEY, name text NOT NULL)",
    )
    .await;
    let ms = Duration::from_millis;
    let flow = Walflow::builder()
        .database_url(&url)
        .slot_name(&slot)
        .min_restart_time(ms(10))
        .max_restart_time(ms(20))
        .max_retries(1)
        .operators(["Flaky"])
        .start()
        .await
        .unwrap();
    exec(
        &pool,
        "INSERT INTO jobs VALUES (1, 'poison'), (2, 'poison'), (3, 'fine')",
    )
    .await;
    let dead = wait_dead_letters(&pool, s, 2).await;
    wait_until("job 3 handled", Duration::from_secs(30), || async {
        done(3)
    })
    .await;
    // The dead letters of job 1 and job 2 (ids in the order they failed).
    let of_job = |job: &str, letters: &[admin::DeadLetterSummary]| {
        letters.iter().find(|d| d.mapped_id == job).unwrap().id
    };
    let letters = admin::dead_letters(&pool, s, None).await.unwrap();
    let (first, second) = (of_job("1", &letters), of_job("2", &letters));

    // status, as a table and as JSON.
    let human = ok(walflow(&url, &["--slot", s, "status"]).await);
    assert!(
        human.contains(&format!("slot {s}: active, held by pid")),
        "{human}"
    );
    assert!(
        human.contains("Flaky") && human.contains("dead_letters"),
        "{human}"
    );
    let status: Json =
        serde_json::from_str(&ok(walflow(&url, &["--slot", s, "status", "--json"]).await))
            .expect("status --json is JSON");
    assert_eq!(status["slot"]["name"], s);
    assert_eq!(status["slot"]["active"], true);
    let pid = status["slot"]["active_pid"].as_i64().expect("a pid");
    assert_eq!(status["holder"]["pid"].as_i64(), Some(pid));
    assert!(status["slot"]["lag_bytes"].is_i64(), "{status}");
    assert!(status["enqueued_lsn"].is_string(), "{status}");
    let ops = status["operators"].as_array().unwrap();
    assert_eq!(ops.len(), 1, "{status}");
    assert_eq!(ops[0]["name"], "Flaky");
    assert_eq!(ops[0]["in_flow"], true);
    assert_eq!(ops[0]["queued"], 0);
    assert_eq!(ops[0]["dead_letters"], 2);
    assert_eq!(ops[0]["state"], "dead_letters");

    // dead-letters list and show.
    let list = ok(walflow(&url, &["--slot", s, "dead-letters", "list"]).await);
    assert!(
        list.contains("job 1 is poison") && list.contains("job 2 is poison"),
        "{list}"
    );
    let listed: Json = serde_json::from_str(&ok(walflow(
        &url,
        &[
            "--slot",
            s,
            "dead-letters",
            "list",
            "--operator",
            "Flaky",
            "--json",
        ],
    )
    .await))
    .unwrap();
    let listed: Vec<i64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, dead);
    fails(
        walflow(
            &url,
            &["--slot", s, "dead-letters", "list", "--operator", "Nope"],
        )
        .await,
        "no operator `Nope` on slot",
    );
    let shown = ok(walflow(
        &url,
        &["--slot", s, "dead-letters", "show", &first.to_string()],
    )
    .await);
    assert!(shown.contains("operator:  Flaky"), "{shown}");
    assert!(shown.contains("job 1 is poison"), "{shown}");
    assert!(
        shown.contains("event:") && shown.contains("\"poison\""),
        "{shown}"
    );
    fails(
        walflow(&url, &["--slot", s, "dead-letters", "show", "987654"]).await,
        "no dead letter 987654 on slot",
    );

    // discard: one more poison job, discarded; unknown ids discard nothing.
    exec(&pool, "INSERT INTO jobs VALUES (4, 'poison')").await;
    let third = *wait_dead_letters(&pool, s, 3).await.last().unwrap();
    fails(
        walflow(
            &url,
            &[
                "--slot",
                s,
                "dead-letters",
                "discard",
                &third.to_string(),
                "987654",
            ],
        )
        .await,
        "no dead letter 987654 on slot",
    );
    assert_eq!(dead_ids(&pool, s).await.len(), 3);
    fails(
        walflow(
            &url,
            &[
                "--slot",
                s,
                "dead-letters",
                "discard",
                &third.to_string(),
                "--operator",
                "Other",
            ],
        )
        .await,
        "no operator `Other`",
    );
    let out = ok(walflow(
        &url,
        &["--slot", s, "dead-letters", "discard", &third.to_string()],
    )
    .await);
    assert_eq!(out, "discarded 1 dead letter\n");
    assert_eq!(dead_ids(&pool, s).await, dead);

    // retry: refused for unknown ids, then by id and --all once the
    // handler succeeds.
    POISON.store(false, Ordering::SeqCst);
    fails(
        walflow(&url, &["--slot", s, "dead-letters", "retry", "987654"]).await,
        "no dead letter 987654",
    );
    let out = ok(walflow(
        &url,
        &["--slot", s, "dead-letters", "retry", &first.to_string()],
    )
    .await);
    assert!(out.contains("retried 1 dead letter"), "{out}");
    wait_until("job 1 handled", Duration::from_secs(30), || async {
        done(1)
    })
    .await;
    assert_eq!(dead_ids(&pool, s).await, vec![second]);

    // A request the flow cannot do ends failed, saying why.
    let request: i64 = sqlx::query_scalar(
        "INSERT INTO walflow.requests (slot, kind, dead_letter_ids)
         VALUES ($1, 'retry_dead_letters', '{987654}') RETURNING id",
    )
    .bind(s)
    .fetch_one(&pool)
    .await
    .unwrap();
    wait_until("the request failed", Duration::from_secs(30), || async {
        admin::request_progress(&pool, request).await.unwrap().state == RequestState::Failed
    })
    .await;
    let progress = admin::request_progress(&pool, request).await.unwrap();
    assert!(
        progress
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("no dead letter 987654"),
        "{progress:?}"
    );

    let out = ok(walflow(
        &url,
        &[
            "--slot",
            s,
            "dead-letters",
            "retry",
            "--all",
            "--operator",
            "Flaky",
        ],
    )
    .await);
    assert!(out.contains("retried 1 dead letter"), "{out}");
    wait_until("job 2 handled", Duration::from_secs(30), || async {
        done(2)
    })
    .await;
    assert!(dead_ids(&pool, s).await.is_empty());
    let status: Json =
        serde_json::from_str(&ok(walflow(&url, &["--slot", s, "status", "--json"]).await)).unwrap();
    assert_eq!(status["operators"][0]["dead_letters"], 0);
    assert_eq!(status["operators"][0]["state"], "caught_up");

    // The slot cannot be dropped while the flow holds it.
    fails(
        walflow(&url, &["--slot", s, "slot", "drop", "--yes"]).await,
        &format!("slot `{s}` is in use by process {pid}"),
    );

    flow.shutdown().await.unwrap();
    wait_until("the slot released", Duration::from_secs(30), || async {
        !slot_active(&pool, s).await
    })
    .await;

    // No flow: a retry is refused, saying who does it.
    fails(
        walflow(&url, &["--slot", s, "dead-letters", "retry", "--all"]).await,
        &format!("no flow holds slot `{s}`: the flow that owns the operators does the retry"),
    );
    let status = ok(walflow(&url, &["--slot", s, "status"]).await);
    assert!(status.contains("inactive: no flow holds it"), "{status}");

    // slot drop: without a terminal, only with --yes.
    fails(
        walflow(&url, &["--slot", s, "slot", "drop"]).await,
        "pass --yes",
    );
    let out = ok(walflow(&url, &["--slot", s, "slot", "drop", "--yes"]).await);
    assert_eq!(out, format!("dropped slot {s}\n"));
    fails(
        walflow(&url, &["--slot", s, "status"]).await,
        &format!("no replication slot `{s}` in this database; its slots: none"),
    );
    fails(
        walflow(&url, &["--slot", s, "slot", "drop", "--yes"]).await,
        &format!("no replication slot `{s}`"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_every_version_once() {
    let (db, pool) = fresh().await;
    let out = ok(walflow(db.url(), &["migrate"]).await);
    assert_eq!(out, "applied migrations 1, 2, 3, 4, 5\n");
    let out = ok(walflow(db.url(), &["migrate"]).await);
    assert_eq!(out, "the walflow schema is up to date (version 5)\n");
    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM walflow.migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_schema_or_behind_it_the_error_says_what_to_do() {
    let (db, pool) = fresh().await;
    let out = walflow(db.url(), &["status"]).await;
    out.assert().code(1).stdout("").stderr(
        "error: no walflow tables in this database; start a flow once, or run `walflow migrate`\n",
    );
    fails(
        walflow(db.url(), &["dead-letters", "list"]).await,
        "no walflow tables in this database",
    );
    walflow::migrate::migrate(&pool).await.unwrap();
    exec(&pool, "DELETE FROM walflow.migrations WHERE version = 5").await;
    fails(
        walflow(db.url(), &["status"]).await,
        "schema version 4, this walflow needs version 5; run `walflow migrate`",
    );
    // The default slot, which no flow created here.
    exec(&pool, "INSERT INTO walflow.migrations (version) VALUES (5)").await;
    fails(
        walflow(db.url(), &["status"]).await,
        "no replication slot `walflow_slot` in this database",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_database_the_error_says_how_to_give_one() {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_walflow"));
    cmd.env_remove("DATABASE_URL").arg("status");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    fails(
        out,
        "no database given: set DATABASE_URL or pass --database-url",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_no_flow_takes_is_withdrawn_at_the_timeout() {
    let (db, pool) = fresh().await;
    exec(
        &pool,
        "CREATE TABLE jobs (id bigint PRIMARY KEY, name text NOT NULL)",
    )
    .await;
    walflow::migrate::migrate(&pool).await.unwrap();
    // A bare listener holds the slot: not a flow, it answers no request.
    let (listener, _) = walflow::setup::listen(
        &db.config(),
        vec![walflow::setup::TableSpec::new("public", "jobs")],
    )
    .await
    .unwrap();
    let slot = db.name();
    wait_until("the slot held", Duration::from_secs(30), || async {
        slot_active(&pool, slot).await
    })
    .await;
    fails(
        walflow(
            db.url(),
            &[
                "--slot",
                slot,
                "dead-letters",
                "retry",
                "--all",
                "--timeout",
                "1",
            ],
        )
        .await,
        "did not take it within 1s",
    );
    let (state, error): (String, Option<String>) =
        sqlx::query_as("SELECT state, error FROM walflow.requests")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(state, "failed");
    assert_eq!(error.as_deref(), Some("no flow took it within 1s"));
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_is_shown_then_dropped_with_walflow_slot_drop() {
    // A server of its own: max_slot_wal_keep_size applies to every slot.
    let pg = walflow::embedded::EmbeddedPostgres::builder()
        .setting("max_slot_wal_keep_size", "1MB")
        .setting("wal_keep_size", "0")
        .start()
        .await
        .unwrap();
    let url = pg.create_database("lost").await.unwrap();
    let pool = PgPool::connect(&url).await.unwrap();
    exec(
        &pool,
        "CREATE TABLE jobs (id bigint PRIMARY KEY, name text NOT NULL)",
    )
    .await;
    let slot = "lost_by_cli";
    let start = || {
        Walflow::builder()
            .database_url(&url)
            .slot_name(slot)
            .operators(["Flaky"])
            .start()
    };
    start().await.unwrap().shutdown().await.unwrap();
    wait_until("the slot released", Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT NOT active FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(slot)
        .fetch_one(&pool)
        .await
        .unwrap()
    })
    .await;

    // WAL written and checkpointed past max_slot_wal_keep_size while no
    // flow reads the slot.
    wait_until("the slot lost", Duration::from_secs(120), || async {
        exec(
            &pool,
            "INSERT INTO jobs SELECT g, repeat('x', 1000)
               FROM generate_series(coalesce((SELECT max(id) FROM jobs), 0) + 1,
                                    coalesce((SELECT max(id) FROM jobs), 0) + 2000) g;
             SELECT pg_switch_wal();",
        )
        .await;
        exec(&pool, "CHECKPOINT").await;
        let status: Option<String> =
            sqlx::query_scalar("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1")
                .bind(slot)
                .fetch_one(&pool)
                .await
                .unwrap();
        status.as_deref() == Some("lost")
    })
    .await;

    let err = start()
        .await
        .expect_err("a lost slot is refused")
        .to_string();
    assert!(
        err.contains(&format!("walflow slot drop --slot {slot}")),
        "{err}"
    );
    let status: Json =
        serde_json::from_str(&ok(
            walflow(&url, &["--slot", slot, "status", "--json"]).await
        ))
        .unwrap();
    assert_eq!(status["slot"]["wal_status"], "lost", "{status}");

    // The way out the message names.
    ok(walflow(&url, &["--slot", slot, "slot", "drop", "--yes"]).await);
    let flow = start().await.expect("the flow starts on a new slot");
    exec(&pool, "INSERT INTO jobs VALUES (-1, 'after')").await;
    wait_until("the new job handled", Duration::from_secs(30), || async {
        done(-1)
    })
    .await;
    flow.shutdown().await.unwrap();
}

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

#[event_source(table = "posts")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Post {
    id: i64,
    title: String,
}

on_event! {
    operator CopyTitle {
        events: [insert],
        entities: [Post],
        handler: copy_title,
    }
}

/// Copies a post's title into `titles`, whose check constraint
/// `short_title` refuses long ones.
async fn copy_title(event: Event<Post>, ctx: Ctx) -> Result<(), sqlx::Error> {
    let post = event.record().expect("an insert carries its row");
    sqlx::query("INSERT INTO titles (post_id, title) VALUES ($1, $2)")
        .bind(post.id)
        .bind(&post.title)
        .execute(ctx.pool())
        .await?;
    Ok(())
}

#[event_source(table = "notes")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Note {
    id: i64,
    body: String,
}

on_event! {
    operator Refuse {
        events: [insert],
        entities: [Note],
        handler: refuse,
    }
}

/// Fails on every note with its body in the error, as an error carrying a
/// row's value does.
async fn refuse(event: Event<Note>, _ctx: Ctx) -> Result<(), std::io::Error> {
    let note = event.record().expect("an insert carries its row");
    Err(std::io::Error::other(format!(
        "note {} refused: {}",
        note.id, note.body
    )))
}

fn done(id: i64) -> bool {
    DONE.lock().unwrap().contains(&id)
}

/// The variables `walflow` reads (as the library does), and `COLUMNS`.
const VARIABLES: [&str; 8] = [
    "DATABASE_URL",
    "WALFLOW_HOST",
    "WALFLOW_PORT",
    "WALFLOW_DATABASE",
    "WALFLOW_USERNAME",
    "WALFLOW_PASSWORD",
    "WALFLOW_SLOT_NAME",
    "COLUMNS",
];

/// Runs `walflow` with `args` and only the variables `env` of
/// [`VARIABLES`], without a terminal, off the runtime's threads.
async fn walflow_env(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_walflow"));
    for var in VARIABLES {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).args(args);
    tokio::task::spawn_blocking(move || cmd.output().expect("walflow runs"))
        .await
        .unwrap()
}

/// Runs `walflow` with `args` on the database at `url` (the slot given in
/// `args` when needed), without a terminal, off the runtime's threads.
async fn walflow(url: &str, args: &[&str]) -> Output {
    let mut all = vec!["--database-url", url];
    all.extend_from_slice(args);
    walflow_env(&[], &all).await
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
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
    assert_eq!(status["slot"]["exists"], true);
    assert_eq!(status["slot"]["active"], true);
    let pid = status["slot"]["active_pid"].as_i64().expect("a pid");
    assert_eq!(status["holder"]["pid"].as_i64(), Some(pid));
    assert!(status["slot"]["lag_bytes"].is_i64(), "{status}");
    // The stream storage (the default) keeps no queue position.
    assert!(status["enqueued_lsn"].is_null(), "{status}");
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
    // Asked for on a terminal; without one, only with --yes.
    fails(
        walflow(
            &url,
            &["--slot", s, "dead-letters", "discard", &third.to_string()],
        )
        .await,
        &format!(
            "not discarding dead letter {third} without confirmation, and there is no \
             terminal to ask on; pass --yes"
        ),
    );
    assert_eq!(dead_ids(&pool, s).await.len(), 3);
    let out = ok(walflow(
        &url,
        &[
            "--slot",
            s,
            "dead-letters",
            "discard",
            &third.to_string(),
            "--yes",
        ],
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

    let all = [
        "--slot",
        s,
        "dead-letters",
        "retry",
        "--all",
        "--operator",
        "Flaky",
    ];
    fails(
        walflow(&url, &all).await,
        "not retrying every dead letter of operator `Flaky` on slot",
    );
    assert_eq!(dead_ids(&pool, s).await, vec![second]);
    let out = ok(walflow(&url, &[&all[..], &["--yes"]].concat()).await);
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

    // The slot gone, status still shows its operators, and fails.
    let out = walflow(&url, &["--slot", s, "status"]).await;
    let (text, err) = (stdout(&out), stderr(&out));
    out.assert().code(1);
    assert!(
        text.starts_with(&format!(
            "slot {s}: missing: the database has no such replication slot\n"
        )),
        "{text}"
    );
    assert!(
        text.contains("Flaky") && text.contains("caught_up"),
        "{text}"
    );
    assert!(
        err.starts_with(&format!(
            "error: no replication slot `{s}` in this database: it was dropped"
        )),
        "{err}"
    );
    let out = walflow(&url, &["status", "--json", "--slot", s]).await;
    let status: Json = serde_json::from_str(&stdout(&out)).expect("status --json is JSON");
    out.assert().code(1);
    assert_eq!(status["slot"]["exists"], false, "{status}");
    assert_eq!(status["slot"]["active"], false, "{status}");
    assert_eq!(status["operators"][0]["name"], "Flaky", "{status}");
    // A name neither the database nor walflow knows is an error alone.
    fails(
        walflow(&url, &["--slot", "never_was", "status"]).await,
        "no replication slot `never_was` in this database; its slots: none",
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
    assert_eq!(out, "applied migrations 1, 2, 3, 4, 5, 6, 7, 8\n");
    let out = ok(walflow(db.url(), &["migrate"]).await);
    assert_eq!(out, "the walflow schema is up to date (version 8)\n");
    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM walflow.migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7, 8]);
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
    // A slot to drop may be all that is left: no schema needed.
    fails(
        walflow(db.url(), &["slot", "drop", "--yes"]).await,
        "no replication slot `walflow_slot` in this database (the default, as neither --slot \
         nor WALFLOW_SLOT_NAME is given); its slots: none; pass --slot NAME",
    );
    walflow::migrate::migrate(&pool).await.unwrap();
    let latest = walflow::migrate::LATEST_VERSION;
    exec(
        &pool,
        &format!("DELETE FROM walflow.migrations WHERE version = {latest}"),
    )
    .await;
    let found: i32 = sqlx::query_scalar("SELECT max(version) FROM walflow.migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    fails(
        walflow(db.url(), &["status"]).await,
        &format!(
            "schema version {found}, this walflow needs version {latest}; run `walflow migrate`"
        ),
    );
    // The default slot, which no flow created here.
    exec(
        &pool,
        &format!("INSERT INTO walflow.migrations (version) VALUES ({latest})"),
    )
    .await;
    fails(
        walflow(db.url(), &["status"]).await,
        "no replication slot `walflow_slot` in this database",
    );
}

/// A port of 127.0.0.1 where nothing listens (one the system just gave
/// out and took back).
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_fails_at_once_naming_the_server() {
    let port = dead_port().to_string();
    let url = format!("postgres://postgres:secret@127.0.0.1:{port}/app");
    let started = std::time::Instant::now();
    let out = walflow(&url, &["status"]).await;
    let took = started.elapsed();
    fails(
        out,
        &format!("cannot connect to 127.0.0.1:{port} (from --database-url): connection refused"),
    );
    // The pool used to wait 10 s and say it timed out.
    assert!(took < Duration::from_secs(8), "took {took:?}");

    // The same from the WALFLOW_* variables, as the library reads them.
    let out = walflow_env(
        &[("WALFLOW_HOST", "127.0.0.1"), ("WALFLOW_PORT", &port)],
        &["dead-letters", "list"],
    )
    .await;
    fails(
        out,
        &format!(
            "cannot connect to 127.0.0.1:{port} (from the WALFLOW_* variables): connection refused"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_is_checked_by_the_librarys_parser() {
    let url = "postgress://app:secret@127.0.0.1:5432/app";
    let library = walflow::Config::from_database_url(url)
        .expect_err("the library rejects the scheme")
        .to_string();
    assert!(
        library.contains("scheme `postgress` is not `postgres` or `postgresql`"),
        "{library}"
    );
    for out in [
        walflow(url, &["status"]).await,
        walflow_env(&[("DATABASE_URL", url)], &["migrate"]).await,
    ] {
        out.assert()
            .code(1)
            .stdout("")
            .stderr(format!("error: {library}\n"))
            .stderr(predicate::str::contains("secret").not());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_read_without_the_servers_source_line() {
    let (db, _pool) = fresh().await;
    let url = db.url().replace(&format!("/{}", db.name()), "/no_such_db");
    assert_ne!(url, db.url());
    let out = walflow(&url, &["status"]).await;
    let err = stderr(&out);
    fails(
        out,
        "database \"no_such_db\" does not exist (SQLSTATE 3D000)",
    );
    assert!(!err.contains(" at line "), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_names_the_variables_without_empty_values() {
    for env in [
        &[][..],
        &[
            ("WALFLOW_SLOT_NAME", "app_slot"),
            ("DATABASE_URL", "postgres://app:secret@db/app"),
        ][..],
    ] {
        let help = ok(walflow_env(env, &["--help"]).await);
        assert!(
            help.contains("[env: WALFLOW_SLOT_NAME]") && help.contains("[default: walflow_slot]"),
            "{help}"
        );
        assert!(help.contains("[env: DATABASE_URL]"), "{help}");
        assert!(!help.contains("WALFLOW_SLOT_NAME="), "{help}");
        assert!(!help.contains("DATABASE_URL="), "{help}");
        assert!(
            !help.contains("secret") && !help.contains("app_slot"),
            "{help}"
        );
        for var in ["WALFLOW_HOST", "WALFLOW_PORT", "WALFLOW_PASSWORD"] {
            assert!(help.contains(var), "{var}: {help}");
        }
    }
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
                "--yes",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_shows_the_whole_error_fitted_to_the_width() {
    let (db, pool) = fresh().await;
    exec(
        &pool,
        "CREATE TABLE posts (id bigint PRIMARY KEY, title text NOT NULL);
         CREATE TABLE titles (post_id bigint PRIMARY KEY,
                              title text NOT NULL CONSTRAINT short_title CHECK (length(title) <= 10))",
    )
    .await;
    let s = db.name();
    let ms = Duration::from_millis;
    let flow = Walflow::builder()
        .database_url(db.url())
        .slot_name(s)
        .min_restart_time(ms(10))
        .max_restart_time(ms(20))
        .max_retries(1)
        .operators(["CopyTitle"])
        .start()
        .await
        .unwrap();
    exec(
        &pool,
        "INSERT INTO posts VALUES (1, 'a title far too long for the titles table')",
    )
    .await;
    wait_dead_letters(&pool, s, 1).await;
    flow.shutdown().await.unwrap();
    let error = admin::dead_letters(&pool, s, None).await.unwrap()[0]
        .error
        .clone();
    let first_line = error.lines().next().unwrap();
    assert!(
        first_line.contains("violates check constraint \"short_title\""),
        "{error}"
    );
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");

    // Neither a terminal nor COLUMNS: one line per dead letter, the first
    // line of the error whole.
    let list = ok(walflow(db.url(), &["--slot", s, "dead-letters", "list"]).await);
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(list.lines().nth(1).unwrap().ends_with(first_line), "{list}");

    // Fitted to the width: beside the other columns when they leave room
    // (120), below its row when not (80); wrapped, never cut.
    for columns in [80, 120] {
        let list = ok(walflow_env(
            &[("COLUMNS", &columns.to_string())],
            &[
                "--database-url",
                db.url(),
                "--slot",
                s,
                "dead-letters",
                "list",
            ],
        )
        .await);
        assert!(
            list.lines().all(|l| l.chars().count() <= columns),
            "{columns} columns:\n{list}"
        );
        assert!(list.lines().count() > 2, "{columns} columns:\n{list}");
        assert!(
            words(&list).contains(&words(first_line)),
            "{columns} columns:\n{list}"
        );
        assert!(
            list.contains("\"short_title\""),
            "{columns} columns:\n{list}"
        );
        let header = list.lines().next().unwrap();
        assert_eq!(header.ends_with("ERROR"), columns == 120, "{list}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_and_connection_come_as_the_library_reads_them() {
    let (db, pool) = fresh().await;
    exec(
        &pool,
        "CREATE TABLE jobs (id bigint PRIMARY KEY, name text NOT NULL)",
    )
    .await;
    // A flow ran on a slot of its own name, as the examples' flows do.
    let slot = db.name();
    Walflow::builder()
        .database_url(db.url())
        .slot_name(slot)
        .operators(["Flaky"])
        .start()
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    wait_until("the slot released", Duration::from_secs(30), || async {
        !slot_active(&pool, slot).await
    })
    .await;

    // WALFLOW_SLOT_NAME and the WALFLOW_* connection variables, no URL.
    let config = db.config();
    let port = config.port().to_string();
    let env = [
        ("WALFLOW_HOST", config.host()),
        ("WALFLOW_PORT", port.as_str()),
        ("WALFLOW_DATABASE", config.database()),
        ("WALFLOW_USERNAME", config.username()),
        ("WALFLOW_PASSWORD", config.password()),
        ("WALFLOW_SLOT_NAME", slot),
    ];
    let out = walflow_env(&env, &["status"]).await;
    assert_eq!(stderr(&out), "");
    let text = ok(out);
    assert!(
        text.starts_with(&format!("slot {slot}: inactive")),
        "{text}"
    );

    // No slot asked, no `walflow_slot`: the only slot a flow ran on, said
    // on stderr; a slot no flow ran on does not count.
    let plain = format!("{slot}_plain");
    exec(
        &pool,
        &format!("SELECT pg_create_logical_replication_slot('{plain}', 'pgoutput')"),
    )
    .await;
    let out = walflow_env(&env[..5], &["status"]).await;
    assert_eq!(
        stderr(&out),
        format!(
            "walflow: using slot `{slot}`, the only slot a walflow flow ran on in this database \
             (there is no `walflow_slot`, and neither --slot nor WALFLOW_SLOT_NAME is given)\n"
        )
    );
    let text = ok(out);
    assert!(
        text.starts_with(&format!("slot {slot}: inactive")),
        "{text}"
    );
    // Never for slot drop.
    fails(
        walflow(db.url(), &["slot", "drop", "--yes"]).await,
        "no replication slot `walflow_slot` in this database (the default, as neither --slot \
         nor WALFLOW_SLOT_NAME is given)",
    );

    // Two slots a flow ran on: the error names every slot.
    exec(
        &pool,
        "INSERT INTO walflow.operators (slot, operator) VALUES ('other_app', 'Flaky')",
    )
    .await;
    let out = walflow(db.url(), &["dead-letters", "list"]).await;
    let err = stderr(&out);
    fails(out, "pass --slot NAME or set WALFLOW_SLOT_NAME");
    for named in [
        format!("{slot} (walflow)"),
        plain.clone(),
        "other_app (walflow, dropped)".to_owned(),
    ] {
        assert!(err.contains(&named), "{named}: {err}");
    }
    assert!(!err.contains(&format!("{plain} (")), "{err}");
}

/// Starts a flow running `Refuse` on a fresh database, inserts a note of
/// each body and waits for their dead letters.
async fn refused_notes(bodies: &[&str]) -> (TestDatabase, PgPool, Walflow) {
    let (db, pool) = fresh().await;
    exec(
        &pool,
        "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)",
    )
    .await;
    let ms = Duration::from_millis;
    let flow = Walflow::builder()
        .database_url(db.url())
        .slot_name(db.name())
        .min_restart_time(ms(10))
        .max_restart_time(ms(20))
        .max_retries(1)
        .operators(["Refuse"])
        .start()
        .await
        .unwrap();
    for (id, body) in (1_i64..).zip(bodies) {
        sqlx::query("INSERT INTO notes (id, body) VALUES ($1, $2)")
            .bind(id)
            .bind(*body)
            .execute(&pool)
            .await
            .unwrap();
    }
    wait_dead_letters(&pool, db.name(), bodies.len()).await;
    (db, pool, flow)
}

/// Asserts that none of `secrets` is in the command's standard output or
/// error, and that it did not panic.
fn shows_none_of(out: &Output, secrets: &[&str], what: &str) {
    let (text, err) = (stdout(out), stderr(out));
    for secret in secrets {
        assert!(
            !text.contains(secret) && !err.contains(secret),
            "{what}: `{secret}` shown:\nstdout: {text}\nstderr: {err}"
        );
    }
    assert!(!err.contains("panicked"), "{what}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_show_in_the_output() {
    let (db, _pool) = fresh().await;
    let config = db.config();
    let server = format!("127.0.0.1:{}", config.port());
    let real = config.password().to_owned();
    let escaped: String = real.bytes().map(|b| format!("%{b:02X}")).collect();
    let dead = format!("127.0.0.1:{}", dead_port());
    // Each URL, the passwords in it as written and as meant, and what the
    // error says.
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (
            format!("postgres://postgres:pa/ss@{server}/live"),
            vec!["pa/ss"],
            "invalid `database_url` postgres://postgres:***@",
        ),
        (
            format!("postgres://postgres:pa#ss@{server}/live"),
            vec!["pa#ss"],
            "invalid `database_url` postgres://postgres:***@",
        ),
        (
            format!("postgres://postgres:pa?ss@{server}/live"),
            vec!["pa?ss"],
            "invalid `database_url` postgres://postgres:***@",
        ),
        (
            format!("postgres://{server}/live?user=postgres&password=topsecret"),
            vec!["topsecret"],
            "password authentication failed",
        ),
        (
            format!("postgres://postgres:p@ss@{server}/live"),
            vec!["p@ss", "p%40ss"],
            "password authentication failed",
        ),
        (
            format!("postgres://postgres:p%40ss%2Fw%3Frd@{server}/live"),
            vec!["p%40ss%2Fw%3Frd", "p@ss/w?rd"],
            "password authentication failed",
        ),
        // The right password, percent-escaped: the server answers about
        // the database.
        (
            format!("postgres://postgres:{escaped}@{server}/live"),
            vec![escaped.as_str(), real.as_str()],
            "database \"live\" does not exist",
        ),
        (
            format!("postgres://postgres:pa/ss@{dead}/live"),
            vec!["pa/ss"],
            "invalid `database_url` postgres://postgres:***@",
        ),
        (
            format!("postgres://{dead}/live?password=topsecret"),
            vec!["topsecret"],
            "connection refused",
        ),
    ];
    for (url, secrets, error) in &cases {
        let with_equals = format!("--database-url={url}");
        for (what, out) in [
            ("--database-url", walflow(url, &["status"]).await),
            (
                "--database-url=",
                walflow_env(&[], &[&with_equals, "dead-letters", "list"]).await,
            ),
            (
                "DATABASE_URL",
                walflow_env(&[("DATABASE_URL", url)], &["dead-letters", "show", "1"]).await,
            ),
        ] {
            let what = format!("{url} by {what}");
            shows_none_of(&out, secrets, &what);
            let err = stderr(&out);
            assert!(err.contains(error), "{what}: {err}");
            out.assert().code(1).stdout("");
        }
        // Refused by the argument parser, which repeats what it refuses.
        for args in [
            &[url.as_str(), "status"][..],
            &["status", url],
            &[with_equals.as_str(), "status", url],
        ] {
            let out = walflow_env(&[], args).await;
            shows_none_of(&out, secrets, &format!("{args:?}"));
            let err = stderr(&out);
            assert!(
                err.starts_with("error: unexpected argument")
                    || err.starts_with("error: unrecognized subcommand"),
                "{args:?}: {err}"
            );
            out.assert().code(2).stdout("");
        }
    }
    // The password of the WALFLOW_* variables.
    let port = config.port().to_string();
    let out = walflow_env(
        &[
            ("WALFLOW_HOST", "127.0.0.1"),
            ("WALFLOW_PORT", &port),
            ("WALFLOW_PASSWORD", "hunter2/#?@x"),
        ],
        &["status"],
    )
    .await;
    shows_none_of(&out, &["hunter2"], "WALFLOW_PASSWORD");
    fails(out, "password authentication failed");
}

/// Asserts the argument parser refused the command: exit status 2,
/// clap's message, nothing on standard output, no panic.
fn refused(out: Output, what: &str) {
    let err = stderr(&out);
    assert!(
        err.starts_with("error: invalid value ") || err.starts_with("error: unexpected argument "),
        "{what}: {err}"
    );
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    assert_eq!(stdout(&out), "", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_out_of_range_are_refused_before_anything_is_done() {
    let (db, pool, flow) = refused_notes(&["first", "second"]).await;
    let (url, s) = (db.url(), db.name());
    let dead = dead_ids(&pool, s).await;
    let id = dead[0].to_string();
    let requests = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM walflow.requests")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let base = ["--database-url", url, "--slot", s, "dead-letters"];
    let run = |args: Vec<&str>| {
        let all: Vec<String> = base.iter().chain(&args).map(|a| a.to_string()).collect();
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            (all.join(" "), walflow_env(&[], &all).await)
        }
    };
    let u64_max = u64::MAX.to_string();
    let past_u64 = "18446744073709551616";
    let past_i64 = (i64::MAX as u64 + 1).to_string();
    // Below the least id, past the greatest, the largest u64.
    let bad_ids = ["0", "-1", past_i64.as_str(), u64_max.as_str(), past_u64];
    for bad in bad_ids {
        for args in [
            vec!["show", bad],
            vec!["show", bad, "--json"],
            vec!["discard", bad, "--yes"],
            vec!["discard", id.as_str(), bad, "--yes"],
            vec!["retry", bad],
            vec!["retry", id.as_str(), bad, "--timeout", "1"],
        ] {
            let (what, out) = run(args).await;
            refused(out, &what);
        }
    }
    // The timeout: 1 to 86400 seconds.
    for bad in ["0", "-1", "86401", u64_max.as_str(), past_u64] {
        for args in [
            vec!["retry", id.as_str(), "--timeout", bad],
            vec!["retry", "--all", "--yes", "--timeout", bad],
        ] {
            let (what, out) = run(args).await;
            refused(out, &what);
        }
    }
    assert_eq!(requests().await, 0, "a refused command asked the flow");
    assert_eq!(
        dead_ids(&pool, s).await,
        dead,
        "a refused command discarded"
    );

    // The greatest id is an id: there is no such dead letter, and nothing
    // is done.
    let max = i64::MAX.to_string();
    for args in [
        vec!["show", max.as_str()],
        vec!["discard", max.as_str(), "--yes"],
        vec!["retry", max.as_str(), "--timeout", "1"],
    ] {
        let (what, out) = run(args).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains(&max) && !err.contains("panicked"),
            "{what}: {err}"
        );
    }
    assert_eq!(requests().await, 0);
    assert_eq!(dead_ids(&pool, s).await, dead);

    // Settings that are numbers: the port is the library's to refuse
    // (exit status 1), COLUMNS out of range is a width without a limit
    // or the narrowest.
    for port in ["0", "65536", u64_max.as_str(), "-1"] {
        let out = walflow_env(
            &[("WALFLOW_HOST", "127.0.0.1"), ("WALFLOW_PORT", port)],
            &["status"],
        )
        .await;
        let err = stderr(&out);
        assert!(
            err.contains("WALFLOW_PORT") || err.contains("port"),
            "{port}: {err}"
        );
        fails(out, "");
    }
    for columns in ["0", "1", "-1", u64_max.as_str(), past_u64] {
        let out = walflow_env(
            &[("COLUMNS", columns)],
            &["--database-url", url, "--slot", s, "dead-letters", "list"],
        )
        .await;
        let text = ok(out);
        assert!(text.contains("refused: first"), "COLUMNS={columns}: {text}");
    }

    // The greatest timeout is taken, and the retry done.
    let (what, out) = run(vec!["retry", id.as_str(), "--timeout", "86400"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(&out));
    assert!(text.starts_with("retried 1 dead letter"), "{what}: {text}");
    assert_eq!(requests().await, 1);
    flow.shutdown().await.unwrap();
}

/// A note body a terminal would act on: it sets the window title, clears
/// the screen, starts a colour with a C1 CSI, and holds DEL, a tab, a
/// carriage return, NEL and a second line.
const HOSTILE: &str =
    "\x1b]0;TITLE\x07\x1b[2J\u{9b}31m red\x7f\ttab\rback\nsecond \x1b[0mline\u{85}end";

/// Asserts `text` holds no control character a terminal acts on: no C0
/// but the newline, no DEL, no C1.
fn terminal_safe(what: &str, text: &str) {
    if let Some(c) = text.chars().find(|&c| c != '\n' && c.is_control()) {
        panic!("{what}: holds {c:?}:\n{text:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_from_rows_are_shown_escaped() {
    let (db, pool, flow) = refused_notes(&[HOSTILE]).await;
    let (url, s) = (db.url(), db.name());
    let letter = admin::dead_letters(&pool, s, None).await.unwrap().remove(0);
    assert!(letter.error.contains(HOSTILE), "{:?}", letter.error);
    let id = letter.id.to_string();
    let bytes_of = |out: Output| {
        let text = String::from_utf8(out.stdout.clone()).expect("UTF-8 output");
        out.assert().success().stderr("");
        text
    };

    // show: the whole error, each line escaped; the event too.
    let show = bytes_of(walflow(url, &["--slot", s, "dead-letters", "show", &id]).await);
    terminal_safe("show", &show);
    assert!(
        show.contains(
            "refused: \\x1b]0;TITLE\\x07\\x1b[2J\\u{9b}31m red\\x7f\\ttab\\rback\n  second \\x1b[0mline\\u{85}end"
        ),
        "{show}"
    );
    // The event's row, as JSON escapes it (and as its C1 and DEL are
    // escaped for the terminal).
    assert!(
        show.contains(
            "\\u001b]0;TITLE\\u0007\\u001b[2J\\u009b31m red\\u007f\\ttab\\rback\\nsecond"
        ),
        "{show}"
    );

    // list: the first line in its cell, escaped, also when wrapped.
    let list = bytes_of(walflow(url, &["--slot", s, "dead-letters", "list"]).await);
    terminal_safe("list", &list);
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(
        list.contains("refused: \\x1b]0;TITLE\\x07\\x1b[2J\\u{9b}31m red\\x7f\\ttab\\rback …"),
        "{list}"
    );
    for columns in ["40", "80"] {
        let list = bytes_of(
            walflow_env(
                &[("COLUMNS", columns)],
                &["--database-url", url, "--slot", s, "dead-letters", "list"],
            )
            .await,
        );
        terminal_safe(&format!("list in {columns} columns"), &list);
        assert!(list.contains("TITLE\\x07"), "{list}");
    }
    let status = bytes_of(walflow(url, &["--slot", s, "status"]).await);
    terminal_safe("status", &status);

    // --json: the exact text, and still nothing raw for a terminal.
    for args in [
        &["--slot", s, "dead-letters", "show", &id, "--json"][..],
        &["--slot", s, "dead-letters", "list", "--json"],
    ] {
        let text = bytes_of(walflow(url, args).await);
        terminal_safe(&format!("{args:?}"), &text);
        let value: Json = serde_json::from_str(&text).expect("JSON");
        let error = if value.is_array() {
            &value[0]["error"]
        } else {
            &value["error"]
        };
        assert_eq!(error.as_str(), Some(letter.error.as_str()), "{args:?}");
    }
    let detail: Json = serde_json::from_str(&bytes_of(
        walflow(url, &["--slot", s, "dead-letters", "show", &id, "--json"]).await,
    ))
    .unwrap();
    // The row's value in the event, however the event writes values.
    let body = serde_json::to_string(HOSTILE).unwrap();
    assert!(detail["event"].to_string().contains(&body), "{detail}");

    // An error message repeating what it was given, escaped too.
    let out = walflow(
        url,
        &[
            "--slot",
            s,
            "dead-letters",
            "retry",
            "--all",
            "--yes",
            "--operator",
            "No\x1b[2JSuch",
        ],
    )
    .await;
    let err = stderr(&out);
    terminal_safe("stderr", &err);
    assert!(err.contains("No\\x1b[2JSuch"), "{err}");
    fails(out, "");
    flow.shutdown().await.unwrap();
}

/// `walflow operator drop`: rows queued for an operator no running flow
/// declares (left by an earlier version of the program) do not hold the
/// fence, stay queued, and are moved to the dead letters on request, the
/// events waiting on them counting as processed; an operator a running flow
/// declares, or one the slot does not know, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_drop_dead_letters_the_rows_of_an_operator_no_flow_runs() {
    let (db, pool) = fresh().await;
    let url = db.url().to_owned();
    let slot = db.name().to_owned();
    let s = slot.as_str();
    exec(
        &pool,
        "CREATE TABLE jobs (id bigint PRIMARY KEY, name text NOT NULL)",
    )
    .await;
    let flow = Walflow::builder()
        .database_url(&url)
        .slot_name(&slot)
        .operators(["Flaky"])
        .start()
        .await
        .unwrap();
    // A row of operator `Retired`, which this program no longer declares,
    // with the process status of its event waiting on it.
    exec(
        &pool,
        &format!(
            "INSERT INTO walflow.queue (slot, operator, commit_lsn, seq, part, id, kind,
                                        schema_name, table_name, updated_at)
             VALUES ('{s}', 'Retired', 1, 0, 0, '7', 'insert', 'public', 'jobs', 42);
             INSERT INTO walflow.pending_status (slot, commit_lsn, seq, schema_name, table_name,
                                                 updated_at, remaining)
             VALUES ('{s}', 1, 0, 'public', 'jobs', 42, 1);"
        ),
    )
    .await;
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(20))
        .await
        .unwrap();
    let queued = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM walflow.queue WHERE slot = $1 AND operator = 'Retired'",
        )
        .bind(s)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(queued().await, 1, "a flow never drops another's rows");

    fails(
        walflow(&url, &["--slot", s, "operator", "drop", "Retired"]).await,
        "not dropping operator `Retired` without confirmation, and there is no terminal to \
         ask on; pass --yes",
    );
    fails(
        walflow(&url, &["--slot", s, "operator", "drop", "Flaky", "--yes"]).await,
        &format!("operator `Flaky` runs in a flow on slot `{s}`"),
    );
    fails(
        walflow(&url, &["--slot", s, "operator", "drop", "Nobody", "--yes"]).await,
        &format!("no operator `Nobody` on slot `{s}`; its operators: Flaky, Retired"),
    );
    assert_eq!(queued().await, 1);

    let out = ok(walflow(&url, &["--slot", s, "operator", "drop", "Retired", "--yes"]).await);
    assert_eq!(
        out,
        "dropped operator Retired: moved 1 queued row to the dead letters\n"
    );
    assert_eq!(queued().await, 0);
    let letters = admin::dead_letters(&pool, s, Some("Retired"))
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].error, "operator Retired dropped");
    assert_eq!(letters[0].attempts, 0);
    assert_eq!(letters[0].mapped_id, "7");
    let processed: i64 = sqlx::query_scalar(
        "SELECT updated_at FROM walflow.process_status
         WHERE slot = $1 AND schema_name = 'public' AND table_name = 'jobs'",
    )
    .bind(s)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(processed, 42);
    assert!(flow.processed("jobs", 42).await.unwrap());
    flow.shutdown().await.unwrap();

    // Once no flow runs, the slot's own operator can be dropped too.
    let out = ok(walflow(&url, &["--slot", s, "operator", "drop", "Flaky", "--yes"]).await);
    assert_eq!(
        out,
        "dropped operator Flaky: moved 0 queued rows to the dead letters\n"
    );
}

//! Starting again logs no notices of walflow's own idempotent set-up
//! (`schema "walflow" already exists, skipping` and the like), while the
//! application's pool, handed to the flow with `.pool(pool)`, keeps its
//! session's `client_min_messages` and its own notices.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use walflow::Walflow;
use walflow::prelude::*;

#[event_source(table = "noticed")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Noticed {
    id: i64,
}

on_event! {
    operator NoticedCopy {
        events: [insert],
        entities: [Noticed],
        handler: copy,
    }
}

async fn copy(_event: Event<Noticed>, _ctx: Ctx) -> Result<(), std::io::Error> {
    Ok(())
}

/// The PostgreSQL notices sqlx logged (target `sqlx::postgres::notice`):
/// their level and message.
static NOTICES: Mutex<Vec<(tracing::Level, String)>> = Mutex::new(Vec::new());

struct Message<'a>(&'a mut String);

impl Visit for Message<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            *self.0 = value.to_owned();
        }
    }
}

struct Capture;

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() == "sqlx::postgres::notice" {
            let mut message = String::new();
            event.record(&mut Message(&mut message));
            NOTICES
                .lock()
                .unwrap()
                .push((*event.metadata().level(), message));
        }
    }
}

fn notices() -> Vec<(tracing::Level, String)> {
    std::mem::take(&mut *NOTICES.lock().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_start_logs_no_notices_of_walflow_s_own_set_up() {
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture))
        .expect("the only subscriber of this test binary");
    let db = common::db().await;
    db.exec("CREATE TABLE noticed (id bigint PRIMARY KEY)")
        .await;
    // The application's pool, whose sessions the flow's statements use.
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&db.url)
        .await
        .unwrap();
    let start = || {
        Walflow::builder()
            .pool(pool.clone())
            // For the replication connection (a pool's password cannot be
            // read back).
            .database_url(&db.url)
            .slot_name(db.slot("notices"))
            .operators(["NoticedCopy"])
            .start()
    };

    let flow = start().await.unwrap();
    flow.shutdown().await.unwrap();
    common::wait_slot_released(&db.url, flow.config().slot_name()).await;
    notices();

    let flow = start().await.unwrap();
    let logged = notices();
    assert!(
        logged.is_empty(),
        "the second start logged notices: {logged:?}"
    );
    db.exec("INSERT INTO noticed VALUES (1)").await;
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(60))
        .await
        .unwrap();
    flow.shutdown().await.unwrap();
    assert_eq!(notices(), [], "nor did running");

    // The application's sessions keep their setting, and their notices.
    let mut sessions = Vec::new();
    for _ in 0..pool.size() {
        sessions.push(pool.acquire().await.unwrap());
    }
    assert!(!sessions.is_empty());
    for session in &mut sessions {
        let level: String = sqlx::query_scalar("SHOW client_min_messages")
            .fetch_one(&mut **session)
            .await
            .unwrap();
        assert_eq!(level, "notice");
    }
    sqlx::query("CREATE SCHEMA IF NOT EXISTS walflow")
        .execute(&mut *sessions[0])
        .await
        .unwrap();
    let logged = notices();
    assert!(
        logged
            .iter()
            .any(|(_, m)| m.contains("schema \"walflow\" already exists")),
        "the application's own notice: {logged:?}"
    );
}

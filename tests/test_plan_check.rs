//! At start, a query operator whose query reads a table that is neither
//! one of its entities nor its target gets a warning naming the operator,
//! the table and why; so does one whose query calls `now()`. A well-formed
//! operator gets none.

#![allow(dead_code)] // struct fields are read through serde

mod common;

use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use walflow::prelude::*;

#[event_source(table = "plan_posts")]
#[derive(Debug, Clone, serde::Deserialize)]
struct PlanPost {
    id: i64,
    tag_id: i64,
}

#[event_source(table = "plan_labels")]
#[derive(Debug, Clone, serde::Deserialize)]
struct PlanLabel {
    id: i64,
    label: String,
}

#[event_source(table = "plan_stamps")]
#[derive(Debug, Clone, serde::Deserialize)]
struct PlanStamp {
    id: i64,
}

on_event! {
    /// Reads `plan_tags`, which it does not declare.
    operator PlanForeign for PlanLabel {
        events: all,
        entities: [PlanPost],
        query: "INSERT INTO plan_labels (id, label)
                SELECT p.id, t.name FROM plan_posts p JOIN plan_tags t ON t.id = p.tag_id
                WHERE p.id = $1
                ON CONFLICT (id) DO UPDATE SET label = EXCLUDED.label",
    }

    /// Reads only its entity, in a sub-select too, and writes its target.
    operator PlanClean for PlanLabel {
        events: all,
        entities: [PlanPost],
        query: "INSERT INTO plan_labels (id, label)
                SELECT p.id, (SELECT count(*) FROM plan_posts q WHERE q.tag_id = p.tag_id)::text
                FROM plan_posts p WHERE p.id = $1
                ON CONFLICT (id) DO UPDATE SET label = EXCLUDED.label",
    }

    /// Reads the clock.
    operator PlanClock for PlanStamp {
        events: all,
        entities: [PlanPost],
        query: "INSERT INTO plan_stamps (id, at) SELECT id, now() FROM plan_posts WHERE id = $1
                ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at",
    }
}

/// The warnings logged: their `operator` field and message.
static WARNINGS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

#[derive(Default)]
struct Fields {
    operator: String,
    message: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "operator" => self.operator = format!("{value:?}").trim_matches('"').to_owned(),
            _ => {}
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "operator" => self.operator = value.to_owned(),
            _ => {}
        }
    }
}

struct Capture;

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut fields = Fields::default();
            event.record(&mut fields);
            WARNINGS
                .lock()
                .unwrap()
                .push((fields.operator, fields.message));
        }
    }
}

/// The warnings logged so far about `operator`.
fn warnings_of(operator: &str) -> Vec<String> {
    WARNINGS
        .lock()
        .unwrap()
        .iter()
        .filter(|(op, _)| op == operator)
        .map(|(_, m)| m.clone())
        .collect()
}

async fn start(db: &common::Db, operator: &str) {
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot(&operator.to_lowercase()))
        .operators([operator])
        .start()
        .await
        .unwrap();
    flow.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_reading_undeclared_tables_or_the_clock_are_warned_about_at_start() {
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture))
        .expect("the only subscriber of this test binary");
    let db = common::db().await;
    db.exec(
        "CREATE TABLE plan_tags (id bigint PRIMARY KEY, name text NOT NULL);
         CREATE TABLE plan_posts (id bigint PRIMARY KEY, tag_id bigint NOT NULL);
         CREATE TABLE plan_labels (id bigint PRIMARY KEY, label text NOT NULL);
         CREATE TABLE plan_stamps (id bigint PRIMARY KEY, at timestamptz NOT NULL);",
    )
    .await;

    start(&db, "PlanForeign").await;
    let foreign = warnings_of("PlanForeign");
    assert_eq!(foreign.len(), 1, "{foreign:#?}");
    assert!(
        foreign[0].starts_with(
            "operator `PlanForeign`'s query reads table `public.plan_tags`, which is not one \
             of its entities nor its target: a change of `public.plan_tags` queues no event \
             for the operator"
        ),
        "{}",
        foreign[0]
    );

    start(&db, "PlanClean").await;
    assert_eq!(warnings_of("PlanClean"), Vec::<String>::new());

    start(&db, "PlanClock").await;
    let clock = warnings_of("PlanClock");
    assert_eq!(clock.len(), 1, "{clock:#?}");
    assert!(
        clock[0].starts_with("operator `PlanClock`'s query calls `now()`"),
        "{}",
        clock[0]
    );
}

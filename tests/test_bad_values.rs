//! A value the decoder cannot type never stops the stream: the event
//! carries it as `Value::Invalid`; an operator that reads the column
//! dead-letters that event (naming table, column, type and text), other
//! operators and other events go on, subscribers get an error item in its
//! place, and the slot moves past it.
//!
//! A real source of such values: a `SQL_ASCII` database stores text bytes
//! unchecked, and PostgreSQL sends them as they are (here `0xff`, not
//! UTF-8).

use std::time::Duration;

use futures_util::StreamExt;
use walflow::prelude::*;
use walflow::subscribe::{Scope, SubscriptionError};

mod common;

/// A note; its body may hold bytes that are not UTF-8.
#[event_source(table = "notes")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Note {
    /// Its id.
    pub id: i64,
    /// Its text.
    pub body: String,
}

/// The ids of the notes seen by the query operator.
#[event_source(table = "note_ids")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NoteId {
    /// The note's id.
    pub id: i64,
}

on_event! {
    /// Reads the body: the note with an unreadable body is dead-lettered.
    operator Bodies {
        events: [insert],
        entities: [Note],
        id: [Note.id],
        handler: bodies,
    }

    /// Reads only the id: runs on every note.
    operator Ids for NoteId {
        events: [insert],
        entities: [Note],
        id: [Note.id],
        query: "INSERT INTO note_ids (id) VALUES ($1) ON CONFLICT DO NOTHING",
    }
}

/// A document, `json` and `jsonb`.
#[event_source(table = "docs")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Doc {
    /// Its id.
    pub id: i64,
    /// As written.
    pub j: serde_json::Value,
    /// As stored.
    pub jb: serde_json::Value,
}

on_event! {
    /// Records what kind of JSON value each document arrived as.
    operator Docs {
        events: [insert],
        entities: [Doc],
        id: [Doc.id],
        handler: docs,
    }
}

async fn docs(event: Event<Doc>, ctx: Ctx) -> Result<(), walflow::BoxError> {
    let doc = event.record().expect("a row");
    let kind = |v: &serde_json::Value| match v {
        serde_json::Value::Object(_) => "object",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::String(_) => "text",
        _ => "other",
    };
    sqlx::query("INSERT INTO handled (id, j, jb) VALUES ($1, $2, $3)")
        .bind(doc.id)
        .bind(kind(&doc.j))
        .bind(kind(&doc.jb))
        .execute(ctx.pool())
        .await?;
    Ok(())
}

/// JSON PostgreSQL accepts and serde_json cannot hold (a number beyond
/// `f64`, a lone surrogate in `json`, nesting beyond serde_json's default
/// limit) is delivered through a flow, with the rows around it.
#[tokio::test]
async fn json_postgresql_accepts_is_delivered_through_a_flow() {
    let db = common::db().await;
    db.exec(
        "CREATE TABLE docs (id int8 PRIMARY KEY, j json NOT NULL, jb jsonb NOT NULL);
         CREATE TABLE handled (id int8 PRIMARY KEY, j text NOT NULL, jb text NOT NULL);",
    )
    .await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("jsonflow"))
        .max_retries(1)
        .operators(["Docs"])
        .start()
        .await
        .expect("the flow starts");
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    db.exec(r#"INSERT INTO docs VALUES (1, '{"a": 1}', '{"a": 1}')"#)
        .await;
    db.exec(r#"INSERT INTO docs VALUES (2, '{"x": 1e400}', '{"x": 1e400}')"#)
        .await;
    db.exec(&format!(
        r#"INSERT INTO docs VALUES (3, '{{"s": "\ud800"}}', '{deep}')"#
    ))
    .await;
    db.exec(r#"INSERT INTO docs VALUES (4, '{"b": 2}', '{"b": 2}')"#)
        .await;
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(30))
        .await
        .unwrap();
    let handled: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT id, j, jb FROM handled ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let row = |id: i64, j: &str, jb: &str| (id, j.to_owned(), jb.to_owned());
    assert_eq!(
        handled,
        vec![
            row(1, "object", "object"),
            // Beyond f64: the document's text.
            row(2, "text", "text"),
            // A lone surrogate in `json`: its text; 200 levels: an array.
            row(3, "text", "array"),
            row(4, "object", "object"),
        ]
    );
    assert!(flow.dead_letters("Docs").await.unwrap().is_empty());
    flow.shutdown().await.unwrap();
}

async fn bodies(event: Event<Note>, ctx: Ctx) -> Result<(), walflow::BoxError> {
    let note = event.record().expect("a row");
    sqlx::query("INSERT INTO bodies (id, length) VALUES ($1, $2)")
        .bind(note.id)
        .bind(note.body.len() as i64)
        .execute(ctx.pool())
        .await?;
    Ok(())
}

#[tokio::test]
async fn an_unreadable_value_is_dead_lettered_and_the_stream_goes_on() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let pg = walflow::embedded::EmbeddedPostgres::builder()
        .start()
        .await
        .unwrap();
    let admin = common::Db::connect(&pg.url()).await;
    admin
        .exec(
            "CREATE DATABASE ascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'
             TEMPLATE template0",
        )
        .await;
    let db = common::Db::connect(&pg.url_for("ascii")).await;
    db.exec(
        "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL);
         CREATE TABLE note_ids (id bigint PRIMARY KEY);
         CREATE TABLE bodies (id bigint PRIMARY KEY, length bigint NOT NULL);",
    )
    .await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name("bad_values")
        .min_restart_time(Duration::from_millis(10))
        .max_retries(1)
        .operators(["Bodies", "Ids"])
        .start()
        .await
        .expect("the flow starts");
    let mut notes = flow.subscribe::<Note>(Scope::All);

    db.exec("INSERT INTO notes VALUES (1, 'before')").await;
    db.exec(r"INSERT INTO notes VALUES (2, E'caf\xff')").await;
    db.exec("INSERT INTO notes VALUES (3, 'after')").await;
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(30))
        .await
        .expect("the operators get past the bad value");

    // The handler read the others; the bad one is a dead letter that says
    // what and where.
    let lengths: Vec<(i64, i64)> = sqlx::query_as("SELECT id, length FROM bodies ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(lengths, vec![(1, 6), (3, 5)]);
    let dead = flow.dead_letters("Bodies").await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].mapped_id, "2");
    assert_eq!(dead[0].attempts, 1, "a decode error is not retried");
    assert!(
        dead[0].error.contains(
            "table `notes`, column `body`: invalid text value \"caf\u{fffd}\": not valid UTF-8"
        ),
        "{}",
        dead[0].error
    );
    // The operator that does not read the body ran on all three.
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM note_ids ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(ids, vec![1, 2, 3]);
    assert!(flow.dead_letters("Ids").await.unwrap().is_empty());

    // Subscribers: the change in its place, as an error they can skip.
    let mut items = Vec::new();
    for _ in 0..3 {
        let item = tokio::time::timeout(Duration::from_secs(10), notes.next())
            .await
            .expect("a change in time")
            .expect("the stream goes on");
        items.push(match item {
            Ok(d) => format!("ok {}", d.row().unwrap().id),
            Err(SubscriptionError::Undecodable(u)) => {
                assert!(
                    matches!(
                        &u.error,
                        walflow::EventDecodeError::Record { source, .. }
                            if source.column.as_deref() == Some("body")
                    ),
                    "{u}"
                );
                "undecodable".to_owned()
            }
            Err(e) => panic!("{e}"),
        });
    }
    assert_eq!(items, ["ok 1", "undecodable", "ok 3"]);

    // The slot moves past it (reported within the status interval).
    common::wait_until(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots
             WHERE slot_name = 'bad_values'",
        )
        .bind(lsn.to_string())
        .fetch_one(&db.pool)
        .await
        .unwrap()
    })
    .await;
    flow.shutdown().await.unwrap();
}

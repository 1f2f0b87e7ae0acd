//! Replica identities that cannot carry the old row an operator needs.
//!
//! An operator that maps a table by a column outside the table's replica
//! identity learns a moved row's old id, and a deleted row's id, only from
//! the whole old row (`REPLICA IDENTITY FULL`). When the identity is
//! changed while the flow runs, such events are dead-lettered with the
//! reason and the health is degraded naming the table, never dropped
//! silently; an entity declared `replica_identity = "default"` that such an
//! operator maps is refused at start.

#![allow(dead_code)] // struct fields are read through serde

mod common;

use std::time::Duration;

use walflow::config::QueueStorage;
use walflow::prelude::*;
use walflow::{FlowError, HealthState, Walflow};

const TIMEOUT: Duration = Duration::from_secs(30);

#[event_source(table = "teams")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Team {
    id: i64,
    name: String,
}

#[event_source(table = "members")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Member {
    id: i64,
    team_id: i64,
}

#[event_source(table = "team_sizes")]
#[derive(Debug, Clone, serde::Deserialize)]
struct TeamSize {
    id: i64,
    members: i64,
}

/// Left alone by walflow: the test sets its identity.
#[event_source(table = "notes", replica_identity = "default")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Note {
    id: i64,
    owner_id: i64,
}

#[event_source(table = "owner_notes", id = "owner_id")]
#[derive(Debug, Clone, serde::Deserialize)]
struct OwnerNotes {
    owner_id: i64,
    notes: i64,
}

on_event! {
    /// Members are mapped by `team_id`, not their key.
    operator TeamSizes for TeamSize {
        events: all,
        entities: [Member, Team],
        id: [Member.team_id, Team.id],
        delete_with: [Team],
        coalesce: true,
        query: "INSERT INTO team_sizes (id, members)
                SELECT t.id, count(m.id) FROM teams t LEFT JOIN members m ON m.team_id = t.id
                WHERE t.id = $1 GROUP BY t.id
                ON CONFLICT (id) DO UPDATE SET members = EXCLUDED.members",
    }

    /// Notes are mapped by `owner_id`, not their key.
    operator NotesPerOwner for OwnerNotes {
        events: all,
        entities: [Note],
        id: [Note.owner_id],
        query: "INSERT INTO owner_notes (owner_id, notes)
                SELECT $1, count(*) FROM notes WHERE owner_id = $1
                ON CONFLICT (owner_id) DO UPDATE SET notes = EXCLUDED.notes",
    }

    /// Notes mapped by their key: the primary key is enough.
    operator NoteKeys for OwnerNotes {
        events: all,
        entities: [Note],
        query: "SELECT $1::int8",
    }
}

const SCHEMA: &str = "
    CREATE TABLE teams (id bigint PRIMARY KEY, name text NOT NULL);
    CREATE TABLE members (id bigint PRIMARY KEY, team_id bigint NOT NULL);
    CREATE TABLE team_sizes (id bigint PRIMARY KEY, members bigint NOT NULL);
    CREATE TABLE notes (id bigint PRIMARY KEY, owner_id bigint NOT NULL);
    CREATE TABLE owner_notes (owner_id bigint PRIMARY KEY, notes bigint NOT NULL);
";

async fn start(db: &common::Db, slot: &str, operators: &[&str]) -> Result<Walflow, FlowError> {
    start_with(db, slot, operators, QueueStorage::Postgres).await
}

async fn start_with(
    db: &common::Db,
    slot: &str,
    operators: &[&str],
    queue: QueueStorage,
) -> Result<Walflow, FlowError> {
    Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot(slot))
        .operators(operators.iter().copied())
        .queue_storage(queue)
        .health_interval(Duration::from_millis(100))
        .start()
        .await
}

async fn settle(flow: &Walflow) {
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, TIMEOUT).await.unwrap();
}

async fn sizes(db: &common::Db) -> Vec<(i64, i64)> {
    sqlx::query_as("SELECT id, members FROM team_sizes ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_identity_changed_while_running_dead_letters_what_it_cannot_follow() {
    identity_changed(QueueStorage::Postgres).await;
}

/// The stream storage records the dead letters too, before acknowledging.
#[tokio::test]
async fn an_identity_changed_while_running_dead_letters_with_the_stream_storage() {
    identity_changed(QueueStorage::Stream).await;
}

async fn identity_changed(queue: QueueStorage) {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let flow = start_with(&db, "identity_changed", &["TeamSizes"], queue)
        .await
        .unwrap();
    db.exec("INSERT INTO teams (id, name) VALUES (1, 'a'), (2, 'b')")
        .await;
    db.exec("INSERT INTO members (id, team_id) VALUES (1, 1), (2, 1), (3, 2)")
        .await;
    settle(&flow).await;
    assert_eq!(sizes(&db).await, vec![(1, 2), (2, 1)]);
    common::wait_until(TIMEOUT, || async { flow.health().ready }).await;

    // A migration changes the identity under the running flow.
    db.exec("ALTER TABLE members REPLICA IDENTITY DEFAULT")
        .await;
    // A move: the update carries no old row, so its old team is unknown.
    // Its new team is known, and recomputed; the team it left is not.
    db.exec("UPDATE members SET team_id = 2 WHERE id = 1").await;
    settle(&flow).await;
    assert_eq!(sizes(&db).await, vec![(1, 2), (2, 2)]);
    // A delete: its old row carries the key only, no team.
    db.exec("DELETE FROM members WHERE id = 3").await;
    settle(&flow).await;
    assert_eq!(sizes(&db).await, vec![(1, 2), (2, 2)]);

    // What cannot be followed is dead-lettered, with the reason.
    let dead = flow.dead_letters("TeamSizes").await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:#?}");
    let kinds: Vec<EventKind> = dead.iter().map(|d| d.kind).collect();
    assert_eq!(
        kinds,
        vec![EventKind::Update, EventKind::Delete],
        "{dead:#?}"
    );
    for d in &dead {
        assert_eq!(d.table, "public.members");
        for part in [
            "public.members",
            "team_id",
            "REPLICA IDENTITY DEFAULT",
            r#"ALTER TABLE "public"."members" REPLICA IDENTITY FULL"#,
        ] {
            assert!(d.error.contains(part), "{part:?} not in {:?}", d.error);
        }
    }

    // The health says so, naming the table and the fix.
    let health = flow.health();
    assert_eq!(health.state, HealthState::Degraded, "{health:?}");
    assert!(!health.ready);
    let detail = health.detail.unwrap_or_default();
    assert!(detail.contains("public.members"), "{detail}");
    assert!(
        detail.contains(r#"ALTER TABLE "public"."members" REPLICA IDENTITY FULL"#),
        "{detail}"
    );

    // Restored: new events carry the old row again, and run.
    db.exec("ALTER TABLE members REPLICA IDENTITY FULL").await;
    db.exec("UPDATE members SET team_id = 2 WHERE id = 2").await;
    settle(&flow).await;
    assert_eq!(sizes(&db).await, vec![(1, 0), (2, 2)]);
    assert_eq!(flow.dead_letters("TeamSizes").await.unwrap().len(), 2);
    common::wait_until(TIMEOUT, || async { flow.health().ready }).await;
    assert_eq!(flow.health().detail, None);
    flow.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_entity_left_without_the_identity_its_mapping_needs_is_refused_at_start() {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let e = start(&db, "identity_refused", &["NotesPerOwner"])
        .await
        .expect_err("the start is refused");
    let text = e.to_string();
    for part in [
        "`Note`",
        "`public.notes`",
        "`owner_id`",
        "`NotesPerOwner`",
        r#"replica_identity = "default""#,
        r#"ALTER TABLE "public"."notes" REPLICA IDENTITY FULL"#,
    ] {
        assert!(text.contains(part), "{part:?} not in {text}");
    }

    // Mapped by its primary key, the default identity is enough.
    let flow = start(&db, "identity_key", &["NoteKeys"]).await.unwrap();
    flow.shutdown().await.unwrap();

    // Set to FULL by its owner, the entity needs nothing more.
    db.exec("ALTER TABLE notes REPLICA IDENTITY FULL").await;
    let flow = start(&db, "identity_full", &["NotesPerOwner"])
        .await
        .unwrap();
    db.exec("INSERT INTO notes (id, owner_id) VALUES (1, 7), (2, 7)")
        .await;
    db.exec("UPDATE notes SET owner_id = 8 WHERE id = 1").await;
    settle(&flow).await;
    let counts: Vec<(i64, i64)> =
        sqlx::query_as("SELECT owner_id, notes FROM owner_notes ORDER BY owner_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(counts, vec![(7, 1), (8, 1)]);
    flow.shutdown().await.unwrap();
}

//! How far the operators have got, as the API reports it, and the dead
//! letters they left.
//!
//! Two views:
//! - per table, the largest `process_status_entity_field` (default
//!   `updated_at`, in microseconds since the Unix epoch) of an event all of
//!   whose operators have finished — applied or dead-lettered — kept as a
//!   maximum (EventStreamex's `processed?/2`, which overwrites instead);
//! - the LSN fence: every operator has applied everything committed up to a
//!   WAL position ([`Walflow::wait_processed`](crate::flow::Walflow::wait_processed)).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::event::Position;
use crate::lsn::Lsn;
use crate::raw::EventKind;

/// Splits `"schema.table"` (or `"table"`, in `public`).
pub(crate) fn split_table(table: &str) -> (&str, &str) {
    match table.split_once('.') {
        Some((s, t)) => (s, t),
        None => ("public", table),
    }
}

/// Whether the table's status is at least `micros`.
pub(crate) async fn processed(
    pool: &PgPool,
    slot: &str,
    schema: &str,
    table: &str,
    micros: i64,
) -> Result<bool, sqlx::Error> {
    let stored: Option<i64> = sqlx::query_scalar(
        "SELECT updated_at FROM walflow.process_status
         WHERE slot = $1 AND schema_name = $2 AND table_name = $3",
    )
    .bind(slot)
    .bind(schema)
    .bind(table)
    .fetch_optional(pool)
    .await?;
    Ok(stored.is_some_and(|s| s >= micros))
}

/// How often a flow records in `walflow.nodes` that it still runs.
pub(crate) const NODE_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a node counts as running after its last heartbeat (a node
/// killed without shutting down stops counting after this).
pub(crate) const NODE_LIVE_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// The statement both fences share: whether a queue row of a counted
/// operator (those some live node declares, and `$3`, the asking flow's;
/// every row when no node is live) stands for an event at or before `$2`,
/// in slot `$1` (`$4`: how long a heartbeat counts). `$columns` are read
/// first, in the same snapshot.
macro_rules! counted_rows_before {
    ($columns:literal) => {
        concat!(
            "WITH counted AS (
                 SELECT unnest(operators) AS operator FROM walflow.nodes
                 WHERE slot = $1 AND heartbeat_at > now() - make_interval(secs => $4)
                 UNION SELECT unnest($3::text[]))
             SELECT ",
            $columns,
            " CASE WHEN EXISTS (SELECT 1 FROM counted)
                THEN EXISTS (SELECT 1 FROM counted c WHERE EXISTS (
                         SELECT 1 FROM walflow.queue q
                         WHERE q.slot = $1 AND q.operator = c.operator
                           AND coalesce(q.first_lsn, q.commit_lsn) <= $2))
                ELSE EXISTS (SELECT 1 FROM walflow.queue q
                             WHERE q.slot = $1 AND coalesce(q.first_lsn, q.commit_lsn) <= $2)
                END"
        )
    };
}

/// Whether every transaction committed up to `lsn` is queued and every
/// queued event at or before it has been applied (or dead-lettered).
/// `Ok(None)` when the queue has not yet reached `lsn`.
///
/// Only the rows of the operators some running node declares count (a
/// heartbeat in `walflow.nodes` within [`NODE_LIVE_FOR`]), and those of
/// `own` (the asking flow's): rows of an operator no running flow
/// declares would hold the fence forever. When no node of the slot runs,
/// every row counts: nothing applies them, and they are not done.
pub(crate) async fn fence_reached(
    pool: &PgPool,
    slot: &str,
    lsn: Lsn,
    own: &[&str],
) -> Result<Option<bool>, sqlx::Error> {
    let row: (Option<i64>, bool) = sqlx::query_as(counted_rows_before!(
        "(SELECT enqueued_lsn FROM walflow.streams WHERE slot = $1),"
    ))
    .bind(slot)
    .bind(lsn.0 as i64)
    .bind(own)
    .bind(NODE_LIVE_FOR.as_secs_f64())
    .fetch_one(pool)
    .await?;
    match row {
        (Some(enqueued), busy) if enqueued as u64 >= lsn.0 => Ok(Some(!busy)),
        _ => Ok(None),
    }
}

/// The stream storage's LSN fence read from the database alone (rule 12,
/// on a node that does not hold the slot): `Ok(None)` until the slot's
/// confirmed position has reached `lsn`, then whether no spilled row of an
/// event at or before it is left in `walflow.queue`.
///
/// Why this is the fence: the holder acknowledges a position only once
/// every event of a transaction ending at or before it is applied or
/// spilled (committed to the queue), so once `confirmed_flush_lsn >= lsn`
/// the events at or before `lsn` that are not applied are exactly the
/// spilled rows still queued. The queue is read in a statement after the
/// one that read the position (a snapshot taken later), so a spill that
/// the position already counts is seen. The rows counted are those of the
/// operators as in [`fence_reached`].
pub(crate) async fn stream_fence_reached(
    pool: &PgPool,
    slot: &str,
    lsn: Lsn,
    own: &[&str],
) -> Result<Option<bool>, sqlx::Error> {
    let confirmed: Option<i64> = sqlx::query_scalar(
        "SELECT (confirmed_flush_lsn - '0/0')::numeric::int8
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await?
    .flatten();
    if confirmed.is_none_or(|c| (c as u64) < lsn.0) {
        return Ok(None);
    }
    let busy: bool = sqlx::query_scalar(counted_rows_before!(""))
        .bind(slot)
        .bind(lsn.0 as i64)
        .bind(own)
        .bind(NODE_LIVE_FOR.as_secs_f64())
        .fetch_one(pool)
        .await?;
    Ok(Some(!busy))
}

/// An event an operator gave up on, kept in `walflow.dead_letters`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Its id, for [`Walflow::retry_dead_letter`](crate::Walflow::retry_dead_letter).
    pub id: i64,
    /// The operator.
    pub operator: String,
    /// The event's position.
    pub position: Position,
    /// What happened to the row.
    pub kind: EventKind,
    /// `schema.table` of the event.
    pub table: String,
    /// The mapped id, rendered as text.
    pub mapped_id: String,
    /// The last error.
    pub error: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it was given up.
    pub failed_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct DeadLetterRow {
    id: i64,
    operator: String,
    commit_lsn: Lsn,
    seq: i32,
    kind: EventKind,
    schema_name: String,
    table_name: String,
    mapped_id: String,
    error: String,
    attempts: i32,
    failed_at: DateTime<Utc>,
}

/// The dead letters of `operator` on `slot`, oldest first.
pub(crate) async fn dead_letters(
    pool: &PgPool,
    slot: &str,
    operator: &str,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let rows: Vec<DeadLetterRow> = sqlx::query_as(
        "SELECT id, operator, commit_lsn, seq, kind, schema_name, table_name, mapped_id, error,
                attempts, failed_at
         FROM walflow.dead_letters WHERE slot = $1 AND operator = $2 ORDER BY id",
    )
    .bind(slot)
    .bind(operator)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(DeadLetter::from).collect())
}

/// The `limit` latest dead letters on `slot` of `operators`, newest first.
pub(crate) async fn latest_dead_letters(
    pool: &PgPool,
    slot: &str,
    operators: &[&str],
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let rows: Vec<DeadLetterRow> = sqlx::query_as(
        "SELECT id, operator, commit_lsn, seq, kind, schema_name, table_name, mapped_id, error,
                attempts, failed_at
         FROM walflow.dead_letters WHERE slot = $1 AND operator = ANY($2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(slot)
    .bind(operators)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(DeadLetter::from).collect())
}

impl From<DeadLetterRow> for DeadLetter {
    fn from(r: DeadLetterRow) -> DeadLetter {
        DeadLetter {
            id: r.id,
            operator: r.operator,
            position: Position {
                commit_lsn: r.commit_lsn,
                seq: r.seq as u32,
            },
            kind: r.kind,
            table: format!("{}.{}", r.schema_name, r.table_name),
            mapped_id: crate::dispatch::id_display(&r.mapped_id),
            error: r.error,
            attempts: r.attempts as u32,
            failed_at: r.failed_at,
        }
    }
}

/// An operator's queue, as the health readings see it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Depth {
    pub operator: String,
    /// Rows in `walflow.queue`.
    pub rows: i64,
    /// Seconds since the oldest row was queued (0 when none).
    pub oldest_age: f64,
    /// Rows in `walflow.dead_letters`.
    pub dead_letters: i64,
}

/// The queue depth and dead letters of each of `operators` on `slot`.
///
/// Cheap while an operator keeps up: its oldest row is looked up through
/// the primary key (an index scan, which also marks the entries of rows
/// deleted since as dead, so the next lookup skips them), and its rows are
/// counted only when there is one.
pub(crate) async fn depths(
    pool: &PgPool,
    slot: &str,
    operators: &[&str],
) -> Result<Vec<Depth>, sqlx::Error> {
    let rows: Vec<(String, Option<f64>, i64)> = sqlx::query_as(
        "SELECT o.name,
                extract(epoch FROM now() - (
                    SELECT q.queued_at FROM walflow.queue q
                    WHERE q.slot = $1 AND q.operator = o.name
                    ORDER BY q.commit_lsn, q.seq, q.part LIMIT 1))::float8,
                (SELECT count(*) FROM walflow.dead_letters d
                 WHERE d.slot = $1 AND d.operator = o.name)
         FROM unnest($2::text[]) AS o(name)
         ORDER BY o.name",
    )
    .bind(slot)
    .bind(operators)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (operator, oldest, dead_letters) in rows {
        let rows = match oldest {
            None => 0,
            Some(_) => {
                sqlx::query_scalar(
                    "SELECT count(*) FROM walflow.queue WHERE slot = $1 AND operator = $2",
                )
                .bind(slot)
                .bind(&operator)
                .fetch_one(pool)
                .await?
            }
        };
        out.push(Depth {
            operator,
            rows,
            oldest_age: oldest.unwrap_or(0.0).max(0.0),
            dead_letters,
        });
    }
    Ok(out)
}

/// Deletes `slot`'s pending process status of the events at or after the
/// slot's confirmed position (the stream storage's start, rule 12): the
/// slot delivers those again, and they are counted afresh. The events
/// before it are not delivered again; their rows are spilled, in the
/// queue, and release their status as they run. A unit of an earlier run
/// still committing holds the rows it releases, so the delete waits for it.
pub(crate) async fn clear_pending(slot: &str, tx: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM walflow.pending_status
         WHERE slot = $1
           AND commit_lsn >= coalesce((SELECT (confirmed_flush_lsn - '0/0')::numeric::int8
                                       FROM pg_replication_slots WHERE slot_name = $1), 0)",
    )
    .bind(slot)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Whether `operators` have spilled rows in the queue standing for events
/// at or before `lsn` (the stream storage's fence, rule 12).
pub(crate) async fn spilled_before(
    pool: &PgPool,
    slot: &str,
    lsn: Lsn,
    operators: &[&str],
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM walflow.queue
                        WHERE slot = $1 AND operator = ANY($3)
                          AND coalesce(first_lsn, commit_lsn) <= $2)",
    )
    .bind(slot)
    .bind(lsn.0 as i64)
    .bind(operators)
    .fetch_one(pool)
    .await
}

//! Process status: how far the operators have got.
//!
//! Two views:
//! - per table, the largest `process_status_entity_field` (default
//!   `updated_at`, in microseconds since the Unix epoch) of an event all of
//!   whose operators have finished — applied or dead-lettered — kept as a
//!   maximum (EventStreamex's `processed?/2`, which overwrites instead);
//! - the LSN fence: every operator has applied everything committed up to a
//!   WAL position ([`Walflow::wait_processed`](crate::flow::Walflow::wait_processed)).

use sqlx::PgPool;

use crate::lsn::Lsn;

/// Splits `"schema.table"` (or `"table"`, in `public`).
pub(crate) fn split_table(table: &str) -> (&str, &str) {
    match table.split_once('.') {
        Some((s, t)) => (s, t),
        None => ("public", table),
    }
}

/// Whether the table's status is at least `micros`.
pub async fn processed(
    pool: &PgPool,
    slot: &str,
    table: &str,
    micros: i64,
) -> Result<bool, sqlx::Error> {
    let (schema, table) = split_table(table);
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

/// Whether every transaction committed up to `lsn` is queued and every
/// queued event at or before it has been applied (or dead-lettered).
/// `Ok(None)` when the queue has not yet reached `lsn`.
pub async fn fence_reached(
    pool: &PgPool,
    slot: &str,
    lsn: Lsn,
) -> Result<Option<bool>, sqlx::Error> {
    let row: (Option<i64>, bool) = sqlx::query_as(
        "SELECT (SELECT enqueued_lsn FROM walflow.streams WHERE slot = $1),
                EXISTS (SELECT 1 FROM walflow.queue
                        WHERE slot = $1 AND coalesce(first_lsn, commit_lsn) <= $2)",
    )
    .bind(slot)
    .bind(lsn.0 as i64)
    .fetch_one(pool)
    .await?;
    match row {
        (Some(enqueued), busy) if enqueued as u64 >= lsn.0 => Ok(Some(!busy)),
        _ => Ok(None),
    }
}

//! What the tools beside a running flow ([`crate::admin`], the `walflow`
//! command) read and change in the queue's tables: the slot's position,
//! queue and process status figures, the dead letters (listed, shown,
//! discarded, and looked up for a retry request), and dropping an operator
//! no flow runs (its rows moved to the dead letters, the status they held
//! released, as rule 4 of the [protocol](super) releases it for a unit).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::lsn::Lsn;

/// The end of the last transaction queued on `slot` (`None` before
/// anything was queued).
pub(crate) async fn enqueued_lsn(pool: &PgPool, slot: &str) -> sqlx::Result<Option<Lsn>> {
    sqlx::query_scalar("SELECT enqueued_lsn FROM walflow.streams WHERE slot = $1")
        .bind(slot)
        .fetch_optional(pool)
        .await
}

/// An operator known on a slot, with its queue and dead letters.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct OperatorFigures {
    pub operator: String,
    /// Whether the flow that last started on the slot declares it
    /// (`walflow.operators`).
    pub in_flow: bool,
    /// Its rows in `walflow.queue`.
    pub queued: i64,
    /// Seconds since its oldest queue row was queued.
    pub oldest: Option<f64>,
    /// Its rows in `walflow.dead_letters`.
    pub dead: i64,
}

/// The operators known on `slot` (those of the flow that last started on
/// it, and any with queue rows or dead letters), by name.
pub(crate) async fn operator_figures(
    pool: &PgPool,
    slot: &str,
) -> sqlx::Result<Vec<OperatorFigures>> {
    sqlx::query_as(
        "WITH names AS (
             SELECT operator FROM walflow.operators WHERE slot = $1
             UNION SELECT DISTINCT operator FROM walflow.queue WHERE slot = $1
             UNION SELECT DISTINCT operator FROM walflow.dead_letters WHERE slot = $1
         )
         SELECT n.operator,
                EXISTS (SELECT 1 FROM walflow.operators o
                        WHERE o.slot = $1 AND o.operator = n.operator) AS in_flow,
                q.queued, q.oldest, coalesce(d.dead, 0) AS dead
         FROM names n
         CROSS JOIN LATERAL (
             SELECT count(*) AS queued,
                    extract(epoch FROM now() - min(queued_at))::float8 AS oldest
             FROM walflow.queue WHERE slot = $1 AND operator = n.operator) q
         LEFT JOIN LATERAL (
             SELECT count(*) AS dead FROM walflow.dead_letters
             WHERE slot = $1 AND operator = n.operator) d ON true
         ORDER BY n.operator",
    )
    .bind(slot)
    .fetch_all(pool)
    .await
}

/// The process status of `slot`: `(schema, table, updated_at)`, by name.
pub(crate) async fn process_status(
    pool: &PgPool,
    slot: &str,
) -> sqlx::Result<Vec<(String, String, i64)>> {
    sqlx::query_as(
        "SELECT schema_name, table_name, updated_at FROM walflow.process_status
         WHERE slot = $1 ORDER BY schema_name, table_name",
    )
    .bind(slot)
    .fetch_all(pool)
    .await
}

/// Whether walflow's tables have rows for `slot` (a flow ran on it).
pub(crate) async fn recorded(pool: &PgPool, slot: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM walflow.operators WHERE slot = $1)
             OR EXISTS (SELECT 1 FROM walflow.streams WHERE slot = $1)
             OR EXISTS (SELECT 1 FROM walflow.queue WHERE slot = $1)
             OR EXISTS (SELECT 1 FROM walflow.dead_letters WHERE slot = $1)
             OR EXISTS (SELECT 1 FROM walflow.process_status WHERE slot = $1)",
    )
    .bind(slot)
    .fetch_one(pool)
    .await
}

/// The logical slots of the database and the slots walflow's tables
/// record a flow on: `(name, in the database, active, walflow's)`, by
/// name.
pub(crate) async fn slots(pool: &PgPool) -> sqlx::Result<Vec<(String, bool, bool, bool)>> {
    sqlx::query_as(
        "WITH live AS (
             SELECT slot_name::text AS name, active FROM pg_replication_slots
             WHERE database = current_database()
         ), walflow AS (
             SELECT slot AS name FROM walflow.operators
             UNION SELECT slot FROM walflow.streams
         )
         SELECT coalesce(l.name, w.name), l.name IS NOT NULL, coalesce(l.active, false),
                w.name IS NOT NULL
         FROM live l FULL JOIN walflow w ON w.name = l.name
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
}

/// The operators known on `slot`: those of the flow that last started on
/// it, and any with queue rows or dead letters, by name.
pub(crate) async fn known_operators(pool: &PgPool, slot: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT operator FROM walflow.operators WHERE slot = $1
         UNION SELECT operator FROM walflow.queue WHERE slot = $1
         UNION SELECT operator FROM walflow.dead_letters WHERE slot = $1
         ORDER BY 1",
    )
    .bind(slot)
    .fetch_all(pool)
    .await
}

/// A row of `walflow.dead_letters`, as the tools read it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DeadLetterRecord {
    pub id: i64,
    pub operator: String,
    pub commit_lsn: Lsn,
    pub seq: i32,
    pub kind: String,
    pub schema_name: String,
    pub table_name: String,
    /// The mapped id as JSON.
    pub mapped_id: String,
    pub error: String,
    pub attempts: i32,
    pub failed_at: DateTime<Utc>,
    /// A handler row's event.
    pub event: Option<serde_json::Value>,
}

const DEAD_LETTER_COLUMNS: &str = "id, operator, commit_lsn, seq, kind, schema_name, table_name,
     mapped_id, error, attempts, failed_at, event";

/// The dead letters of `slot` (of `operator` only, when given), oldest
/// first.
pub(crate) async fn dead_letters(
    pool: &PgPool,
    slot: &str,
    operator: Option<&str>,
) -> sqlx::Result<Vec<DeadLetterRecord>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DEAD_LETTER_COLUMNS} FROM walflow.dead_letters
         WHERE slot = $1 AND ($2::text IS NULL OR operator = $2) ORDER BY id"
    )))
    .bind(slot)
    .bind(operator)
    .fetch_all(pool)
    .await
}

/// Dead letter `id` of `slot`, if there is one.
pub(crate) async fn dead_letter(
    pool: &PgPool,
    slot: &str,
    id: i64,
) -> sqlx::Result<Option<DeadLetterRecord>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DEAD_LETTER_COLUMNS} FROM walflow.dead_letters WHERE slot = $1 AND id = $2"
    )))
    .bind(slot)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The ids of `ids` that are not dead letters of `slot` (of `operator`,
/// when given), in order.
pub(crate) async fn missing_dead_letters<'c, E>(
    conn: E,
    slot: &str,
    operator: Option<&str>,
    ids: &[i64],
) -> sqlx::Result<Vec<i64>>
where
    E: sqlx::PgExecutor<'c>,
{
    sqlx::query_scalar(
        "SELECT i FROM unnest($3::int8[]) AS i
         WHERE NOT EXISTS (SELECT 1 FROM walflow.dead_letters d
                           WHERE d.slot = $1 AND d.id = i
                             AND ($2::text IS NULL OR d.operator = $2))
         ORDER BY i",
    )
    .bind(slot)
    .bind(operator)
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// Locks the dead letters `ids` of `slot` (of `operator`, when given) in
/// `tx`, so that what is checked of them holds until the commit.
pub(crate) async fn lock_dead_letters(
    tx: &mut PgConnection,
    slot: &str,
    operator: Option<&str>,
    ids: &[i64],
) -> sqlx::Result<()> {
    sqlx::query(
        "SELECT id FROM walflow.dead_letters
         WHERE slot = $1 AND id = ANY($2) AND ($3::text IS NULL OR operator = $3) FOR UPDATE",
    )
    .bind(slot)
    .bind(ids)
    .bind(operator)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Deletes the dead letters `ids` of `slot` (of `operator`, when given) in
/// `tx`; how many were deleted.
pub(crate) async fn delete_dead_letters(
    tx: &mut PgConnection,
    slot: &str,
    operator: Option<&str>,
    ids: &[i64],
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM walflow.dead_letters
         WHERE slot = $1 AND id = ANY($2) AND ($3::text IS NULL OR operator = $3)",
    )
    .bind(slot)
    .bind(ids)
    .bind(operator)
    .execute(&mut *tx)
    .await?
    .rows_affected())
}

/// The ids of `ids` that are dead letters of `slot` (of `operator`, when
/// given).
pub(crate) async fn found_dead_letters(
    pool: &PgPool,
    slot: &str,
    operator: Option<&str>,
    ids: &[i64],
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT id FROM walflow.dead_letters
                 WHERE slot = $1 AND id = ANY($2) AND ($3::text IS NULL OR operator = $3)",
    )
    .bind(slot)
    .bind(ids)
    .bind(operator)
    .fetch_all(pool)
    .await
}

/// The ids of the dead letters of `slot` whose operator is one of
/// `operators` (and `operator`, when given), oldest first.
pub(crate) async fn dead_letters_of(
    pool: &PgPool,
    slot: &str,
    operators: &[String],
    operator: Option<&str>,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT id FROM walflow.dead_letters
             WHERE slot = $1 AND operator = ANY($2) AND ($3::text IS NULL OR operator = $3)
             ORDER BY id",
    )
    .bind(slot)
    .bind(operators)
    .bind(operator)
    .fetch_all(pool)
    .await
}

/// How many rows `operator` has queued on `slot`.
pub(crate) async fn queued_rows(pool: &PgPool, slot: &str, operator: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM walflow.queue WHERE slot = $1 AND operator = $2")
        .bind(slot)
        .bind(operator)
        .fetch_one(pool)
        .await
}

/// Moves every queued row of `operator` on `slot` to the dead letters with
/// `error` (0 attempts), in `tx`, and records the process status of the
/// events no other row waits on: they count as processed. Returns how many
/// rows were moved.
pub(crate) async fn dead_letter_operator(
    tx: &mut PgConnection,
    slot: &str,
    operator: &str,
    error: &str,
) -> sqlx::Result<i64> {
    let moved: i64 = sqlx::query_scalar(
        "WITH moved AS (
             DELETE FROM walflow.queue WHERE slot = $1 AND operator = $2
             RETURNING commit_lsn, seq, part, id, kind, schema_name, table_name, event,
                       updated_at, cover_lsns, cover_seqs),
         dead AS (
             INSERT INTO walflow.dead_letters
               (slot, operator, commit_lsn, seq, part, mapped_id, kind, schema_name,
                table_name, event, updated_at, error, attempts)
             SELECT $1, $2, commit_lsn, seq, part, id, kind, schema_name, table_name, event,
                    updated_at, $3, 0
             FROM moved ORDER BY commit_lsn, seq, part),
         events AS (
             SELECT commit_lsn AS l, seq AS s FROM moved
             UNION ALL
             SELECT c.l, c.s FROM moved, unnest(cover_lsns, cover_seqs) AS c(l, s)),
         released AS (
             UPDATE walflow.pending_status p SET remaining = p.remaining - e.n
             FROM (SELECT l, s, count(*)::int AS n FROM events GROUP BY l, s) e
             WHERE p.slot = $1 AND p.commit_lsn = e.l AND p.seq = e.s)
         SELECT count(*) FROM moved",
    )
    .bind(slot)
    .bind(operator)
    .bind(error)
    .fetch_one(&mut *tx)
    .await?;
    // The events no other row waits on are processed.
    sqlx::query(
        "WITH done AS (
             DELETE FROM walflow.pending_status WHERE slot = $1 AND remaining <= 0
             RETURNING schema_name, table_name, updated_at)
         INSERT INTO walflow.process_status (slot, schema_name, table_name, updated_at)
         SELECT $1, schema_name, table_name, max(updated_at) FROM done
         GROUP BY schema_name, table_name ORDER BY schema_name, table_name
         ON CONFLICT (slot, schema_name, table_name)
         DO UPDATE SET updated_at = GREATEST(walflow.process_status.updated_at, EXCLUDED.updated_at)",
    )
    .bind(slot)
    .execute(&mut *tx)
    .await?;
    Ok(moved)
}

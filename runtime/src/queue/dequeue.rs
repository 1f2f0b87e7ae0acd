//! Taking rows off the queue: reading an operator's rows back in order,
//! deleting a unit's rows (with the process status they release) in the
//! unit's own transaction (rule 4 of the [protocol](super)), and recording
//! rows given up as dead letters.

use sqlx::PgConnection;

use super::{Row, Shared};
use crate::raw::EventKind;

/// A row of `walflow.queue` as an executor reads it back.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct QueuedRow {
    pub commit_lsn: i64,
    pub seq: i32,
    pub part: i16,
    /// The mapped id as JSON.
    pub id: String,
    pub kind: EventKind,
    pub schema_name: String,
    pub table_name: String,
    /// A handler row's event as JSON.
    pub event: Option<String>,
    pub updated_at: Option<i64>,
    pub cover_lsns: Option<Vec<i64>>,
    pub cover_seqs: Option<Vec<i32>>,
}

/// Rows fetched per round trip.
pub(crate) const FETCH: i64 = 2_000;

/// Up to [`FETCH`] of `operator`'s rows after `cursor`, in queue order.
pub(crate) async fn fetch(
    shared: &Shared,
    operator: &str,
    cursor: (i64, i32, i16),
) -> sqlx::Result<Vec<Row>> {
    let rows: Vec<QueuedRow> = sqlx::query_as(
        "SELECT commit_lsn, seq, part, id, kind, schema_name, table_name, event::text AS event, updated_at,
                cover_lsns, cover_seqs
         FROM walflow.queue
         WHERE slot = $1 AND operator = $2 AND (commit_lsn, seq, part) > ($3, $4, $5)
         ORDER BY commit_lsn, seq, part
         LIMIT $6",
    )
    .bind(&shared.slot)
    .bind(operator)
    .bind(cursor.0)
    .bind(cursor.1)
    .bind(cursor.2)
    .bind(FETCH)
    .fetch_all(&shared.pool)
    .await?;
    Ok(rows.into_iter().map(Row::from_queued).collect())
}

/// Deletes `rows` from `operator`'s queue in `tx`; `false` when fewer
/// were found (another executor finished some: rule 4).
pub(crate) async fn delete_rows(
    slot: &str,
    operator: &str,
    rows: &[&Row],
    tx: &mut PgConnection,
) -> sqlx::Result<bool> {
    let deleted = if let [row] = rows {
        sqlx::query(
            "DELETE FROM walflow.queue
             WHERE slot = $1 AND operator = $2 AND commit_lsn = $3 AND seq = $4 AND part = $5",
        )
        .bind(slot)
        .bind(operator)
        .bind(row.commit_lsn)
        .bind(row.seq)
        .bind(row.part)
        .execute(&mut *tx)
        .await?
        .rows_affected()
    } else {
        let n: i64 = sqlx::query_scalar("SELECT walflow.delete_queue_rows($1, $2, $3, $4, $5)")
            .bind(slot)
            .bind(operator)
            .bind(rows.iter().map(|r| r.commit_lsn).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.seq).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.part).collect::<Vec<_>>())
            .fetch_one(&mut *tx)
            .await?;
        n as u64
    };
    Ok(deleted == rows.len() as u64)
}

/// Moves the process status of the events all of whose rows are done with
/// `rows` (theirs and those collapsed into them), in `tx`.
pub(crate) async fn release_status(
    slot: &str,
    rows: &[&Row],
    tx: &mut PgConnection,
) -> sqlx::Result<()> {
    if rows
        .iter()
        .all(|r| r.updated_at.is_none() && r.covers.is_empty())
    {
        return Ok(());
    }
    let mut lsns: Vec<i64> = rows.iter().map(|r| r.commit_lsn).collect();
    let mut seqs: Vec<i32> = rows.iter().map(|r| r.seq).collect();
    for (l, s) in rows.iter().flat_map(|r| r.covers.iter()) {
        lsns.push(*l);
        seqs.push(*s);
    }
    // Units of several operators release the same events, each its own
    // set in its own order: the rows are locked in key order first, so two
    // units wait for each other instead of deadlocking (a deadlock would
    // roll the unit back and run its handler again).
    sqlx::query(
        "SELECT 1 FROM walflow.pending_status
         WHERE slot = $1 AND commit_lsn = ANY($2::int8[]) AND seq = ANY($3::int4[])
           AND (commit_lsn, seq) IN (SELECT * FROM UNNEST($2::int8[], $3::int4[]))
         ORDER BY commit_lsn, seq FOR UPDATE",
    )
    .bind(slot)
    .bind(&lsns)
    .bind(&seqs)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE walflow.pending_status p SET remaining = p.remaining - u.n
         FROM (SELECT l, s, count(*)::int AS n FROM UNNEST($2::int8[], $3::int4[]) AS x(l, s)
               GROUP BY l, s) u
         WHERE p.slot = $1 AND p.commit_lsn = ANY($2::int8[]) AND p.seq = ANY($3::int4[])
           AND p.commit_lsn = u.l AND p.seq = u.s",
    )
    .bind(slot)
    .bind(&lsns)
    .bind(&seqs)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "WITH done AS (
             DELETE FROM walflow.pending_status
             WHERE slot = $1 AND remaining <= 0
               AND commit_lsn = ANY($2::int8[]) AND seq = ANY($3::int4[])
               AND (commit_lsn, seq) IN (SELECT * FROM UNNEST($2::int8[], $3::int4[]))
             RETURNING schema_name, table_name, updated_at)
         INSERT INTO walflow.process_status (slot, schema_name, table_name, updated_at)
         SELECT $1, schema_name, table_name, max(updated_at) FROM done
         GROUP BY schema_name, table_name ORDER BY schema_name, table_name
         ON CONFLICT (slot, schema_name, table_name)
         DO UPDATE SET updated_at = GREATEST(walflow.process_status.updated_at, EXCLUDED.updated_at)",
    )
    .bind(slot)
    .bind(&lsns)
    .bind(&seqs)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Records `rows` as given up by `operator` after `attempts`, with `error`,
/// in `tx` (the unit then completes them: removed from the queue in the
/// same transaction), one statement for all of them.
pub(crate) async fn dead_letter(
    slot: &str,
    operator: &str,
    rows: &[Row],
    error: &str,
    attempts: u32,
    tx: &mut PgConnection,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO walflow.dead_letters
           (slot, operator, commit_lsn, seq, part, mapped_id, kind, schema_name, table_name,
            event, updated_at, error, attempts)
         SELECT $1, $2, l, s, p, i, k, sc, t, e::jsonb, u, $12, $13
         FROM UNNEST($3::int8[], $4::int4[], $5::int2[], $6::text[], $7::text[], $8::text[],
                     $9::text[], $10::text[], $11::int8[]) AS x(l, s, p, i, k, sc, t, e, u)",
    )
    .bind(slot)
    .bind(operator)
    .bind(rows.iter().map(|r| r.commit_lsn).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.seq).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.part).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| &*r.schema).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| &*r.table).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.event.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
    .bind(error)
    .bind(attempts as i32)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Moves dead letter `id` back into its operator's queue, in `tx`; its
/// operator, or `None` when there is no such dead letter.
pub(crate) async fn requeue_dead_letter(
    tx: &mut PgConnection,
    slot: &str,
    id: i64,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "WITH d AS (DELETE FROM walflow.dead_letters WHERE slot = $1 AND id = $2 RETURNING *)
         INSERT INTO walflow.queue
           (slot, operator, commit_lsn, seq, part, id, kind, schema_name, table_name, event, updated_at)
         SELECT slot, operator, commit_lsn, seq, part, mapped_id, kind, schema_name, table_name,
                event, updated_at FROM d
         ON CONFLICT DO NOTHING
         RETURNING operator",
    )
    .bind(slot)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
}

/// A dead letter read to run again (the stream storage).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DeadLetterRow {
    pub operator: String,
    #[sqlx(flatten)]
    pub row: QueuedRow,
}

/// Reads dead letter `id` without taking it (the stream storage takes it
/// in the transaction of the unit that replays it).
pub(crate) async fn peek_dead_letter(
    tx: &mut PgConnection,
    slot: &str,
    id: i64,
) -> sqlx::Result<Option<DeadLetterRow>> {
    sqlx::query_as(
        "SELECT operator, commit_lsn, seq, part, mapped_id AS id, kind, schema_name,
                table_name, event::text AS event, updated_at,
                NULL::int8[] AS cover_lsns, NULL::int4[] AS cover_seqs
         FROM walflow.dead_letters WHERE slot = $1 AND id = $2",
    )
    .bind(slot)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
}

/// Takes the dead letters `ids`, replayed by the unit whose transaction
/// `tx` is; returns how many were still there.
pub(crate) async fn forget_dead_letters(
    slot: &str,
    ids: &[i64],
    tx: &mut PgConnection,
) -> sqlx::Result<u64> {
    Ok(
        sqlx::query("DELETE FROM walflow.dead_letters WHERE slot = $1 AND id = ANY($2)")
            .bind(slot)
            .bind(ids)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
    )
}

/// Deletes those of `rows` still in `operator`'s queue in `tx`, returning
/// the keys of the rows deleted.
pub(crate) async fn delete_rows_returning(
    slot: &str,
    operator: &str,
    rows: &[&Row],
    tx: &mut PgConnection,
) -> sqlx::Result<Vec<super::RowKey>> {
    sqlx::query_as(
        "DELETE FROM walflow.queue q
         USING UNNEST($3::int8[], $4::int4[], $5::int2[]) AS x(l, s, p)
         WHERE q.slot = $1 AND q.operator = $2
           AND q.commit_lsn = x.l AND q.seq = x.s AND q.part = x.p
         RETURNING q.commit_lsn, q.seq, q.part",
    )
    .bind(slot)
    .bind(operator)
    .bind(rows.iter().map(|r| r.commit_lsn).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.seq).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.part).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await
}

//! The stream storage's spill (rule 12): rows an operator holds in memory
//! written to `walflow.queue` exactly as the durable queue writes them, so
//! that the slot's acknowledgement need not wait for them.

use sqlx::PgConnection;

use super::Row;

/// Rows per statement of a spill. A spill can hold every row an operator
/// has in memory (up to the room, 20,000 by default); one statement for
/// all of them would build its arrays and its `Bind` message, several
/// megabytes, at once. The statements share the spill's transaction, so
/// the spill still commits whole or not at all.
const CHUNK: usize = 1_000;

/// Writes `rows` of `operator` to the queue in `tx`; a row already there
/// (written by an earlier spill of a run that then crashed, and delivered
/// again) is left as it is.
pub(crate) async fn write(
    slot: &str,
    operator: &str,
    rows: &[&Row],
    tx: &mut PgConnection,
) -> sqlx::Result<()> {
    for chunk in rows.chunks(CHUNK) {
        write_chunk(slot, operator, chunk, tx).await?;
    }
    Ok(())
}

async fn write_chunk(
    slot: &str,
    operator: &str,
    rows: &[&Row],
    tx: &mut PgConnection,
) -> sqlx::Result<()> {
    let covers = |f: fn(&(i64, i32)) -> String| {
        super::enqueue::covers_text(rows.iter().map(|r| &r.covers), f)
    };
    sqlx::query(
        "INSERT INTO walflow.queue
           (slot, operator, commit_lsn, seq, part, id, kind, schema_name, table_name, event,
            updated_at, first_lsn, cover_lsns, cover_seqs)
         SELECT $1, $2, l, s, p, i, k, sc, t, e::jsonb, u, f, cl::int8[], cs::int4[]
         FROM UNNEST($3::int8[], $4::int4[], $5::int2[], $6::text[], $7::text[], $8::text[],
                     $9::text[], $10::text[], $11::int8[], $12::int8[], $13::text[], $14::text[])
              AS x(l, s, p, i, k, sc, t, e, u, f, cl, cs)
         ON CONFLICT DO NOTHING",
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
    .bind(rows.iter().map(|r| r.first_lsn).collect::<Vec<_>>())
    .bind(covers(|c| c.0.to_string()))
    .bind(covers(|c| c.1.to_string()))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Whether `operator` has rows in the queue (spilled by an earlier run).
pub(crate) async fn any(pool: &sqlx::PgPool, slot: &str, operator: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM walflow.queue WHERE slot = $1 AND operator = $2)",
    )
    .bind(slot)
    .bind(operator)
    .fetch_one(pool)
    .await
}

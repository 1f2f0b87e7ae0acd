//! The progress record (rule 10): per operator and mapped id, the position
//! of the last event a committed unit applied, written in the unit's own
//! transaction. It answers one question: did this unit commit?
//!
//! With the durable queue the answer is in the queue itself (a committed
//! unit deleted its rows, rule 4). With the memory queue nothing else in
//! the database says it, so a unit whose `COMMIT` got no reply (the
//! connection broke after the server received it) reads the record before
//! running again: at or past its last event means the commit went through.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sqlx::PgConnection;

use super::{Row, RowKey};

/// Records, in the unit's transaction `tx`, that `rows` of `operator` are
/// applied: per mapped id, the largest key among them. A record never moves
/// back (an id's units run in commit order; the guard keeps it so even if
/// a unit were re-run by hand).
///
/// Returns whether every id's record moved: with the stream storage, a
/// record that did not says another run applied the rows (rule 12). The
/// upsert waits for a transaction that holds the same record (another
/// run's unit still committing), then sees its outcome.
pub(crate) async fn record(
    slot: &str,
    operator: &str,
    rows: &[&Row],
    tx: &mut PgConnection,
) -> sqlx::Result<bool> {
    let last = last_per_id(rows);
    if last.is_empty() {
        return Ok(true);
    }
    let moved = sqlx::query(
        "INSERT INTO walflow.progress AS p (slot, operator, id_key, commit_lsn, seq, part)
         SELECT $1, $2, k, l, s, pt
         FROM UNNEST($3::text[], $4::int8[], $5::int4[], $6::int2[]) AS x(k, l, s, pt)
         ON CONFLICT (slot, operator, id_key) DO UPDATE
           SET commit_lsn = EXCLUDED.commit_lsn, seq = EXCLUDED.seq, part = EXCLUDED.part,
               recorded_at = now()
           WHERE (p.commit_lsn, p.seq, p.part)
                 < (EXCLUDED.commit_lsn, EXCLUDED.seq, EXCLUDED.part)",
    )
    .bind(slot)
    .bind(operator)
    .bind(last.keys().map(|k| k.as_str()).collect::<Vec<_>>())
    .bind(last.values().map(|k| k.0).collect::<Vec<_>>())
    .bind(last.values().map(|k| k.1).collect::<Vec<_>>())
    .bind(last.values().map(|k| k.2).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(moved == last.len() as u64)
}

/// The records of `operator` for the ids of `rows`: per id key, the key of
/// the last event a committed unit applied (rule 12).
pub(crate) async fn read(
    pool: &sqlx::PgPool,
    slot: &str,
    operator: &str,
    rows: &[&Row],
) -> sqlx::Result<HashMap<String, RowKey>> {
    let ids: Vec<&str> = last_per_id(rows).keys().map(|k| k.as_str()).collect();
    let found: Vec<(String, i64, i32, i16)> = sqlx::query_as(
        "SELECT id_key, commit_lsn, seq, part FROM walflow.progress
         WHERE slot = $1 AND operator = $2 AND id_key = ANY($3)",
    )
    .bind(slot)
    .bind(operator)
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    Ok(found
        .into_iter()
        .map(|(k, l, s, p)| (k, (l, s, p)))
        .collect())
}

/// With the stream storage, deletes `slot`'s records of events before both
/// the slot's confirmed position and the oldest spilled row, every ten
/// seconds, until `stop` turns true. Every copy of an event that may still
/// run is at or after that bound: one held in memory is outstanding (the
/// confirmed position is at or before it; so is that of a unit whose
/// `COMMIT` got no reply, until it has asked), one in the queue is a
/// spilled row (a row delivered again and spilled may have been applied
/// before a crash: its record must stay), and one a killed run's unit may
/// still commit is delivered again or spilled. So no record below it is
/// asked about again, and the records are at most one per id touched since
/// the bound.
pub(crate) async fn prune_confirmed(
    pool: sqlx::PgPool,
    slot: String,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    prune_every(
        pool,
        slot,
        stop,
        PRUNE_CONFIRMED_EVERY,
        "DELETE FROM walflow.progress
         WHERE slot = $1
           AND commit_lsn < (SELECT (confirmed_flush_lsn - '0/0')::numeric::int8
                             FROM pg_replication_slots WHERE slot_name = $1)
           AND commit_lsn < coalesce((SELECT min(coalesce(first_lsn, commit_lsn))
                                      FROM walflow.queue WHERE slot = $1), 9223372036854775807)",
    )
    .await;
}

/// How often [`prune_confirmed`] runs.
pub(crate) const PRUNE_CONFIRMED_EVERY: Duration = Duration::from_secs(10);

/// Whether the unit that applied `rows` committed, read on a connection of
/// its own after its `COMMIT` got no reply.
///
/// The unit's transaction may still be running in its server session (the
/// commit under way, or the session not yet aware that its client left).
/// A plain read would not wait for it, and would take "not yet" for "no".
/// So the read is an `INSERT … ON CONFLICT` of the record's key in a
/// transaction that is rolled back: it waits, as every such insert does,
/// until a transaction holding that key ends, then sees its outcome. A
/// placeholder position (-1) comes back when no record exists.
pub(crate) async fn committed(
    conn: &mut PgConnection,
    slot: &str,
    operator: &str,
    rows: &[&Row],
) -> sqlx::Result<bool> {
    let last = last_per_id(rows);
    let Some((id_key, key)) = last.iter().next() else {
        return Ok(true);
    };
    // One transaction wrote every id of the unit: one id answers for all.
    sqlx::raw_sql("BEGIN; SET LOCAL lock_timeout = '10s'")
        .execute(&mut *conn)
        .await?;
    let found: sqlx::Result<(i64, i32, i16)> = sqlx::query_as(
        "INSERT INTO walflow.progress AS p (slot, operator, id_key, commit_lsn, seq, part)
         VALUES ($1, $2, $3, -1, 0, 0)
         ON CONFLICT (slot, operator, id_key) DO UPDATE SET commit_lsn = p.commit_lsn
         RETURNING commit_lsn, seq, part",
    )
    .bind(slot)
    .bind(operator)
    .bind(id_key)
    .fetch_one(&mut *conn)
    .await;
    let rolled_back = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
    let found = found?;
    rolled_back?;
    Ok(found >= *key)
}

/// Deletes `slot`'s records last written more than an hour ago, every ten
/// minutes, until `stop` turns true ([`committed`] is asked within seconds
/// of the `COMMIT` it is about).
pub(crate) async fn prune(
    pool: sqlx::PgPool,
    slot: String,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    prune_every(
        pool,
        slot,
        stop,
        Duration::from_secs(600),
        "DELETE FROM walflow.progress
         WHERE slot = $1 AND recorded_at < now() - interval '3600 seconds'",
    )
    .await;
}

/// Runs `delete` (on `slot`'s records, bound as `$1`) every `every` until
/// `stop` turns true; a failure is tried again at the next turn.
async fn prune_every(
    pool: sqlx::PgPool,
    slot: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
    every: Duration,
    delete: &'static str,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = sqlx::query(delete).bind(&slot).execute(&pool).await {
            tracing::debug!(error = %crate::pg_error::DbError(&e), "pruning walflow.progress failed; trying again later");
        }
    }
}

/// How long [`committed`] waits between attempts while the server cannot
/// answer.
pub(crate) const RETRY_EVERY: Duration = Duration::from_millis(200);

/// Per mapped id, the largest key of `rows`.
fn last_per_id<'a>(rows: &[&'a Row]) -> BTreeMap<&'a String, RowKey> {
    let mut last: BTreeMap<&String, RowKey> = BTreeMap::new();
    for r in rows {
        let e = last.entry(&r.id_key).or_insert(r.key());
        *e = (*e).max(r.key());
    }
    last
}

/// Whether the outcome of a `COMMIT` that failed with `e` is unknown: the
/// server may have committed it (the connection broke, or the session was
/// terminated, after the command left), as opposed to an error the server
/// reported for the commit itself (a serialization failure, a deferred
/// constraint), which means it rolled back.
pub(crate) fn commit_outcome_unknown(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

//! Queueing: a batch of transactions' rows, their process status marks,
//! the dead letters of the events refused for want of their old row, and
//! the queue's position, written by one statement that first checks that
//! the batch's transactions are visible (rules 1 to 3 of the
//! [protocol](super)).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::sync::watch;

use super::Shared;
use crate::dispatch::{Batch, StatusMark};
use crate::lsn::Lsn;
use crate::pg_error::is_transient;

/// Queues `batch` on `conn` (connected first if `None`: a connection of
/// its own, so queueing never waits for the pool, which units waiting for
/// this very flush may hold), retrying with backoff. Returns the connection
/// (`None` after a broken one) and `false` when the flow stops first.
pub(crate) async fn queue_retrying(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut conn: Option<PgConnection>,
    batch: &Batch,
    end: Option<Lsn>,
    partial: Option<(Lsn, u32)>,
) -> (Option<PgConnection>, bool) {
    let mut tries = 0u32;
    // An attempt whose outcome is unknown: the connection broke after the
    // statement was sent, so it may have committed.
    let mut uncertain = false;
    // What this flush queues, for messages.
    let what = match (end, partial) {
        (Some(end), _) => format!("the transactions up to {end}"),
        (None, Some((lsn, seq))) => format!("transaction {lsn} up to change {seq}"),
        (None, None) => "process status marks".to_owned(),
    };
    let (slot, rows) = (shared.slot.as_str(), batch.rows.len());
    loop {
        let error = match conn.as_mut() {
            None => match connect(&shared).await {
                Ok(mut c) => {
                    if uncertain {
                        match committed(&shared, &mut c, end, partial).await {
                            // Queued already: inserting again could bring
                            // back rows an executor has applied since.
                            Ok(true) => return (Some(c), true),
                            Ok(false) => uncertain = false,
                            Err(e) => {
                                tracing::warn!(slot, error = %crate::pg_error::DbError(&e), "reading the queue's position failed; retrying");
                                tries += 1;
                                tokio::select! {
                                    _ = tokio::time::sleep(shared.config.restart_delay(tries)) => {}
                                    _ = stop.wait_for(|s| *s) => return (None, false),
                                }
                                continue;
                            }
                        }
                    }
                    conn = Some(c);
                    continue;
                }
                Err(e) => {
                    shared.note_error(&e);
                    tracing::warn!(slot, error = %crate::pg_error::DbError(&e), "connecting to queue {what} failed; retrying");
                    None
                }
            },
            Some(c) => match flush(&shared, c, batch, end, partial).await {
                Ok(()) => return (conn, true),
                Err(e) if is_not_visible(&e) => {
                    // Committed, flushed and sent, not yet visible: wait
                    // until it is, then queue (not counted as a failure).
                    if !wait_visible(&shared, &stop, Some(c), &batch.xids).await {
                        return (conn, false);
                    }
                    continue;
                }
                Err(e) => Some(e),
            },
        };
        if let Some(e) = error {
            shared.note_error(&e);
            if is_transient(&e) {
                conn = None;
                uncertain = true;
                tracing::warn!(slot, rows, error = %crate::pg_error::DbError(&e), "queueing {what} failed; retrying");
            } else {
                tracing::error!(slot, rows, error = %crate::pg_error::DbError(&e), "queueing {what} failed; retrying");
            }
        }
        tries += 1;
        tokio::select! {
            _ = tokio::time::sleep(shared.config.restart_delay(tries)) => {}
            _ = stop.wait_for(|s| *s) => return (conn, false),
        }
    }
}

/// Whether a flush of `end` / `partial` is recorded in `walflow.streams`
/// (both are written by the flush's own statement). A batch with neither
/// (process status marks only) is never taken as committed; queueing it
/// again inserts nothing twice (`ON CONFLICT DO NOTHING`, and the status
/// is a maximum).
async fn committed(
    shared: &Shared,
    conn: &mut PgConnection,
    end: Option<Lsn>,
    partial: Option<(Lsn, u32)>,
) -> sqlx::Result<bool> {
    if end.is_none() && partial.is_none() {
        return Ok(false);
    }
    let Some(position) = read_position(&mut *conn, &shared.slot).await? else {
        return Ok(false);
    };
    Ok(match (end, partial) {
        (_, Some((lsn, seq))) => {
            position.partial.is_some_and(|(l, s)| l == lsn && s >= seq) || position.enqueued >= lsn
        }
        (Some(end), None) => position.enqueued >= end,
        (None, None) => false,
    })
}

/// How far the queue of a slot has got (`walflow.streams`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueuePosition {
    /// The end of the last whole transaction queued (0 when only part of
    /// one was ever queued).
    pub enqueued: Lsn,
    /// A transaction queued in part: its commit LSN and last queued change.
    pub partial: Option<(Lsn, u32)>,
}

/// Reads the queue's position for `slot`; `None` before its first flush.
pub(crate) async fn read_position<'e, E>(
    executor: E,
    slot: &str,
) -> sqlx::Result<Option<QueuePosition>>
where
    E: sqlx::PgExecutor<'e>,
{
    let row: Option<(i64, Option<i64>, Option<i32>)> = sqlx::query_as(
        "SELECT enqueued_lsn, partial_lsn, partial_seq FROM walflow.streams WHERE slot = $1",
    )
    .bind(slot)
    .fetch_optional(executor)
    .await?;
    Ok(
        row.map(|(enqueued, partial_lsn, partial_seq)| QueuePosition {
            enqueued: Lsn(enqueued as u64),
            partial: match (partial_lsn, partial_seq) {
                (Some(l), Some(s)) => Some((Lsn(l as u64), s as u32)),
                _ => None,
            },
        }),
    )
}

/// The `application_name` of a flow's queueing connection on `slot`.
pub(crate) fn queue_application_name(slot: &str) -> String {
    let name = format!("walflow queue {slot}");
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// The consumer's own connection, named after the slot (see
/// [`wait_for_predecessor`]).
async fn connect(shared: &Shared) -> sqlx::Result<PgConnection> {
    PgConnection::connect_with(
        &shared
            .config
            .connect_options()
            .application_name(&queue_application_name(&shared.slot)),
    )
    .await
}

/// At start, before the queue's position is read: waits (up to `limit`)
/// until no other session queues for `slot`. A flow killed while its
/// queueing statement ran leaves that statement running on the server,
/// which may still commit; read before it does, the position would be
/// stale and the transactions it queued queued again, after an executor
/// may have applied them. A killed flow's session ends as soon as its
/// statement does (its client is gone); a live one (another flow on the
/// slot) is waited for only until `limit`, then this one goes on with a
/// warning.
pub(crate) async fn wait_for_predecessor(
    pool: &sqlx::PgPool,
    slot: &str,
    limit: Duration,
) -> sqlx::Result<()> {
    let name = queue_application_name(slot);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let busy: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                            WHERE application_name = $1 AND pid <> pg_backend_pid()
                              AND state IN ('active', 'idle in transaction'))",
        )
        .bind(&name)
        .fetch_one(pool)
        .await?;
        if !busy {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                slot,
                "another session still queues events for this slot; going on"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Queues `batch`, and records `end` as queued (all transactions up to it)
/// or `partial` (a transaction queued up to a change): one statement, so one
/// round trip and one transaction.
async fn flush(
    shared: &Shared,
    conn: &mut PgConnection,
    batch: &Batch,
    end: Option<Lsn>,
    partial: Option<(Lsn, u32)>,
) -> sqlx::Result<()> {
    let (rows, dead) = (&batch.rows, &batch.refused);
    let covers = |f: fn(&(i64, i32)) -> String| covers_text(rows.iter().map(|r| &r.covers), f);
    // (With the memory process status, the store took the marks out.)
    let (pending, done): (Vec<&StatusMark>, Vec<_>) =
        batch.status.iter().partition(|s| s.remaining > 0);
    // Events no operator runs on are done as soon as they are seen; in key
    // order, the order units upsert the same rows in (no deadlock).
    let mut max: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for s in &done {
        let e = max.entry((&*s.schema, &*s.table)).or_insert(s.updated_at);
        *e = (*e).max(s.updated_at);
    }
    let (done_tables, done_micros): (Vec<(&str, &str)>, Vec<i64>) = max.into_iter().unzip();
    sqlx::query(
        "WITH q AS (
             INSERT INTO walflow.queue
               (slot, operator, commit_lsn, seq, part, id, kind, schema_name, table_name, event,
                updated_at, first_lsn, cover_lsns, cover_seqs)
             SELECT $1, o, l, s, p, i, k, sc, t, e::jsonb, u, f, cl::int8[], cs::int4[]
             FROM UNNEST($2::text[], $3::int8[], $4::int4[], $5::int2[], $6::text[], $7::text[],
                         $8::text[], $9::text[], $10::text[], $11::int8[], $12::int8[],
                         $13::text[], $14::text[])
                  AS x(o, l, s, p, i, k, sc, t, e, u, f, cl, cs)
             ON CONFLICT DO NOTHING
             RETURNING 1
         ), ps AS (
             INSERT INTO walflow.pending_status
               (slot, commit_lsn, seq, schema_name, table_name, updated_at, remaining)
             SELECT $1, l, s, sc, t, u, r
             FROM UNNEST($15::int8[], $16::int4[], $17::text[], $18::text[], $19::int8[],
                         $20::int4[]) AS x(l, s, sc, t, u, r)
             ON CONFLICT DO NOTHING
             RETURNING 1
         ), st AS (
             INSERT INTO walflow.process_status (slot, schema_name, table_name, updated_at)
             SELECT $1, sc, t, u FROM UNNEST($21::text[], $22::text[], $23::int8[]) AS x(sc, t, u)
             ON CONFLICT (slot, schema_name, table_name) DO UPDATE
               SET updated_at = GREATEST(walflow.process_status.updated_at, EXCLUDED.updated_at)
             RETURNING 1
         ), sm AS (
             INSERT INTO walflow.streams (slot, enqueued_lsn, partial_lsn, partial_seq)
             SELECT $1, coalesce($24, 0), $25, $26 WHERE $24 IS NOT NULL OR $25 IS NOT NULL
             ON CONFLICT (slot) DO UPDATE SET
               enqueued_lsn = GREATEST(walflow.streams.enqueued_lsn, EXCLUDED.enqueued_lsn),
               partial_lsn = EXCLUDED.partial_lsn,
               partial_seq = EXCLUDED.partial_seq
             RETURNING 1
         ), dl AS (
             -- Refused events (no old row where one is needed): dead
             -- letters with their reason, never run (0 attempts); once.
             INSERT INTO walflow.dead_letters
               (slot, operator, commit_lsn, seq, part, mapped_id, kind, schema_name, table_name,
                event, updated_at, error, attempts)
             SELECT $1, o, l, s, p, i, k, sc, t, e::jsonb, u, r, 0
             FROM UNNEST($28::text[], $29::int8[], $30::int4[], $31::int2[], $32::text[],
                         $33::text[], $34::text[], $35::text[], $36::text[], $37::int8[],
                         $38::text[]) AS x(o, l, s, p, i, k, sc, t, e, u, r)
             WHERE NOT EXISTS (SELECT 1 FROM walflow.dead_letters d
                               WHERE d.slot = $1 AND d.operator = x.o AND d.commit_lsn = x.l
                                 AND d.seq = x.s AND d.part = x.p)
             RETURNING 1
         )
         SELECT walflow.require_visible($27::int8[]),
                set_config('synchronous_commit', 'local', true)",
    )
    .bind(&shared.slot)
    .bind(rows.iter().map(|r| r.operator).collect::<Vec<_>>())
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
    .bind(pending.iter().map(|s| s.commit_lsn).collect::<Vec<_>>())
    .bind(pending.iter().map(|s| s.seq).collect::<Vec<_>>())
    .bind(pending.iter().map(|s| &*s.schema).collect::<Vec<_>>())
    .bind(pending.iter().map(|s| &*s.table).collect::<Vec<_>>())
    .bind(pending.iter().map(|s| s.updated_at).collect::<Vec<_>>())
    .bind(pending.iter().map(|s| s.remaining).collect::<Vec<_>>())
    .bind(done_tables.iter().map(|t| t.0).collect::<Vec<_>>())
    .bind(done_tables.iter().map(|t| t.1).collect::<Vec<_>>())
    .bind(done_micros)
    .bind(end.map(|l| l.0 as i64))
    .bind(partial.map(|p| p.0.0 as i64))
    .bind(partial.map(|p| p.1 as i32))
    .bind(batch.xids.iter().map(|x| i64::from(*x)).collect::<Vec<_>>())
    .bind(dead.iter().map(|r| r.operator).collect::<Vec<_>>())
    .bind(dead.iter().map(|r| r.commit_lsn).collect::<Vec<_>>())
    .bind(dead.iter().map(|r| r.seq).collect::<Vec<_>>())
    .bind(dead.iter().map(|r| r.part).collect::<Vec<_>>())
    .bind(dead.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
    .bind(dead.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>())
    .bind(dead.iter().map(|r| &*r.schema).collect::<Vec<_>>())
    .bind(dead.iter().map(|r| &*r.table).collect::<Vec<_>>())
    .bind(dead.iter().map(|r| r.event.as_deref()).collect::<Vec<_>>())
    .bind(dead.iter().map(|r| r.updated_at).collect::<Vec<_>>())
    .bind(dead.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Per row, the events collapsed into it as an array literal (one part of
/// each, by `f`), `NULL` for a row that collapsed none: how the queue's
/// `cover_lsns` and `cover_seqs` are bound.
pub(crate) fn covers_text<'a>(
    rows: impl Iterator<Item = &'a Vec<(i64, i32)>>,
    f: fn(&(i64, i32)) -> String,
) -> Vec<Option<String>> {
    rows.map(|covers| {
        (!covers.is_empty()).then(|| {
            let items: Vec<String> = covers.iter().map(f).collect();
            format!("{{{}}}", items.join(","))
        })
    })
    .collect()
}

/// Whether queueing failed because a transaction of the batch is not yet
/// visible (`walflow.require_visible`).
fn is_not_visible(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("WF001"))
}

/// Waits until every transaction of `xids` is visible to new snapshots.
///
/// PostgreSQL flushes a transaction's commit record, and the WAL sender
/// sends it, before the transaction leaves the set of running transactions
/// that snapshots consult; with synchronous replication the gap lasts until
/// the standby confirms. An operator that ran in that gap would compute the
/// state before the transaction and count the event as applied. Polls with
/// a short, growing pause; `false` when the flow stops first. Database
/// errors are retried after the configured backoff. On `conn`, else on the
/// pool.
pub(crate) async fn wait_visible(
    shared: &Shared,
    stop: &watch::Receiver<bool>,
    mut conn: Option<&mut PgConnection>,
    xids: &[u32],
) -> bool {
    if xids.is_empty() {
        return true;
    }
    let xids: Vec<i64> = xids.iter().map(|x| i64::from(*x)).collect();
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    let mut warned = false;
    let mut failures = 0u32;
    let mut stop = stop.clone();
    loop {
        let query = sqlx::query_scalar("SELECT walflow.invisible_xids($1)").bind(&xids);
        let missing: Result<Vec<i64>, sqlx::Error> = match conn.as_deref_mut() {
            Some(c) => query.fetch_one(c).await,
            None => query.fetch_one(&shared.pool).await,
        };
        let wait = match missing {
            Ok(m) if m.is_empty() => return true,
            Ok(m) => {
                if !warned && started.elapsed() > Duration::from_secs(5) {
                    tracing::warn!(
                        transactions = ?m,
                        "committed transactions are still not visible after 5 s \
                         (waiting for a synchronous standby?); their events wait"
                    );
                    warned = true;
                }
                pause = (pause * 2).min(Duration::from_millis(50));
                pause
            }
            Err(e) => {
                failures += 1;
                shared.note_error(&e);
                tracing::warn!(error = %crate::pg_error::DbError(&e), "checking that transactions are visible failed; retrying");
                shared.config.restart_delay(failures)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return false,
        }
    }
}

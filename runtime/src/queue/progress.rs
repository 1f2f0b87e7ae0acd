//! The progress record (rule 12) and the outcome of a `COMMIT` without
//! reply (rule 10): per committed unit transaction of an operator, the positions `(commit_lsn, seq, part)` of the rows it
//! applied or dead-lettered, one row of `walflow.applied` written by that
//! transaction itself. A group of units in one transaction writes one row.
//!
//! - It answers "did this unit commit?" after a `COMMIT` got no reply
//!   (rule 10): the insert returns the transaction's id, whose status the
//!   server keeps (`pg_xact_status`), asked again while it is still in
//!   progress. walflow's own transactions that write no record read the
//!   id alone ([`xid`]).
//! - With the stream storage it answers "did an earlier run apply this
//!   row?" for rows delivered again after a restart (rule 12): the flow
//!   reads every record of the slot at start, after [`barrier`], and keeps
//!   the positions in memory.
//!
//! The positions are kept as a compact `bytea` (see [`encode`]): a unit of
//! one event writes one small row, and a group of many units writes a few
//! bytes per unit, so the record's WAL per event stays a fraction of the
//! application's.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::PgConnection;

use super::{Row, RowKey};

/// The advisory lock every transaction that writes a record holds shared
/// (`pg_advisory_xact_lock_shared`, taken in the record's own statement)
/// and the start of a flow takes exclusively ([`barrier`]), keyed by the
/// slot: `(hashtext('walflow.applied'), hashtext(slot))`.
const LOCK: &str = "hashtext('walflow.applied'), hashtext($1)";

/// Records, in the unit's transaction `tx`, that `rows` of `operator` are
/// applied (or dead-lettered): their positions, in one row. Holds the
/// slot's record lock shared until `tx` ends (see [`barrier`]). Returns
/// the transaction's id, for [`committed`].
pub(crate) async fn record(
    slot: &str,
    operator: &str,
    rows: &[&Row],
    tx: &mut PgConnection,
) -> sqlx::Result<u64> {
    let mut keys: Vec<RowKey> = rows.iter().map(|r| r.key()).collect();
    keys.sort_unstable();
    keys.dedup();
    let lo = keys.first().map_or(0, |k| k.0);
    let hi = keys.last().map_or(0, |k| k.0);
    let xid: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "WITH held AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared({LOCK}))
         INSERT INTO walflow.applied (slot, operator, lo, hi, positions)
         SELECT $1, $2, $3, $4, $5 FROM held
         RETURNING pg_current_xact_id()::text"
    )))
    .bind(slot)
    .bind(operator)
    .bind(lo)
    .bind(hi)
    .bind(encode(&keys))
    .fetch_one(&mut *tx)
    .await?;
    parse_xid(&xid)
}

/// The id of the transaction `tx` (assigned now if it has none), for
/// [`committed`]: walflow's own transactions that write no record ([`commit`]).
pub(crate) async fn xid(tx: &mut PgConnection) -> sqlx::Result<u64> {
    let xid: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *tx)
        .await?;
    parse_xid(&xid)
}

/// A transaction id as `pg_current_xact_id()::text` writes it.
fn parse_xid(xid: &str) -> sqlx::Result<u64> {
    xid.parse()
        .map_err(|_| sqlx::Error::Protocol(format!("pg_current_xact_id() returned {xid:?}")))
}

/// Waits until no transaction that may write a record of `slot` is still
/// open: takes the slot's record lock exclusively, which waits for every
/// transaction holding it shared, then lets it go.
///
/// A killed run's unit whose `COMMIT` was already sent may still commit
/// after the new run started. Its record statement ran before the `COMMIT`
/// was sent (the client waits for each reply), so it holds the lock: the
/// barrier waits for it, and a read of the records after the barrier sees
/// its outcome. A unit whose record statement had not run by then never
/// commits (its client is gone before sending `COMMIT`).
pub(crate) async fn barrier(pool: &sqlx::PgPool, slot: &str) -> sqlx::Result<()> {
    let mut tx = super::begin(pool).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT pg_advisory_xact_lock({LOCK})"
    )))
    .bind(slot)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Every record of `slot`: per operator, the positions committed units
/// applied. Read after [`barrier`].
pub(crate) async fn load(
    pool: &sqlx::PgPool,
    slot: &str,
) -> sqlx::Result<HashMap<String, Applied>> {
    let records: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT operator, positions FROM walflow.applied WHERE slot = $1")
            .bind(slot)
            .fetch_all(pool)
            .await?;
    let mut applied: HashMap<String, Applied> = HashMap::new();
    for (operator, positions) in records {
        let keys = decode(&positions).ok_or_else(|| {
            sqlx::Error::Protocol(format!(
                "walflow.applied holds a record of {operator} that does not decode"
            ))
        })?;
        applied.entry(operator).or_default().add(keys);
    }
    for a in applied.values_mut() {
        a.seal();
    }
    Ok(applied)
}

/// The positions an earlier run applied, for one operator, as runs of
/// consecutive `seq` per commit LSN and part: a transaction's events are
/// numbered in order and applied in groups, so even the million positions
/// of one big transaction make few runs (a set of them would take tens of
/// megabytes).
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// `(commit_lsn, part, first seq, last seq)`; once [sealed](Self::seal),
    /// sorted and neither overlapping nor adjacent.
    runs: Vec<(i64, i16, i32, i32)>,
}

impl Applied {
    /// Adds positions (any order; [`seal`](Self::seal) before asking).
    pub fn add(&mut self, keys: impl IntoIterator<Item = RowKey>) {
        for (lsn, seq, part) in keys {
            match self.runs.last_mut() {
                Some(r) if r.0 == lsn && r.1 == part && r.3.checked_add(1) == Some(seq) => {
                    r.3 = seq
                }
                _ => self.runs.push((lsn, part, seq, seq)),
            }
        }
    }

    /// Sorts the runs and merges those that overlap or touch.
    pub fn seal(&mut self) {
        self.runs.sort_unstable();
        let mut merged: Vec<(i64, i16, i32, i32)> = Vec::with_capacity(self.runs.len());
        for r in self.runs.drain(..) {
            match merged.last_mut() {
                Some(m) if m.0 == r.0 && m.1 == r.1 && i64::from(r.2) <= i64::from(m.3) + 1 => {
                    m.3 = m.3.max(r.3)
                }
                _ => merged.push(r),
            }
        }
        merged.shrink_to_fit();
        self.runs = merged;
    }

    /// Whether `key` was applied.
    pub fn contains(&self, (lsn, seq, part): RowKey) -> bool {
        let at = self
            .runs
            .partition_point(|r| (r.0, r.1, r.2) <= (lsn, part, seq));
        at > 0 && {
            let r = self.runs[at - 1];
            r.0 == lsn && r.1 == part && seq <= r.3
        }
    }

    /// Positions held, for tests.
    #[cfg(test)]
    fn runs(&self) -> usize {
        self.runs.len()
    }
}

/// Deletes `slot`'s records no copy of an event may still ask about, every
/// ten seconds, until `stop` turns true: those whose positions are all
/// before the slot's confirmed position, unless the operator has a row in
/// `walflow.queue` among them.
///
/// Every copy of an event that may still run is at or after the confirmed
/// position (one held in memory is outstanding, so is that of a unit whose
/// `COMMIT` got no reply until it has asked; the slot delivers everything
/// from there again) or a spilled row in the queue (a row delivered again
/// and spilled may have been applied before a crash: its record must
/// stay). So no deleted record is asked about again, and the records are
/// at most one per unit transaction since the confirmed position, plus
/// those holding a spilled row's position.
pub(crate) async fn prune_confirmed(
    pool: sqlx::PgPool,
    slot: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(PRUNE_CONFIRMED_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let pruned = sqlx::query(
            "DELETE FROM walflow.applied a
             WHERE slot = $1
               AND hi < (SELECT (confirmed_flush_lsn - '0/0')::numeric::int8
                         FROM pg_replication_slots WHERE slot_name = $1)
               AND NOT EXISTS (SELECT 1 FROM walflow.queue q
                               WHERE q.slot = $1 AND q.operator = a.operator
                                 AND q.commit_lsn BETWEEN a.lo AND a.hi)",
        )
        .bind(&slot)
        .execute(&pool)
        .await;
        if let Err(e) = pruned {
            tracing::debug!(error = %crate::pg_error::DbError(&e), "pruning walflow.applied failed; trying again later");
        }
    }
}

/// How often [`prune_confirmed`] runs.
pub(crate) const PRUNE_CONFIRMED_EVERY: Duration = Duration::from_secs(10);

/// Whether the transaction `xid` (from [`record`]) committed, asked on a
/// connection of its own after its `COMMIT` got no reply: `None` while it
/// is still in progress (the commit under way, or its session not yet
/// aware that its client left); ask again.
pub(crate) async fn committed(conn: &mut PgConnection, xid: u64) -> sqlx::Result<Option<bool>> {
    let status: Option<String> = sqlx::query_scalar("SELECT pg_xact_status($1::text::xid8)")
        .bind(xid.to_string())
        .fetch_one(&mut *conn)
        .await?;
    match status.as_deref() {
        Some("committed") => Ok(Some(true)),
        Some("aborted") => Ok(Some(false)),
        Some("in progress") => Ok(None),
        other => Err(sqlx::Error::Protocol(format!(
            "pg_xact_status({xid}) returned {other:?}"
        ))),
    }
}

/// Commits `tx`, and should its `COMMIT` get no reply, asks the server
/// whether it committed (on another connection, until it knows): `Ok` when
/// it did. For walflow's own transactions whose effect its memory must
/// know (a spill: rows it wrote to the queue are deleted by their unit
/// only if it knows they are there; the finish of rows applied before:
/// done twice, it would release their status twice).
pub(crate) async fn commit(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    pool: &sqlx::PgPool,
) -> sqlx::Result<()> {
    let xid = xid(&mut tx).await?;
    let e = match tx.commit().await {
        Ok(()) => return Ok(()),
        Err(e) if commit_outcome_unknown(&e) => e,
        Err(e) => return Err(e),
    };
    loop {
        let answer = async {
            let mut conn = pool.acquire().await?;
            committed(&mut conn, xid).await
        }
        .await;
        match answer {
            Ok(Some(true)) => return Ok(()),
            Ok(Some(false)) => return Err(e),
            Ok(None) | Err(_) => tokio::time::sleep(RETRY_EVERY).await,
        }
    }
}

/// How long [`committed`] waits between attempts while the server cannot
/// answer, or the transaction is still in progress.
pub(crate) const RETRY_EVERY: Duration = Duration::from_millis(200);

/// The positions `keys` (sorted) as bytes: for each, LEB128 varints of
/// the commit LSN's difference from the previous one's (from 0 for the
/// first), then of `seq` and `part` zigzag-encoded. Positions of one
/// transaction differ by 0 and a small `seq`: a few bytes each.
pub(crate) fn encode(keys: &[RowKey]) -> Vec<u8> {
    let mut out = Vec::with_capacity(keys.len() * 4);
    let mut previous = 0i64;
    for &(lsn, seq, part) in keys {
        varint(&mut out, lsn.wrapping_sub(previous) as u64);
        varint(&mut out, zigzag(i64::from(seq)));
        varint(&mut out, zigzag(i64::from(part)));
        previous = lsn;
    }
    out
}

/// The positions [`encode`] wrote; `None` when `bytes` are not its output.
pub(crate) fn decode(bytes: &[u8]) -> Option<Vec<RowKey>> {
    let mut keys = Vec::new();
    let mut rest = bytes;
    let mut previous = 0i64;
    while !rest.is_empty() {
        let lsn = previous.wrapping_add(read_varint(&mut rest)? as i64);
        let seq = i32::try_from(unzigzag(read_varint(&mut rest)?)).ok()?;
        let part = i16::try_from(unzigzag(read_varint(&mut rest)?)).ok()?;
        keys.push((lsn, seq, part));
        previous = lsn;
    }
    Some(keys)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_positions_are_found_and_only_they() {
        // A big transaction applied by groups out of order, another
        // transaction's scattered positions, and parts 0 and 1 of one
        // event.
        let mut a = Applied::default();
        let mut groups: Vec<Vec<RowKey>> = (0..1000)
            .map(|g| (g * 64..(g + 1) * 64).map(|s| (100, s, 0)).collect())
            .collect();
        groups.reverse();
        groups.swap(3, 700);
        for g in groups {
            a.add(g);
        }
        a.add([(50, 7, 0), (50, 9, 0), (50, 8, 1), (50, 8, 0), (50, 7, 0)]);
        a.seal();
        assert_eq!(a.runs(), 3, "{a:?}");
        for s in 0..64_000 {
            assert!(a.contains((100, s, 0)));
            assert!(!a.contains((100, s, 1)));
        }
        for k in [(100, -1, 0), (100, 64_000, 0), (99, 0, 0), (101, 0, 0)] {
            assert!(!a.contains(k), "{k:?}");
        }
        for k in [(50, 7, 0), (50, 8, 0), (50, 9, 0), (50, 8, 1)] {
            assert!(a.contains(k), "{k:?}");
        }
        for k in [(50, 6, 0), (50, 10, 0), (50, 7, 1), (50, 9, 1)] {
            assert!(!a.contains(k), "{k:?}");
        }
        assert!(!Applied::default().contains((1, 1, 0)));
    }

    #[test]
    fn positions_come_back_as_written() {
        let cases: Vec<Vec<RowKey>> = vec![
            vec![],
            vec![(0, 0, 0)],
            vec![(1, 2, 1)],
            vec![(100, 0, 0), (100, 1, 0), (100, 1, 1), (5_000, 63, 0)],
            vec![(i64::MAX - 1, i32::MAX, i16::MAX), (i64::MAX, 0, 0)],
            vec![(-5, -1, -1), (3, i32::MIN, i16::MIN)],
        ];
        for keys in cases {
            assert_eq!(decode(&encode(&keys)).as_deref(), Some(&keys[..]));
        }
    }

    #[test]
    fn a_unit_of_one_transaction_costs_a_few_bytes_a_row() {
        let keys: Vec<RowKey> = (0..64)
            .map(|i| (0x0100_0000 + (i / 16) * 4096, i as i32 % 16, 0))
            .collect();
        let bytes = encode(&keys);
        assert!(bytes.len() <= keys.len() * 4, "{} bytes", bytes.len());
    }

    #[test]
    fn truncated_bytes_do_not_decode() {
        let bytes = encode(&[(1 << 40, 3, 0)]);
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(&[0x80]), None);
    }
}

//! Where the queue and the process status are kept: the one place that
//! chooses between the stream storage (the default: rows held in memory,
//! [`memory`](super::memory), with the progress record,
//! [`progress`](super::progress)) and the durable queue
//! ([`enqueue`](super::enqueue), [`dequeue`](super::dequeue)), and between
//! the process status in PostgreSQL ([`status`](super::status)) or in
//! memory. The two choices are independent
//! (`queue_storage`, `process_status_storage`); nothing outside this file
//! asks which was made.

use std::sync::Arc;

use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use super::memory::{Finished, MAX_OUTSTANDING, MemoryState};
use super::{Handing, Row, Shared, dequeue, enqueue, status};
use crate::config::{Config, ProcessStatusStorage, QueueStorage};
use crate::dispatch::Batch;
use crate::lsn::Lsn;

/// How often the stream storage probes the database while it waits for room.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The storage of one flow's queue and process status.
#[derive(Debug)]
pub(crate) struct Store {
    /// The stream storage (rule 12): rows live in the executors' memory,
    /// the slot is acknowledged only up to what is applied or spilled, and
    /// redelivered events are skipped by the progress record. Otherwise
    /// the durable queue.
    stream: bool,
    /// With the stream storage, the WAL insert position read at start,
    /// before anything was received: every event the previous run could
    /// have applied commits before it.
    horizon: std::sync::atomic::AtomicU64,
    /// With the stream storage, the progress records read at start: per
    /// operator, the positions an earlier run applied.
    applied: std::sync::Mutex<std::collections::HashMap<String, super::progress::Applied>>,
    memory_status: bool,
    /// With the stream storage, the dead letters put back whose replay has
    /// not committed yet (the dead letter stays until it does): asked
    /// again meanwhile, [`Store::retry_dead_letter`] answers `false`
    /// rather than hand the same event over twice. An id leaves once its
    /// replay committed (the dead letter is gone by then).
    replaying: std::sync::Mutex<std::collections::HashSet<i64>>,
    /// A subscriber-only node: the queue and status are another process's;
    /// only what is in the database can be read.
    remote: bool,
    memory: MemoryState,
}

/// Why the store cannot answer.
#[derive(Debug)]
pub(crate) enum StoreError {
    /// A statement failed.
    Sql(sqlx::Error),
    /// What is asked is kept in another process's memory.
    Unavailable(&'static str),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Sql(e)
    }
}

/// What [`Store::finish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// The rows are finished in the transaction; `xid` is its id when it
    /// wrote the progress record (to ask after a `COMMIT` without reply).
    Done { xid: Option<u64> },
    /// Fewer rows were found than given: another executor or run finished
    /// some (or replayed the dead letter).
    Gone,
}

/// What finishing a unit's rows needs when the unit wrote nothing itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Completion {
    /// One statement (deleting one queue row): no transaction.
    Statement,
    /// A transaction.
    Transaction,
}

impl Store {
    /// The storage `config` asks for; `remote`: on a subscriber-only node.
    pub fn new(config: &Config, remote: bool) -> Store {
        Store {
            stream: config.queue_storage() == QueueStorage::Stream,
            horizon: std::sync::atomic::AtomicU64::new(0),
            applied: std::sync::Mutex::default(),
            memory_status: config.process_status_storage() == ProcessStatusStorage::Memory,
            replaying: std::sync::Mutex::default(),
            remote,
            memory: MemoryState::default(),
        }
    }

    /// Whether the queue is in PostgreSQL (rows can be read back).
    pub fn durable_queue(&self) -> bool {
        !self.stream
    }

    /// With the stream storage, rows handed over and not finished (nor
    /// spilled) past which the consumer waits before it hands over more:
    /// `MAX_OUTSTANDING`, and at least twice `spill_rows`, so that an
    /// operator falls behind (and spills, which makes room) before the
    /// flow stops receiving.
    pub fn room(&self, config: &Config) -> usize {
        MAX_OUTSTANDING.max(config.spill_rows().saturating_mul(2))
    }

    /// Whether this is the stream storage (rule 12).
    pub fn stream(&self) -> bool {
        self.stream
    }

    /// The stream storage's start (rule 12), before the listener starts:
    /// waits until no unit of an earlier run may still commit (the record
    /// barrier), deletes the slot's pending process status of the events
    /// the slot delivers again (at or after its confirmed position: they
    /// are counted afresh), reads the progress records, reads the
    /// redelivery horizon, and writes a transaction past it, so that the
    /// flow learns when it has received everything delivered again.
    pub async fn start(&self, pool: &PgPool, slot: &str) -> sqlx::Result<()> {
        if !self.stream {
            return Ok(());
        }
        super::progress::barrier(pool, slot).await?;
        if !self.memory_status {
            let mut tx = super::begin(pool).await?;
            status::clear_pending(slot, &mut tx).await?;
            tx.commit().await?;
        }
        let applied = super::progress::load(pool, slot).await?;
        *self.applied.lock().unwrap_or_else(|e| e.into_inner()) = applied;
        let horizon: i64 =
            sqlx::query_scalar("SELECT (pg_current_wal_insert_lsn() - '0/0')::numeric::int8")
                .fetch_one(pool)
                .await?;
        self.horizon
            .store(horizon as u64, std::sync::atomic::Ordering::Release);
        sqlx::query("SELECT pg_logical_emit_message(true, 'walflow.start', '')")
            .execute(pool)
            .await?;
        Ok(())
    }

    /// With the stream storage, whether `row` may have been applied by an
    /// earlier run (it commits before the redelivery horizon), so that its
    /// progress record must be asked before it runs.
    pub fn maybe_applied(&self, row: &Row) -> bool {
        self.stream
            && row.replay.is_none()
            && (row.commit_lsn as u64) < self.horizon.load(std::sync::atomic::Ordering::Acquire)
    }

    /// With the stream storage, whether an earlier run applied `row` of
    /// `operator`: its position is in the records read at start (rule 12).
    pub fn was_applied(&self, operator: &str, row: &Row) -> bool {
        self.maybe_applied(row)
            && self
                .applied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(operator)
                .is_some_and(|keys| keys.contains(row.key()))
    }

    /// What the consumer may acknowledge once the transactions up to `end`
    /// are handed on: `end`, or with the stream storage what is applied
    /// (rule 12).
    pub fn ack_position(&self, end: Lsn) -> Lsn {
        if self.stream {
            end.min(self.memory.safe())
        } else {
            end
        }
    }

    /// With the stream storage, the position safe to acknowledge now and a
    /// receiver told when it may have moved.
    pub fn safe_position(&self) -> Option<(Lsn, watch::Receiver<u64>)> {
        self.stream
            .then(|| (self.memory.safe(), self.memory.progress.subscribe()))
    }

    /// Queues `batch` (its rows already handed over, tagged with this
    /// flush): in PostgreSQL, one statement retried with backoff
    /// ([`enqueue::queue_retrying`]); in memory, once there is room and the
    /// batch's transactions are visible. Returns the consumer's connection
    /// and `false` when the flow stops first (nothing is then acknowledged).
    pub async fn enqueue(
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
        conn: Option<PgConnection>,
        handing: Handing,
        end: Option<Lsn>,
        partial: Option<(Lsn, u32)>,
    ) -> (Option<PgConnection>, bool) {
        let store = &shared.store;
        let Handing {
            ops,
            number,
            mut batch,
        } = handing;
        if !store.stream {
            // The executors admit the rows while they are being queued.
            shared.handover.hand(&ops, &mut batch, number);
            if store.memory_status {
                store.memory.marks(&batch.status);
                batch.status.clear();
            }
            return enqueue::queue_retrying(shared.clone(), stop, conn, &batch, end, partial).await;
        }
        // The stream storage: bounded, by waiting for room before the rows
        // are handed over. (Handed over first, they could be what an
        // executor waits for before it frees room: an operator that
        // spills waits until the rows it spills are counted.) While it
        // waits, the database is probed: should the server shut down, the
        // consumer must let go of the replication connection (rule 7) even
        // if no executor happens to reach the database meanwhile.
        let mut stopping = stop.clone();
        loop {
            let room = store.memory.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if store.memory.outstanding() <= store.room(&shared.config) {
                break;
            }
            let probe = tokio::select! {
                _ = room => false,
                _ = stopping.wait_for(|s| *s) => return (conn, false),
                _ = tokio::time::sleep(PROBE_EVERY) => true,
            };
            if probe && let Err(e) = sqlx::query("SELECT 1").execute(&shared.pool).await {
                shared.note_error(&e);
            }
        }
        shared.handover.hand(&ops, &mut batch, number);
        // The rows are in the executors' inboxes now: only their positions
        // are kept here, not a second copy.
        let firsts = super::memory::first_lsns(&batch.rows);
        batch.rows = Vec::new();
        // Nothing runs on an event before its transaction is visible.
        if !enqueue::wait_visible(&shared, &stop, None, &batch.xids).await {
            return (conn, false);
        }
        let mut conn = conn;
        if store.memory_status {
            store.memory.marks(&batch.status);
            batch.status.clear();
        }
        // The marks kept in the database, and the dead letters of refused
        // events, are written before the batch is acknowledged.
        if !batch.status.is_empty() || !batch.refused.is_empty() {
            let marks = Batch {
                status: std::mem::take(&mut batch.status),
                refused: std::mem::take(&mut batch.refused),
                ..Batch::default()
            };
            let (c, ok) =
                enqueue::queue_retrying(shared.clone(), stop, conn, &marks, None, None).await;
            if !ok {
                return (c, false);
            }
            conn = c;
        }
        store.memory.queued(&firsts, end);
        (conn, true)
    }

    /// Finishes `rows` in `tx`: their queue rows deleted, the process
    /// status of events all of whose rows are done moved, and with the
    /// stream storage the progress record written.
    pub async fn finish(
        &self,
        shared: &Shared,
        operator: &str,
        rows: &[&Row],
        tx: &mut PgConnection,
    ) -> sqlx::Result<Finish> {
        if !self.stream && !dequeue::delete_rows(&shared.slot, operator, rows, tx).await? {
            return Ok(Finish::Gone);
        }
        // The stream storage's spilled rows are deleted by their unit, as
        // the durable queue's (rule 12).
        let spilled: Vec<&Row> = if self.stream {
            rows.iter().copied().filter(|r| r.spilled).collect()
        } else {
            Vec::new()
        };
        if !spilled.is_empty()
            && !dequeue::delete_rows(&shared.slot, operator, &spilled, tx).await?
        {
            return Ok(Finish::Gone);
        }
        // With the stream storage, a dead letter put back is taken from
        // the dead letters here (none taken: another run replayed it).
        let replays: Vec<i64> = rows.iter().filter_map(|r| r.replay).collect();
        if self.stream
            && !replays.is_empty()
            && dequeue::forget_dead_letters(&shared.slot, &replays, tx).await?
                < replays.len() as u64
        {
            return Ok(Finish::Gone);
        }
        let xid = if self.stream {
            Some(super::progress::record(&shared.slot, operator, rows, tx).await?)
        } else {
            None
        };
        if !self.memory_status {
            dequeue::release_status(&shared.slot, rows, tx).await?;
        }
        Ok(Finish::Done { xid })
    }

    /// Finishes `rows` that another run applied (rule 12): their process
    /// status released (the pending status was counted afresh at start)
    /// and the memory bookkeeping done. Returns once that committed.
    /// A spilled row's queue row is deleted, and only a row still there
    /// releases its status: one already gone was finished, status and all,
    /// by the run that deleted it.
    pub async fn finish_applied(
        &self,
        shared: &Shared,
        operator: &str,
        rows: &[&Row],
    ) -> sqlx::Result<()> {
        let mut release: Vec<&Row> = rows.iter().copied().filter(|r| !r.spilled).collect();
        let spilled: Vec<&Row> = rows.iter().copied().filter(|r| r.spilled).collect();
        if !self.memory_status || !spilled.is_empty() {
            let mut tx = super::begin(&shared.pool).await?;
            if !spilled.is_empty() {
                let gone =
                    dequeue::delete_rows_returning(&shared.slot, operator, &spilled, &mut tx)
                        .await?;
                release.extend(spilled.iter().copied().filter(|r| gone.contains(&r.key())));
            }
            if !self.memory_status {
                dequeue::release_status(&shared.slot, &release, &mut tx).await?;
            }
            super::progress::commit(tx, &shared.pool).await?;
        }
        self.finished(rows);
        Ok(())
    }

    /// Whether units write the progress record (rule 12): with the stream
    /// storage.
    pub fn records_progress(&self) -> bool {
        self.stream
    }

    /// After the transaction that finished `rows` committed: the memory
    /// bookkeeping.
    pub fn finished(&self, rows: &[&Row]) {
        if rows.iter().any(|r| r.replay.is_some()) {
            let mut replaying = self.replaying.lock().unwrap_or_else(|e| e.into_inner());
            for id in rows.iter().filter_map(|r| r.replay) {
                replaying.remove(&id);
            }
        }
        if !self.stream && !self.memory_status {
            return;
        }
        let finished = |rows: &mut dyn Iterator<Item = &&Row>| -> Vec<Finished> {
            rows.map(|r| Finished {
                first_lsn: r.first_lsn.unwrap_or(r.commit_lsn),
                commit_lsn: r.commit_lsn,
                seq: r.seq,
                covers: r.covers.clone(),
            })
            .collect()
        };
        // A spilled row left the memory count when it was spilled.
        let held = finished(&mut rows.iter().filter(|r| !(self.stream && r.spilled)));
        self.memory.finished(&held, self.stream, self.memory_status);
        if self.stream {
            let spilled = finished(&mut rows.iter().filter(|r| r.spilled));
            if !spilled.is_empty() {
                self.memory.finished(&spilled, false, self.memory_status);
            }
        }
    }

    /// With the stream storage, writes those of `rows` not spilled yet to
    /// `walflow.queue` for `operator` (rule 12), in one transaction, then
    /// counts them as no longer held: the slot's acknowledgement no longer
    /// waits for them. Their process status still waits for their unit.
    pub async fn spill(
        &self,
        shared: &Shared,
        operator: &str,
        rows: &mut [&mut Row],
    ) -> sqlx::Result<()> {
        // A dead letter put back stays a dead letter until its replay
        // commits: it is never spilled (the queue has no place for the
        // dead letter it replays).
        let fresh: Vec<&Row> = rows
            .iter()
            .filter(|r| !r.spilled && r.replay.is_none())
            .map(|r| &**r)
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let mut tx = super::begin(&shared.pool).await?;
        super::spill::write(&shared.slot, operator, &fresh, &mut tx).await?;
        super::progress::commit(tx, &shared.pool).await?;
        crate::crash_point::hit("stream.spilled");
        crate::telemetry::spilled(operator, fresh.len());
        let counted: Vec<Finished> = fresh
            .iter()
            .map(|r| Finished {
                first_lsn: r.first_lsn.unwrap_or(r.commit_lsn),
                commit_lsn: r.commit_lsn,
                seq: r.seq,
                covers: Vec::new(),
            })
            .collect();
        self.memory.finished(&counted, true, false);
        for r in rows.iter_mut().filter(|r| r.replay.is_none()) {
            r.spilled = true;
        }
        Ok(())
    }

    /// The end of the last transaction handed over in memory.
    pub fn handed_up_to(&self) -> Lsn {
        self.memory.enqueued()
    }

    /// With the stream storage, the redelivery horizon read at start.
    pub fn horizon(&self) -> Lsn {
        Lsn(self.horizon.load(std::sync::atomic::Ordering::Acquire))
    }

    /// What finishing `row` needs when its unit wrote nothing.
    pub fn completion(&self, row: &Row) -> Completion {
        match (self.stream, self.memory_status) {
            // The stream storage records every unit's progress.
            (true, _) => Completion::Transaction,
            (false, _) if row.updated_at.is_none() && row.covers.is_empty() => {
                Completion::Statement
            }
            (false, true) => Completion::Statement,
            (false, false) => Completion::Transaction,
        }
    }

    /// The LSN fence: `None` until every transaction up to `lsn` is
    /// queued, then whether every queued event at or before it is applied.
    /// `operators` are the asking flow's own (the durable queue also counts
    /// those of every running node: [`status::fence_reached`]).
    pub async fn fence(
        &self,
        pool: &PgPool,
        slot: &str,
        lsn: Lsn,
        operators: &[&str],
    ) -> Result<Option<bool>, StoreError> {
        match (self.stream, self.remote) {
            (true, false) => match self.memory.fence(lsn) {
                // What is spilled is in the queue, no longer held.
                Some(true) => Ok(Some(
                    !crate::pg_error::transient_retried(|| {
                        status::spilled_before(pool, slot, lsn, operators)
                    })
                    .await?,
                )),
                other => Ok(other),
            },
            // Another node holds the slot: its position and the queue.
            (true, true) => Ok(crate::pg_error::transient_retried(|| {
                status::stream_fence_reached(pool, slot, lsn, operators)
            })
            .await?),
            (false, _) => Ok(crate::pg_error::transient_retried(|| {
                status::fence_reached(pool, slot, lsn, operators)
            })
            .await?),
        }
    }

    /// Whether `table`'s process status is at least `micros`.
    pub async fn processed(
        &self,
        pool: &PgPool,
        slot: &str,
        table: &str,
        micros: i64,
    ) -> Result<bool, StoreError> {
        let (schema, name) = status::split_table(table);
        match (self.memory_status, self.remote) {
            (true, true) => Err(StoreError::Unavailable(
                "processed with process_status_storage = memory",
            )),
            (true, false) => Ok(self.memory.processed(schema, name, micros)),
            (false, _) => Ok(status::processed(pool, slot, schema, name, micros).await?),
        }
    }

    /// Puts dead letter `id` back in its operator's queue; `false` when
    /// there is no such dead letter (or, with the stream storage, its
    /// operator does not run here, or it was put back already and its
    /// replay has not committed yet: it stays a dead letter).
    pub async fn retry_dead_letter(&self, shared: &Shared, id: i64) -> Result<bool, StoreError> {
        if self.remote {
            return Err(StoreError::Unavailable("retry_dead_letter"));
        }
        let mut tx = super::begin(&shared.pool).await?;
        if !self.stream {
            let operator = dequeue::requeue_dead_letter(&mut tx, &shared.slot, id).await?;
            tx.commit().await?;
            let Some(operator) = operator else {
                return Ok(false);
            };
            shared.handover.rescan(&operator);
            return Ok(true);
        }
        // With the stream storage the dead letter stays until the unit that
        // replays it commits (it is taken in that unit's transaction): a
        // crash before then leaves it a dead letter, not lost.
        let dead = dequeue::peek_dead_letter(&mut tx, &shared.slot, id).await?;
        let Some(dead) = dead else {
            return Ok(false);
        };
        if shared.handover.signals(&dead.operator).is_none() {
            return Ok(false);
        }
        tx.commit().await?;
        if !self
            .replaying
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id)
        {
            // Put back already, its replay not committed yet.
            return Ok(false);
        }
        let mut row = Row::from_queued(dead.row);
        row.replay = Some(id);
        // Not in the queue: in the dead letters.
        row.spilled = false;
        self.memory.requeued(row.commit_lsn);
        shared.handover.push(&dead.operator, row);
        Ok(true)
    }
}

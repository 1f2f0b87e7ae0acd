//! The listener's consumer: writes each transaction's events into the
//! operator queues, then acknowledges it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::sync::watch;

use crate::listener::{Listener, ListenerMessage, ListenerOptions, PgWireConnector};
use crate::lsn::Lsn;
use crate::operator::executor::{Row, Shared, Signals, is_transient};
use crate::operator::memory::MAX_OUTSTANDING;
use crate::operator::{Batch, StatusMark, dispatch};
use crate::raw::EventKind;
use crate::registry::OperatorAction;
use crate::registry::OperatorRegistration;

/// Messages taken from the listener per round; the transactions completed in
/// a round are queued in one database transaction.
const ROUND: usize = 4096;
/// Queue rows gathered over several full rounds before they are queued.
const GATHER_ROWS: usize = 20_000;
/// Queue rows of one transaction held before it is queued in part.
const CHUNK_ROWS: usize = 10_000;
/// Queue rows received but not yet queued, at most: past it the consumer
/// waits for the flush under way before it receives more.
const MAX_HELD: usize = 50_000;

pub(crate) struct Consumer {
    pub shared: Arc<Shared>,
    pub ops: Vec<&'static OperatorRegistration>,
    pub signals: HashMap<&'static str, Signals>,
    pub stop: watch::Receiver<bool>,
    pub url: String,
    pub options: ListenerOptions,
    /// End of the last transaction in the queue.
    pub watermark: Lsn,
    /// A transaction queued in part: its commit LSN and last queued change.
    pub partial: Option<(Lsn, u32)>,
    /// The connection rows are queued on.
    pub conn: Option<PgConnection>,
    /// Flushes so far (see [`Shared::flushed`]).
    pub flushes: u64,
    /// Realtime subscriptions, fed with every new change.
    pub hub: crate::subscribe::Subscriptions,
}

impl Consumer {
    pub async fn start_listener(&self) -> Result<Listener, crate::listener::ListenerError> {
        let mut connector = PgWireConnector::from_url(&self.url)?;
        connector.application_name = self.shared.config.application_name().to_owned();
        connector.status_interval = self.shared.config.status_interval();
        Listener::start(connector, self.options.clone(), self.shared.pool.clone()).await
    }

    async fn sleep(&self, d: Duration) -> bool {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = stop.wait_for(|s| *s) => false,
        }
    }

    /// Queues `ready` on the consumer's own connection, retrying with
    /// backoff; `false` when the flow stops first (nothing acknowledged:
    /// delivered again at next start).
    async fn flush_retrying(
        &mut self,
        ready: &Batch,
        end: Option<Lsn>,
        partial: Option<(Lsn, u32)>,
    ) -> bool {
        let (conn, ok) = queue_retrying(
            self.shared.clone(),
            self.stop.clone(),
            self.conn.take(),
            ready,
            end,
            partial,
        )
        .await;
        self.conn = conn;
        ok
    }

    /// The memory queue: records `batch`'s status marks, hands its rows to
    /// the executors, then waits while too many rows are outstanding.
    /// `false` when the flow stops meanwhile.
    async fn hand_over(&mut self, batch: &mut Batch, end: Option<Lsn>) -> bool {
        let shared = self.shared.clone();
        let memory = &shared.memory;
        // Nothing runs on an event before its transaction is visible.
        if !wait_visible(&shared, &self.stop, None, &batch.xids).await {
            return false;
        }
        if shared.memory_status() {
            memory.marks(&batch.status);
        } else if !batch.status.is_empty() {
            let status = Batch {
                status: batch.status.clone(),
                ..Batch::default()
            };
            if !self.flush_retrying(&status, None, None).await {
                return false;
            }
        }
        memory.queued(&batch.rows, end);
        self.notify(batch, 0);
        let mut stop = self.stop.clone();
        loop {
            let room = memory.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if memory.outstanding() <= MAX_OUTSTANDING {
                return true;
            }
            tokio::select! {
                _ = room => {}
                _ = stop.wait_for(|s| *s) => return false,
            }
        }
    }

    /// Hands the rows of `batch` to their executors. `flush`: the number of
    /// the flush queueing them, which they wait for before they finish (0:
    /// queued already).
    ///
    /// With the durable queue, a row of a coalescing query operator is left
    /// out of the batch (not queued at all) when its id has a pending row
    /// that no unit has started, with no delete after it: that row's run
    /// starts after this event was committed, so it covers it, and until it
    /// is finished the LSN fence waits on it. So is a row whose event was
    /// visible to the id's last committed run (a backlog read after that
    /// run): it is applied already. Events that move the process status
    /// keep their rows.
    fn notify(&self, batch: &mut Batch, flush: u64) {
        let absorbing = !self.shared.memory_queue();
        let touched: BTreeSet<&'static str> = batch.rows.iter().map(|r| r.operator).collect();
        let mut absorbed: HashSet<(&'static str, i64, i32, i16)> = HashSet::new();
        for op in touched {
            let Some(s) = self.signals.get(op) else {
                continue;
            };
            let coalescing = absorbing
                && self.ops.iter().any(|o| {
                    o.name == op && o.coalesce && matches!(o.action, OperatorAction::Query(_))
                });
            let mut inbox = s.inbox.lock().expect("inbox lock");
            // Only while every row handed over is admitted: a delete still
            // in the inbox would otherwise come between the pending row and
            // this event.
            let absorb = coalescing && inbox.settled();
            let mut barriers: HashSet<&str> = HashSet::new();
            // In queue order (collapsing moved rows within the batch).
            let mut rows: Vec<Row> = Vec::new();
            for r in batch.rows.iter().filter(|r| r.operator == op) {
                if absorb {
                    let key = r.id_key.as_str();
                    if r.kind == EventKind::Delete.as_str() {
                        barriers.insert(key);
                    } else if r.updated_at.is_none()
                        && r.covers.is_empty()
                        && !barriers.contains(key)
                        && (inbox.hosts.contains(key)
                            || inbox.covered.get(key).is_some_and(|s| s.saw(r.xid)))
                    {
                        absorbed.insert((op, r.commit_lsn, r.seq, r.part));
                        // The run that covers it waits until this flush
                        // is committed, so until its transaction is
                        // visible (see `Inbox::absorbed_flush`).
                        inbox.absorbed_flush = inbox.absorbed_flush.max(flush);
                        continue;
                    }
                }
                rows.push(Row::from_new(r, flush));
            }
            rows.sort_by_key(Row::key);
            inbox.push(rows.into_iter());
            drop(inbox);
            s.notify.notify_one();
        }
        if !absorbed.is_empty() {
            batch
                .rows
                .retain(|r| !absorbed.contains(&(r.operator, r.commit_lsn, r.seq, r.part)));
        }
    }

    pub async fn run(mut self, first: Listener) {
        let mut listener = Some(first);
        // The transaction being received: its commit LSN and queue rows.
        let mut open: Option<(Lsn, Batch)> = None;
        let mut ready = Batch::default();
        let mut ready_end: Option<Lsn> = None;
        // The flush under way: the next batch is received meanwhile, so
        // batches grow while queueing is slow, and more rows collapse.
        let mut inflight: Option<Inflight> = None;
        let mut buf = Vec::with_capacity(ROUND);
        let mut failures = 0u32;
        let field = self.shared.config.process_status_entity_field().to_owned();
        let mut stop = self.stop.clone();
        loop {
            let Some(l) = listener.as_mut() else {
                match self.start_listener().await {
                    Ok(l) => {
                        failures = 0;
                        listener = Some(l);
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, "starting the listener failed; retrying");
                        if !self.sleep(self.shared.config.restart_delay(failures)).await {
                            return;
                        }
                    }
                }
                continue;
            };
            let open_rows = open
                .as_ref()
                .map_or(0, |(_, b)| b.rows.len() + b.status.len());
            // What is received while a flush is under way is bounded: past
            // the limit, that flush is awaited first.
            let held = ready.rows.len() + ready.status.len() + open_rows;
            let room = inflight.is_none() || held < MAX_HELD;
            buf.clear();
            let got = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                done = async { (&mut inflight.as_mut().expect("a flush").task).await },
                    if inflight.is_some() => Err(done),
                r = l.recv_many(&mut buf, ROUND), if room => Ok(r),
            };
            let got = match got {
                Ok(r) => Some(r),
                Err(done) => {
                    let f = inflight.take().expect("a flush");
                    if !self.finished(f, done, l) {
                        return self.stop_listener(listener).await;
                    }
                    None
                }
            };
            let full = match got {
                None => false,
                Some(Ok(n)) if n > 0 => n == ROUND,
                Some(r) => {
                    let why = match r {
                        Err(e) => e.to_string(),
                        Ok(_) => "the listener stopped".to_owned(),
                    };
                    tracing::warn!(error = why, "the listener failed; restarting it");
                    // Whole transactions received are queued; the rest
                    // comes again.
                    open = None;
                    if let Some(mut f) = inflight.take() {
                        let done = (&mut f.task).await;
                        if !self.finished(f, done, l) {
                            return self.stop_listener(listener).await;
                        }
                    }
                    if ready_end.is_some() {
                        ready.collapse(&self.ops);
                        self.flushes += 1;
                        self.notify(&mut ready, self.flushes);
                        if !self.flush_retrying(&ready, ready_end, None).await {
                            return self.stop_listener(listener).await;
                        }
                        self.shared.flushed.send_replace(self.flushes);
                        ready = Batch::default();
                        ready_end = None;
                    }
                    if let Some(l) = listener.take() {
                        let _ = l.shutdown().await;
                    }
                    failures += 1;
                    if !self.sleep(self.shared.config.restart_delay(failures)).await {
                        return;
                    }
                    continue;
                }
            };
            for m in buf.drain(..) {
                match m {
                    ListenerMessage::Begin(b) => {
                        let batch = Batch {
                            xids: vec![b.xid],
                            ..Batch::default()
                        };
                        open = Some((b.commit_lsn, batch));
                    }
                    ListenerMessage::Change(ev) => {
                        let ev = Arc::new(ev);
                        if let Some((_, b)) = open.as_mut() {
                            // Changes of a transaction queued in part
                            // before a restart are queued once.
                            let queued = self
                                .partial
                                .is_some_and(|(lsn, seq)| lsn == ev.commit_lsn && ev.seq <= seq);
                            if !queued && ev.commit_lsn.0 >= self.watermark.0 {
                                dispatch(&ev, &self.ops, &field, b);
                            }
                        }
                        // A transaction queued before a restart comes again:
                        // its changes were published then.
                        if ev.commit_lsn >= self.watermark {
                            self.hub.publish_arc(ev);
                        }
                    }
                    ListenerMessage::Message(_) => {}
                    ListenerMessage::Commit(c) => {
                        let mut b = open.take().map(|(_, b)| b).unwrap_or_default();
                        if c.end_lsn > self.watermark {
                            ready.append(&mut b);
                            self.watermark = c.end_lsn;
                            ready_end = Some(c.end_lsn);
                            self.hub.publish_commit(c.end_lsn);
                        } else {
                            // Already queued before a crash: only the
                            // acknowledgement was missing.
                            l.ack(c.end_lsn);
                        }
                    }
                }
            }
            if inflight.is_some() {
                continue;
            }
            let open_rows = open
                .as_ref()
                .map_or(0, |(_, b)| b.rows.len() + b.status.len());
            // A big transaction is queued in chunks, before its commit.
            let chunk = open_rows >= CHUNK_ROWS;
            // While the listener has more at hand, gather it first: more
            // rows per round trip, and more for coalescing to merge.
            let gathered = ready.rows.len() + ready.status.len();
            if !chunk && (ready_end.is_none() || (full && gathered < GATHER_ROWS)) {
                continue;
            }
            let mut partial = None;
            if chunk {
                let (lsn, b) = open.as_mut().expect("open transaction");
                let last = b
                    .rows
                    .iter()
                    .map(|r| r.seq)
                    .chain(b.status.iter().map(|s| s.seq))
                    .max()
                    .unwrap_or(0);
                partial = Some((*lsn, last as u32));
                ready.append(b);
            }
            ready.collapse(&self.ops);
            if self.shared.memory_queue() {
                if !self.hand_over(&mut ready, ready_end).await {
                    return self.stop_listener(listener).await;
                }
                if let Some(end) = ready_end.take() {
                    l.ack(end);
                }
                ready = Batch::default();
                continue;
            }
            if self.shared.memory_status() {
                self.shared.memory.marks(&ready.status);
            }
            // The executors start on the rows while they are being queued;
            // a unit finishes (and so commits) only once they are.
            self.flushes += 1;
            self.notify(&mut ready, self.flushes);
            let batch = std::mem::take(&mut ready);
            let (end, conn) = (ready_end.take(), self.conn.take());
            let (shared, stop) = (self.shared.clone(), self.stop.clone());
            inflight = Some(Inflight {
                number: self.flushes,
                end,
                partial,
                task: tokio::spawn(async move {
                    queue_retrying(shared, stop, conn, &batch, end, partial).await
                }),
            });
        }
        // Stopping: the flush under way still completes (or gives up), and
        // is acknowledged if it did.
        if let Some(mut f) = inflight.take()
            && let Some(l) = listener.as_mut()
        {
            let done = (&mut f.task).await;
            self.finished(f, done, l);
        }
        self.stop_listener(listener).await;
    }

    /// Records the end of a flush: hands its connection back, lets the
    /// units waiting for it finish, and acknowledges what it queued.
    /// `false` when it gave up because the flow stops.
    fn finished(
        &mut self,
        f: Inflight,
        done: Result<(Option<PgConnection>, bool), tokio::task::JoinError>,
        l: &mut Listener,
    ) -> bool {
        let (conn, ok) = match done {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => (None, false),
        };
        self.conn = conn;
        if !ok {
            // Not acknowledged: delivered again at next start.
            return false;
        }
        self.shared.flushed.send_replace(f.number);
        if f.partial.is_some() {
            self.partial = f.partial;
        }
        if let Some(end) = f.end {
            l.ack(end);
        }
        true
    }

    async fn stop_listener(&self, listener: Option<Listener>) {
        if let Some(l) = listener
            && let Err(e) = l.shutdown().await
        {
            tracing::warn!(error = %e, "the listener did not shut down cleanly");
        }
    }
}

/// Queues `batch` on `conn` (connected first if `None`: a connection of
/// its own, so queueing never waits for the pool, which units waiting for
/// this very flush may hold), retrying with backoff. Returns the connection
/// (`None` after a broken one) and `false` when the flow stops first.
async fn queue_retrying(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut conn: Option<PgConnection>,
    batch: &Batch,
    end: Option<Lsn>,
    partial: Option<(Lsn, u32)>,
) -> (Option<PgConnection>, bool) {
    let mut tries = 0u32;
    loop {
        let error = match conn.as_mut() {
            None => match PgConnection::connect_with(&shared.config.connect_options()).await {
                Ok(c) => {
                    conn = Some(c);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "connecting to queue events failed; retrying");
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
            if is_transient(&e) {
                conn = None;
                tracing::warn!(error = %e, "queueing events failed; retrying");
            } else {
                tracing::error!(error = %e, "queueing events failed; retrying");
            }
        }
        tries += 1;
        tokio::select! {
            _ = tokio::time::sleep(shared.config.restart_delay(tries)) => {}
            _ = stop.wait_for(|s| *s) => return (conn, false),
        }
    }
}

/// A flush under way: queueing a batch while the next one is received.
struct Inflight {
    /// The flush's number (see [`Shared::flushed`]).
    number: u64,
    /// The end of the last whole transaction it queues, acknowledged once
    /// it is done.
    end: Option<Lsn>,
    /// How far into an open transaction it queues.
    partial: Option<(Lsn, u32)>,
    task: tokio::task::JoinHandle<(Option<PgConnection>, bool)>,
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
    let rows = &batch.rows;
    let covers = |f: fn(&(i64, i32)) -> String| -> Vec<Option<String>> {
        rows.iter()
            .map(|r| {
                (!r.covers.is_empty()).then(|| {
                    let items: Vec<String> = r.covers.iter().map(f).collect();
                    format!("{{{}}}", items.join(","))
                })
            })
            .collect()
    };
    // The memory process status is kept by the caller.
    let status: &[StatusMark] = if shared.memory_status() {
        &[]
    } else {
        &batch.status
    };
    let (pending, done): (Vec<_>, Vec<_>) = status.iter().partition(|s| s.remaining > 0);
    // Events no operator runs on are done as soon as they are seen.
    let mut max: HashMap<(&str, &str), i64> = HashMap::new();
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
         )
         SELECT walflow.require_visible($27::int8[])",
    )
    .bind(&shared.slot)
    .bind(rows.iter().map(|r| r.operator).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.commit_lsn).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.seq).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.part).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.kind).collect::<Vec<_>>())
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
    .execute(&mut *conn)
    .await?;
    Ok(())
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
async fn wait_visible(
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
                tracing::warn!(error = %e, "checking that transactions are visible failed; retrying");
                shared.config.restart_delay(failures)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return false,
        }
    }
}

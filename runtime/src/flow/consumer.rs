//! The listener's consumer: writes each transaction's events into the
//! operator queues, then acknowledges it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgConnection;
use tokio::sync::watch;

use crate::listener::{Listener, ListenerMessage, ListenerOptions, PgWireConnector};
use crate::lsn::Lsn;
use crate::operator::executor::{Row, Shared, Signals};
use crate::operator::memory::MAX_OUTSTANDING;
use crate::operator::{Batch, dispatch};
use crate::queue::enqueue::{queue_retrying, wait_visible};
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
                    if r.kind == EventKind::Delete {
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
        // Errors that say the server is going away, counted: those seen
        // before the listener (re)starts are past.
        let mut gone = self.shared.server_gone.subscribe();
        gone.mark_unchanged();
        loop {
            let Some(l) = listener.as_mut() else {
                match self.start_listener().await {
                    Ok(l) => {
                        gone.mark_unchanged();
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
            let mut let_go = false;
            let got = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                _ = gone.changed() => Err(None),
                done = async { (&mut inflight.as_mut().expect("a flush").task).await },
                    if inflight.is_some() => Err(Some(done)),
                r = l.recv_many(&mut buf, ROUND), if room => Ok(r),
            };
            let got = match got {
                Ok(r) => Some(r),
                Err(Some(done)) => {
                    let f = inflight.take().expect("a flush");
                    if !self.finished(f, done, Some(l)) {
                        return self.stop_listener(listener).await;
                    }
                    None
                }
                Err(None) => {
                    // The server refuses or terminates walflow's
                    // connections, as it does while it shuts down. A WAL
                    // sender waits at shutdown until its client confirms the
                    // end of the WAL, which cannot happen while the queue is
                    // out of reach: the replication connection is let go at
                    // once, so the server can stop, and taken up again from
                    // the confirmed position once what was received is
                    // queued (that waits until the server is back).
                    tracing::warn!(
                        "the database refuses walflow's connections (shutting down?); \
                         letting go of the replication connection until it is back"
                    );
                    let_go = true;
                    Some(Err(crate::listener::ListenerError::Connection(
                        "the database is shutting down".into(),
                    )))
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
                    if let_go {
                        drop(listener.take());
                    }
                    tracing::warn!(error = why, "the listener failed; restarting it");
                    // Whole transactions received are queued; the rest
                    // comes again (from the slot's confirmed position: so
                    // the watermark stands only for what is queued).
                    open = None;
                    if let Some(mut f) = inflight.take() {
                        let done = (&mut f.task).await;
                        if !self.finished(f, done, listener.as_mut()) {
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
            self.finished(f, done, Some(l));
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
        l: Option<&mut Listener>,
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
            crate::crash_point::hit("queue.partial");
            self.partial = f.partial;
        }
        crate::crash_point::hit("queue.flushed");
        // Without a listener (let go of), the next one starts from the
        // slot's confirmed position and acknowledges it when it comes again.
        if let (Some(end), Some(l)) = (f.end, l) {
            l.ack(end);
            crate::crash_point::hit("queue.acked");
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

//! The listener's consumer: dispatches each transaction's changes into
//! queue rows, hands them to the executors and enqueues them
//! ([`Store::enqueue`]), then acknowledges them. The protocol is argued in
//! [`crate::queue`].

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgConnection;
use tokio::sync::watch;

use crate::dispatch::{Batch, IdentityWatch, dispatch};
use crate::listener::{Listener, ListenerMessage, ListenerOptions, PgWireConnector};
use crate::lsn::Lsn;
use crate::queue::{Handing, Shared, Store};
use crate::registry::OperatorRegistration;
use crate::telemetry;

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
/// The same with the rows kept in memory (the stream storage): the
/// executors hold at most
/// `MAX_OUTSTANDING` (`queue::memory`) rows counted
/// as outstanding, plus the batch waiting for room, plus this.
const MAX_HELD_IN_MEMORY: usize = 10_000;

pub(crate) struct Consumer {
    pub shared: Arc<Shared>,
    pub ops: Vec<&'static OperatorRegistration>,
    pub stop: watch::Receiver<bool>,
    pub url: String,
    pub options: ListenerOptions,
    /// End of the last transaction in the queue.
    pub watermark: Lsn,
    /// A transaction queued in part: its commit LSN and last queued change.
    pub partial: Option<(Lsn, u32)>,
    /// The connection rows are queued on.
    pub conn: Option<PgConnection>,
    /// Flushes so far (see [`Handover::flushed`](crate::queue::Handover::flushed)).
    pub flushes: u64,
    /// Realtime subscriptions (the hub, or the relay to the hub and the
    /// broadcaster), fed with every new change.
    pub hub: Arc<dyn crate::subscribe::Feed>,
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

    /// Hands `batch` over as flush number `n` and enqueues it, waiting for
    /// the outcome; `false` when the flow stops first (nothing
    /// acknowledged: delivered again at next start).
    async fn flush_now(&mut self, batch: Batch, end: Option<Lsn>) -> bool {
        self.flushes += 1;
        let (conn, ok) = Store::enqueue(
            self.shared.clone(),
            self.stop.clone(),
            self.conn.take(),
            Handing {
                ops: self.ops.clone(),
                number: self.flushes,
                batch,
            },
            end,
            None,
        )
        .await;
        self.conn = conn;
        if ok {
            self.shared.handover.flushed(self.flushes);
        }
        ok
    }

    pub async fn run(mut self, first: Listener) {
        self.shared.health.listening(first.connection_probe());
        let mut listener = Some(first);
        // The transaction being received: its commit LSN and queue rows.
        let mut open: Option<(Lsn, Batch)> = None;
        // The span of the transaction being received, and its changes.
        let mut open_span = tracing::Span::none();
        let mut open_changes = 0u64;
        let mut ready = Batch::default();
        let mut ready_end: Option<Lsn> = None;
        // The flush under way: the next batch is received meanwhile, so
        // batches grow while queueing is slow, and more rows collapse.
        let mut inflight: Option<Inflight> = None;
        let mut buf = Vec::with_capacity(ROUND);
        let mut failures = 0u32;
        let field = self.shared.config.process_status_entity_field().to_owned();
        // What each table's replica identity lets the operators follow.
        let mut identities = IdentityWatch::default();
        let mut stop = self.stop.clone();
        // Errors that say the server is going away, counted: those seen
        // before the listener (re)starts are past.
        let mut gone = self.shared.server_gone.subscribe();
        gone.mark_unchanged();
        // With the stream storage, what is applied moves the acknowledged
        // position as units finish (rule 12).
        let mut applied = self.shared.store.safe_position().map(|(_, rx)| rx);
        loop {
            let Some(l) = listener.as_mut() else {
                match self.start_listener().await {
                    Ok(l) => {
                        gone.mark_unchanged();
                        failures = 0;
                        self.shared.health.listening(l.connection_probe());
                        listener = Some(l);
                        metrics::counter!(telemetry::RECONNECTS, "connection" => "replication")
                            .increment(1);
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
            let max_held = if self.shared.store.durable_queue() {
                MAX_HELD
            } else {
                MAX_HELD_IN_MEMORY
            };
            let room = inflight.is_none() || held < max_held;
            buf.clear();
            let mut let_go = false;
            let got = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                _ = gone.changed() => Err(None),
                Ok(()) = async { applied.as_mut().expect("stream storage").changed().await },
                    if applied.is_some() => {
                    if let Some((safe, _)) = self.shared.store.safe_position() {
                        l.ack(safe);
                        crate::crash_point::hit("stream.acked");
                    }
                    continue;
                }
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
                    self.shared.health.streaming(false);
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
                        let batch = std::mem::take(&mut ready);
                        if !self.flush_now(batch, ready_end.take()).await {
                            return self.stop_listener(listener).await;
                        }
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
            let mut counts = telemetry::EventCounts::default();
            for m in buf.drain(..) {
                match m {
                    ListenerMessage::Begin(b) => {
                        let batch = Batch {
                            xids: vec![b.xid],
                            ..Batch::default()
                        };
                        open_span = tracing::info_span!(
                            "walflow.transaction",
                            lsn = %b.commit_lsn,
                            xid = b.xid,
                            rows = tracing::field::Empty,
                        );
                        open_changes = 0;
                        open = Some((b.commit_lsn, batch));
                    }
                    ListenerMessage::Change(ev) => {
                        let ev = Arc::new(ev);
                        if let Some(v) = identities.check(&ev, &self.ops) {
                            self.identity_changed(v);
                        }
                        if let Some((_, b)) = open.as_mut() {
                            // Changes of a transaction queued in part
                            // before a restart are queued once.
                            let queued = self
                                .partial
                                .is_some_and(|(lsn, seq)| lsn == ev.commit_lsn && ev.seq <= seq);
                            if !queued && ev.commit_lsn.0 >= self.watermark.0 {
                                let from = b.rows.len();
                                dispatch(&ev, &self.ops, &field, b);
                                if !open_span.is_none() {
                                    for r in &mut b.rows[from..] {
                                        r.span = open_span.clone();
                                    }
                                }
                            }
                            open_changes += 1;
                        }
                        // A transaction queued before a restart comes again:
                        // its changes were published then. (The part of one
                        // received before a restart inside it comes again
                        // too: the hub ignores what it already published.)
                        if ev.commit_lsn >= self.watermark {
                            counts.add(&ev);
                            self.hub.change(ev);
                        }
                    }
                    ListenerMessage::Message(_) => {}
                    ListenerMessage::Commit(c) => {
                        open_span.record("rows", open_changes);
                        open_span = tracing::Span::none();
                        let mut b = open.take().map(|(_, b)| b).unwrap_or_default();
                        if c.end_lsn > self.watermark {
                            ready.append(&mut b);
                            self.watermark = c.end_lsn;
                            ready_end = Some(c.end_lsn);
                            counts.transactions += 1;
                            self.hub.commit(c.end_lsn);
                        } else {
                            // Already queued before a crash: only the
                            // acknowledgement was missing. (With the
                            // stream storage, handed over before the
                            // listener restarted: acknowledged once
                            // applied.)
                            l.ack(self.shared.store.ack_position(c.end_lsn));
                        }
                    }
                }
            }
            counts.record();
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
            // The executors admit the rows while they are being queued; a
            // unit runs only once they are (and so are visible).
            self.flushes += 1;
            let handing = Handing {
                ops: self.ops.clone(),
                number: self.flushes,
                batch: std::mem::take(&mut ready),
            };
            let (end, conn) = (ready_end.take(), self.conn.take());
            let (shared, stop) = (self.shared.clone(), self.stop.clone());
            inflight = Some(Inflight {
                number: self.flushes,
                end,
                partial,
                task: tokio::spawn(Store::enqueue(shared, stop, conn, handing, end, partial)),
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
        self.shared.handover.flushed(f.number);
        if f.partial.is_some() {
            crate::crash_point::hit("queue.partial");
            self.partial = f.partial;
        }
        crate::crash_point::hit("queue.flushed");
        // Without a listener (let go of), the next one starts from the
        // slot's confirmed position and acknowledges it when it comes again.
        if let (Some(end), Some(l)) = (f.end, l) {
            l.ack(self.shared.store.ack_position(end));
            crate::crash_point::hit("queue.acked");
        }
        true
    }

    /// A table was announced with a replica identity that changes what the
    /// operators can follow: said once (an error while it falls short) and
    /// shown by the health. The events it leaves unfollowable are
    /// dead-lettered one by one ([`dispatch`]).
    fn identity_changed(&self, v: crate::dispatch::IdentityVerdict) {
        match &v.problem {
            Some(problem) => tracing::error!(table = %v.table, "{problem}"),
            None => tracing::info!(
                table = %v.table,
                "the replica identity of `{}` carries the old rows the operators need again",
                v.table
            ),
        }
        self.shared.health.replica_identity(&v.table, v.problem);
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
    /// The flush's number (see [`Handover::flushed`](crate::queue::Handover::flushed)).
    number: u64,
    /// The end of the last whole transaction it queues, acknowledged once
    /// it is done.
    end: Option<Lsn>,
    /// How far into an open transaction it queues.
    partial: Option<(Lsn, u32)>,
    task: tokio::task::JoinHandle<(Option<PgConnection>, bool)>,
}

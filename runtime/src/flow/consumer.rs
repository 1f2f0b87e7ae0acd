//! The listener's consumer: writes each transaction's events into the
//! operator queues, then acknowledges it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::listener::{Listener, ListenerMessage, ListenerOptions, PgWireConnector};
use crate::lsn::Lsn;
use crate::operator::executor::{Shared, Signals, is_transient};
use crate::operator::{Batch, dispatch};
use crate::registry::OperatorRegistration;

/// Messages taken from the listener per round; the transactions completed in
/// a round are queued in one database transaction.
const ROUND: usize = 4096;
/// Rows per multi-row insert.
const CHUNK: usize = 2000;

pub(crate) struct Consumer {
    pub shared: Arc<Shared>,
    pub ops: Vec<&'static OperatorRegistration>,
    pub signals: HashMap<&'static str, Signals>,
    pub stop: watch::Receiver<bool>,
    pub url: String,
    pub options: ListenerOptions,
    /// End of the last transaction in the queue.
    pub watermark: Lsn,
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

    pub async fn run(mut self, first: Listener) {
        let mut listener = Some(first);
        let mut open: Option<Batch> = None;
        let mut ready = Batch::default();
        let mut ready_end: Option<Lsn> = None;
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
            buf.clear();
            let got = tokio::select! {
                r = l.recv_many(&mut buf, ROUND) => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            let lost = match got {
                Ok(0) => Some("the listener stopped".to_owned()),
                Err(e) => Some(e.to_string()),
                Ok(_) => None,
            };
            if let Some(why) = lost {
                tracing::warn!(error = why, "the listener failed; restarting it");
                open = None;
                if let Some(l) = listener.take() {
                    let _ = l.shutdown().await;
                }
                failures += 1;
                if !self.sleep(self.shared.config.restart_delay(failures)).await {
                    return;
                }
                continue;
            }
            for m in buf.drain(..) {
                match m {
                    ListenerMessage::Begin(_) => open = Some(Batch::default()),
                    ListenerMessage::Change(ev) => {
                        if let Some(b) = open.as_mut() {
                            dispatch(&ev, &self.ops, &field, b);
                        }
                        // A transaction queued before a restart comes again:
                        // its changes were published then.
                        if ev.commit_lsn >= self.watermark {
                            self.hub.publish_arc(Arc::new(ev));
                        }
                    }
                    ListenerMessage::Message(_) => {}
                    ListenerMessage::Commit(c) => {
                        let mut b = open.take().unwrap_or_default();
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
            let Some(end) = ready_end.take() else {
                continue;
            };
            let mut tries = 0u32;
            loop {
                match flush(&self.shared, &ready, end).await {
                    Ok(()) => break,
                    Err(e) => {
                        tries += 1;
                        if !is_transient(&e) {
                            tracing::error!(error = %e, "queueing events failed; retrying");
                        } else {
                            tracing::warn!(error = %e, "queueing events failed; retrying");
                        }
                        if !self.sleep(self.shared.config.restart_delay(tries)).await {
                            // Not acknowledged: delivered again at next start.
                            if let Some(l) = listener.take() {
                                let _ = l.shutdown().await;
                            }
                            return;
                        }
                    }
                }
            }
            l.ack(end);
            let touched: BTreeSet<&str> = ready.rows.iter().map(|r| r.operator).collect();
            for op in touched {
                if let Some(s) = self.signals.get(op) {
                    s.notify.notify_one();
                }
            }
            ready = Batch::default();
        }
        if let Some(l) = listener.take()
            && let Err(e) = l.shutdown().await
        {
            tracing::warn!(error = %e, "the listener did not shut down cleanly");
        }
    }
}

/// Queues `batch` and records `end` as queued, in one transaction.
async fn flush(shared: &Shared, batch: &Batch, end: Lsn) -> sqlx::Result<()> {
    let mut tx = shared.pool.begin().await?;
    for chunk in batch.rows.chunks(CHUNK) {
        let ops: Vec<String> = chunk.iter().map(|r| r.operator.to_owned()).collect();
        let lsns: Vec<i64> = chunk.iter().map(|r| r.commit_lsn).collect();
        let seqs: Vec<i32> = chunk.iter().map(|r| r.seq).collect();
        let parts: Vec<i16> = chunk.iter().map(|r| r.part).collect();
        let ids: Vec<String> = chunk.iter().map(|r| r.id.clone()).collect();
        let kinds: Vec<String> = chunk.iter().map(|r| r.kind.to_owned()).collect();
        let schemas: Vec<String> = chunk.iter().map(|r| r.schema.to_string()).collect();
        let tables: Vec<String> = chunk.iter().map(|r| r.table.to_string()).collect();
        let events: Vec<Option<String>> = chunk.iter().map(|r| r.event.clone()).collect();
        let updated: Vec<Option<i64>> = chunk.iter().map(|r| r.updated_at).collect();
        sqlx::query(
            "INSERT INTO walflow.queue
               (slot, operator, commit_lsn, seq, part, id, kind, schema_name, table_name, event, updated_at)
             SELECT $1, o, l, s, p, i, k, sc, t, e::jsonb, u
             FROM UNNEST($2::text[], $3::int8[], $4::int4[], $5::int2[], $6::text[], $7::text[],
                         $8::text[], $9::text[], $10::text[], $11::int8[])
                  AS x(o, l, s, p, i, k, sc, t, e, u)
             ON CONFLICT DO NOTHING",
        )
        .bind(&shared.slot)
        .bind(ops)
        .bind(lsns)
        .bind(seqs)
        .bind(parts)
        .bind(ids)
        .bind(kinds)
        .bind(schemas)
        .bind(tables)
        .bind(events)
        .bind(updated)
        .execute(&mut *tx)
        .await?;
    }
    let (pending, done): (Vec<_>, Vec<_>) = batch.status.iter().partition(|s| s.remaining > 0);
    for chunk in pending.chunks(CHUNK) {
        sqlx::query(
            "INSERT INTO walflow.pending_status
               (slot, commit_lsn, seq, schema_name, table_name, updated_at, remaining)
             SELECT $1, l, s, sc, t, u, r
             FROM UNNEST($2::int8[], $3::int4[], $4::text[], $5::text[], $6::int8[], $7::int4[])
                  AS x(l, s, sc, t, u, r)
             ON CONFLICT DO NOTHING",
        )
        .bind(&shared.slot)
        .bind(chunk.iter().map(|s| s.commit_lsn).collect::<Vec<_>>())
        .bind(chunk.iter().map(|s| s.seq).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|s| s.schema.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|s| s.table.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|s| s.updated_at).collect::<Vec<_>>())
        .bind(chunk.iter().map(|s| s.remaining).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    // Events no operator runs on are done as soon as they are seen.
    let mut max: HashMap<(&str, &str), i64> = HashMap::new();
    for s in &done {
        let e = max.entry((&*s.schema, &*s.table)).or_insert(s.updated_at);
        *e = (*e).max(s.updated_at);
    }
    for ((schema, table), micros) in max {
        sqlx::query(
            "INSERT INTO walflow.process_status (slot, schema_name, table_name, updated_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (slot, schema_name, table_name)
             DO UPDATE SET updated_at = GREATEST(walflow.process_status.updated_at, EXCLUDED.updated_at)",
        )
        .bind(&shared.slot)
        .bind(schema)
        .bind(table)
        .bind(micros)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO walflow.streams (slot, enqueued_lsn) VALUES ($1, $2)
         ON CONFLICT (slot) DO UPDATE SET enqueued_lsn = GREATEST(walflow.streams.enqueued_lsn, EXCLUDED.enqueued_lsn)",
    )
    .bind(&shared.slot)
    .bind(end.0 as i64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

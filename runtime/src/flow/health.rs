//! The readings behind [`Walflow::health`](crate::Walflow::health), the
//! database gauges and the slot guard: every `health_interval`, the slot's
//! lag and retained WAL, and each operator's queue depth and dead letters
//! (with the stream storage, the depth is what its executor holds).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::Utc;
use tokio::sync::watch;

use crate::queue::Shared;
use crate::telemetry::{self, DeadLetterReading, OperatorReading, SlotReading};

/// How many dead letters the status page lists (the latest).
const LATEST_DEAD_LETTERS: i64 = 20;

/// Reads until the flow stops.
pub(crate) async fn watch(
    shared: Arc<Shared>,
    operators: Vec<&'static str>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        match read(&shared, &operators).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(slot = %shared.slot, error = %crate::pg_error::DbError(&e), "reading the slot's lag and the queue depths failed; retrying");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(shared.config.health_interval()) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn read(shared: &Shared, operators: &[&'static str]) -> Result<(), sqlx::Error> {
    let slot = &shared.slot;
    let row: Option<(Option<i64>, Option<i64>, Option<String>)> = sqlx::query_as(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8,
                pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8,
                wal_status
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(&shared.pool)
    .await?;
    match row {
        Some((_, _, Some(status))) if status == "lost" => {
            let why = crate::preflight::PreflightError::SlotLost { slot: slot.clone() }.to_string();
            tracing::error!(slot = %slot, "{why}");
            shared.health.fail(why);
        }
        Some((lag, retained, _)) => {
            let lag = lag.unwrap_or(0).max(0) as u64;
            let retained = retained.unwrap_or(0).max(0) as u64;
            let labels = [("slot", slot.clone())];
            metrics::gauge!(telemetry::SLOT_LAG, &labels).set(lag as f64);
            metrics::gauge!(telemetry::SLOT_RETAINED, &labels).set(retained as f64);
            let limit = shared.config.max_slot_lag_bytes();
            metrics::gauge!(telemetry::SLOT_OVER_LIMIT, &labels)
                .set(f64::from(u8::from(lag > limit)));
            let crossed = shared.health.read(SlotReading {
                lag,
                retained,
                at: Utc::now(),
            });
            if crossed {
                tracing::warn!(
                    slot = %slot,
                    lag_bytes = lag,
                    max_slot_lag_bytes = limit,
                    "the slot is {lag} bytes behind, past max_slot_lag_bytes ({limit}): \
                     PostgreSQL keeps that WAL until walflow acknowledges it"
                );
            }
        }
        // A temporary slot is recreated at each reconnection; a durable
        // one dropped under a running flow cannot be streamed from again.
        None if shared.config.durable_slot() => {
            let why = format!(
                "the replication slot `{slot}` no longer exists (dropped while the flow ran); \
                 restart the flow to create it again (changes in between are not seen)"
            );
            tracing::error!(slot = %slot, "{why}");
            shared.health.fail(why);
        }
        None => {}
    }
    if operators.is_empty() {
        return Ok(());
    }
    let mut readings = Vec::new();
    let now = Utc::now().timestamp_micros();
    for mut d in crate::queue::status::depths(&shared.pool, slot, operators).await? {
        // With the stream storage, the queue is what the executor holds.
        if !shared.store.durable_queue()
            && let Some(signals) = shared.handover.signals(&d.operator)
        {
            d.rows = signals.held.rows.load(Ordering::Relaxed) as i64;
            let oldest = signals.held.oldest.load(Ordering::Relaxed);
            d.oldest_age = if oldest > 0 && d.rows > 0 {
                (now - oldest).max(0) as f64 / 1e6
            } else {
                0.0
            };
        }
        let labels = [("operator", d.operator.clone())];
        metrics::gauge!(telemetry::QUEUE_ROWS, &labels).set(d.rows as f64);
        metrics::gauge!(telemetry::QUEUE_OLDEST_AGE, &labels).set(d.oldest_age);
        metrics::gauge!(telemetry::DEAD_LETTERS, &labels).set(d.dead_letters as f64);
        readings.push(OperatorReading {
            operator: d.operator,
            queue_rows: d.rows,
            oldest_age_seconds: d.oldest_age,
            dead_letters: d.dead_letters,
        });
    }
    let dead = if readings.iter().any(|r| r.dead_letters > 0) {
        crate::queue::status::latest_dead_letters(
            &shared.pool,
            slot,
            operators,
            LATEST_DEAD_LETTERS,
        )
        .await?
        .into_iter()
        .map(|d| DeadLetterReading {
            id: d.id,
            operator: d.operator,
            table: d.table,
            mapped_id: d.mapped_id,
            error: d.error,
            attempts: d.attempts,
            failed_at: d.failed_at,
        })
        .collect()
    } else {
        Vec::new()
    };
    shared.health.operators_read(readings, dead);
    Ok(())
}

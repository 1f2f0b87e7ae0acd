//! Metrics and health.
//!
//! # Metrics
//!
//! walflow records its metrics through the [`metrics`] facade: install any
//! recorder (Prometheus, StatsD, OpenTelemetry, ...) and they appear there.
//! With the `prometheus` feature, `WalflowBuilder::metrics_endpoint`
//! installs a Prometheus recorder and serves `/metrics`, `/healthz` and
//! `/readyz`.
//!
//! Names and units follow Prometheus' conventions; no label ever holds an
//! id or a value (labels are operators, tables, kinds and slots, which the
//! program declares). The list, [`METRICS_TABLE`], is also in the README:
//!
#![doc = include_str!("telemetry/metrics_table.md")]
//!
//! Each metric is described to the recorder with its meaning and unit (the
//! `# HELP` lines of `/metrics`) from [`METRICS`]. When a flow starts, the
//! counters of each of its operators (runs, retries, failures, dead
//! letters), of each table and kind, and of the replication connection's
//! reconnections are registered at 0, and the latency histograms empty:
//! they are scraped from the start, so rates and alerts work before the
//! first event or failure.
//!
//! The gauges read from the database (slot lag, retained WAL, queue depth,
//! dead letters) are refreshed every
//! [`health_interval`](crate::Config::health_interval). With the stream
//! storage ([`QueueStorage::Stream`](crate::config::QueueStorage::Stream)),
//! the queue gauges count the rows an executor holds in memory, and the
//! age is that of the oldest one's commit.
//!
//! # Health
//!
//! [`Walflow::health`](crate::Walflow::health) (and `/healthz`, `/readyz`)
//! says whether the flow is alive and ready; see [`Health`].

#[cfg(feature = "prometheus")]
pub(crate) mod endpoint;

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Events received, per table and kind (`insert`, `update`, `delete`).
pub const EVENTS: &str = "walflow_events_total";
/// Transactions received (committed, with changes of the published tables).
pub const TRANSACTIONS: &str = "walflow_transactions_total";
/// WAL bytes the server holds for the slot beyond what the flow
/// acknowledged.
pub const SLOT_LAG: &str = "walflow_slot_lag_bytes";
/// WAL bytes the server retains for the slot (from its restart position).
pub const SLOT_RETAINED: &str = "walflow_slot_retained_wal_bytes";
/// Whether the slot is past `max_slot_lag_bytes` (1) or not (0).
pub const SLOT_OVER_LIMIT: &str = "walflow_slot_lag_over_limit";
/// From a transaction's commit to an operator's completion of its event.
pub const COMMIT_TO_APPLY: &str = "walflow_commit_to_apply_seconds";
/// Rows in an operator's queue.
pub const QUEUE_ROWS: &str = "walflow_queue_rows";
/// Age of the oldest row in an operator's queue.
pub const QUEUE_OLDEST_AGE: &str = "walflow_queue_oldest_age_seconds";
/// Units an operator ran to completion (a unit is one id's pending events).
pub const OPERATOR_RUNS: &str = "walflow_operator_runs_total";
/// Failed attempts that an operator retries.
pub const OPERATOR_RETRIES: &str = "walflow_operator_retries_total";
/// Failed attempts (retried or not).
pub const OPERATOR_FAILURES: &str = "walflow_operator_failures_total";
/// Events an operator gave up on, moved to `walflow.dead_letters`.
pub const OPERATOR_DEAD_LETTERED: &str = "walflow_operator_dead_letters_total";
/// Rows an operator wrote to `walflow.queue` because it fell behind or
/// waits to try again (the stream storage).
pub const OPERATOR_SPILLED: &str = "walflow_operator_spilled_rows_total";
/// Dead letters of an operator now in `walflow.dead_letters`.
pub const DEAD_LETTERS: &str = "walflow_dead_letters";
/// Open realtime subscriptions.
pub const SUBSCRIBERS: &str = "walflow_subscribers";
/// Deliveries a subscriber missed because it fell behind.
pub const SUBSCRIPTION_LAGGED: &str = "walflow_subscription_lagged_total";
/// Estimated bytes of the changes the subscription hubs retain for resuming.
pub const HUB_RETAINED_BYTES: &str = "walflow_hub_retained_bytes";
/// Transactions received but not yet broadcast (`pubsub = postgres`).
pub const PUBSUB_PENDING: &str = "walflow_pubsub_pending_transactions";
/// Reconnections, per connection (`replication`, `pubsub`).
pub const RECONNECTS: &str = "walflow_reconnects_total";

/// Every metric: name, type, labels, description. The README's table is
/// made from it (a test checks that the copy there is the same).
pub const METRICS: &[(&str, &str, &str, &str)] = &[
    (
        EVENTS,
        "counter",
        "`table`, `kind`",
        "Events received, per table and kind (`insert`, `update`, `delete`).",
    ),
    (
        TRANSACTIONS,
        "counter",
        "",
        "Transactions received with changes of the published tables.",
    ),
    (
        SLOT_LAG,
        "gauge",
        "`slot`",
        "WAL the server has written beyond the slot's acknowledged position.",
    ),
    (
        SLOT_RETAINED,
        "gauge",
        "`slot`",
        "WAL the server keeps for the slot (from its restart position).",
    ),
    (
        SLOT_OVER_LIMIT,
        "gauge",
        "`slot`",
        "1 while the slot lag is past `max_slot_lag_bytes`, else 0.",
    ),
    (
        COMMIT_TO_APPLY,
        "histogram",
        "`operator`",
        "From a transaction's commit to the operator's completion of its event.",
    ),
    (
        QUEUE_ROWS,
        "gauge",
        "`operator`",
        "Rows in the operator's queue (with the stream storage: the rows its executor holds).",
    ),
    (
        QUEUE_OLDEST_AGE,
        "gauge",
        "`operator`",
        "Age of the operator's oldest queued row (0 when empty).",
    ),
    (
        OPERATOR_RUNS,
        "counter",
        "`operator`",
        "Units the operator completed (a unit: one id's pending events).",
    ),
    (
        OPERATOR_RETRIES,
        "counter",
        "`operator`",
        "Failed attempts the operator retries.",
    ),
    (
        OPERATOR_FAILURES,
        "counter",
        "`operator`",
        "Failed attempts, retried or given up.",
    ),
    (
        OPERATOR_DEAD_LETTERED,
        "counter",
        "`operator`",
        "Events the operator gave up on (moved to the dead letters).",
    ),
    (
        OPERATOR_SPILLED,
        "counter",
        "`operator`",
        "Rows the operator wrote to `walflow.queue` because it fell behind or waits to try again (the stream storage).",
    ),
    (
        DEAD_LETTERS,
        "gauge",
        "`operator`",
        "Dead letters of the operator now kept.",
    ),
    (SUBSCRIBERS, "gauge", "", "Open realtime subscriptions."),
    (
        SUBSCRIPTION_LAGGED,
        "counter",
        "",
        "Deliveries subscribers missed because they fell behind.",
    ),
    (
        HUB_RETAINED_BYTES,
        "gauge",
        "",
        "Estimated bytes of the changes the subscription hubs retain for resuming (bounded by `HubOptions::retain_bytes`).",
    ),
    (
        PUBSUB_PENDING,
        "gauge",
        "",
        "Transactions received but not yet broadcast (`pubsub = postgres`).",
    ),
    (
        RECONNECTS,
        "counter",
        "`connection`",
        "Reconnections of the `replication` and `pubsub` connections.",
    ),
];

/// The table of [`METRICS`], in Markdown, as in the README.
pub const METRICS_TABLE: &str = include_str!("telemetry/metrics_table.md");

/// The unit of a metric, from its name's suffix (Prometheus' convention).
fn unit(name: &str) -> Option<metrics::Unit> {
    if name.ends_with("_bytes") {
        Some(metrics::Unit::Bytes)
    } else if name.ends_with("_seconds") {
        Some(metrics::Unit::Seconds)
    } else {
        None
    }
}

/// Describes every metric of [`METRICS`] (its help text and unit) to the
/// installed recorder. Called when a flow starts and when the endpoint
/// installs its recorder: a recorder installed after an earlier call (the
/// endpoint's is installed during `start`) still learns the descriptions.
/// Recorders keep the first description of a name (the Prometheus one
/// ignores the repeats).
pub(crate) fn describe() {
    for (name, kind, _, help) in METRICS {
        match (*kind, unit(name)) {
            ("counter", Some(u)) => metrics::describe_counter!(*name, u, *help),
            ("counter", None) => metrics::describe_counter!(*name, *help),
            ("gauge", Some(u)) => metrics::describe_gauge!(*name, u, *help),
            ("gauge", None) => metrics::describe_gauge!(*name, *help),
            (_, Some(u)) => metrics::describe_histogram!(*name, u, *help),
            (_, None) => metrics::describe_histogram!(*name, *help),
        }
    }
}

/// The kinds of events [`EVENTS`] counts from the start, per table (a
/// truncate is counted when one happens).
const EVENT_KINDS: [crate::raw::EventKind; 3] = [
    crate::raw::EventKind::Insert,
    crate::raw::EventKind::Update,
    crate::raw::EventKind::Delete,
];

/// A flow starts (its recorder installed): describes the metrics, and
/// registers its counters at 0 (and its latency histograms, empty) for
/// every operator, table and kind, so that they are scraped from the start
/// rather than after the first failure: a rate or an alert on
/// `walflow_operator_failures_total` works before anything failed.
pub(crate) fn flow_started<'a>(
    operators: &[&'static str],
    tables: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    describe();
    for operator in operators {
        for name in [
            OPERATOR_RUNS,
            OPERATOR_RETRIES,
            OPERATOR_FAILURES,
            OPERATOR_DEAD_LETTERED,
            OPERATOR_SPILLED,
        ] {
            metrics::counter!(name, "operator" => *operator).increment(0);
        }
        // Registered: an empty histogram until the first completion.
        let _ = metrics::histogram!(COMMIT_TO_APPLY, "operator" => *operator);
    }
    for (schema, table) in tables {
        let table = format!("{schema}.{table}");
        for kind in EVENT_KINDS {
            metrics::counter!(EVENTS, "table" => table.clone(), "kind" => kind.as_str())
                .increment(0);
        }
    }
    metrics::counter!(TRANSACTIONS).increment(0);
    metrics::counter!(SUBSCRIPTION_LAGGED).increment(0);
    metrics::gauge!(HUB_RETAINED_BYTES).increment(0.0);
    metrics::counter!(RECONNECTS, "connection" => "replication").increment(0);
}

/// Events and transactions received in one round of the consumer, counted
/// locally and recorded together (labels are built once per table and kind
/// per round, not per event).
#[derive(Debug, Default)]
pub(crate) struct EventCounts {
    events: Vec<(Arc<str>, Arc<str>, crate::raw::EventKind, u64)>,
    pub transactions: u64,
}

impl EventCounts {
    pub fn add(&mut self, ev: &crate::raw::RawEvent) {
        match self
            .events
            .iter_mut()
            .find(|(s, t, k, _)| *k == ev.kind && **t == *ev.table && **s == *ev.schema)
        {
            Some(e) => e.3 += 1,
            None => self
                .events
                .push((ev.schema.clone(), ev.table.clone(), ev.kind, 1)),
        }
    }

    pub fn record(&mut self) {
        for (schema, table, kind, n) in self.events.drain(..) {
            metrics::counter!(
                EVENTS,
                "table" => format!("{schema}.{table}"),
                "kind" => kind.as_str()
            )
            .increment(n);
        }
        if self.transactions > 0 {
            metrics::counter!(TRANSACTIONS).increment(self.transactions);
            self.transactions = 0;
        }
    }
}

/// A unit of `operator` completed; `committed` are the commit times of its
/// events handed over in memory (microseconds since the Unix epoch).
pub(crate) fn applied(operator: &'static str, committed: impl Iterator<Item = Option<i64>>) {
    metrics::counter!(OPERATOR_RUNS, "operator" => operator).increment(1);
    let now = Utc::now().timestamp_micros();
    let histogram = metrics::histogram!(COMMIT_TO_APPLY, "operator" => operator);
    for t in committed.flatten() {
        histogram.record((now - t).max(0) as f64 / 1e6);
    }
}

/// `operator` spilled `rows` rows to `walflow.queue`.
pub(crate) fn spilled(operator: &str, rows: usize) {
    metrics::counter!(OPERATOR_SPILLED, "operator" => operator.to_owned()).increment(rows as u64);
}

/// A failed attempt of `operator`: retried or given up.
pub(crate) fn failed(operator: &'static str, retried: bool) {
    metrics::counter!(OPERATOR_FAILURES, "operator" => operator).increment(1);
    if retried {
        metrics::counter!(OPERATOR_RETRIES, "operator" => operator).increment(1);
    }
}

/// `n` events of `operator` moved to the dead letters.
pub(crate) fn dead_lettered(operator: &'static str, n: usize) {
    metrics::counter!(OPERATOR_DEAD_LETTERED, "operator" => operator).increment(n as u64);
}

/// The state a flow reports; see [`Health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthState {
    /// Starting: checking the server, migrating, setting up the slot, or
    /// connecting the listener ([`Health::detail`] says which).
    Starting,
    /// Streaming, and the slot lag is within `ready_lag_bytes`.
    Ready,
    /// Streaming, but behind by more than `ready_lag_bytes`.
    Behind,
    /// The slot lag is past `max_slot_lag_bytes` (the slot guard), or a
    /// table's replica identity does not carry the old rows an operator
    /// needs (its moved rows and deletes are dead-lettered);
    /// [`Health::detail`] says which.
    Degraded,
    /// The replication connection is down; the listener is reconnecting.
    Reconnecting,
    /// A fatal error: the flow cannot go on ([`Health::detail`] says why,
    /// e.g. the slot was invalidated). Restarting the process reports it at
    /// start.
    Failed,
    /// Shut down.
    Stopped,
}

/// What a flow says about itself: [`Walflow::health`](crate::Walflow::health),
/// and the body of `/healthz` and `/readyz`.
///
/// - **Alive** unless a fatal error happened or it was shut down: `/healthz`
///   answers 200 while alive, 503 otherwise.
/// - **Ready** while streaming with a slot lag within
///   [`ready_lag_bytes`](crate::Config::ready_lag_bytes): `/readyz` answers
///   200 then, 503 otherwise. During start-up (the server checks, the
///   migrations of the `walflow` schema, publishing the tables, creating
///   the slot) the flow is alive but not ready, `state` is `starting` and
///   `detail` names the step; it becomes ready at the first lag reading
///   after the listener streams (within
///   [`health_interval`](crate::Config::health_interval)).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// The state.
    pub state: HealthState,
    /// No fatal error, not shut down.
    pub alive: bool,
    /// Streaming and caught up within `ready_lag_bytes`.
    pub ready: bool,
    /// The start-up step, or what went wrong.
    pub detail: Option<String>,
    /// The slot lag at the last reading, in bytes.
    pub lag_bytes: Option<u64>,
    /// The WAL retained for the slot at the last reading, in bytes.
    pub retained_wal_bytes: Option<u64>,
    /// When the lag was last read.
    pub checked_at: Option<DateTime<Utc>>,
    /// The readiness limit (`ready_lag_bytes`).
    pub ready_lag_bytes: u64,
    /// The slot guard's limit (`max_slot_lag_bytes`).
    pub max_slot_lag_bytes: u64,
}

/// An operator at the last reading (the status page's feed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct OperatorReading {
    pub operator: String,
    pub queue_rows: i64,
    pub oldest_age_seconds: f64,
    pub dead_letters: i64,
}

/// A dead letter at the last reading (the status page's feed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct DeadLetterReading {
    pub id: i64,
    pub operator: String,
    pub table: String,
    pub mapped_id: String,
    pub error: String,
    pub attempts: u32,
    pub failed_at: DateTime<Utc>,
}

/// What the status page shows: the health, each operator's queue and the
/// latest dead letters.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
pub(crate) struct StatusReading {
    pub slot: String,
    pub health: Health,
    pub operators: Vec<OperatorReading>,
    pub dead_letters: Vec<DeadLetterReading>,
}

/// A slot reading.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotReading {
    pub lag: u64,
    pub retained: u64,
    pub at: DateTime<Utc>,
}

#[derive(Default)]
struct Inner {
    step: Option<&'static str>,
    streaming: bool,
    /// Whether the listener's session is open (it reconnects on its own).
    connected: Option<Box<dyn Fn() -> bool + Send + Sync>>,
    reading: Option<SlotReading>,
    fatal: Option<String>,
    stopped: bool,
    over_limit: bool,
    operators: Vec<OperatorReading>,
    dead_letters: Vec<DeadLetterReading>,
    /// Tables whose replica identity falls short, with what and the fix.
    identities: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("step", &self.step)
            .field("streaming", &self.streaming)
            .field("reading", &self.reading)
            .field("fatal", &self.fatal)
            .finish_non_exhaustive()
    }
}

/// The flow's health, shared by the stages that know parts of it.
#[derive(Debug, Clone)]
pub(crate) struct HealthCell {
    inner: Arc<Mutex<Inner>>,
    /// Bumped at each change, for the status page's live feed.
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    ready_lag: u64,
    max_lag: u64,
    /// A subscriber-only node: no slot, ready while listening.
    no_slot: bool,
}

impl HealthCell {
    pub fn new(ready_lag: u64, max_lag: u64) -> HealthCell {
        HealthCell {
            inner: Arc::new(Mutex::new(Inner {
                step: Some("connecting"),
                ..Inner::default()
            })),
            changed: Arc::new(tokio::sync::watch::channel(0).0),
            ready_lag,
            max_lag,
            no_slot: false,
        }
    }

    /// The health of a node without a slot (subscriber-only).
    pub fn without_slot() -> HealthCell {
        HealthCell {
            no_slot: true,
            ..HealthCell::new(0, u64::MAX)
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let r = f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.send_modify(|n| *n += 1);
        r
    }

    /// Changes as they happen (the value is a counter).
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The operators' queues and the latest dead letters, read.
    pub fn operators_read(&self, operators: Vec<OperatorReading>, dead: Vec<DeadLetterReading>) {
        self.with(|i| {
            i.operators = operators;
            i.dead_letters = dead;
        });
    }

    /// What the status page shows.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub fn status(&self, slot: &str) -> StatusReading {
        let health = self.health();
        let (operators, dead_letters) =
            self.with_quietly(|i| (i.operators.clone(), i.dead_letters.clone()));
        StatusReading {
            slot: slot.to_owned(),
            health,
            operators,
            dead_letters,
        }
    }

    fn with_quietly<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The start-up step under way.
    pub fn step(&self, step: &'static str) {
        self.with(|i| i.step = Some(step));
    }

    /// Whether the consumer has a listener.
    pub fn streaming(&self, streaming: bool) {
        self.with(|i| {
            if streaming {
                i.step = None;
            }
            i.streaming = streaming;
        });
    }

    /// The consumer has a listener, whose session is open while `connected`
    /// says so.
    pub fn listening(&self, connected: impl Fn() -> bool + Send + Sync + 'static) {
        self.with(|i| {
            i.step = None;
            i.streaming = true;
            i.connected = Some(Box::new(connected));
        });
    }

    /// A slot reading; returns whether the lag just went past the guard's
    /// limit (to warn once per crossing).
    pub fn read(&self, r: SlotReading) -> bool {
        self.with(|i| {
            i.reading = Some(r);
            let over = r.lag > self.max_lag;
            let crossed = over && !i.over_limit;
            i.over_limit = over;
            crossed
        })
    }

    /// What table `table`'s replica identity, as last announced, leaves
    /// the operators unable to follow (`None`: nothing).
    pub fn replica_identity(&self, table: &str, problem: Option<String>) {
        self.with(|i| match problem {
            Some(p) => {
                i.identities.insert(table.to_owned(), p);
            }
            None => {
                i.identities.remove(table);
            }
        });
    }

    /// A fatal error.
    pub fn fail(&self, why: String) {
        self.with(|i| i.fatal = Some(why));
    }

    /// Shut down.
    pub fn stop(&self) {
        self.with(|i| i.stopped = true);
    }

    pub fn health(&self) -> Health {
        self.with_quietly(|i| {
            let lag = i.reading.map(|r| r.lag);
            let (state, detail) = if i.stopped {
                (HealthState::Stopped, None)
            } else if let Some(why) = &i.fatal {
                (HealthState::Failed, Some(why.clone()))
            } else if let Some(step) = i.step {
                (HealthState::Starting, Some(step.to_owned()))
            } else if !i.streaming || i.connected.as_ref().is_some_and(|c| !c()) {
                (HealthState::Reconnecting, None)
            } else if self.no_slot {
                (HealthState::Ready, None)
            } else if !i.identities.is_empty() {
                let why: Vec<&str> = i.identities.values().map(String::as_str).collect();
                (HealthState::Degraded, Some(why.join("; ")))
            } else {
                match lag {
                    Some(l) if l > self.max_lag => (
                        HealthState::Degraded,
                        Some(format!(
                            "the slot lag ({l} bytes) is past max_slot_lag_bytes ({})",
                            self.max_lag
                        )),
                    ),
                    Some(l) if l <= self.ready_lag => (HealthState::Ready, None),
                    Some(_) => (HealthState::Behind, None),
                    None => (HealthState::Starting, Some("reading the slot lag".into())),
                }
            };
            Health {
                state,
                alive: !matches!(state, HealthState::Failed | HealthState::Stopped),
                ready: state == HealthState::Ready,
                detail,
                lag_bytes: lag,
                retained_wal_bytes: i.reading.map(|r| r.retained),
                checked_at: i.reading.map(|r| r.at),
                ready_lag_bytes: self.ready_lag,
                max_slot_lag_bytes: self.max_lag,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(lag: u64) -> SlotReading {
        SlotReading {
            lag,
            retained: lag,
            at: Utc::now(),
        }
    }

    #[test]
    fn states() {
        let h = HealthCell::new(100, 1000);
        assert_eq!(h.health().state, HealthState::Starting);
        assert_eq!(h.health().detail.as_deref(), Some("connecting"));
        assert!(h.health().alive && !h.health().ready);
        h.step("migrating");
        assert_eq!(h.health().detail.as_deref(), Some("migrating"));
        h.streaming(true);
        assert_eq!(h.health().state, HealthState::Starting);
        assert!(!h.read(reading(50)));
        assert!(h.health().ready);
        assert!(!h.read(reading(500)));
        assert_eq!(h.health().state, HealthState::Behind);
        assert!(h.read(reading(5000)), "crossing the limit is reported");
        assert!(!h.read(reading(6000)), "once");
        assert_eq!(h.health().state, HealthState::Degraded);
        assert!(h.health().alive && !h.health().ready);
        h.read(reading(0));
        h.streaming(false);
        assert_eq!(h.health().state, HealthState::Reconnecting);
        h.fail("the slot was invalidated".into());
        assert!(!h.health().alive);
        h.stop();
        assert_eq!(h.health().state, HealthState::Stopped);
    }

    #[test]
    fn the_table_lists_every_metric() {
        let mut table = String::from("| Metric | Type | Labels | Meaning |\n|---|---|---|---|\n");
        for (name, kind, labels, help) in METRICS {
            let labels = if labels.is_empty() { "—" } else { labels };
            table.push_str(&format!("| `{name}` | {kind} | {labels} | {help} |\n"));
        }
        assert_eq!(
            METRICS_TABLE, table,
            "runtime/src/telemetry/metrics_table.md is out of date; it should read:\n{table}"
        );
    }
}

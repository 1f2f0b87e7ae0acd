// One file of this length: the replication session's state machine (messages, acknowledgements, keepalives, reconnection) over one connection.
//! The WAL listener: streams a logical replication slot, decodes pgoutput and
//! hands transactions on in commit order.
//!
//! The listener never holds a whole transaction: it delivers
//! [`ListenerMessage::Begin`], each change, then [`ListenerMessage::Commit`]
//! through a bounded channel, so a transaction of any size streams through in
//! bounded memory.
//!
//! # Example
//!
//! ```no_run
//! use walflow_runtime::listener::ListenerMessage;
//! use walflow_runtime::setup::{TableSpec, listen};
//!
//! # #[allow(dead_code)]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = walflow_runtime::Config::from_env()?;
//! let (mut listener, _pool) = listen(&config, vec![TableSpec::new("public", "posts")]).await?;
//! while let Some(message) = listener.recv().await? {
//!     match message {
//!         ListenerMessage::Change(event) => println!("{} {}", event.kind, event.table),
//!         // Acknowledge only once the transaction is durably handed on.
//!         ListenerMessage::Commit(commit) => listener.ack(commit.end_lsn),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Acknowledgement
//!
//! The slot's `confirmed_flush_lsn` moves only when the consumer calls
//! [`Listener::ack`] with a transaction's [`end_lsn`](TxCommit::end_lsn),
//! after durably handing the transaction on. A crash re-delivers exactly the
//! transactions that were not acknowledged. [`Listener::shutdown`] sends the
//! last acknowledgement before closing the session.
//!
//! When the published tables are idle, the listener still advances the slot:
//! it acknowledges the server's keepalive positions (and a periodic
//! `pg_logical_emit_message` heartbeat) whenever everything delivered has been
//! acknowledged, so retained WAL stays bounded.
//!
//! # Reconnection
//!
//! A lost connection or a PostgreSQL restart is retried with capped
//! exponential backoff, resuming from the acknowledged position. Transactions
//! (and the part of a transaction) already delivered are not delivered again.

mod error;
mod transport;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use sqlx::PgPool;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::decode::{Decoder, TxInfo, pg_epoch_micros_to_utc};
use crate::lsn::Lsn;
use crate::raw::RawEvent;

pub use error::ListenerError;
pub use transport::{
    Connector, PgWireConnector, PgWireTransport, SessionSpec, Transport, TransportEvent,
};

/// Prefix of the heartbeat messages the listener emits to keep the slot
/// moving while the published tables are idle. Never delivered.
pub const HEARTBEAT_PREFIX: &str = "walflow.heartbeat";

/// Messages handed to the consumer at once, at most.
const BATCH: usize = 256;

type Batch = Vec<Result<ListenerMessage, ListenerError>>;

/// Messages handled in one wake-up from which the stream counts as busy.
const COALESCE_AFTER: usize = 16;
/// How long a busy stream is left to accumulate.
const COALESCE_PAUSE: Duration = Duration::from_micros(30);

/// A transaction starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxBegin {
    /// Transaction id.
    pub xid: u32,
    /// LSN of the commit record (orders transactions).
    pub commit_lsn: Lsn,
    /// Commit time.
    pub commit_time: DateTime<Utc>,
}

/// A transaction ends: all its changes have been delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxCommit {
    /// Transaction id.
    pub xid: u32,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End of the commit record: pass it to [`Listener::ack`] once the
    /// transaction is durably handed on.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_time: DateTime<Utc>,
    /// Number of changes delivered for the transaction.
    pub changes: u32,
}

/// A logical decoding message (`pg_logical_emit_message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Emitted inside a transaction (then delivered between its Begin and
    /// Commit) or not.
    pub transactional: bool,
    /// Its WAL position.
    pub lsn: Lsn,
    /// Its prefix.
    pub prefix: String,
    /// Its content.
    pub content: Bytes,
}

/// What the listener delivers, in commit order.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenerMessage {
    /// A transaction starts.
    Begin(TxBegin),
    /// A row change (or a truncate) of the transaction.
    Change(RawEvent),
    /// A logical decoding message.
    Message(LogicalMessage),
    /// The transaction ends.
    Commit(TxCommit),
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// Replication slot.
    pub slot: String,
    /// Publication.
    pub publication: String,
    /// `false`: create a temporary slot on the session (changes made while no
    /// listener runs are lost, as with EventStreamex's `durable_slot: false`).
    pub durable_slot: bool,
    /// How often a heartbeat message is written so the slot advances while
    /// the published tables are idle. `None` disables it.
    pub heartbeat_interval: Option<Duration>,
    /// Capacity of the channel between the connection and the consumer, in
    /// messages.
    pub buffer: usize,
    /// First wait before reconnecting after a connection loss.
    pub reconnect_min: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_max: Duration,
}

impl ListenerOptions {
    /// Options for `slot` and `publication` with the defaults: durable slot,
    /// heartbeat every 10 s, 4096 buffered messages, reconnecting after
    /// 100 ms doubling up to 5 s.
    pub fn new(slot: impl Into<String>, publication: impl Into<String>) -> Self {
        ListenerOptions {
            slot: slot.into(),
            publication: publication.into(),
            durable_slot: true,
            heartbeat_interval: Some(Duration::from_secs(10)),
            buffer: 4096,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

impl ListenerOptions {
    /// Options from `config`: its slot, publication, slot durability and
    /// heartbeat interval.
    pub fn from_config(config: &crate::Config) -> Self {
        let mut options = ListenerOptions::new(config.slot_name(), config.publication());
        options.durable_slot = config.durable_slot();
        options.heartbeat_interval = Some(config.heartbeat_interval());
        options
    }
}

struct Shared {
    /// Highest position the consumer acknowledged.
    acked: AtomicU64,
    /// Highest position handed to the transport (consumer acks and idle
    /// keepalive positions).
    confirmed: AtomicU64,
    /// Highest position received from the server.
    received: AtomicU64,
    ack_notify: Notify,
    /// The connection thread waits (for the server or for buffer space) and
    /// needs a wake-up to forward acknowledgements.
    waiting: AtomicBool,
    connected: AtomicBool,
    reconnects: AtomicU64,
}

/// A running listener. See the [module documentation](self).
pub struct Listener {
    rx: mpsc::Receiver<Batch>,
    pending: VecDeque<Result<ListenerMessage, ListenerError>>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    /// Resolves when the connection thread has finished.
    task: Option<oneshot::Receiver<()>>,
    heartbeat: Option<JoinHandle<()>>,
    pool: PgPool,
    slot: String,
    durable: bool,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("slot", &self.slot)
            .field("acked", &self.acked())
            .finish_non_exhaustive()
    }
}

/// The replication session's `client_encoding` for the database `pool`
/// reaches: `SQL_ASCII` when the database is `SQL_ASCII` (no conversion: a
/// conversion to `UTF8` validates each text value and ends the session at
/// the first that is not UTF-8), else `UTF8`.
async fn client_encoding(pool: &PgPool) -> Result<&'static str, ListenerError> {
    let encoding: String = sqlx::query_scalar("SELECT current_setting('server_encoding')")
        .fetch_one(pool)
        .await
        .map_err(|e| ListenerError::Connection(format!("reading the database encoding: {e}")))?;
    Ok(if encoding == "SQL_ASCII" {
        "SQL_ASCII"
    } else {
        "UTF8"
    })
}

impl Listener {
    /// Starts streaming the slot through `connector`. Returns once the server
    /// accepted the replication session, or with the reason it did not
    /// (e.g. [`ListenerError::SlotInUse`]).
    ///
    /// `pool` is an ordinary connection pool to the same database, used for
    /// heartbeats and slot statistics.
    pub async fn start<C: Connector>(
        connector: C,
        options: ListenerOptions,
        pool: PgPool,
    ) -> Result<Listener, ListenerError> {
        let start_lsn = if options.durable_slot {
            slot_confirmed_lsn(&pool, &options.slot).await?
        } else {
            Lsn::ZERO
        };
        let client_encoding = client_encoding(&pool).await?;
        let shared = Arc::new(Shared {
            acked: AtomicU64::new(start_lsn.0),
            confirmed: AtomicU64::new(start_lsn.0),
            received: AtomicU64::new(start_lsn.0),
            ack_notify: Notify::new(),
            waiting: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel((options.buffer / BATCH).max(1));
        let (stop, stop_rx) = watch::channel(false);
        let (started_tx, started_rx) = oneshot::channel();
        let pump = Pump {
            connector,
            spec: SessionSpec {
                slot: options.slot.clone(),
                publication: options.publication.clone(),
                start_lsn,
                create_temporary_slot: !options.durable_slot,
                client_encoding,
            },
            options: options.clone(),
            shared: Arc::clone(&shared),
            tx,
            out: Vec::with_capacity(BATCH),
            stop: stop_rx.clone(),
            decoder: Decoder::new(),
            pool: pool.clone(),
            base_types: HashMap::new(),
            tx_info: None,
            open: None,
            delivered_commit: Lsn::ZERO,
            delivered_end: start_lsn,
            last_message: start_lsn,
            idle_lsn: start_lsn,
            batch: Vec::new(),
        };
        // The replication connection and decoding run on a thread of their
        // own (a single-threaded runtime): the protocol client and the
        // decoder hand messages to each other without cross-thread wake-ups,
        // and the application's runtime load does not delay the stream.
        let (done_tx, task) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("walflow-listener-{}", options.slot))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(pump.run(started_tx)),
                    Err(e) => {
                        let _ = started_tx.send(Err(ListenerError::Connection(format!(
                            "cannot start the listener's runtime: {e}"
                        ))));
                    }
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| {
                ListenerError::Connection(format!("cannot start the listener's thread: {e}"))
            })?;
        match started_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = task.await;
                return Err(e);
            }
            Err(_) => return Err(ListenerError::Stopped),
        }
        let heartbeat = options
            .heartbeat_interval
            .map(|every| tokio::spawn(heartbeat(pool.clone(), every, stop_rx)));
        Ok(Listener {
            rx,
            pending: VecDeque::new(),
            shared,
            stop,
            task: Some(task),
            heartbeat,
            pool,
            slot: options.slot,
            durable: options.durable_slot,
        })
    }

    /// The next message, in commit order. `Ok(None)` once the listener has
    /// stopped; `Err` when it stopped because of an error that reconnecting
    /// cannot fix (the error says which).
    pub async fn recv(&mut self) -> Result<Option<ListenerMessage>, ListenerError> {
        if self.pending.is_empty() && !self.fill().await {
            return Ok(None);
        }
        match self.pending.pop_front() {
            Some(Ok(m)) => Ok(Some(m)),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }

    /// Receives up to `limit` already-available messages into `out` (waiting
    /// for the first one). Returns how many were added; 0 once stopped.
    pub async fn recv_many(
        &mut self,
        out: &mut Vec<ListenerMessage>,
        limit: usize,
    ) -> Result<usize, ListenerError> {
        if self.pending.is_empty() && !self.fill().await {
            return Ok(0);
        }
        while self.pending.len() < limit {
            match self.rx.try_recv() {
                Ok(batch) => self.pending.extend(batch),
                Err(_) => break,
            }
        }
        let mut n = 0;
        while n < limit {
            match self.pending.pop_front() {
                Some(Ok(m)) => {
                    out.push(m);
                    n += 1;
                }
                Some(Err(e)) => {
                    if n == 0 {
                        return Err(e);
                    }
                    // Deliver what came before the error first.
                    self.pending.push_front(Err(e));
                    break;
                }
                None => break,
            }
        }
        Ok(n)
    }

    /// Waits for the next batch; `false` once the listener has stopped.
    async fn fill(&mut self) -> bool {
        match self.rx.recv().await {
            Some(batch) => {
                self.pending.extend(batch);
                true
            }
            None => false,
        }
    }

    /// Acknowledges everything up to `lsn` (a [`TxCommit::end_lsn`]) as
    /// durably handed on. Monotonic and cheap; the position reaches the
    /// server with the next status update.
    pub fn ack(&self, lsn: Lsn) {
        let prev = self.shared.acked.fetch_max(lsn.0, Ordering::SeqCst);
        // A busy connection thread picks the position up by itself; wake it
        // only when it waits.
        if lsn.0 > prev && self.shared.waiting.load(Ordering::SeqCst) {
            self.shared.ack_notify.notify_one();
        }
    }

    /// The highest position acknowledged with [`ack`](Self::ack) (or the
    /// slot's confirmed position at start).
    pub fn acked(&self) -> Lsn {
        Lsn(self.shared.acked.load(Ordering::Acquire))
    }

    /// The highest WAL position received from the server.
    pub fn received(&self) -> Lsn {
        Lsn(self.shared.received.load(Ordering::Acquire))
    }

    /// Whether a replication session is currently open.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// A probe of [`is_connected`](Self::is_connected) that outlives
    /// borrows of the listener (for health reports).
    pub(crate) fn connection_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || shared.connected.load(Ordering::Acquire)
    }

    /// How many times the session was re-established after a loss.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Acquire)
    }

    /// The slot's positions and how much WAL it holds back.
    pub async fn slot_status(&self) -> Result<SlotStatus, ListenerError> {
        slot_status(&self.pool, &self.slot).await
    }

    /// Stops cleanly: sends the last acknowledgement, closes the session and
    /// returns the acknowledged position. Messages not yet received are
    /// delivered again by the next listener on the slot.
    pub async fn shutdown(mut self) -> Result<Lsn, ListenerError> {
        let _ = self.stop.send(true);
        self.rx.close();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(hb) = self.heartbeat.take() {
            let _ = hb.await;
        }
        let acked = self.acked();
        if self.durable {
            // The session reported its last position before closing; if the
            // server did not record it (the session was already broken),
            // advance the inactive slot to it.
            let status = slot_status(&self.pool, &self.slot).await?;
            if status.confirmed_flush_lsn < acked {
                // The walsender may still be exiting: wait (bounded) until it
                // released the slot.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while slot_status(&self.pool, &self.slot).await?.active
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                if slot_confirmed_lsn(&self.pool, &self.slot).await? < acked {
                    advance_slot(&self.pool, &self.slot, acked).await?;
                }
            }
        }
        Ok(acked)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A replication slot's positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStatus {
    /// Whether a session is streaming the slot.
    pub active: bool,
    /// The position acknowledged to the server.
    pub confirmed_flush_lsn: Lsn,
    /// The server's current WAL position.
    pub current_lsn: Lsn,
    /// Bytes of WAL written since the confirmed position (how far the
    /// listener lags).
    pub lag_bytes: i64,
    /// Bytes of WAL the slot keeps from being recycled.
    pub retained_bytes: i64,
}

async fn slot_status(pool: &PgPool, slot: &str) -> Result<SlotStatus, ListenerError> {
    type Row = (bool, Option<String>, String, Option<i64>, Option<i64>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT active, confirmed_flush_lsn::text, pg_current_wal_lsn()::text, \
         pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8, \
         pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 \
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await
    .map_err(|e| ListenerError::sql(format!("reading slot \"{slot}\""), e))?;
    let (active, confirmed, current, lag, retained) =
        row.ok_or_else(|| ListenerError::SlotMissing {
            slot: slot.to_owned(),
        })?;
    Ok(SlotStatus {
        active,
        confirmed_flush_lsn: confirmed.and_then(|s| s.parse().ok()).unwrap_or(Lsn::ZERO),
        current_lsn: current.parse().unwrap_or(Lsn::ZERO),
        lag_bytes: lag.unwrap_or(0),
        retained_bytes: retained.unwrap_or(0),
    })
}

async fn slot_confirmed_lsn(pool: &PgPool, slot: &str) -> Result<Lsn, ListenerError> {
    Ok(slot_status(pool, slot).await?.confirmed_flush_lsn)
}

async fn advance_slot(pool: &PgPool, slot: &str, lsn: Lsn) -> Result<(), ListenerError> {
    sqlx::query("SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)")
        .bind(slot)
        .bind(lsn.to_string())
        .execute(pool)
        .await
        .map_err(|e| ListenerError::sql(format!("advancing slot \"{slot}\" to {lsn}"), e))?;
    Ok(())
}

async fn heartbeat(pool: PgPool, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut warned = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let res = sqlx::query("SELECT pg_logical_emit_message(false, $1, ''::text)")
            .bind(HEARTBEAT_PREFIX)
            .execute(&pool)
            .await;
        match res {
            Ok(_) => warned = false,
            Err(e) if !warned => {
                tracing::warn!(error = %crate::pg_error::DbError(&e), "walflow heartbeat failed; the slot advances only with keepalives");
                warned = true;
            }
            Err(_) => {}
        }
    }
}

/// The transaction being delivered.
struct OpenTx {
    begin: TxBegin,
    /// Messages delivered so far (across sessions).
    delivered: u32,
    /// Messages seen in the current session.
    seen: u32,
    /// Delivered completely in an earlier session: skip it.
    skip: bool,
    changes: u32,
}

/// Per type OID (`$1`): itself, or for a domain its base type (through
/// domains over domains), or for an array of a domain the array of that
/// base.
const BASE_TYPES: &str = "
    WITH RECURSIVE input AS (
        SELECT t.oid AS start,
               t.typcategory = 'A' AND t.typelem <> 0 AS is_array,
               CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN t.typelem ELSE t.oid END AS elem
        FROM pg_type t WHERE t.oid = ANY($1::int8[]::oid[])
    ), chain(start, cur, depth) AS (
        SELECT start, elem, 0 FROM input
        UNION ALL
        SELECT c.start, t.typbasetype, c.depth + 1
        FROM chain c JOIN pg_type t ON t.oid = c.cur
        WHERE t.typtype = 'd' AND c.depth < 64
    ), base AS (
        SELECT DISTINCT ON (start) start, cur FROM chain ORDER BY start, depth DESC
    )
    SELECT i.start::int8,
           (CASE WHEN i.is_array THEN coalesce(NULLIF(bt.typarray, 0), i.start)
                 ELSE b.cur END)::int8
    FROM input i JOIN base b ON b.start = i.start JOIN pg_type bt ON bt.oid = b.cur";

enum SessionEnd {
    Stopped,
    Lost(ListenerError),
    Fatal(ListenerError),
}

struct Pump<C: Connector> {
    connector: C,
    spec: SessionSpec,
    options: ListenerOptions,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Batch>,
    /// Messages handled but not yet handed to the consumer.
    out: Batch,
    stop: watch::Receiver<bool>,
    decoder: Decoder,
    /// For resolving the types of announced columns.
    pool: PgPool,
    /// Types that are not built in, resolved: a domain to its base type (an
    /// array of a domain to its base's array), any other to itself. Kept
    /// across sessions: a type's OID never changes its base.
    base_types: HashMap<u32, u32>,
    tx_info: Option<TxInfo>,
    open: Option<OpenTx>,
    /// Commit LSN of the last transaction delivered completely.
    delivered_commit: Lsn,
    /// End LSN of the last transaction delivered completely.
    delivered_end: Lsn,
    /// Position of the last non-transactional message delivered.
    last_message: Lsn,
    /// The server's last keepalive or heartbeat position.
    idle_lsn: Lsn,
    batch: Vec<RawEvent>,
}

impl<C: Connector> Pump<C> {
    /// Resolves the column types of relation `id` that are not built in
    /// (OID 16384 and above) and not resolved yet, and tells the decoder.
    async fn resolve_types(&mut self, id: u32) -> Result<(), ListenerError> {
        const FIRST_NORMAL_OID: u32 = 16_384;
        let Some(relation) = self.decoder.relation(id) else {
            return Ok(());
        };
        let custom: Vec<u32> = relation
            .columns
            .iter()
            .map(|c| c.type_oid)
            .filter(|oid| *oid >= FIRST_NORMAL_OID)
            .collect();
        if custom.is_empty() {
            return Ok(());
        }
        let missing: Vec<i64> = custom
            .iter()
            .filter(|oid| !self.base_types.contains_key(oid))
            .map(|oid| i64::from(*oid))
            .collect();
        if !missing.is_empty() {
            let rows: Vec<(i64, i64)> = sqlx::query_as(BASE_TYPES)
                .bind(&missing)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| {
                    ListenerError::Connection(format!(
                        "reading the column types of relation {id} from the catalog: {e}"
                    ))
                })?;
            for (oid, base) in rows {
                self.base_types.insert(oid as u32, base as u32);
            }
        }
        self.decoder.set_base_types(id, &self.base_types);
        Ok(())
    }

    async fn run(mut self, started: oneshot::Sender<Result<(), ListenerError>>) {
        let mut started = Some(started);
        let backoff = crate::backoff::Backoff::new(
            self.options.reconnect_min,
            2.0,
            self.options.reconnect_max,
        );
        let mut failures = 0u32;
        loop {
            let stopped = *self.stop.borrow();
            if stopped {
                return;
            }
            self.spec.start_lsn = Lsn(self.shared.confirmed.load(Ordering::Acquire))
                .max(Lsn(self.shared.acked.load(Ordering::Acquire)));
            let connected = tokio::select! {
                r = self.connector.connect(&self.spec) => r,
                _ = self.stop.wait_for(|s| *s) => return,
            };
            let transport = match connected {
                Ok(t) => t,
                Err(e) => {
                    if let Some(s) = started.take() {
                        // The first session decides whether start() succeeds:
                        // report configuration problems at once.
                        if !e.is_transient() {
                            let _ = s.send(Err(e));
                            return;
                        }
                        started = Some(s);
                    } else if !e.is_transient() && !matches!(e, ListenerError::SlotInUse { .. }) {
                        // After a loss, our own previous walsender may still
                        // hold the slot for a moment: retry that; give up on
                        // anything else that reconnecting cannot fix.
                        self.out.push(Err(e));
                        let _ = self.tx.send(std::mem::take(&mut self.out)).await;
                        return;
                    }
                    failures += 1;
                    let wait = backoff.delay(failures);
                    tracing::warn!(
                        slot = %self.spec.slot,
                        error = %e,
                        retry_in = ?wait,
                        "walflow replication connection failed; retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stop.wait_for(|s| *s) => return,
                    }
                    continue;
                }
            };
            if let Some(s) = started.take() {
                let _ = s.send(Ok(()));
            } else {
                self.shared.reconnects.fetch_add(1, Ordering::AcqRel);
                metrics::counter!(crate::telemetry::RECONNECTS, "connection" => "replication")
                    .increment(1);
                tracing::info!(slot = %self.spec.slot, from = %self.spec.start_lsn, "walflow replication session re-established");
            }
            self.shared.connected.store(true, Ordering::Release);
            failures = 0;
            // A new session re-sends Relation messages before first use.
            self.decoder = Decoder::new();
            if let Some(open) = &mut self.open {
                open.seen = 0;
            }
            let end = self.session(transport).await;
            self.shared.connected.store(false, Ordering::Release);
            match end {
                SessionEnd::Stopped => return,
                SessionEnd::Fatal(e) => {
                    self.out.push(Err(e));
                    let _ = self.tx.send(std::mem::take(&mut self.out)).await;
                    return;
                }
                SessionEnd::Lost(e) => {
                    tracing::warn!(
                        slot = %self.spec.slot,
                        error = %e,
                        "walflow replication connection lost; reconnecting"
                    );
                }
            }
        }
    }

    /// Forwards the consumer's acknowledgement to the session.
    fn forward_ack(&self, transport: &mut C::Transport) {
        let acked = self.shared.acked.load(Ordering::Acquire);
        let prev = self.shared.confirmed.fetch_max(acked, Ordering::AcqRel);
        transport.ack(Lsn(acked.max(prev)));
        self.ack_if_idle(transport);
    }

    /// Reports the last acknowledgement and ends the session.
    async fn close(&mut self, mut transport: C::Transport) -> SessionEnd {
        self.forward_ack(&mut transport);
        if let Err(e) = transport.close().await {
            tracing::warn!(error = %e, "walflow replication session did not close cleanly");
        }
        SessionEnd::Stopped
    }

    async fn session(&mut self, mut transport: C::Transport) -> SessionEnd {
        self.forward_ack(&mut transport);
        let mut stop = self.stop.clone();
        let shared = Arc::clone(&self.shared);
        loop {
            shared.waiting.store(true, Ordering::SeqCst);
            // Acknowledgements made while this thread was busy.
            self.forward_ack(&mut transport);
            let ev = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => None,
                _ = shared.ack_notify.notified() => continue,
                ev = transport.recv() => Some(ev),
            };
            shared.waiting.store(false, Ordering::SeqCst);
            let Some(mut ev) = ev else {
                return self.close(transport).await;
            };
            // Handle what is already available without waiting, then hand it
            // on as one batch.
            let mut handled = 0;
            loop {
                let end = match ev {
                    Ok(Some(ev)) => self.handle(ev, &mut transport).await.err(),
                    Ok(None) => Some(SessionEnd::Lost(ListenerError::Connection(
                        "the server ended the replication stream".into(),
                    ))),
                    Err(e) if e.is_transient() => Some(SessionEnd::Lost(e)),
                    Err(e) => Some(SessionEnd::Fatal(e)),
                };
                match end {
                    None => {}
                    Some(SessionEnd::Stopped) => return self.close(transport).await,
                    Some(end) => {
                        if let Err(SessionEnd::Stopped) = self.flush(&mut transport).await {
                            return self.close(transport).await;
                        }
                        return end;
                    }
                }
                handled += 1;
                if handled >= BATCH {
                    break;
                }
                match transport.recv().now_or_never() {
                    Some(next) => ev = next,
                    None => break,
                }
            }
            if let Err(SessionEnd::Stopped) = self.flush(&mut transport).await {
                return self.close(transport).await;
            }
            // A busy stream: let the server fill the socket for a moment
            // rather than waking this thread for every message. This thread
            // runs only the replication connection, so pausing it delays
            // nothing else; a quiet stream is never paused.
            if handled >= COALESCE_AFTER {
                std::thread::sleep(COALESCE_PAUSE);
            }
        }
    }

    async fn handle(
        &mut self,
        ev: TransportEvent,
        transport: &mut C::Transport,
    ) -> Result<(), SessionEnd> {
        match ev {
            TransportEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                let commit_time = pg_epoch_micros_to_utc(commit_time_micros);
                self.tx_info = Some(TxInfo {
                    commit_lsn: final_lsn,
                    commit_time,
                    xid,
                    next_seq: 0,
                });
                self.note_received(final_lsn);
                if let Some(open) = &self.open
                    && open.begin.commit_lsn == final_lsn
                {
                    // The session was lost mid-transaction: the same
                    // transaction comes again; skip what was delivered.
                    return Ok(());
                }
                if self.open.is_some() {
                    tracing::error!(
                        "walflow: a partially delivered transaction was not re-sent after reconnecting"
                    );
                }
                let begin = TxBegin {
                    xid,
                    commit_lsn: final_lsn,
                    commit_time,
                };
                let skip = final_lsn <= self.delivered_commit;
                self.open = Some(OpenTx {
                    begin: begin.clone(),
                    delivered: 0,
                    seen: 0,
                    skip,
                    changes: 0,
                });
                if !skip {
                    self.send(ListenerMessage::Begin(begin), transport).await?;
                }
            }
            TransportEvent::Data { wal_start, data } => {
                self.note_received(wal_start);
                let mut tx = self.tx_info.take().unwrap_or(TxInfo {
                    commit_lsn: Lsn::ZERO,
                    commit_time: DateTime::<Utc>::UNIX_EPOCH,
                    xid: 0,
                    next_seq: 0,
                });
                let mut batch = std::mem::take(&mut self.batch);
                let res = self.decoder.decode(&mut tx, wal_start, &data, &mut batch);
                self.tx_info = Some(tx);
                if let Err(source) = res {
                    return Err(SessionEnd::Fatal(ListenerError::Decode {
                        lsn: wal_start,
                        source,
                    }));
                }
                if data.first() == Some(&b'R') && data.len() >= 5 {
                    let id = u32::from_be_bytes([data[1], data[2], data[3], data[4]]);
                    self.resolve_types(id).await.map_err(SessionEnd::Lost)?;
                }
                for ev in batch.drain(..) {
                    if self.take_slot() {
                        if let Some(open) = &mut self.open {
                            open.changes += 1;
                        }
                        self.send(ListenerMessage::Change(ev), transport).await?;
                    }
                }
                self.batch = batch;
            }
            TransportEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => {
                self.note_received(end_lsn);
                self.tx_info = None;
                let open = self.open.take();
                let skip = open.as_ref().is_some_and(|o| o.skip);
                if !skip {
                    let (xid, changes) = open.map(|o| (o.begin.xid, o.changes)).unwrap_or((0, 0));
                    let commit = TxCommit {
                        xid,
                        commit_lsn: lsn,
                        end_lsn,
                        commit_time: pg_epoch_micros_to_utc(commit_time_micros),
                        changes,
                    };
                    // Recorded before sending: once sent, it is delivered.
                    self.send(ListenerMessage::Commit(commit), transport)
                        .await?;
                }
                self.delivered_commit = self.delivered_commit.max(lsn);
                self.delivered_end = self.delivered_end.max(end_lsn);
            }
            TransportEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                self.note_received(lsn);
                if prefix == HEARTBEAT_PREFIX {
                    if !transactional {
                        self.note_idle(lsn, transport);
                    }
                    return Ok(());
                }
                let msg = ListenerMessage::Message(LogicalMessage {
                    transactional,
                    lsn,
                    prefix,
                    content,
                });
                if transactional && self.open.is_some() {
                    if self.take_slot() {
                        self.send(msg, transport).await?;
                    }
                } else if lsn > self.last_message {
                    self.send(msg, transport).await?;
                    self.last_message = lsn;
                }
            }
            TransportEvent::KeepAlive { wal_end } => {
                self.note_received(wal_end);
                self.note_idle(wal_end, transport);
            }
        }
        Ok(())
    }

    /// Counts one message of the open transaction; whether to deliver it
    /// (not delivered before a reconnection, not part of a skipped one).
    fn take_slot(&mut self) -> bool {
        match &mut self.open {
            Some(open) => {
                open.seen += 1;
                if open.skip || open.seen <= open.delivered {
                    false
                } else {
                    open.delivered += 1;
                    true
                }
            }
            None => true,
        }
    }

    fn note_received(&self, lsn: Lsn) {
        self.shared.received.fetch_max(lsn.0, Ordering::AcqRel);
    }

    /// Everything before the server's last keepalive (or heartbeat) position
    /// has been received: once nothing delivered is left unacknowledged, the
    /// server may recycle WAL up to there. This also lets a shutting-down
    /// server, which waits for its last position to be confirmed, stop as
    /// soon as the consumer has caught up.
    fn ack_if_idle(&self, transport: &mut C::Transport) {
        let lsn = self.idle_lsn;
        if self.open.is_none() && self.shared.acked.load(Ordering::Acquire) >= self.delivered_end.0
        {
            let prev = self.shared.confirmed.fetch_max(lsn.0, Ordering::AcqRel);
            if lsn.0 > prev {
                transport.ack(lsn);
            }
        }
    }

    fn note_idle(&mut self, lsn: Lsn, transport: &mut C::Transport) {
        self.idle_lsn = self.idle_lsn.max(lsn);
        self.ack_if_idle(transport);
    }

    async fn send(
        &mut self,
        msg: ListenerMessage,
        transport: &mut C::Transport,
    ) -> Result<(), SessionEnd> {
        self.out.push(Ok(msg));
        if self.out.len() >= BATCH {
            self.flush(transport).await?;
        }
        Ok(())
    }

    /// Hands the handled messages to the consumer (waiting while its buffer
    /// is full, forwarding acknowledgements meanwhile).
    async fn flush(&mut self, transport: &mut C::Transport) -> Result<(), SessionEnd> {
        if self.out.is_empty() {
            return Ok(());
        }
        let mut stop = self.stop.clone();
        let shared = Arc::clone(&self.shared);
        loop {
            shared.waiting.store(true, Ordering::SeqCst);
            self.forward_ack(transport);
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return Err(SessionEnd::Stopped),
                _ = shared.ack_notify.notified() => {}
                permit = self.tx.reserve() => {
                    shared.waiting.store(false, Ordering::SeqCst);
                    return match permit {
                        Ok(permit) => {
                            let batch = std::mem::replace(&mut self.out, Vec::with_capacity(BATCH));
                            permit.send(batch);
                            Ok(())
                        }
                        // The consumer dropped the listener.
                        Err(_) => Err(SessionEnd::Stopped),
                    };
                }
            }
        }
    }
}

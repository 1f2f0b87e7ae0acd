//! One supervised executor per operator.
//!
//! It takes the operator's queue rows in `(commit_lsn, seq)` order — handed
//! over in memory by the consumer right after they are queued, or read back
//! in batches after a start, an overflow or a replayed dead letter — into a
//! pending set keyed by mapped id. Each id runs strictly in commit order,
//! one unit at a time. A unit is one event, or (with `coalesce: true`) every
//! pending event of the id up to the next delete, which is a barrier: the
//! query runs once for them; while such a row waits, the consumer queues
//! later events of its id without rows of their own (see [`Inbox::hosts`]).
//! Units of a query operator are grouped, up to
//! 64 ids per transaction; a handler runs one unit per transaction. A unit
//! applies its work and deletes its queue rows in one transaction, so a
//! query operator applies each event exactly once. A failing group is split
//! into its units; a failing unit is retried with backoff, then
//! dead-lettered; it holds only its own id, and while it waits it does not
//! count against the operator's concurrency.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::config::{Config, FailureInfo, ProcessStatusStorage, QueueStorage, RetryInfo};
use crate::ctx::Ctx;
use crate::event::Position;
use crate::ident::quote_ident;
use crate::lsn::Lsn;
use crate::raw::{EventKind, RawEvent};
use crate::registry::{HandlerError, OperatorAction, OperatorRegistration};
use crate::value::Value;

use super::bind::bind_value;
use super::memory::{Finished, MemoryState};
use super::{id_display, id_key};
use crate::queue::dequeue::{fetch, finish};

/// Rows fetched per round trip.
pub(crate) const FETCH: i64 = 2_000;
/// Upper bound of rows held in memory per operator.
const MAX_PENDING: usize = 20_000;
/// Most units of a query operator run in one transaction.
const MAX_GROUP: usize = 64;

/// What the executors of one flow share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub pool: PgPool,
    pub config: Config,
    pub slot: String,
    /// The memory queue's bookkeeping and the memory process status.
    pub memory: MemoryState,
    /// The number of the consumer's last committed flush: rows handed over
    /// with a higher number are not queued yet.
    pub flushed: watch::Sender<u64>,
    /// Counts the errors that say the server refuses or terminates walflow's connections as
    /// it does while shutting down (see [`is_shutdown`]): the consumer then
    /// lets go of the replication connection, so the server can stop.
    pub server_gone: watch::Sender<u64>,
}

impl Shared {
    /// Passes on a database error that says the server is shutting down.
    pub fn note_error(&self, e: &sqlx::Error) {
        if is_shutdown(e) {
            self.server_gone.send_modify(|n| *n += 1);
        }
    }

    /// Whether the queue is in memory (`queue_storage = memory`).
    pub fn memory_queue(&self) -> bool {
        self.config.queue_storage() == QueueStorage::Memory
    }

    /// Whether the process status is in memory.
    pub fn memory_status(&self) -> bool {
        self.config.process_status_storage() == ProcessStatusStorage::Memory
    }
}

/// Rows handed from the consumer to an executor in memory, right after
/// they are queued: the executor then need not read them back.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    rows: Vec<Row>,
    /// More was queued than the inbox holds: read the queue instead.
    overflow: bool,
    /// The memory queue: the inbox is the queue, it never overflows (the
    /// consumer waits for room instead).
    unbounded: bool,
    /// The highest flush number among the rows dropped on overflow: reading
    /// the queue finds them only once that flush is committed.
    dropped: u64,
    /// Ids whose pending events (held by the executor, no unit started on
    /// them) end with one that is not a delete. For a coalescing query
    /// operator, a later event of such an id needs no queue row of its own:
    /// that pending row's run starts after the event is committed, so it
    /// covers it. Kept under the inbox's lock by the executor; read by the
    /// consumer while the inbox is empty (every row handed over admitted).
    pub hosts: HashSet<String>,
    /// The highest flush number among the events left out because a host
    /// covers them. Their transactions are visible once that flush is
    /// committed (the flush checks it), and only then: a unit of a
    /// coalescing operator taken from the pending set waits for it before
    /// its statements, so the run that covers them sees them. (Taken under
    /// the inbox's lock, after every absorption into its host.)
    pub absorbed_flush: u64,
    /// The executor reads the queue: rows handed over may have been dropped
    /// and not admitted yet, so [`hosts`](Self::hosts) may be incomplete.
    reading: bool,
    /// For a coalescing query operator, per id: the snapshot of the last
    /// committed run of its query with no delete of the id pending after it.
    /// An event arriving later whose transaction that snapshot saw needs no
    /// queue row: the run already applied it. Cleared by a delete; used for
    /// [`COVERED_FOR`] after the run (transaction ids wrap around).
    pub covered: HashMap<String, RunSnapshot>,
}

/// What a run's snapshot saw: transactions before `xmax` except those in
/// `running` (PostgreSQL's `pg_snapshot`, as 32-bit transaction ids).
#[derive(Debug, Clone)]
pub(crate) struct RunSnapshot {
    xmax: u32,
    running: Arc<[u32]>,
    at: std::time::Instant,
}

impl RunSnapshot {
    /// Parses `pg_current_snapshot()::text` (`xmin:xmax:xip,...`, each an
    /// `xid8` whose low 32 bits are the transaction id).
    fn parse(text: &str) -> Option<RunSnapshot> {
        let mut parts = text.split(':');
        let _xmin = parts.next()?;
        let xmax = parts.next()?.parse::<u64>().ok()? as u32;
        let running = parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.parse::<u64>().map(|x| x as u32))
            .collect::<Result<Arc<[u32]>, _>>()
            .ok()?;
        Some(RunSnapshot {
            xmax,
            running,
            at: std::time::Instant::now(),
        })
    }

    /// Whether the committed transaction `xid` was visible to the run (and
    /// the snapshot is recent enough to compare transaction ids).
    pub fn saw(&self, xid: u32) -> bool {
        xid != 0
            && super::xid_precedes(xid, self.xmax)
            && !self.running.contains(&xid)
            && self.at.elapsed() < COVERED_FOR
    }
}

/// How long a run's snapshot stands for the events it covered (see
/// [`Inbox::covered`]): far below the time two billion transactions take.
const COVERED_FOR: Duration = Duration::from_secs(60);
/// Ids kept in [`Inbox::covered`] before older entries are dropped.
const COVERED_MAX: usize = 100_000;

/// Rows an inbox holds before the executor is told to read the queue.
const INBOX_MAX: usize = 10_000;

impl Inbox {
    /// Whether every row handed over was admitted by the executor, so
    /// [`hosts`](Self::hosts) is up to date.
    pub fn settled(&self) -> bool {
        self.rows.is_empty() && !self.overflow && !self.reading
    }

    /// Hands over rows just queued (in queue order).
    pub fn push(&mut self, rows: impl Iterator<Item = Row>) {
        if self.overflow {
            self.dropped = rows.map(|r| r.flush).fold(self.dropped, u64::max);
            return;
        }
        self.rows.extend(rows);
        if !self.unbounded && self.rows.len() > INBOX_MAX {
            self.dropped = self
                .rows
                .iter()
                .map(|r| r.flush)
                .fold(self.dropped, u64::max);
            self.rows = Vec::new();
            self.overflow = true;
        }
    }
}

impl Signals {
    /// The signals of one operator; `memory_queue`: its inbox is its queue.
    pub fn new(memory_queue: bool) -> Self {
        let signals = Signals::default();
        {
            let mut inbox = signals.inbox.lock().expect("inbox lock");
            inbox.unbounded = memory_queue;
            // An executor starts by reading the queue.
            inbox.reading = !memory_queue;
        }
        signals
    }
}

/// The handle the flow keeps per operator.
#[derive(Debug, Clone, Default)]
pub(crate) struct Signals {
    /// New rows were queued (and are in the inbox, unless it overflowed).
    pub notify: Arc<Notify>,
    /// Rows just queued.
    pub inbox: Arc<std::sync::Mutex<Inbox>>,
    /// Rows were queued behind the read position (a replayed dead letter).
    pub rescan: Arc<AtomicBool>,
}

/// A queue row as read back.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) commit_lsn: i64,
    pub(crate) seq: i32,
    pub(crate) part: i16,
    pub(crate) id: String,
    /// [`id_key`] of `id`.
    pub(crate) id_key: String,
    pub(crate) kind: EventKind,
    pub(crate) schema: String,
    pub(crate) table: String,
    /// A handler row's event as JSON (as queued).
    pub(crate) event: Option<String>,
    /// A handler row's event, when handed over in memory.
    pub(crate) raw: Option<Arc<RawEvent>>,
    pub(crate) updated_at: Option<i64>,
    /// The first commit LSN the row stands for (events collapsed into it).
    pub(crate) first_lsn: Option<i64>,
    /// Events collapsed into this row whose process status waits on it.
    pub(crate) covers: Vec<(i64, i32)>,
    /// The consumer's flush queueing the row (0: queued already).
    pub(crate) flush: u64,
}

impl Row {
    /// A row read back from the queue.
    pub(crate) fn from_queued(q: crate::queue::dequeue::QueuedRow) -> Row {
        Row {
            commit_lsn: q.commit_lsn,
            seq: q.seq,
            part: q.part,
            id_key: id_key(&q.id),
            id: q.id,
            kind: q.kind,
            schema: q.schema_name,
            table: q.table_name,
            event: q.event,
            raw: None,
            updated_at: q.updated_at,
            first_lsn: None,
            covers: match (q.cover_lsns, q.cover_seqs) {
                (Some(l), Some(s)) => l.into_iter().zip(s).collect(),
                _ => Vec::new(),
            },
            flush: 0,
        }
    }

    /// A row handed over in memory, queued by the consumer's flush number
    /// `flush` (0: queued already).
    pub(crate) fn from_new(r: &super::NewRow, flush: u64) -> Row {
        Row {
            commit_lsn: r.commit_lsn,
            seq: r.seq,
            part: r.part,
            id: r.id.clone(),
            id_key: r.id_key.clone(),
            kind: r.kind,
            schema: r.schema.to_string(),
            table: r.table.to_string(),
            event: r.event.clone(),
            raw: r.raw.clone(),
            updated_at: r.updated_at,
            first_lsn: r.first_lsn,
            covers: r.covers.clone(),
            flush,
        }
    }

    pub(crate) fn key(&self) -> (i64, i32, i16) {
        (self.commit_lsn, self.seq, self.part)
    }
}

/// `(commit_lsn, seq, part)`: a queue row's key within its operator.
type RowKey = (i64, i32, i16);

/// Why an attempt failed.
enum Failure {
    /// The connection is down or the transaction conflicted: retried without
    /// counting an attempt.
    Transient(String),
    /// The record does not fit the handler's type: dead-lettered at once.
    Decode(String),
    /// The operator failed: retried, then dead-lettered.
    Failed(String),
    /// The flow stopped before the rows were queued: left unfinished.
    Stopped,
}

/// Whether a database error is about the connection (or a conflict), not
/// about the statement.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08")
                || c.starts_with("57P")
                || c == "40001"
                || c == "40P01"
                || c == "53300"
        }),
        _ => false,
    }
}

/// Whether a database error says the server is going away: walflow's
/// connection was terminated by an administrator command or a crash
/// shutdown (`57P01`, `57P02`), or the server refuses connections while it
/// starts or stops (`57P03`).
pub(crate) fn is_shutdown(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some("57P01" | "57P02" | "57P03")))
}

fn sql_failure(e: sqlx::Error) -> Failure {
    if is_transient(&e) {
        Failure::Transient(e.to_string())
    } else {
        Failure::Failed(e.to_string())
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned());
    format!("the operator panicked: {text}")
}

/// Runs one operator until `stop` turns true, then finishes the units in
/// flight.
pub(crate) async fn run(
    op: &'static OperatorRegistration,
    shared: Arc<Shared>,
    signals: Signals,
    concurrency: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut pending: HashMap<String, VecDeque<Row>> = HashMap::new();
    let mut ready: VecDeque<String> = VecDeque::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut known: HashSet<(i64, i32, i16)> = HashSet::new();
    let mut held = 0usize;
    let mut cursor = (i64::MIN, i32::MIN, i16::MIN);
    let memory_queue = shared.memory_queue();
    // The memory queue is only the inbox: nothing to read back.
    let mut more = !memory_queue;
    let mut need_flush = 0u64;
    let mut fetch_failures = 0u32;
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    let grouping = matches!(op.action, OperatorAction::Query(_));
    let unit = Arc::new(UnitRunner {
        op,
        shared: shared.clone(),
        stop: stop.clone(),
        waiting: AtomicUsize::new(0),
        wake: Notify::new(),
        rescan: signals.rescan.clone(),
        ran: std::sync::Mutex::new(HashMap::new()),
    });

    loop {
        let stopping = *stop.borrow();
        if stopping && tasks.is_empty() {
            return;
        }
        if signals.rescan.swap(false, Ordering::AcqRel) && !memory_queue {
            cursor = (i64::MIN, i32::MIN, i16::MIN);
            more = true;
            // Rows queued behind the read position are not admitted yet.
            signals.inbox.lock().expect("inbox lock").reading = true;
        }
        let mut fetch_error = false;
        // Read everything available (up to the bound) before starting units:
        // the more an id has pending, the more a coalescing operator merges.
        while !stopping && more && held < MAX_PENDING && !fetch_error {
            // Rows handed over while their flush was under way and dropped
            // here: the read must see them, or the cursor would pass them.
            if need_flush > *shared.flushed.borrow() {
                let mut flushed = shared.flushed.subscribe();
                let committed = tokio::select! {
                    r = flushed.wait_for(|f| *f >= need_flush) => r.is_ok(),
                    _ = stop.wait_for(|s| *s) => false,
                };
                if !committed {
                    break;
                }
            }
            match fetch(&shared, op.name, cursor).await {
                Ok(rows) => {
                    if !rows.is_empty() {
                        crate::crash_point::hit("executor.fetched");
                    }
                    fetch_failures = 0;
                    more = rows.len() as i64 == FETCH;
                    let mut inbox = signals.inbox.lock().expect("inbox lock");
                    inbox.reading = more;
                    for row in rows {
                        cursor = cursor.max(row.key());
                        if !known.insert(row.key()) {
                            continue;
                        }
                        held += 1;
                        admit(row, &mut pending, &mut ready, &in_flight, &mut inbox);
                    }
                }
                Err(e) => {
                    fetch_failures += 1;
                    fetch_error = true;
                    tracing::warn!(operator = op.name, error = %e, "reading the operator queue failed; retrying");
                }
            }
        }
        while !stopping
            && tasks.len() - unit.waiting.load(Ordering::Acquire).min(tasks.len()) < concurrency
            && !ready.is_empty()
        {
            let busy = tasks.len() - unit.waiting.load(Ordering::Acquire).min(tasks.len());
            // Query units are spread over the free transactions.
            let per = if grouping {
                ready.len().div_ceil(concurrency - busy).min(MAX_GROUP)
            } else {
                1
            };
            let mut units: Vec<(String, Vec<Row>)> = Vec::with_capacity(per);
            // Taken rows stop hosting before their run starts.
            let mut inbox = signals.inbox.lock().expect("inbox lock");
            while units.len() < per {
                let Some(key) = ready.pop_front() else { break };
                let Some(queue) = pending.get_mut(&key) else {
                    continue;
                };
                let mut rows = take_unit(op, queue);
                // It may cover events left out since: it waits for their
                // flush (see `Inbox::absorbed_flush`).
                if let Some(last) = rows.last_mut() {
                    last.flush = last.flush.max(inbox.absorbed_flush);
                }
                if queue.is_empty() {
                    pending.remove(&key);
                    inbox.hosts.remove(&key);
                }
                if rows.is_empty() {
                    continue;
                }
                in_flight.insert(key.clone());
                units.push((key, rows));
            }
            drop(inbox);
            if units.is_empty() {
                break;
            }
            let runner = unit.clone();
            tasks.spawn(async move {
                let done = units
                    .iter()
                    .map(|(key, rows)| (key.clone(), rows.iter().map(Row::key).collect()))
                    .collect();
                if let [(_, rows)] = &mut units[..] {
                    runner.run(std::mem::take(rows)).await;
                    return Outcome::Done(done);
                }
                if runner.run_group(&units).await {
                    Outcome::Done(done)
                } else {
                    Outcome::Split(units)
                }
            });
        }
        let wait_fetch = if fetch_error {
            shared.config.restart_delay(fetch_failures)
        } else if more && held < MAX_PENDING && !stopping {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                match done {
                    Ok(Outcome::Split(units)) => {
                        for (key, rows) in units {
                            let runner = unit.clone();
                            tasks.spawn(async move {
                                let keys = rows.iter().map(Row::key).collect();
                                runner.run(rows).await;
                                Outcome::Done(vec![(key, keys)])
                            });
                        }
                    }
                    Ok(Outcome::Done(units)) => {
                        let ran = std::mem::take(&mut *unit.ran.lock().expect("ran lock"));
                        if !ran.is_empty() {
                            let mut inbox = signals.inbox.lock().expect("inbox lock");
                            for (key, snapshot) in ran {
                                // A delete admitted since the run comes after
                                // it: nothing is covered past that.
                                let delete_pending = pending
                                    .get(&key)
                                    .is_some_and(|q| q.iter().any(|r| r.kind == EventKind::Delete));
                                if !delete_pending {
                                    inbox.covered.insert(key, snapshot);
                                }
                            }
                            if inbox.covered.len() > COVERED_MAX {
                                inbox.covered.retain(|_, s| s.at.elapsed() < COVERED_FOR);
                                if inbox.covered.len() > COVERED_MAX {
                                    inbox.covered.clear();
                                }
                            }
                        }
                        for (key, keys) in units {
                            for k in keys {
                                known.remove(&k);
                                held = held.saturating_sub(1);
                            }
                            in_flight.remove(&key);
                            if pending.get(&key).is_some_and(|q| !q.is_empty()) {
                                ready.push_back(key);
                            }
                        }
                    }
                    Err(e) => {
                        // Units catch panics themselves; a JoinError here is a
                        // bug. Start over from the queue, which still holds
                        // every unfinished row.
                        tracing::error!(operator = op.name, error = %e, "an operator task died; re-reading its queue");
                        tasks.abort_all();
                        while tasks.join_next().await.is_some() {}
                        pending.clear();
                        {
                            let mut inbox = signals.inbox.lock().expect("inbox lock");
                            inbox.hosts.clear();
                            inbox.covered.clear();
                            inbox.reading = !memory_queue;
                        }
                        ready.clear();
                        in_flight.clear();
                        known.clear();
                        held = 0;
                        cursor = (i64::MIN, i32::MIN, i16::MIN);
                        more = !memory_queue;
                    }
                }
            }
            _ = signals.notify.notified(), if !stopping => {
                // Admitted under the inbox's lock, so the consumer sees the
                // rows either in the inbox or admitted (with their hosts).
                let mut inbox = signals.inbox.lock().expect("inbox lock");
                let overflow = std::mem::replace(&mut inbox.overflow, false);
                let dropped = std::mem::take(&mut inbox.dropped);
                let rows = std::mem::take(&mut inbox.rows);
                if overflow || more {
                    // Read from the queue (which holds these rows too, once
                    // their flush is committed).
                    more = true;
                    inbox.reading = true;
                    need_flush = rows.iter().map(|r| r.flush).fold(need_flush.max(dropped), u64::max);
                } else {
                    let last_flush = rows.iter().map(|r| r.flush).max().unwrap_or(0);
                    for row in rows {
                        // Already read from the queue, or in flight.
                        if row.key() <= cursor && !memory_queue || !known.insert(row.key()) {
                            continue;
                        }
                        if held >= MAX_PENDING && !memory_queue {
                            // The rest is read from the queue.
                            known.remove(&row.key());
                            more = true;
                            inbox.reading = true;
                            need_flush = need_flush.max(last_flush);
                            break;
                        }
                        cursor = cursor.max(row.key());
                        held += 1;
                        admit(row, &mut pending, &mut ready, &in_flight, &mut inbox);
                    }
                }
                drop(inbox);
            }
            _ = unit.wake.notified(), if !stopping => {}
            _ = stop.changed(), if !stopping => {}
            _ = tokio::time::sleep(wait_fetch) => { if !fetch_error && !memory_queue { more = true; } }
        }
    }
}

/// Adds a row to its id's pending events; the id becomes ready unless it
/// already waits or runs.
fn admit(
    row: Row,
    pending: &mut HashMap<String, VecDeque<Row>>,
    ready: &mut VecDeque<String>,
    in_flight: &HashSet<String>,
    inbox: &mut Inbox,
) {
    let key = row.id_key.clone();
    let hosts = &mut inbox.hosts;
    if row.kind == EventKind::Delete {
        hosts.remove(&key);
        inbox.covered.remove(&key);
    } else {
        hosts.insert(key.clone());
    }
    let queue = pending.entry(key.clone()).or_default();
    if queue.is_empty() && !in_flight.contains(&key) {
        ready.push_back(key);
    }
    queue.push_back(row);
}

/// The next unit of an id: one event, or with `coalesce` the events up to
/// the next delete (a delete is a unit of its own).
fn take_unit(op: &OperatorRegistration, queue: &mut VecDeque<Row>) -> Vec<Row> {
    let coalesce = op.coalesce && matches!(op.action, OperatorAction::Query(_));
    let Some(first) = queue.pop_front() else {
        return Vec::new();
    };
    let mut rows = vec![first];
    if coalesce && rows[0].kind != EventKind::Delete {
        while queue.front().is_some_and(|r| r.kind != EventKind::Delete) {
            rows.push(queue.pop_front().expect("checked"));
        }
    }
    rows
}

struct UnitRunner {
    op: &'static OperatorRegistration,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    /// Units waiting before a retry: they do not count against the
    /// operator's concurrency.
    waiting: AtomicUsize,
    /// Told when a unit starts waiting.
    wake: Notify,
    /// Set when rows must be read again from the start of the queue.
    rescan: Arc<AtomicBool>,
    /// Ids whose query just committed, with the snapshot it ran under
    /// (see [`Inbox::covered`]); taken by the executor loop.
    ran: std::sync::Mutex<HashMap<String, RunSnapshot>>,
}

/// What a task reports back to the executor loop.
enum Outcome {
    /// These units are done (applied or dead-lettered): their ids and rows.
    Done(Vec<(String, Vec<RowKey>)>),
    /// A group of units failed together: run each on its own.
    Split(Vec<(String, Vec<Row>)>),
}

impl UnitRunner {
    /// Sleeps `d`; `false` when the flow stops meanwhile (the rows stay
    /// queued for the next start).
    async fn sleep(&self, d: Duration) -> bool {
        let mut stop = self.stop.clone();
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
        let woke = tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = stop.wait_for(|s| *s) => false,
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        woke
    }

    /// Waits until `rows` are queued (they may be handed over while the
    /// consumer still queues them). `false` when the flow stops first: the
    /// rows then are not finished (they come again at the next start).
    async fn queued(&self, rows: &[&Row]) -> bool {
        let Some(n) = rows.iter().map(|r| r.flush).max().filter(|n| *n > 0) else {
            return true;
        };
        let mut flushed = self.shared.flushed.subscribe();
        let mut stop = self.stop.clone();
        tokio::select! {
            r = flushed.wait_for(|f| *f >= n) => r.is_ok(),
            _ = stop.wait_for(|s| *s) => false,
        }
    }

    async fn run(&self, rows: Vec<Row>) {
        // Nothing runs before its rows are queued: the flush that queues
        // them commits only once their transactions are visible.
        if !self.queued(&rows.iter().collect::<Vec<_>>()).await {
            return;
        }
        let cfg = &self.shared.config;
        let last = &rows[rows.len() - 1];
        let table = format!("{}.{}", last.schema, last.table);
        let id = id_display(&last.id);
        let mut attempt = 1u32;
        let mut transient = 0u32;
        loop {
            let failure = match self.attempt(&rows).await {
                Ok(()) => return,
                Err(f) => f,
            };
            match failure {
                Failure::Stopped => return,
                Failure::Transient(error) => {
                    transient += 1;
                    let wait = cfg.restart_delay(transient);
                    tracing::warn!(
                        operator = self.op.name,
                        table,
                        id,
                        error,
                        "database unavailable; retrying"
                    );
                    if !self.sleep(wait).await {
                        return;
                    }
                }
                Failure::Failed(error) if attempt <= cfg.max_retries() => {
                    let next_wait = cfg.restart_delay(attempt);
                    cfg.error_logger().log_retry(&RetryInfo {
                        operator: self.op.name,
                        table: &table,
                        id: id.clone(),
                        attempt,
                        max_retries: cfg.max_retries(),
                        next_wait,
                        error,
                    });
                    if !self.sleep(next_wait).await {
                        return;
                    }
                    attempt += 1;
                }
                Failure::Failed(error) | Failure::Decode(error) => {
                    cfg.error_logger().log_failed(&FailureInfo {
                        operator: self.op.name,
                        table: &table,
                        id: id.clone(),
                        attempt,
                        max_retries: cfg.max_retries(),
                        error: error.clone(),
                    });
                    let mut tries = 0u32;
                    loop {
                        match self.dead_letter(&rows, &error, attempt).await {
                            Ok(()) | Err(Failure::Stopped) => return,
                            Err(
                                Failure::Transient(e) | Failure::Failed(e) | Failure::Decode(e),
                            ) => {
                                tries += 1;
                                tracing::warn!(operator = self.op.name, error = %e, "recording a dead letter failed; retrying");
                                if !self.sleep(cfg.restart_delay(tries)).await {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    async fn attempt(&self, rows: &[Row]) -> Result<(), Failure> {
        match self.op.action {
            OperatorAction::Query(sql) => {
                let run = AssertUnwindSafe(self.run_query(sql, rows)).catch_unwind();
                match run.await {
                    Ok(r) => r,
                    Err(p) => Err(Failure::Failed(panic_message(p))),
                }
            }
            OperatorAction::Handler(handler) => self.run_handler(handler, &rows[0]).await,
        }
    }

    /// Runs several units of a query operator (different ids) in one
    /// transaction. `false` when that failed: the caller then runs each on
    /// its own (with its own retries), so one failing id holds back only
    /// itself.
    async fn run_group(&self, units: &[(String, Vec<Row>)]) -> bool {
        let OperatorAction::Query(sql) = self.op.action else {
            return false;
        };
        let all: Vec<&Row> = units.iter().flat_map(|(_, rows)| rows).collect();
        if !self.queued(&all).await {
            // Stopping: the caller's split runs each, which stop as well.
            return false;
        }
        let together = AssertUnwindSafe(self.run_queries(sql, units)).catch_unwind();
        matches!(together.await, Ok(Ok(())))
    }

    async fn run_queries(
        &self,
        sql: &'static str,
        units: &[(String, Vec<Row>)],
    ) -> Result<(), Failure> {
        let mut tx = self.shared.pool.begin().await.map_err(sql_failure)?;
        let snapshot = self.snapshot(&mut tx).await?;
        for (_, rows) in units {
            self.apply_query(sql, rows, &mut tx).await?;
        }
        let all: Vec<&Row> = units.iter().flat_map(|(_, rows)| rows).collect();
        self.complete(tx, &all).await?;
        self.note_runs(snapshot, units.iter().map(|(_, rows)| &rows[..]));
        Ok(())
    }

    /// For a coalescing query operator on the durable queue: a snapshot
    /// taken before the unit's statements (each sees at least what it
    /// sees).
    async fn snapshot(&self, tx: &mut PgConnection) -> Result<Option<RunSnapshot>, Failure> {
        if !self.op.coalesce || self.shared.memory_queue() {
            return Ok(None);
        }
        let text: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
            .fetch_one(&mut *tx)
            .await
            .map_err(sql_failure)?;
        Ok(RunSnapshot::parse(&text))
    }

    /// Records the committed runs of the query (not `delete_with` deletes)
    /// for [`Inbox::covered`].
    fn note_runs<'a>(&self, snapshot: Option<RunSnapshot>, units: impl Iterator<Item = &'a [Row]>) {
        let Some(snapshot) = snapshot else { return };
        let mut ran = self.ran.lock().expect("ran lock");
        for rows in units {
            if !self.runs_delete(rows) {
                ran.insert(rows[rows.len() - 1].id_key.clone(), snapshot.clone());
            }
        }
    }

    /// Whether the unit's statement is the `delete_with` delete rather than
    /// the query.
    fn runs_delete(&self, rows: &[Row]) -> bool {
        let last = &rows[rows.len() - 1];
        last.kind == EventKind::Delete
            && rows.len() == 1
            && self
                .op
                .delete_with
                .iter()
                .any(|t| t.schema == last.schema && t.table == last.table)
    }

    /// Finishes `rows` in `tx` (queue rows deleted, process status moved)
    /// once they are queued, commits, then does the same for what is kept
    /// in memory.
    async fn complete(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        rows: &[&Row],
    ) -> Result<(), Failure> {
        if !self.queued(rows).await {
            return Err(Failure::Stopped);
        }
        let finished = finish(&self.shared, self.op.name, rows, &mut tx)
            .await
            .map_err(sql_failure)?;
        if !finished {
            // Another executor finished (some of) these rows meanwhile: a
            // second flow on the slot, say one still shutting down while
            // this one starts. Its work stands; this unit's is undone, and
            // whatever rows remain are read again.
            tx.rollback().await.map_err(sql_failure)?;
            tracing::warn!(
                operator = self.op.name,
                "queue rows were finished by another executor meanwhile (two flows on one slot?); \
                 this run was rolled back"
            );
            if let OperatorAction::Query(sql) = self.op.action
                && self.op.coalesce
            {
                // These rows may stand for events queued without rows of
                // their own (see `Inbox::hosts`) that the other run, started
                // earlier, did not see: the ids are recomputed now, in a
                // transaction of their own (a coalescing query recomputes
                // its id, so running it again is harmless).
                let mut again = self.shared.pool.begin().await.map_err(sql_failure)?;
                for unit in rows.chunk_by(|a, b| a.id_key == b.id_key) {
                    let unit: Vec<Row> = unit.iter().map(|r| (*r).clone()).collect();
                    self.apply_query(sql, &unit, &mut again).await?;
                }
                again.commit().await.map_err(sql_failure)?;
            }
            self.rescan.store(true, Ordering::Release);
            return Ok(());
        }
        crate::crash_point::hit("unit.before_commit");
        tx.commit().await.map_err(sql_failure)?;
        crate::crash_point::hit("unit.after_commit");
        self.finished_in_memory(rows);
        Ok(())
    }

    fn finished_in_memory(&self, rows: &[&Row]) {
        let (queue, status) = (self.shared.memory_queue(), self.shared.memory_status());
        if !queue && !status {
            return;
        }
        let rows: Vec<Finished> = rows
            .iter()
            .map(|r| Finished {
                first_lsn: r.first_lsn.unwrap_or(r.commit_lsn),
                commit_lsn: r.commit_lsn,
                seq: r.seq,
                covers: r.covers.clone(),
            })
            .collect();
        self.shared.memory.finished(&rows, queue, status);
    }

    async fn run_query(&self, sql: &'static str, rows: &[Row]) -> Result<(), Failure> {
        let mut tx = self.shared.pool.begin().await.map_err(sql_failure)?;
        let snapshot = self.snapshot(&mut tx).await?;
        self.apply_query(sql, rows, &mut tx).await?;
        self.complete(tx, &rows.iter().collect::<Vec<_>>()).await?;
        self.note_runs(snapshot, std::iter::once(rows));
        Ok(())
    }

    /// The statement of one unit: the operator's query for the id, or the
    /// delete of a `delete_with` entity's derived row.
    async fn apply_query(
        &self,
        sql: &'static str,
        rows: &[Row],
        tx: &mut PgConnection,
    ) -> Result<(), Failure> {
        let last = &rows[rows.len() - 1];
        let id: Value = serde_json::from_str(&last.id)
            .map_err(|e| Failure::Decode(format!("queued id {}: {e}", last.id)))?;
        if self.runs_delete(rows) {
            let target = self.op.target.ok_or_else(|| {
                Failure::Failed("a `delete_with` operator without a target".to_owned())
            })?;
            let stmt = format!(
                "DELETE FROM {}.{} WHERE {} = $1",
                quote_ident(target.table.schema),
                quote_ident(target.table.table),
                quote_ident(target.id_column)
            );
            let q =
                bind_value(sqlx::query(sqlx::AssertSqlSafe(stmt)), &id).map_err(Failure::Decode)?;
            q.execute(&mut *tx).await.map_err(sql_failure)?;
        } else {
            let q = bind_value(sqlx::query(sql), &id).map_err(Failure::Decode)?;
            q.execute(&mut *tx).await.map_err(sql_failure)?;
        }
        Ok(())
    }

    async fn run_handler(
        &self,
        handler: crate::registry::HandlerFn,
        row: &Row,
    ) -> Result<(), Failure> {
        let raw: Arc<RawEvent> =
            match (&row.raw, &row.event) {
                (Some(raw), _) => raw.clone(),
                (None, Some(json)) => Arc::new(serde_json::from_str(json).map_err(|e| {
                    Failure::Decode(format!("queued event does not read back: {e}"))
                })?),
                (None, None) => {
                    return Err(Failure::Decode(
                        "queued handler row without its event".to_owned(),
                    ));
                }
            };
        let position = Position {
            commit_lsn: Lsn(row.commit_lsn as u64),
            seq: row.seq as u32,
        };
        let ctx = Ctx::new(self.op.name, position, self.shared.pool.clone());
        let call = AssertUnwindSafe(async { handler(&raw, ctx.clone()).await }).catch_unwind();
        let result = call.await;
        let own = ctx.take_transaction().await;
        match result {
            Err(p) => return Err(Failure::Failed(panic_message(p))),
            Ok(Err(HandlerError::Decode(e))) => return Err(Failure::Decode(e.to_string())),
            Ok(Err(HandlerError::Handler(e))) => {
                let transient = e.downcast_ref::<sqlx::Error>().is_some_and(is_transient);
                let text = format!("the handler failed: {e}");
                return Err(if transient {
                    Failure::Transient(text)
                } else {
                    Failure::Failed(text)
                });
            }
            Ok(Ok(())) => {}
        }
        let rows = &[row][..];
        let tx = match own {
            Some(tx) => tx,
            // Nothing to record in the database.
            None if self.shared.memory_queue() && self.shared.memory_status() => {
                self.finished_in_memory(rows);
                return Ok(());
            }
            // One statement (the queue row's delete): no transaction needed.
            None if !self.shared.memory_queue() && row.updated_at.is_none() => {
                if !self.queued(rows).await {
                    return Err(Failure::Stopped);
                }
                let mut conn = self.shared.pool.acquire().await.map_err(sql_failure)?;
                finish(&self.shared, self.op.name, rows, &mut conn)
                    .await
                    .map_err(sql_failure)?;
                self.finished_in_memory(rows);
                return Ok(());
            }
            None => self.shared.pool.begin().await.map_err(sql_failure)?,
        };
        self.complete(tx, rows).await
    }

    async fn dead_letter(&self, rows: &[Row], error: &str, attempts: u32) -> Result<(), Failure> {
        let mut tx = self.shared.pool.begin().await.map_err(sql_failure)?;
        crate::queue::dequeue::dead_letter(
            &self.shared,
            self.op.name,
            rows,
            error,
            attempts,
            &mut tx,
        )
        .await
        .map_err(sql_failure)?;
        self.complete(tx, &rows.iter().collect::<Vec<_>>()).await
    }
}

#[cfg(test)]
mod tests {
    use super::RunSnapshot;

    #[test]
    fn a_run_saw_what_committed_before_its_snapshot() {
        let s = RunSnapshot::parse("4294967395:4294967400:4294967397,4294967398").unwrap();
        // 4294967395 is transaction 99 of epoch 1.
        assert!(s.saw(99));
        assert!(s.saw(100));
        assert!(!s.saw(101), "running at the snapshot");
        assert!(!s.saw(102), "running at the snapshot");
        assert!(s.saw(103));
        assert!(!s.saw(104), "not before xmax");
        assert!(!s.saw(200));
        assert!(!s.saw(0), "unknown");
        assert!(RunSnapshot::parse("5:9:").unwrap().saw(8));
        assert!(RunSnapshot::parse("nonsense").is_none());
    }

    #[test]
    fn transaction_ids_compare_across_wraparound() {
        assert!(super::super::xid_precedes(u32::MAX - 5, 10));
        assert!(!super::super::xid_precedes(10, u32::MAX - 5));
        assert!(super::super::xid_precedes(3, 4));
    }
}

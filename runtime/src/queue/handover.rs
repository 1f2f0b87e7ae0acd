//! The hand-over between the consumer and the executors: the one place
//! where they meet.
//!
//! The consumer hands each batch's rows to their operators' inboxes as it
//! starts queueing them, tagged with the flush's number; it publishes the
//! number of each flush once it has committed ([`Handover::flushed`]). An
//! executor admits the rows into its pending set and runs none before its
//! flush has committed ([`Handover::wait_flushed`]): rule 3 of the
//! [protocol](super). While every row handed to an executor is admitted,
//! the consumer may leave out an event whose id has a pending host or whose
//! transaction the id's last run saw (rule 6): both sets live in the
//! operator's [`Inbox`], under its lock, kept by the executor as it admits
//! rows, takes units and commits runs.
//!
//! With the durable queue the inbox is a shortcut: past [`INBOX_MAX`] rows
//! it overflows, and the executor reads the queue instead. With the memory
//! queue the inbox is the queue: it never overflows and nothing is left
//! out (there is no queue to read a host's events back from after a
//! restart, and nothing survives one anyway).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::Row;
use crate::dispatch::Batch;
use crate::raw::EventKind;
use crate::registry::{OperatorAction, OperatorRegistration};

/// The hand-over of one flow: every operator's inbox and the flush counter.
#[derive(Debug)]
pub(crate) struct Handover {
    /// The number of the consumer's last committed flush: rows handed over
    /// with a higher number are not queued (nor visible) yet.
    flushed: watch::Sender<u64>,
    /// Whether a durable queue stands behind the inboxes.
    backed: bool,
    signals: HashMap<&'static str, Signals>,
}

impl Handover {
    /// The hand-over to `ops`' executors; `backed`: the rows are in a
    /// durable queue too, which the executors can read back.
    pub fn new(ops: &[&'static OperatorRegistration], backed: bool) -> Handover {
        Handover {
            flushed: watch::channel(0).0,
            backed,
            signals: ops.iter().map(|o| (o.name, Signals::new(backed))).collect(),
        }
    }

    /// Whether a durable queue stands behind the inboxes: rows can be read
    /// back, so an inbox may overflow and events may be left out (rule 6).
    pub fn backed(&self) -> bool {
        self.backed
    }

    /// The inbox and signals of `operator`, when it runs here.
    pub fn signals(&self, operator: &str) -> Option<&Signals> {
        self.signals.get(operator)
    }

    /// Flush `n` has committed: its rows are queued and visible.
    pub fn flushed(&self, n: u64) {
        self.flushed.send_replace(n);
    }

    /// Waits until flush `n` has committed (0: nothing to wait for);
    /// `false` when `stop` turns true first.
    pub async fn wait_flushed(&self, n: u64, stop: &watch::Receiver<bool>) -> bool {
        if n == 0 || *self.flushed.borrow() >= n {
            return true;
        }
        let mut flushed = self.flushed.subscribe();
        let mut stop = stop.clone();
        tokio::select! {
            r = flushed.wait_for(|f| *f >= n) => r.is_ok(),
            _ = stop.wait_for(|s| *s) => false,
        }
    }

    /// Rows were queued behind `operator`'s read position (a dead letter
    /// put back): its executor reads its queue from the start.
    pub fn rescan(&self, operator: &str) {
        if let Some(s) = self.signals.get(operator) {
            s.rescan.store(true, Ordering::Release);
            s.notify.notify_one();
        }
    }

    /// Hands `row` to `operator`'s inbox alone (a dead letter put back,
    /// with the stream storage); `false` when the operator does not run here.
    pub fn push(&self, operator: &str, row: Row) -> bool {
        let Some(s) = self.signals.get(operator) else {
            return false;
        };
        s.inbox
            .lock()
            .expect("inbox lock")
            .push(std::iter::once(row));
        s.notify.notify_one();
        true
    }

    /// Hands the rows of `batch` to their executors. `flush`: the number of
    /// the flush queueing them, which they wait for before they run.
    ///
    /// With a durable queue behind, a row of a coalescing query operator is
    /// left out of the batch (not queued at all) while every row handed to
    /// its executor is admitted, unless it carries the process status
    /// field, is a delete or follows a delete of its id in the batch, when
    /// - its id has a pending row that no unit has started, with no delete
    ///   after it: that row's unit is taken later and waits for this flush,
    ///   so its run sees this event, and until it is finished the LSN fence
    ///   waits on it; or
    /// - its transaction was visible to the id's last committed run (a
    ///   backlog read after that run): it is applied already.
    ///
    /// The argument is rule 6 of the [protocol](super).
    pub fn hand(&self, ops: &[&'static OperatorRegistration], batch: &mut Batch, flush: u64) {
        let touched: BTreeSet<&'static str> = batch.rows.iter().map(|r| r.operator).collect();
        let mut absorbed: HashSet<(&'static str, i64, i32, i16)> = HashSet::new();
        for op in touched {
            let Some(s) = self.signals.get(op) else {
                continue;
            };
            let coalescing = self.backed
                && ops.iter().any(|o| {
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
}

/// What one operator's executor is signalled through.
#[derive(Debug, Clone, Default)]
pub(crate) struct Signals {
    /// New rows were queued (and are in the inbox, unless it overflowed).
    pub notify: Arc<Notify>,
    /// Rows just queued.
    pub inbox: Arc<std::sync::Mutex<Inbox>>,
    /// Rows were queued behind the read position (a replayed dead letter).
    pub rescan: Arc<AtomicBool>,
    /// What the executor holds (with the stream storage, its queue).
    pub held: Arc<Held>,
}

/// The rows an executor holds (admitted, not finished): with the memory
/// queue, the operator's queue, read for its queue gauges.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// Rows held.
    pub rows: std::sync::atomic::AtomicU64,
    /// Commit time (microseconds since the Unix epoch) of the oldest row
    /// held; 0 when none.
    pub oldest: std::sync::atomic::AtomicI64,
}

impl Signals {
    /// The signals of one operator; `backed`: a durable queue stands behind
    /// its inbox (without one, the inbox is its queue).
    fn new(backed: bool) -> Self {
        let signals = Signals::default();
        {
            let mut inbox = signals.inbox.lock().expect("inbox lock");
            inbox.unbounded = !backed;
            // An executor starts by reading the queue.
            inbox.reading = backed;
        }
        signals
    }
}

/// Rows handed from the consumer to an executor in memory, right after
/// they are queued: the executor then need not read them back.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    rows: Vec<Row>,
    /// More was queued than the inbox holds: read the queue instead.
    overflow: bool,
    /// The stream storage: the inbox is the queue, it never overflows (the
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
    pub(crate) at: std::time::Instant,
}

impl RunSnapshot {
    /// Parses `pg_current_snapshot()::text` (`xmin:xmax:xip,...`, each an
    /// `xid8` whose low 32 bits are the transaction id).
    pub(crate) fn parse(text: &str) -> Option<RunSnapshot> {
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
            && crate::dispatch::xid_precedes(xid, self.xmax)
            && !self.running.contains(&xid)
            && self.at.elapsed() < COVERED_FOR
    }
}

/// How long a run's snapshot stands for the events it covered (see
/// [`Inbox::covered`]): far below the time two billion transactions take.
pub(crate) const COVERED_FOR: Duration = Duration::from_secs(60);
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
    /// Takes what was handed over since the last call: the rows, whether
    /// some were dropped (read the queue instead) and the highest flush
    /// among those dropped.
    pub fn take(&mut self) -> (Vec<Row>, bool, u64) {
        (
            std::mem::take(&mut self.rows),
            std::mem::replace(&mut self.overflow, false),
            std::mem::take(&mut self.dropped),
        )
    }

    /// The rows handed over and not taken yet.
    pub fn handed(&self) -> &[Row] {
        &self.rows
    }

    /// The executor reads (or stops reading) the queue.
    pub fn set_reading(&mut self, reading: bool) {
        self.reading = reading;
    }

    /// A row joins its id's pending events: the id now hosts later events,
    /// unless the row is a delete, which also ends what its last run covers.
    /// (Without a durable queue nothing is absorbed: no host is kept.)
    pub fn admitted(&mut self, row: &Row) {
        if self.unbounded {
            return;
        }
        if row.kind == EventKind::Delete {
            self.hosts.remove(&row.id_key);
            self.covered.remove(&row.id_key);
        } else {
            self.hosts.insert(row.id_key.clone());
        }
    }

    /// A unit of `key` is taken from the pending events; `emptied`: nothing
    /// of the id is pending after it, so it hosts no more. Returns the flush
    /// the unit waits for before its statements ([`absorbed_flush`](Self::absorbed_flush)).
    pub fn taken(&mut self, key: &str, emptied: bool) -> u64 {
        if emptied {
            self.hosts.remove(key);
        }
        self.absorbed_flush
    }

    /// Runs of the query just committed, by id with their snapshots; an id
    /// with a delete pending (admitted since the run) is not covered past it.
    pub fn ran(
        &mut self,
        ran: HashMap<String, RunSnapshot>,
        delete_pending: impl Fn(&str) -> bool,
    ) {
        for (key, snapshot) in ran {
            if !delete_pending(&key) {
                self.covered.insert(key, snapshot);
            }
        }
        if self.covered.len() > COVERED_MAX {
            self.covered.retain(|_, s| s.at.elapsed() < COVERED_FOR);
            if self.covered.len() > COVERED_MAX {
                self.covered.clear();
            }
        }
    }

    /// The executor starts over (its loop died): nothing pending, nothing
    /// covered; it reads the queue again if there is one.
    pub fn reset(&mut self) {
        self.hosts.clear();
        self.covered.clear();
        self.reading = !self.unbounded;
    }
}

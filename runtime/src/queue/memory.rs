//! The bookkeeping of the rows held in memory (the stream storage, rule 12)
//! and the process status in memory (`process_status_storage = memory`).
//!
//! With the stream storage, rows go from the consumer to the executors
//! without a queue row, and the slot is acknowledged only up to the oldest
//! row outstanding (handed over, neither applied nor spilled). What is kept
//! here is what the `walflow.streams`, `walflow.queue`,
//! `walflow.pending_status` and `walflow.process_status` tables would
//! otherwise say: how far the hand-over has got, which rows are
//! outstanding, and the per-table status.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::dispatch::{NewRow, StatusMark};
use crate::lsn::Lsn;

/// Rows handed over and not yet finished, above which the consumer waits.
/// With the consumer's bound on what it holds meanwhile
/// (`MAX_HELD_IN_MEMORY` in the consumer), this bounds the rows in memory,
/// and so the process's memory, whatever the size of a transaction.
pub(crate) const MAX_OUTSTANDING: usize = 20_000;

/// The first commit LSN each of `rows` stands for: all the stream storage
/// keeps of rows once they are handed over (the executors hold the rows).
pub(crate) fn first_lsns(rows: &[NewRow]) -> Vec<i64> {
    rows.iter()
        .map(|r| r.first_lsn.unwrap_or(r.commit_lsn))
        .collect()
}

/// An event waiting for its rows: its table, its timestamp, rows left.
type Waiting = (Arc<str>, Arc<str>, i64, i32);

#[derive(Debug, Default)]
struct Inner {
    /// End of the last transaction handed over.
    enqueued: Lsn,
    /// Outstanding rows by the first commit LSN they stand for.
    outstanding: BTreeMap<i64, usize>,
    rows: usize,
    /// Events with rows still to finish: table and timestamp, rows left.
    pending: HashMap<(i64, i32), Waiting>,
    /// Per table, the largest timestamp of an event all of whose operators
    /// finished.
    status: HashMap<(String, String), i64>,
}

/// Shared by the consumer, the executors and the flow.
#[derive(Debug)]
pub(crate) struct MemoryState {
    inner: Mutex<Inner>,
    /// Told whenever rows finish: the consumer may be waiting for room.
    pub room: Notify,
    /// Bumped whenever rows finish: the stream storage's consumer then
    /// acknowledges the new [`safe`](Self::safe) position.
    pub progress: tokio::sync::watch::Sender<u64>,
}

impl Default for MemoryState {
    fn default() -> Self {
        MemoryState {
            inner: Mutex::default(),
            room: Notify::new(),
            progress: tokio::sync::watch::channel(0).0,
        }
    }
}

/// One finished row, as far as the bookkeeping is concerned.
pub(crate) struct Finished {
    pub first_lsn: i64,
    pub commit_lsn: i64,
    pub seq: i32,
    pub covers: Vec<(i64, i32)>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rows handed over (the stream storage), by the first commit LSN each
    /// stands for ([`first_lsns`]), and the transactions up to `end` with
    /// them.
    pub fn queued(&self, firsts: &[i64], end: Option<Lsn>) {
        let mut inner = self.lock();
        for first in firsts {
            *inner.outstanding.entry(*first).or_default() += 1;
        }
        inner.rows += firsts.len();
        if let Some(end) = end {
            inner.enqueued = inner.enqueued.max(end);
        }
    }

    /// A dead letter put back (the stream storage).
    pub fn requeued(&self, commit_lsn: i64) {
        let mut inner = self.lock();
        *inner.outstanding.entry(commit_lsn).or_default() += 1;
        inner.rows += 1;
    }

    /// The end of the last transaction handed over.
    pub fn enqueued(&self) -> Lsn {
        self.lock().enqueued
    }

    /// Rows outstanding in memory.
    pub fn outstanding(&self) -> usize {
        self.lock().rows
    }

    /// What the stream storage may acknowledge (rule 12): the end of the
    /// last transaction handed over when no row is outstanding, else the
    /// commit position of the oldest outstanding row's (first)
    /// transaction. The slot skips, when it delivers again, exactly the
    /// transactions that commit before its confirmed position, so that
    /// transaction and every later one come again; every earlier one has
    /// no row left.
    pub fn safe(&self) -> Lsn {
        let inner = self.lock();
        match inner.outstanding.first_key_value() {
            None => inner.enqueued,
            Some((first, _)) => inner.enqueued.min(Lsn(*first as u64)),
        }
    }

    /// Status marks of events just seen (the memory process status).
    pub fn marks(&self, marks: &[StatusMark]) {
        let mut inner = self.lock();
        for m in marks {
            if m.remaining > 0 {
                inner.pending.insert(
                    (m.commit_lsn, m.seq),
                    (m.schema.clone(), m.table.clone(), m.updated_at, m.remaining),
                );
            } else {
                raise(&mut inner.status, &m.schema, &m.table, m.updated_at);
            }
        }
    }

    /// Rows finished (applied or dead-lettered), after their transaction
    /// committed. `queue`: they were held in memory; `status`: the
    /// process status is kept here.
    pub fn finished(&self, rows: &[Finished], queue: bool, status: bool) {
        let mut inner = self.lock();
        if queue {
            for r in rows {
                if let Some(n) = inner.outstanding.get_mut(&r.first_lsn) {
                    *n -= 1;
                    if *n == 0 {
                        inner.outstanding.remove(&r.first_lsn);
                    }
                    inner.rows -= 1;
                }
            }
        }
        if status {
            let events = rows.iter().flat_map(|r| {
                std::iter::once((r.commit_lsn, r.seq)).chain(r.covers.iter().copied())
            });
            for key in events {
                let Some(p) = inner.pending.get_mut(&key) else {
                    continue;
                };
                p.3 -= 1;
                if p.3 <= 0 {
                    let (schema, table, micros, _) =
                        inner.pending.remove(&key).expect("just found");
                    raise(&mut inner.status, &schema, &table, micros);
                }
            }
        }
        drop(inner);
        self.room.notify_waiters();
        self.progress.send_modify(|n| *n += 1);
    }

    /// The LSN fence of the rows in memory: `None` until every transaction up to
    /// `lsn` is handed over, then whether every row standing for an event
    /// at or before it has finished. Every row here is one of this flow's
    /// operators (the queue is its memory), so none is left by an operator
    /// that no longer runs.
    pub fn fence(&self, lsn: Lsn) -> Option<bool> {
        let inner = self.lock();
        if inner.enqueued < lsn {
            return None;
        }
        Some(inner.outstanding.range(..=lsn.0 as i64).next().is_none())
    }

    /// Whether the table's status is at least `micros`.
    pub fn processed(&self, schema: &str, table: &str, micros: i64) -> bool {
        self.lock()
            .status
            .get(&(schema.to_owned(), table.to_owned()))
            .is_some_and(|s| *s >= micros)
    }
}

fn raise(status: &mut HashMap<(String, String), i64>, schema: &str, table: &str, micros: i64) {
    let e = status
        .entry((schema.to_owned(), table.to_owned()))
        .or_insert(micros);
    *e = (*e).max(micros);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(first_lsn: i64) -> Finished {
        Finished {
            first_lsn,
            commit_lsn: first_lsn,
            seq: 0,
            covers: Vec::new(),
        }
    }

    /// The stream storage's safe position (rule 12): the last end handed
    /// over when nothing is outstanding, else never past the oldest
    /// outstanding row's commit position; each finish is signalled.
    #[test]
    fn the_safe_position_stops_at_the_oldest_outstanding_row() {
        let m = MemoryState::default();
        let progress = m.progress.subscribe();
        assert_eq!(m.safe(), Lsn(0));
        m.queued(&[], Some(Lsn(100)));
        assert_eq!(m.safe(), Lsn(100));
        m.requeued(40);
        m.requeued(70);
        assert_eq!(m.safe(), Lsn(40), "held at the oldest outstanding row");
        m.finished(&[finished(70)], true, false);
        assert_eq!(m.safe(), Lsn(40), "a later row finishing does not move it");
        m.finished(&[finished(40)], true, false);
        assert_eq!(m.safe(), Lsn(100), "nothing outstanding: the last end");
        m.requeued(150);
        assert_eq!(m.safe(), Lsn(100), "never past what was handed over");
        assert!(progress.has_changed().unwrap());
    }
}

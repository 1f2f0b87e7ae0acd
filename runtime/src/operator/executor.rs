// One file of this length: one executor's loop (fetch, run units, retry, dead-letter), whose steps share its state.
//! One supervised executor per operator.
//!
//! It takes the operator's queue rows in `(commit_lsn, seq)` order — handed
//! over in memory by the consumer right after they are queued, or read back
//! in batches after a start, an overflow or a replayed dead letter — into a
//! pending set keyed by mapped id. Each id runs strictly in commit order,
//! one unit at a time. A unit is one event, or (with `coalesce: true`) every
//! pending event of the id up to the next delete, which is a barrier: the
//! query runs once for them; while such a row waits, the consumer queues
//! later events of its id without rows of their own (see
//! [`Inbox::hosts`]). The protocol is argued in [`crate::queue`]; what the
//! executor does there goes through [`crate::queue`] too (fetching,
//! finishing, dead-lettering).
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
use sqlx::PgConnection;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::{FailureInfo, RetryInfo};
use crate::ctx::Ctx;
use crate::event::Position;
use crate::ident::quote_ident;
use crate::lsn::Lsn;
use crate::raw::{EventKind, RawEvent};
use crate::registry::{HandlerError, OperatorAction, OperatorRegistration};
use crate::value::Value;

use super::bind::bind_value;
use crate::dispatch::id_display;
use crate::pg_error::is_transient;
use crate::queue::dequeue::{FETCH, fetch};
use crate::queue::handover::{Inbox, RunSnapshot, Signals};
use crate::queue::store::{Completion, Finish};
use crate::queue::{Row, RowKey, Shared};
/// Upper bound of rows held in memory per operator.
const MAX_PENDING: usize = 20_000;
/// Most units of a query operator run in one transaction.
const MAX_GROUP: usize = 64;

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

/// A failed statement, as its dead letter will say it: the server's
/// message, detail, hint and SQLSTATE, and where in `query` (the
/// operator's own) the server points.
fn sql_failure(e: sqlx::Error, query: Option<&str>) -> Failure {
    let text = crate::pg_error::describe_in(&e, query);
    if is_transient(&e) {
        Failure::Transient(text)
    } else {
        Failure::Failed(text)
    }
}

/// The span of a unit of `operator`: a child of the span of its first
/// event's transaction when the event was handed over in memory, following
/// from the other transactions' spans.
fn unit_span<'a>(
    operator: &'static str,
    table: &str,
    ids: &str,
    rows: impl Iterator<Item = &'a Row> + Clone,
) -> tracing::Span {
    let parent = rows.clone().find_map(|r| r.span.id());
    let span = tracing::info_span!(
        parent: parent.clone(),
        "walflow.unit",
        operator,
        table,
        ids,
        events = rows.clone().count(),
        attempt = tracing::field::Empty,
        error = tracing::field::Empty,
        dead_lettered = tracing::field::Empty,
    );
    for r in rows {
        if let Some(id) = r.span.id()
            && Some(&id) != parent.as_ref()
        {
            span.follows_from(id);
        }
    }
    span
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
    // With the stream storage: the rows held per commit position (how many,
    // and the commit time), for the age of the oldest.
    // (And when the first of them was admitted, for the stream storage's
    // spill.)
    let mut ages: std::collections::BTreeMap<i64, (usize, i64, std::time::Instant)> =
        Default::default();
    // Rows handed over while the queue was being read, left for the read
    // to bring: their transaction's span and commit time, which the read
    // rows take up (the queue keeps neither). Bounded; cleared once the
    // read is done.
    let mut handed: HashMap<RowKey, (tracing::Span, Option<i64>)> = HashMap::new();
    let mut fetch_failures = 0u32;
    let mut cursor = (i64::MIN, i32::MIN, i16::MIN);
    // Without a durable queue the inbox is the queue: nothing to read back.
    let memory_queue = !shared.handover.backed();
    let mut more = !memory_queue;
    // The stream storage (rule 12): the operator runs from memory, or,
    // spilled, from `walflow.queue`, where it writes what it is handed until
    // it has caught up. One that starts with spilled rows runs nothing
    // before everything the slot delivers again is in the queue too
    // (`gated`): an id's earlier event may be among what comes again.
    let stream = shared.store.stream();
    let mut spilled = false;
    let mut gated = false;
    // Admitted rows held in memory only (not spilled).
    let mut in_memory: HashSet<RowKey> = HashSet::new();
    // Of those, rows that commit before the redelivery horizon: the backlog
    // delivered at start, which is not falling behind by its size alone.
    let mut backlog = 0usize;
    if stream {
        loop {
            match crate::queue::spill::any(&shared.pool, &shared.slot, op.name).await {
                Ok(any) => {
                    spilled = any;
                    gated = any;
                    more = any;
                    break;
                }
                Err(e) => {
                    shared.note_error(&e);
                    fetch_failures += 1;
                    tracing::warn!(operator = op.name, error = %crate::pg_error::DbError(&e), "reading the operator's spilled rows failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(shared.config.restart_delay(fetch_failures)) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        }
        fetch_failures = 0;
    }
    let mut need_flush = 0u64;
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
        if memory_queue {
            signals.held.rows.store(held as u64, Ordering::Relaxed);
            let oldest = ages.first_key_value().map_or(0, |(_, (_, t, _))| *t);
            signals.held.oldest.store(oldest, Ordering::Relaxed);
        }
        let stopping = *stop.borrow();
        if stopping && tasks.is_empty() {
            return;
        }
        if signals.rescan.swap(false, Ordering::AcqRel) && !memory_queue {
            cursor = (i64::MIN, i32::MIN, i16::MIN);
            more = true;
            // Rows queued behind the read position are not admitted yet.
            signals.inbox.lock().expect("inbox lock").set_reading(true);
        }
        if stream && !stopping {
            if gated
                && shared.store.handed_up_to() >= shared.store.horizon()
                && signals
                    .inbox
                    .lock()
                    .expect("inbox lock")
                    .handed()
                    .is_empty()
            {
                // Everything delivered again is in the queue: read it all,
                // in order, from the start.
                gated = false;
                more = true;
            }
            // Held longer than `spill_after` (since handed over: a backlog
            // delivered at start is not behind by its commit time alone).
            // Rows are handed over in commit order, so the oldest commit
            // position held is the longest held.
            let aged = ages
                .first_key_value()
                .is_some_and(|(_, (_, _, since))| since.elapsed() >= shared.config.spill_after());
            let behind = in_memory.len() - backlog >= shared.config.spill_rows()
                || aged
                || unit.waiting.load(Ordering::Acquire) > 0;
            if behind && !in_memory.is_empty() {
                // Behind, or an id waits to try again: what is held in
                // memory and not running goes to the queue, and so does
                // what comes next, until the operator has caught up.
                let n = pending
                    .values()
                    .flatten()
                    .filter(|r| !r.spilled)
                    .map(|r| r.flush)
                    .max()
                    .unwrap_or(0);
                if shared.handover.wait_flushed(n, &stop).await {
                    let mut rows: Vec<&mut Row> = pending
                        .values_mut()
                        .flatten()
                        .filter(|r| !r.spilled)
                        .collect();
                    if rows.is_empty() {
                        spilled = true;
                    } else {
                        match shared.store.spill(&shared, op.name, &mut rows).await {
                            Ok(()) => {
                                for r in &rows {
                                    forget_age(
                                        &mut ages,
                                        &mut in_memory,
                                        &mut backlog,
                                        &shared,
                                        r.key(),
                                    );
                                }
                                tracing::info!(
                                    operator = op.name,
                                    rows = rows.len(),
                                    "behind: held rows spilled to walflow.queue"
                                );
                                spilled = true;
                            }
                            Err(e) => {
                                shared.note_error(&e);
                                tracing::warn!(operator = op.name, error = %crate::pg_error::DbError(&e), "spilling held rows failed; trying again");
                            }
                        }
                    }
                }
            } else if spilled && !gated && !more && !behind && held < shared.config.spill_rows() / 2
            {
                // Caught up: every spilled row is read (an id's spilled
                // rows come before what is handed over next), so what
                // comes next runs from memory again.
                spilled = false;
                crate::crash_point::hit("stream.returned");
                tracing::info!(operator = op.name, "caught up: running from memory again");
            }
        }
        let mut fetch_error = false;
        // Read everything available (up to the bound) before starting units:
        // the more an id has pending, the more a coalescing operator merges.
        while !stopping && more && held < MAX_PENDING && !fetch_error && !gated {
            // Rows handed over while their flush was under way and dropped
            // here: the read must see them, or the cursor would pass them.
            if !shared.handover.wait_flushed(need_flush, &stop).await {
                break;
            }
            match fetch(&shared, op.name, cursor).await {
                Ok(rows) => {
                    if !rows.is_empty() {
                        crate::crash_point::hit("executor.fetched");
                    }
                    fetch_failures = 0;
                    more = rows.len() as i64 == FETCH;
                    let mut inbox = signals.inbox.lock().expect("inbox lock");
                    inbox.set_reading(more);
                    // Rows read before their handed-over copies are taken.
                    for r in inbox.handed() {
                        if handed.len() < MAX_PENDING && !r.span.is_none() {
                            handed.insert(r.key(), (r.span.clone(), r.committed_at));
                        }
                    }
                    for mut row in rows {
                        cursor = cursor.max(row.key());
                        if !known.insert(row.key()) {
                            continue;
                        }
                        if let Some((span, committed)) = handed.remove(&row.key()) {
                            row.span = span;
                            row.committed_at = committed;
                        }
                        held += 1;
                        admit(row, &mut pending, &mut ready, &in_flight, &mut inbox);
                    }
                }
                Err(e) => {
                    shared.note_error(&e);
                    fetch_failures += 1;
                    fetch_error = true;
                    tracing::warn!(operator = op.name, error = %crate::pg_error::DbError(&e), "reading the operator queue failed; retrying");
                }
            }
        }
        if held > 0 {
            crate::crash_point::panic_at("executor.loop");
        }
        if !more && !handed.is_empty() {
            // The read is done: what it did not bring is not coming.
            handed.clear();
        }
        while !stopping
            && !gated
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
                let emptied = queue.is_empty();
                if emptied {
                    pending.remove(&key);
                }
                // It may cover events left out since: it waits for their
                // flush (see `Inbox::absorbed_flush`).
                let absorbed = inbox.taken(&key, emptied);
                if let Some(last) = rows.last_mut() {
                    last.flush = last.flush.max(absorbed);
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
                            // A delete admitted since a run comes after it:
                            // nothing of its id is covered past that.
                            signals.inbox.lock().expect("inbox lock").ran(ran, |key| {
                                pending
                                    .get(key)
                                    .is_some_and(|q| q.iter().any(|r| r.kind == EventKind::Delete))
                            });
                        }
                        for (key, keys) in units {
                            for k in keys {
                                known.remove(&k);
                                held = held.saturating_sub(1);
                                if !stream {
                                    if let Some(e) = ages.get_mut(&k.0) {
                                        e.0 -= 1;
                                        if e.0 == 0 {
                                            ages.remove(&k.0);
                                        }
                                    }
                                } else {
                                    forget_age(&mut ages, &mut in_memory, &mut backlog, &shared, k);
                                }
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
                            signals.inbox.lock().expect("inbox lock").reset();
                        }
                        ready.clear();
                        in_flight.clear();
                        known.clear();
                        held = 0;
                        ages.clear();
                        handed.clear();
                        cursor = (i64::MIN, i32::MIN, i16::MIN);
                        more = !memory_queue;
                    }
                }
            }
            _ = signals.notify.notified(), if !stopping => {
                if stream && spilled {
                    // Spilled: what is handed over goes to the queue first
                    // (a flush at a time, once it is queued), then is
                    // admitted as a row read from there.
                    let (rows, _, _) = signals.inbox.lock().expect("inbox lock").take();
                    let Some(rows) = spill_handed(&shared, op.name, rows, &stop).await else {
                        continue;
                    };
                    // Dead letters put back are not spilled: admitted as
                    // they come, as from memory.
                    let mut rows = rows;
                    let replays: Vec<Row> = rows.extract_if(.., |r| r.replay.is_some()).collect();
                    if !replays.is_empty() {
                        let mut inbox = signals.inbox.lock().expect("inbox lock");
                        for row in replays {
                            if known.insert(row.key()) {
                                held += 1;
                                admit(row, &mut pending, &mut ready, &in_flight, &mut inbox);
                            }
                        }
                    }
                    // A dead letter put back lies behind the read position:
                    // read again from the start should it be left to the
                    // read (rows held are known, and not admitted twice).
                    let behind_cursor = rows.iter().any(|r| r.key() <= cursor);
                    if gated || more {
                        // Read from the queue, in order, with the rest.
                        if behind_cursor {
                            cursor = (i64::MIN, i32::MIN, i16::MIN);
                        }
                        more = !gated || more;
                        continue;
                    }
                    let mut inbox = signals.inbox.lock().expect("inbox lock");
                    for row in rows {
                        if !known.insert(row.key()) {
                            continue;
                        }
                        if held >= MAX_PENDING {
                            known.remove(&row.key());
                            if behind_cursor {
                                cursor = (i64::MIN, i32::MIN, i16::MIN);
                            }
                            more = true;
                            break;
                        }
                        cursor = cursor.max(row.key());
                        held += 1;
                        admit(row, &mut pending, &mut ready, &in_flight, &mut inbox);
                    }
                    continue;
                }
                // Admitted under the inbox's lock, so the consumer sees the
                // rows either in the inbox or admitted (with their hosts).
                let mut inbox = signals.inbox.lock().expect("inbox lock");
                let (rows, overflow, dropped) = inbox.take();
                if overflow || more {
                    // Read from the queue (which holds these rows too, once
                    // their flush is committed).
                    for r in &rows {
                        if handed.len() < MAX_PENDING && !r.span.is_none() {
                            handed.insert(r.key(), (r.span.clone(), r.committed_at));
                        }
                    }
                    more = true;
                    inbox.set_reading(true);
                    need_flush = rows.iter().map(|r| r.flush).fold(need_flush.max(dropped), u64::max);
                } else {
                    let last_flush = rows.iter().map(|r| r.flush).max().unwrap_or(0);
                    for row in rows {
                        // Already read from the queue, or in flight.
                        if row.key() <= cursor && !memory_queue || !known.insert(row.key()) {
                            // A copy read from the queue and not started
                            // takes up what only this one knows.
                            if let Some(p) = pending
                                .get_mut(&row.id_key)
                                .and_then(|q| q.iter_mut().find(|p| p.key() == row.key()))
                                && p.span.is_none()
                            {
                                p.span = row.span;
                                p.committed_at = row.committed_at;
                            }
                            continue;
                        }
                        if held >= MAX_PENDING && !memory_queue {
                            // The rest is read from the queue.
                            known.remove(&row.key());
                            more = true;
                            inbox.set_reading(true);
                            need_flush = need_flush.max(last_flush);
                            break;
                        }
                        cursor = cursor.max(row.key());
                        held += 1;
                        if memory_queue {
                            // (A dead letter put back has no commit time.)
                            if let Some(committed) = row.committed_at {
                                ages.entry(row.commit_lsn)
                                    .or_insert((0, committed, std::time::Instant::now()))
                                    .0 += 1;
                                if stream
                                    && in_memory.insert(row.key())
                                    && (row.commit_lsn as u64) < shared.store.horizon().0
                                {
                                    backlog += 1;
                                }
                            }
                        }
                        admit(row, &mut pending, &mut ready, &in_flight, &mut inbox);
                    }
                }
                drop(inbox);
            }
            _ = unit.wake.notified(), if !stopping => {}
            _ = stop.changed(), if !stopping => {}
            _ = tokio::time::sleep(wait_fetch) => {
                if !fetch_error && (!memory_queue || (spilled && !gated)) { more = true; }
            }
        }
    }
}

/// A row held in memory is no longer (spilled, or finished): its age and
/// count go.
fn forget_age(
    ages: &mut std::collections::BTreeMap<i64, (usize, i64, std::time::Instant)>,
    in_memory: &mut HashSet<RowKey>,
    backlog: &mut usize,
    shared: &Shared,
    key: RowKey,
) {
    if !in_memory.remove(&key) {
        return;
    }
    if (key.0 as u64) < shared.store.horizon().0 {
        *backlog -= 1;
    }
    if let Some(e) = ages.get_mut(&key.0) {
        e.0 -= 1;
        if e.0 == 0 {
            ages.remove(&key.0);
        }
    }
}

/// With the stream storage, spilled: writes rows handed over to the queue,
/// a flush at a time once it is queued (so that a flush waiting for room
/// is never waited for here while the rows of an earlier one could make
/// it), retrying until it is done. `None` when the flow stops first (the
/// rows are not acknowledged: they come again at the next start).
async fn spill_handed(
    shared: &Shared,
    operator: &'static str,
    mut rows: Vec<Row>,
    stop: &watch::Receiver<bool>,
) -> Option<Vec<Row>> {
    // Keys are unique, so an unstable sort orders the same, in place (a
    // stable one takes a scratch buffer of half the rows).
    rows.sort_unstable_by_key(|r| (r.flush, r.key()));
    let mut failures = 0u32;
    let mut from = 0;
    while from < rows.len() {
        let flush = rows[from].flush;
        let to = from + rows[from..].iter().take_while(|r| r.flush == flush).count();
        if !shared.handover.wait_flushed(flush, stop).await {
            return None;
        }
        let mut group: Vec<&mut Row> = rows[from..to].iter_mut().collect();
        match shared.store.spill(shared, operator, &mut group).await {
            Ok(()) => from = to,
            Err(e) => {
                shared.note_error(&e);
                failures += 1;
                tracing::warn!(operator, error = %crate::pg_error::DbError(&e), "spilling handed rows failed; retrying");
                let mut stop = stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(shared.config.restart_delay(failures)) => {}
                    _ = stop.wait_for(|s| *s) => return None,
                }
            }
        }
    }
    for r in &mut rows {
        r.flush = 0;
    }
    rows.sort_unstable_by_key(Row::key);
    Some(rows)
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
    inbox.admitted(&row);
    // Most ids hold one row: room for one (the default's first allocation
    // holds four).
    let queue = pending
        .entry(key.clone())
        .or_insert_with(|| VecDeque::with_capacity(1));
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
        self.shared.handover.wait_flushed(n, &self.stop).await
    }

    async fn run(&self, rows: Vec<Row>) {
        // Nothing runs before its rows are queued: the flush that queues
        // them commits only once their transactions are visible.
        if !self.queued(&rows.iter().collect::<Vec<_>>()).await {
            return;
        }
        // Delivered again after a restart: what an earlier run applied is
        // skipped (rule 12).
        let Some(mut rows) = self.not_applied(rows).await else {
            return;
        };
        let cfg = &self.shared.config;
        let last = &rows[rows.len() - 1];
        let table = format!("{}.{}", last.schema, last.table);
        let id = id_display(&last.id);
        let mut attempt = 1u32;
        let mut transient = 0u32;
        let span = unit_span(self.op.name, &table, &id, rows.iter());
        loop {
            span.record("attempt", attempt);
            let failure = match self.attempt(&rows).instrument(span.clone()).await {
                Ok(()) => {
                    crate::telemetry::applied(self.op.name, rows.iter().map(|r| r.committed_at));
                    return;
                }
                Err(f) => f,
            };
            match failure {
                Failure::Stopped => return,
                Failure::Transient(error) => {
                    transient += 1;
                    let wait = cfg.restart_delay(transient);
                    self.spill_waiting(&mut rows).await;
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
                    crate::telemetry::failed(self.op.name, true);
                    span.record("error", error.as_str());
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
                    self.spill_waiting(&mut rows).await;
                    if !self.sleep(next_wait).await {
                        return;
                    }
                    attempt += 1;
                }
                Failure::Failed(error) | Failure::Decode(error) => {
                    crate::telemetry::failed(self.op.name, false);
                    span.record("error", error.as_str());
                    span.record("dead_lettered", true);
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
                            Ok(()) => {
                                crate::telemetry::dead_lettered(self.op.name, rows.len());
                                return;
                            }
                            Err(Failure::Stopped) => return,
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

    /// With the stream storage, `rows` without those an earlier run applied
    /// (rule 12): rows that commit before the redelivery horizon are looked
    /// up in the progress records read at start, and those found are
    /// finished without running. `None` when none is left, or when the
    /// flow stops first.
    async fn not_applied(&self, rows: Vec<Row>) -> Option<Vec<Row>> {
        let store = &self.shared.store;
        if !rows.iter().any(|r| store.was_applied(self.op.name, r)) {
            return Some(rows);
        }
        let mut tries = 0u32;
        loop {
            let refs: Vec<&Row> = rows.iter().collect();
            let done = async {
                let (applied, rest): (Vec<&Row>, Vec<&Row>) = refs
                    .iter()
                    .partition(|r| store.was_applied(self.op.name, r));
                if !applied.is_empty() {
                    store
                        .finish_applied(&self.shared, self.op.name, &applied)
                        .await?;
                    crate::crash_point::hit("stream.skipped");
                    tracing::debug!(
                        operator = self.op.name,
                        rows = applied.len(),
                        "delivered again, applied before: skipped"
                    );
                }
                Ok::<_, sqlx::Error>(rest.iter().map(|r| r.key()).collect::<Vec<_>>())
            }
            .await;
            match done {
                Ok(rest) => {
                    let rest: Vec<Row> = rows
                        .into_iter()
                        .filter(|r| rest.contains(&r.key()))
                        .collect();
                    return (!rest.is_empty()).then_some(rest);
                }
                Err(e) => {
                    self.shared.note_error(&e);
                    tries += 1;
                    tracing::warn!(operator = self.op.name, error = %crate::pg_error::DbError(&e), "finishing rows applied before failed; retrying");
                    if !self.sleep(self.shared.config.restart_delay(tries)).await {
                        return None;
                    }
                }
            }
        }
    }

    /// With the stream storage, the rows of a unit about to wait before
    /// trying again go to the queue (rule 12): a failing id does not hold
    /// back the slot's acknowledgement. Best effort: should the database
    /// be unreachable, they stay held and are spilled at the next wait.
    async fn spill_waiting(&self, rows: &mut [Row]) {
        if !self.shared.store.stream() || rows.iter().all(|r| r.spilled) {
            return;
        }
        let mut refs: Vec<&mut Row> = rows.iter_mut().collect();
        if let Err(e) = self
            .shared
            .store
            .spill(&self.shared, self.op.name, &mut refs)
            .await
        {
            self.shared.note_error(&e);
            tracing::debug!(operator = self.op.name, error = %crate::pg_error::DbError(&e), "spilling a waiting unit's rows failed");
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
        // Rows an earlier run applied (rule 12): should any be, each unit
        // is run (and skipped) on its own.
        if all
            .iter()
            .any(|r| self.shared.store.was_applied(self.op.name, r))
        {
            return false;
        }
        let last = &all[all.len() - 1];
        let ids: Vec<String> = units
            .iter()
            .take(10)
            .map(|(_, rows)| id_display(&rows[rows.len() - 1].id))
            .collect();
        let mut ids = ids.join(", ");
        if units.len() > 10 {
            ids.push_str(&format!(", … ({} ids)", units.len()));
        }
        let table = format!("{}.{}", last.schema, last.table);
        let span = unit_span(self.op.name, &table, &ids, all.iter().copied());
        let together = AssertUnwindSafe(self.run_queries(sql, units))
            .catch_unwind()
            .instrument(span);
        let ok = matches!(together.await, Ok(Ok(())));
        if ok {
            for (_, rows) in units {
                crate::telemetry::applied(self.op.name, rows.iter().map(|r| r.committed_at));
            }
        }
        ok
    }

    async fn run_queries(
        &self,
        sql: &'static str,
        units: &[(String, Vec<Row>)],
    ) -> Result<(), Failure> {
        let mut tx = self.begin().await?;
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
        // Covered runs (rule 6) need a durable queue.
        if !self.op.coalesce || !self.shared.handover.backed() {
            return Ok(None);
        }
        let text: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.failure(e))?;
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
        last.kind == EventKind::Delete && rows.len() == 1 && self.op.deletes_with(last)
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
        let finished = self
            .shared
            .store
            .finish(&self.shared, self.op.name, rows, &mut tx)
            .await
            .map_err(|e| self.failure(e))?;
        let (finished, xid) = match finished {
            Finish::Done { xid } => (true, xid),
            Finish::Gone => (false, None),
        };
        if !finished && self.shared.store.stream() {
            // Another run finished these rows (a dead letter put back
            // twice, a spilled row's queue row gone): its work stands,
            // this unit's is undone (rule 12).
            tx.rollback().await.map_err(|e| self.failure(e))?;
            if rows.iter().any(|r| r.id_key != rows[0].id_key) {
                // Several ids in one transaction: each is told apart on its
                // own (the caller runs them one by one).
                return Err(Failure::Failed(
                    "a grouped run found rows applied by another run".to_owned(),
                ));
            }
            tracing::info!(
                operator = self.op.name,
                "finished meanwhile by another run: this run was rolled back"
            );
            self.shared
                .store
                .finish_applied(&self.shared, self.op.name, rows)
                .await
                .map_err(|e| self.failure(e))?;
            return Ok(());
        }
        if !finished {
            // Another executor finished (some of) these rows meanwhile: a
            // second flow on the slot, say one still shutting down while
            // this one starts. Its work stands; this unit's is undone, and
            // whatever rows remain are read again.
            tx.rollback().await.map_err(|e| self.failure(e))?;
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
                let mut again = self.begin().await?;
                for unit in rows.chunk_by(|a, b| a.id_key == b.id_key) {
                    let unit: Vec<Row> = unit.iter().map(|r| (*r).clone()).collect();
                    self.apply_query(sql, &unit, &mut again).await?;
                }
                again.commit().await.map_err(|e| self.failure(e))?;
            }
            self.rescan.store(true, Ordering::Release);
            return Ok(());
        }
        crate::crash_point::hit("unit.before_commit");
        if let Err(e) = tx.commit().await {
            // With the stream storage nothing else says whether a commit
            // that got no reply went through: the server's status of the
            // transaction that wrote the progress record does (rule 10).
            let Some(xid) = xid.filter(|_| crate::queue::progress::commit_outcome_unknown(&e))
            else {
                return Err(self.failure(e));
            };
            self.shared.note_error(&e);
            if !self.committed(xid).await? {
                return Err(self.failure(e));
            }
            tracing::info!(
                operator = self.op.name,
                error = %crate::pg_error::DbError(&e),
                "a unit's COMMIT got no reply; the server says it committed"
            );
        }
        crate::crash_point::hit("unit.after_commit");
        self.shared.store.finished(rows);
        Ok(())
    }

    /// Whether the unit's transaction `xid` committed, after its `COMMIT`
    /// got no reply: asks the server until it knows.
    async fn committed(&self, xid: u64) -> Result<bool, Failure> {
        let mut tries = 0u32;
        loop {
            let answer = async {
                let mut conn = self.shared.pool.acquire().await?;
                crate::queue::progress::committed(&mut conn, xid).await
            }
            .await;
            match answer {
                Ok(Some(committed)) => return Ok(committed),
                Ok(None) => {
                    // Still in progress: its session has not finished it.
                    if !self.sleep(crate::queue::progress::RETRY_EVERY).await {
                        return Err(Failure::Stopped);
                    }
                }
                Err(e) => {
                    self.shared.note_error(&e);
                    tries += 1;
                    tracing::warn!(
                        operator = self.op.name,
                        error = %crate::pg_error::DbError(&e),
                        "a unit's COMMIT got no reply and whether it committed cannot be read yet; retrying"
                    );
                    let wait = crate::queue::progress::RETRY_EVERY
                        .max(self.shared.config.restart_delay(tries));
                    if !self.sleep(wait).await {
                        return Err(Failure::Stopped);
                    }
                }
            }
        }
    }

    /// A transaction on the pool.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, Failure> {
        crate::queue::begin(&self.shared.pool)
            .await
            .map_err(|e| self.failure(e))
    }

    /// Turns a database error into a failure, passing on one that says the
    /// server is shutting down (rule 7).
    fn failure(&self, e: sqlx::Error) -> Failure {
        self.failure_in(e, None)
    }

    /// [`failure`](Self::failure) of the statement `query`.
    fn failure_in(&self, e: sqlx::Error, query: Option<&str>) -> Failure {
        self.shared.note_error(&e);
        sql_failure(e, query)
    }

    async fn run_query(&self, sql: &'static str, rows: &[Row]) -> Result<(), Failure> {
        let mut tx = self.begin().await?;
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
            q.execute(&mut *tx).await.map_err(|e| self.failure(e))?;
        } else {
            let q = bind_value(sqlx::query(sql), &id).map_err(Failure::Decode)?;
            q.execute(&mut *tx)
                .await
                .map_err(|e| self.failure_in(e, Some(sql)))?;
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
                let text = format!(
                    "the handler failed: {}",
                    crate::report::chain(e.as_ref()).join(": ")
                );
                return Err(if transient {
                    Failure::Transient(text)
                } else {
                    Failure::Failed(text)
                });
            }
            Ok(Ok(())) => {}
        }
        let rows = &[row][..];
        let tx = match (own, self.shared.store.completion(row)) {
            (Some(tx), _) => tx,
            (None, Completion::Statement) => {
                if !self.queued(rows).await {
                    return Err(Failure::Stopped);
                }
                let mut conn = self
                    .shared
                    .pool
                    .acquire()
                    .await
                    .map_err(|e| self.failure(e))?;
                let done = self
                    .shared
                    .store
                    .finish(&self.shared, self.op.name, rows, &mut conn)
                    .await
                    .map_err(|e| self.failure(e))?;
                if done != Finish::Gone {
                    self.shared.store.finished(rows);
                }
                return Ok(());
            }
            (None, Completion::Transaction) => self.begin().await?,
        };
        self.complete(tx, rows).await
    }

    async fn dead_letter(&self, rows: &[Row], error: &str, attempts: u32) -> Result<(), Failure> {
        let mut tx = self.begin().await?;
        crate::queue::dequeue::dead_letter(
            &self.shared.slot,
            self.op.name,
            rows,
            error,
            attempts,
            &mut tx,
        )
        .await
        .map_err(|e| self.failure(e))?;
        self.complete(tx, &rows.iter().collect::<Vec<_>>()).await
    }
}

#[cfg(test)]
mod tests;

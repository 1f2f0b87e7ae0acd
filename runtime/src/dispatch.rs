//! The dispatch stage: each change becomes the queue rows of the operators
//! that listen to it (its mapped ids, its kind, its transaction), gathered in
//! a [`Batch`] per flush, plus the process-status marks. The consumer
//! ([`crate::flow`]) dispatches; [`crate::queue`] takes the batch on.

use std::collections::HashMap;
use std::sync::Arc;

use crate::ident::QualifiedName;
use crate::raw::{ColumnType, EventKind, RawEvent};
use crate::registry::{OperatorAction, OperatorRegistration, TableName};
use crate::value::{Record, Value};

/// One queue row to insert: an event for one operator (and one mapped id).
#[derive(Debug, Clone)]
pub(crate) struct NewRow {
    pub operator: &'static str,
    pub commit_lsn: i64,
    pub seq: i32,
    pub part: i16,
    pub id: String,
    /// [`id_key`] of `id`, computed once.
    pub id_key: String,
    pub kind: EventKind,
    pub schema: Arc<str>,
    pub table: Arc<str>,
    pub event: Option<String>,
    /// A handler row's event, handed to the executor in memory.
    pub raw: Option<Arc<RawEvent>>,
    pub updated_at: Option<i64>,
    /// With events collapsed into this row: the commit LSN of the first.
    pub first_lsn: Option<i64>,
    /// With events collapsed into this row: those whose process status
    /// waits on it.
    pub covers: Vec<(i64, i32)>,
    /// The transaction id of its event; with events of several
    /// transactions collapsed into it, 0 (unknown).
    pub xid: u32,
    /// The commit time of its (first) event, in microseconds since the
    /// Unix epoch: the start of the commit-to-apply latency.
    pub committed_at: Option<i64>,
    /// The span of its transaction ([`crate::flow`]'s consumer sets it):
    /// the operator's unit span is its child.
    pub span: tracing::Span,
}

/// Whether transaction id `a` is older than `b` (PostgreSQL's modulo-2³²
/// comparison of normal transaction ids).
pub(crate) fn xid_precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// An event whose completion by all its operators moves the process status.
#[derive(Debug, Clone)]
pub(crate) struct StatusMark {
    pub commit_lsn: i64,
    pub seq: i32,
    pub schema: Arc<str>,
    pub table: Arc<str>,
    pub updated_at: i64,
    /// How many queue rows the event produced (0: done already).
    pub remaining: i32,
}

/// An event an operator cannot follow because its table's replica identity
/// does not carry the old row it needs: recorded as a dead letter by the
/// flush that queues its transaction (so before the transaction is
/// acknowledged), never run.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub operator: &'static str,
    pub commit_lsn: i64,
    pub seq: i32,
    /// As its row would have been: 1 for the old id of an update, 0 for a
    /// delete.
    pub part: i16,
    /// The mapped id as JSON (`null`: the id is what is unknown).
    pub id: String,
    pub kind: EventKind,
    pub schema: Arc<str>,
    pub table: Arc<str>,
    /// A handler operator's event as JSON (so that a retried dead letter
    /// has it).
    pub event: Option<String>,
    pub updated_at: Option<i64>,
    /// Why: the table, its replica identity, the missing column, the fix.
    pub reason: String,
}

/// The queue rows (and status marks) of one or more transactions.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub rows: Vec<NewRow>,
    pub status: Vec<StatusMark>,
    /// The transaction ids of the transactions whose events the batch
    /// holds (whether or not they produced rows): queueing the batch waits
    /// until every one of them is visible to new snapshots.
    pub xids: Vec<u32>,
    /// Events refused for want of their old row: dead letters written by
    /// the statement that queues the batch.
    pub refused: Vec<Refusal>,
}

impl Batch {
    pub fn append(&mut self, other: &mut Batch) {
        self.rows.append(&mut other.rows);
        self.status.append(&mut other.status);
        self.xids.append(&mut other.xids);
        self.refused.append(&mut other.refused);
    }

    /// Collapses the rows of coalescing query operators: consecutive rows of
    /// one operator and id, up to the next delete (a barrier, kept as a row
    /// of its own), become the last of them. The query then runs once for
    /// them, as the executor would run it once for them anyway; the row
    /// remembers the first commit LSN (for the LSN fence) and the events
    /// whose process status waits on it.
    pub fn collapse(&mut self, ops: &[&'static OperatorRegistration]) {
        let coalescing: Vec<&str> = ops
            .iter()
            .filter(|o| o.coalesce && matches!(o.action, OperatorAction::Query(_)))
            .map(|o| o.name)
            .collect();
        if coalescing.is_empty() {
            return;
        }
        let mut open: HashMap<(&'static str, String), usize> = HashMap::new();
        let mut out: Vec<NewRow> = Vec::with_capacity(self.rows.len());
        for row in self.rows.drain(..) {
            if !coalescing.contains(&row.operator) {
                out.push(row);
                continue;
            }
            let key = (row.operator, row.id_key.clone());
            if row.kind == EventKind::Delete {
                open.remove(&key);
                out.push(row);
                continue;
            }
            match open.get(&key) {
                Some(&i) => {
                    let prev = std::mem::replace(&mut out[i], row);
                    let cur = &mut out[i];
                    cur.first_lsn = Some(prev.first_lsn.unwrap_or(prev.commit_lsn));
                    cur.committed_at = prev.committed_at.or(cur.committed_at);
                    // One transaction id stands for the row only when all
                    // its events share it: transaction ids are not in
                    // commit order, so a snapshot that saw the highest did
                    // not necessarily see the others.
                    if prev.xid != cur.xid {
                        cur.xid = 0;
                    }
                    cur.covers = prev.covers;
                    if prev.updated_at.is_some() {
                        cur.covers.push((prev.commit_lsn, prev.seq));
                    }
                }
                None => {
                    open.insert(key, out.len());
                    out.push(row);
                }
            }
        }
        self.rows = out;
    }
}

fn id_of(record: Option<&Record>, column: &str) -> Value {
    record
        .and_then(|r| r.get(column))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The microsecond timestamp of `field` in the event's record.
pub(crate) fn updated_at_micros(raw: &RawEvent, field: &str) -> Option<i64> {
    match raw.record()?.get(field)? {
        Value::TimestampTz(t) => Some(t.timestamp_micros()),
        Value::Timestamp(t) => Some(t.and_utc().timestamp_micros()),
        Value::Int8(n) => Some(*n),
        Value::Int4(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// Adds the queue rows of `raw` for `ops` to `batch`.
pub(crate) fn dispatch(
    raw: &Arc<RawEvent>,
    ops: &[&'static OperatorRegistration],
    status_field: &str,
    batch: &mut Batch,
) {
    let commit_lsn = raw.commit_lsn.0 as i64;
    let seq = raw.seq as i32;
    let updated_at = updated_at_micros(raw, status_field);
    let before = batch.rows.len();
    let mut event_json: Option<String> = None;
    for op in ops {
        if !op.listens_to_table(&**raw) {
            continue;
        }
        if raw.kind == EventKind::Truncate
            && let (OperatorAction::Query(_), Some(target)) = (op.action, op.target)
        {
            tracing::warn!(
                operator = op.name,
                table = %format_args!("{}.{}", raw.schema, raw.table),
                target = %target.table,
                "table truncated: query operators do not run on truncate, `{}` may now be stale",
                target.table
            );
            continue;
        }
        if !op.listens_to(&**raw, raw.kind) {
            continue;
        }
        let row = |part: i16, id: &Value, kind: EventKind, event: Option<String>| {
            let json = serde_json::to_string(id).expect("values serialize");
            NewRow {
                operator: op.name,
                commit_lsn,
                seq,
                part,
                id_key: value_key(id, &json),
                id: json,
                kind,
                schema: raw.schema.clone(),
                table: raw.table.clone(),
                raw: event.as_ref().map(|_| raw.clone()),
                event,
                updated_at,
                first_lsn: None,
                covers: Vec::new(),
                xid: raw.xid,
                committed_at: Some(raw.commit_time.timestamp_micros()),
                span: tracing::Span::none(),
            }
        };
        match op.action {
            OperatorAction::Handler(_) => {
                let id = match (raw.kind, op.id_column(&**raw)) {
                    (EventKind::Truncate, _) | (_, None) => Value::Null,
                    (_, Some(col)) => id_of(raw.record(), col),
                };
                let json = event_json
                    .get_or_insert_with(|| serde_json::to_string(raw).expect("events serialize"))
                    .clone();
                if raw.kind == EventKind::Delete
                    && let Some(col) = op.id_column(&**raw)
                    && raw.old.as_ref().is_none_or(|o| o.get(col).is_none())
                {
                    batch.refused.push(refusal(raw, op, 0, Some(json), col));
                    continue;
                }
                batch.rows.push(row(0, &id, raw.kind, Some(json)));
            }
            OperatorAction::Query(_) => {
                let Some(col) = op.id_column(&**raw) else {
                    continue;
                };
                // A delete's old row without the mapped column (the table's
                // replica identity does not carry it): the id it left is
                // unknown.
                if raw.kind == EventKind::Delete
                    && raw.old.as_ref().is_none_or(|o| o.get(col).is_none())
                {
                    batch.refused.push(refusal(raw, op, 0, None, col));
                    continue;
                }
                let id = id_of(raw.record(), col);
                if id != Value::Null {
                    batch.rows.push(row(0, &id, raw.kind, None));
                }
                // A moved row: the old parent is recomputed too. When the
                // entity is one whose deletes delete the target row, its
                // old id is gone: a delete of that id (the query would find
                // nothing for it, and a MERGE cannot delete).
                if raw.kind == EventKind::Update {
                    match raw.old.as_ref().and_then(|o| o.get(col)) {
                        Some(old)
                            if *old != Value::Null
                                && *old != id
                                && *old != Value::UnchangedToast =>
                        {
                            let kind = if op.deletes_with(&**raw) {
                                EventKind::Delete
                            } else {
                                EventKind::Update
                            };
                            batch.rows.push(row(1, old, kind, None));
                        }
                        Some(_) => {}
                        // No old value, and the column is outside the
                        // replica identity: it may have changed (without
                        // an old row at all, PostgreSQL only says the key
                        // did not). The old id is unknown.
                        None if !is_key(&raw.columns, col) => {
                            batch.refused.push(refusal(raw, op, 1, None, col));
                        }
                        None => {}
                    }
                }
            }
        }
    }
    if let Some(updated_at) = updated_at {
        batch.status.push(StatusMark {
            commit_lsn,
            seq,
            schema: raw.schema.clone(),
            table: raw.table.clone(),
            updated_at,
            remaining: (batch.rows.len() - before) as i32,
        });
    }
}

/// Whether `column` is part of the replica identity its table's events
/// were announced with (with `REPLICA IDENTITY FULL`, every column is).
fn is_key(columns: &[ColumnType], column: &str) -> bool {
    columns.iter().any(|c| c.key && &*c.name == column)
}

/// The column whose old value `op` needs from `table`'s update and delete
/// events: its mapped column, when it runs on deletes (the id a deleted
/// row leaves is in its old row) or, for a query operator, on updates (a
/// moved row's old id is recomputed too). `None` when it needs none.
pub(crate) fn old_row_column(
    op: &OperatorRegistration,
    table: impl TableName + Copy,
) -> Option<&'static str> {
    if !op.listens_to_table(table) {
        return None;
    }
    let col = op.id_column(table)?;
    let needs = op.listens_to(table, EventKind::Delete)
        || matches!(op.action, OperatorAction::Query(_)) && op.listens_to(table, EventKind::Update);
    needs.then_some(col)
}

/// The replica identity the events of a table were announced with, as a
/// person reads it: which of the old row they carry. (PostgreSQL flags the
/// identity's columns, every one with `REPLICA IDENTITY FULL`; the
/// primary key and a unique index are told apart only in the catalog.)
pub(crate) fn identity_text(columns: &[ColumnType]) -> String {
    let key: Vec<String> = columns
        .iter()
        .filter(|c| c.key)
        .map(|c| format!("`{}`", c.name))
        .collect();
    if !columns.is_empty() && key.len() == columns.len() {
        "REPLICA IDENTITY FULL".to_owned()
    } else if key.is_empty() {
        "REPLICA IDENTITY NOTHING, or DEFAULT without a primary key: old rows carry no column"
            .to_owned()
    } else {
        format!(
            "REPLICA IDENTITY DEFAULT or USING INDEX: old rows carry {} only",
            key.join(", ")
        )
    }
}

/// The statement that makes `schema.table`'s old rows whole.
pub(crate) fn identity_fix(schema: &str, table: &str) -> String {
    format!(
        "ALTER TABLE {} REPLICA IDENTITY FULL",
        QualifiedName::new(schema, table)
    )
}

/// The key of the row an event changed, `id = 3`, from its old row when it
/// has one, else its new row.
fn key_text(raw: &RawEvent) -> String {
    let record = raw.old.as_ref().or(raw.new.as_ref());
    let parts: Vec<String> = raw
        .columns
        .iter()
        .filter(|c| c.key)
        .filter_map(|c| {
            let v = record?.get(&c.name)?;
            Some(format!("{} = {}", c.name, v.to_plain_json()))
        })
        .collect();
    parts.join(", ")
}

/// `op`'s refusal of `raw`, whose old row lacks `column`.
fn refusal(
    raw: &RawEvent,
    op: &OperatorRegistration,
    part: i16,
    event: Option<String>,
    column: &str,
) -> Refusal {
    crate::telemetry::dead_lettered(op.name, 1);
    let table = format!("{}.{}", raw.schema, raw.table);
    let key = key_text(raw);
    let row = if key.is_empty() {
        String::new()
    } else {
        format!(" (the row with {key})")
    };
    let what = match raw.kind {
        EventKind::Delete => format!(
            "this delete of `{table}`{row} does not carry its `{column}`, so the id the row \
             left is unknown and operator `{}` cannot follow it",
            op.name
        ),
        _ => format!(
            "this update of `{table}`{row} does not carry the old `{column}`, so if the row \
             moved, the id it left is unknown and operator `{}` cannot recompute it",
            op.name
        ),
    };
    Refusal {
        operator: op.name,
        commit_lsn: raw.commit_lsn.0 as i64,
        seq: raw.seq as i32,
        part,
        id: "null".to_owned(),
        kind: raw.kind,
        schema: raw.schema.clone(),
        table: raw.table.clone(),
        event,
        updated_at: None,
        reason: format!(
            "{what}: the table's replica identity ({}) leaves the column out; run `{}`, then \
             recompute the ids concerned",
            identity_text(&raw.columns),
            identity_fix(&raw.schema, &raw.table)
        ),
    }
}

/// What the operators need of a table's replica identity, checked once per
/// announcement of the table (a Relation message: each event carries its
/// table's columns as last announced, shared until the next).
#[derive(Debug, Default)]
pub(crate) struct IdentityWatch {
    /// Per table: the columns last seen (kept, so that their address
    /// stays theirs) and whether they fell short.
    tables: HashMap<TableKey, (Arc<[ColumnType]>, bool)>,
    /// The addresses of the columns in `tables`.
    seen: std::collections::HashSet<usize>,
}

/// `(schema, table)`.
type TableKey = (Arc<str>, Arc<str>);

/// A table whose announced replica identity changed what the operators can
/// follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdentityVerdict {
    /// `schema.table`.
    pub table: String,
    /// What falls short and the fix; `None`: nothing (any more).
    pub problem: Option<String>,
}

impl IdentityWatch {
    /// Checks `raw`'s table when its columns were announced anew; a
    /// verdict when what the operators can follow changed (or on the
    /// table's first announcement, when it falls short).
    pub fn check(
        &mut self,
        raw: &RawEvent,
        ops: &[&'static OperatorRegistration],
    ) -> Option<IdentityVerdict> {
        let addr = Arc::as_ptr(&raw.columns) as *const ColumnType as usize;
        if self.seen.contains(&addr) {
            return None;
        }
        let short: Vec<String> = ops
            .iter()
            .filter_map(|op| {
                let col = old_row_column(op, raw)?;
                (!is_key(&raw.columns, col)).then(|| format!("`{}` (operator `{}`)", col, op.name))
            })
            .collect();
        let bad = !short.is_empty();
        let key = (raw.schema.clone(), raw.table.clone());
        let was = match self.tables.insert(key, (raw.columns.clone(), bad)) {
            Some((old, was)) => {
                self.seen
                    .remove(&(Arc::as_ptr(&old) as *const ColumnType as usize));
                Some(was)
            }
            None => None,
        };
        self.seen.insert(addr);
        if was.unwrap_or(false) == bad {
            return None;
        }
        let table = format!("{}.{}", raw.schema, raw.table);
        let problem = bad.then(|| {
            format!(
                "the replica identity of `{table}` ({}) does not carry {} in old rows: its \
                 moved rows and deletes are dead-lettered; run `{}`",
                identity_text(&raw.columns),
                short.join(", "),
                identity_fix(&raw.schema, &raw.table)
            )
        });
        Some(IdentityVerdict { table, problem })
    }
}

/// The grouping key of a mapped id (its JSON form, with integers of every
/// width alike so `int4` and `int8` columns map to one id).
pub(crate) fn id_key(id_json: &str) -> String {
    match serde_json::from_str::<Value>(id_json) {
        Ok(id) => value_key(&id, id_json),
        Err(_) => id_json.to_owned(),
    }
}

/// [`id_key`] of `id`, whose JSON form is `json`.
fn value_key(id: &Value, json: &str) -> String {
    match id {
        Value::Int2(n) => format!("i:{n}"),
        Value::Int4(n) => format!("i:{n}"),
        Value::Int8(n) => format!("i:{n}"),
        _ => json.to_owned(),
    }
}

/// The mapped id rendered for people: `42`, `"abc"`, a UUID.
pub(crate) fn id_display(id_json: &str) -> String {
    match serde_json::from_str::<Value>(id_json) {
        Ok(Value::Int2(n)) => n.to_string(),
        Ok(Value::Int4(n)) => n.to_string(),
        Ok(Value::Int8(n)) => n.to_string(),
        Ok(Value::Text(s)) => s,
        Ok(Value::Uuid(u)) => u.to_string(),
        Ok(Value::Null) => "NULL".to_owned(),
        _ => id_json.to_owned(),
    }
}

#[cfg(test)]
mod tests;

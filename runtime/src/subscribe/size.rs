//! What a retained change costs in memory, for the hub's byte budget
//! ([`HubOptions::retain_bytes`](super::HubOptions::retain_bytes)) and a
//! subscription's ([`HubOptions::buffer_bytes`](super::HubOptions::buffer_bytes)).
//!
//! The estimate adds up what the change's allocations hold: the change
//! itself and its `Arc`, each row's vector of values (at `size_of::<Value>()`
//! each), the bytes of every string, `bytea`, numeric
//! text and invalid value (by capacity), arrays recursively, JSON values
//! recursively (each array slot and object entry at its in-memory size,
//! plus [`MAP_ENTRY_OVERHEAD`] per object entry for the map's nodes), an
//! update's changed fields (both values, plus the same per-entry overhead)
//! and the names: the schema, the table, the column list and each row's
//! column names. Names and column lists are often shared by every row of a
//! table; they are counted with each change all the same, so the estimate
//! leans high for narrow rows and is close for wide values. The allocator's
//! own rounding and bookkeeping are not counted.

use std::mem::size_of;

use crate::raw::{Change, ColumnType, RawEvent};
use crate::value::{Record, Value};

/// Bytes counted for each entry of a map (a JSON object, an update's
/// changed fields) beyond its key and value: the map's node and its
/// pointers, amortized.
pub(crate) const MAP_ENTRY_OVERHEAD: usize = 32;

/// The estimated heap bytes a change kept in an `Arc` holds (see the module
/// documentation).
pub(crate) fn change_bytes(raw: &RawEvent) -> usize {
    // The Arc's two counters and the change itself.
    let mut n = 2 * size_of::<usize>() + size_of::<RawEvent>();
    n += raw.schema.len() + raw.table.len();
    n += raw.columns.len() * size_of::<ColumnType>()
        + raw.columns.iter().map(|c| c.name.len()).sum::<usize>();
    for record in raw.new.iter().chain(raw.old.iter()) {
        n += record_bytes(record);
    }
    if let Some(changes) = &raw.changes {
        for (column, Change { old, new }) in changes {
            n += MAP_ENTRY_OVERHEAD
                + size_of::<std::sync::Arc<str>>()
                + column.len()
                + size_of::<Change>()
                + value_bytes(old)
                + value_bytes(new);
        }
    }
    n
}

fn record_bytes(record: &Record) -> usize {
    let names = record.names();
    std::mem::size_of_val(names)
        + names.iter().map(|n| n.len()).sum::<usize>()
        + std::mem::size_of_val(record.values())
        + record.values().iter().map(value_bytes).sum::<usize>()
}

/// The heap bytes a value owns (not counting its own slot).
fn value_bytes(value: &Value) -> usize {
    match value {
        Value::Text(s) => s.capacity(),
        Value::Numeric(n) => n.0.capacity(),
        Value::Bytea(b) => b.capacity(),
        Value::Json(j) => json_bytes(j),
        Value::Array(items) => {
            items.capacity() * size_of::<Value>() + items.iter().map(value_bytes).sum::<usize>()
        }
        Value::Invalid(invalid) => {
            invalid.type_name.capacity() + invalid.text.capacity() + invalid.reason.capacity()
        }
        _ => 0,
    }
}

/// The heap bytes a JSON value owns (not counting its own slot).
fn json_bytes(value: &serde_json::Value) -> usize {
    use serde_json::Value as J;
    match value {
        J::String(s) => s.capacity(),
        J::Array(items) => {
            items.capacity() * size_of::<J>() + items.iter().map(json_bytes).sum::<usize>()
        }
        J::Object(map) => map
            .iter()
            .map(|(k, v)| {
                MAP_ENTRY_OVERHEAD
                    + size_of::<String>()
                    + k.capacity()
                    + size_of::<J>()
                    + json_bytes(v)
            })
            .sum(),
        // Numbers, booleans and null live in their slot (a number kept as
        // text by `arbitrary_precision` is not enabled here).
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::DateTime;

    use super::*;
    use crate::lsn::Lsn;
    use crate::raw::EventKind;

    fn raw(values: Vec<Value>) -> RawEvent {
        let names: Arc<[Arc<str>]> = (0..values.len())
            .map(|i| Arc::from(format!("c{i}")))
            .collect::<Vec<_>>()
            .into();
        RawEvent {
            schema: "public".into(),
            table: "t".into(),
            kind: EventKind::Insert,
            new: Some(Record::new(names, values)),
            old: None,
            changes: None,
            columns: Arc::from(Vec::new()),
            lsn: Lsn(1),
            commit_lsn: Lsn(2),
            commit_time: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            xid: 1,
            seq: 0,
        }
    }

    #[test]
    fn large_values_are_counted_whole() {
        let small = change_bytes(&raw(vec![Value::Int8(1)]));
        assert!(small < 1024, "{small}");
        let text = change_bytes(&raw(vec![Value::Text("x".repeat(5 << 20))]));
        assert!((5 << 20..(5 << 20) + 1024).contains(&text), "{text}");
        let bytes = change_bytes(&raw(vec![Value::Bytea(vec![0; 1 << 20])]));
        assert!(bytes >= 1 << 20, "{bytes}");
        let json = serde_json::json!({"a": ["y".repeat(1 << 20), {"b": "z".repeat(1 << 20)}]});
        let json = change_bytes(&raw(vec![Value::Json(json)]));
        assert!(json >= 2 << 20, "{json}");
        let array = change_bytes(&raw(vec![Value::Array(vec![
            Value::Text("w".repeat(1 << 20)),
            Value::Text("w".repeat(1 << 20)),
        ])]));
        assert!(array >= 2 << 20, "{array}");
    }
}

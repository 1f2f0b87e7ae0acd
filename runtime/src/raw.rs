//! The untyped change event produced by the listener.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::lsn::{Lsn, Position};
use crate::value::{Record, Value};

/// What happened to a row (or a table, for `Truncate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A row was inserted.
    Insert,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
    /// The whole table was truncated.
    Truncate,
}

impl EventKind {
    /// The lowercase name: `insert`, `update`, `delete` or `truncate`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Insert => "insert",
            EventKind::Update => "update",
            EventKind::Delete => "delete",
            EventKind::Truncate => "truncate",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A column of a published table, as announced by PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnType {
    /// Column name.
    pub name: Arc<str>,
    /// Type OID (`pg_type.oid`).
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), `-1` when none.
    pub type_modifier: i32,
    /// Whether the column is part of the replica identity (the key).
    pub key: bool,
}

/// One field's value before and after an update.
///
/// Two JSON forms:
///
/// - Its own serde form is exact, each [`Value`] with its variant
///   (`{"old":{"Int8":0},"new":{"Int8":1}}`), as in a serialized
///   [`RawEvent`] (the durable queue, the messages between nodes), so that
///   it reads back as the same values.
/// - A typed [`Event`](crate::Event) (what subscriptions deliver and
///   Server-Sent Events send) writes its `changes` as plain JSON, like its
///   `old` and `new` rows: `{"comments_count":{"old":0,"new":1}}`, each
///   value as [`Value::to_plain_json`] writes it
///   ([`Change::to_plain_json`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The value before the update.
    pub old: Value,
    /// The value after the update.
    pub new: Value,
}

impl Change {
    /// `{"old": ..., "new": ...}` with both values as plain JSON
    /// ([`Value::to_plain_json`]): the form of `changes` in a serialized
    /// [`Event`](crate::Event).
    ///
    /// ```
    /// use walflow_runtime::{Change, Value};
    ///
    /// let change = Change { old: Value::Int8(0), new: Value::Int8(1) };
    /// assert_eq!(change.to_plain_json(), serde_json::json!({"old": 0, "new": 1}));
    /// ```
    pub fn to_plain_json(&self) -> serde_json::Value {
        serde_json::json!({
            "old": self.old.to_plain_json(),
            "new": self.new.to_plain_json(),
        })
    }
}

/// The fields an update changed, by column name (only those that differ).
pub type Changes = BTreeMap<Arc<str>, Change>;

/// Serializes `changes` in plain JSON (each as [`Change::to_plain_json`]):
/// the `changes` of a serialized [`Event`](crate::Event).
pub(crate) fn serialize_plain_changes<S: serde::Serializer>(
    changes: &Changes,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(changes.len()))?;
    for (column, change) in changes {
        map.serialize_entry(&**column, &change.to_plain_json())?;
    }
    map.end()
}

/// One row change (or truncate) read from the WAL, before it is typed.
///
/// Serializable, so it can be queued durably. Records deserialize into the
/// application's structs with [`Record::deserialize_into`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawEvent {
    /// Schema of the table (`public` most often).
    pub schema: Arc<str>,
    /// Table name.
    pub table: Arc<str>,
    /// What happened.
    pub kind: EventKind,
    /// The row after the change (insert, update).
    pub new: Option<Record>,
    /// The row before the change (update, delete; needs `REPLICA IDENTITY FULL`
    /// for every column, otherwise only the key columns are known).
    pub old: Option<Record>,
    /// For updates with a known old row: the fields that differ.
    pub changes: Option<Changes>,
    /// The table's columns and their types.
    pub columns: Arc<[ColumnType]>,
    /// Position of this change in the WAL.
    pub lsn: Lsn,
    /// LSN of the enclosing transaction's commit record (the `commit_lsn`
    /// of PostgreSQL's Commit message; the transaction's `end_lsn`, what is
    /// acknowledged once the transaction is handed on, is just past it).
    pub commit_lsn: Lsn,
    /// Commit time of the enclosing transaction.
    pub commit_time: DateTime<Utc>,
    /// Transaction id.
    pub xid: u32,
    /// Index of this change within its transaction, from 0. Together with
    /// `commit_lsn` it identifies the change uniquely and orders it.
    pub seq: u32,
}

impl RawEvent {
    /// The stable id of this change: the LSN of its transaction's commit
    /// record and its index in it. The same as [`Event::id`](crate::Event::id)
    /// of the typed event (see there: the same on every delivery and every
    /// node, the SSE and CloudEvents `id`, an idempotency key); increases
    /// in commit order.
    pub fn position(&self) -> Position {
        Position::from(self)
    }

    /// The record an operator reads: the new row for inserts and updates, the
    /// old row for deletes, none for truncates.
    pub fn record(&self) -> Option<&Record> {
        match self.kind {
            EventKind::Insert | EventKind::Update => self.new.as_ref(),
            EventKind::Delete => self.old.as_ref(),
            EventKind::Truncate => None,
        }
    }

    /// The columns whose text did not parse for their type
    /// ([`Value::Invalid`]): those of the new row,
    /// then those of the old row.
    pub fn invalid_columns(&self) -> Vec<(&str, &crate::value::InvalidValue)> {
        [self.new.as_ref(), self.old.as_ref()]
            .into_iter()
            .flatten()
            .flat_map(|r| r.iter())
            .filter_map(|(name, v)| match v {
                crate::Value::Invalid(i) => Some((name, i)),
                _ => None,
            })
            .collect()
    }
}

/// An unknown event kind name (see [`EventKind`]'s `FromStr`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event kind `{0}`; expected insert, update, delete or truncate")]
pub struct UnknownEventKind(pub String);

impl std::str::FromStr for EventKind {
    type Err = UnknownEventKind;

    /// Parses the lowercase name ([`EventKind::as_str`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "insert" => Ok(EventKind::Insert),
            "update" => Ok(EventKind::Update),
            "delete" => Ok(EventKind::Delete),
            "truncate" => Ok(EventKind::Truncate),
            other => Err(UnknownEventKind(other.to_owned())),
        }
    }
}

/// Stored as its lowercase name in a `text` column.
impl sqlx::Type<sqlx::Postgres> for EventKind {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <&str as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for EventKind {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
    }
}

impl sqlx::Decode<'_, sqlx::Postgres> for EventKind {
    fn decode(value: sqlx::postgres::PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
        let s = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        Ok(s.parse()?)
    }
}

impl From<&RawEvent> for Position {
    fn from(raw: &RawEvent) -> Self {
        Position {
            commit_lsn: raw.commit_lsn,
            seq: raw.seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventMeta};

    #[test]
    fn an_event_writes_its_changes_in_plain_json_and_a_raw_event_exactly() {
        let changes = Changes::from([
            (
                Arc::from("comments_count"),
                Change {
                    old: Value::Int8(0),
                    new: Value::Int8(1),
                },
            ),
            (
                Arc::from("score"),
                Change {
                    old: Value::Null,
                    new: Value::Numeric(crate::value::Numeric("1.50".into())),
                },
            ),
        ]);
        let meta = EventMeta {
            schema: "public".into(),
            table: "posts".into(),
            lsn: Lsn(1),
            commit_lsn: Lsn(2),
            commit_time: DateTime::<Utc>::UNIX_EPOCH,
            xid: 3,
            seq: 0,
        };
        let event = Event::Update {
            old: Some(serde_json::json!({"id": 1, "comments_count": 0, "score": null})),
            new: serde_json::json!({"id": 1, "comments_count": 1, "score": "1.50"}),
            changes: changes.clone(),
            meta,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json["changes"],
            serde_json::json!({
                "comments_count": {"old": 0, "new": 1},
                "score": {"old": null, "new": "1.50"},
            })
        );
        // The same shape as the rows beside it.
        for column in ["comments_count", "score"] {
            assert_eq!(json["changes"][column]["old"], json["old"][column]);
            assert_eq!(json["changes"][column]["new"], json["new"][column]);
        }

        // A raw event keeps each value's variant, and reads back the same.
        let raw = RawEvent {
            schema: "public".into(),
            table: "posts".into(),
            kind: EventKind::Update,
            new: None,
            old: None,
            changes: Some(changes),
            columns: Arc::new([]),
            lsn: Lsn(1),
            commit_lsn: Lsn(2),
            commit_time: DateTime::<Utc>::UNIX_EPOCH,
            xid: 3,
            seq: 0,
        };
        let text = serde_json::to_string(&raw).unwrap();
        assert!(
            text.contains(r#""comments_count":{"old":{"Int8":0},"new":{"Int8":1}}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<RawEvent>(&text).unwrap(), raw);
    }
}

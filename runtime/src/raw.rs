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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The value before the update.
    pub old: Value,
    /// The value after the update.
    pub new: Value,
}

/// The fields an update changed, by column name (only those that differ).
pub type Changes = BTreeMap<Arc<str>, Change>;

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
    /// Commit position of the enclosing transaction (the transaction's
    /// `end_lsn`: what is acknowledged once the transaction is handed on).
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
    /// A stable identifier of this change: its transaction's commit
    /// position and its index in it. Usable as an idempotency key;
    /// increases in commit order.
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

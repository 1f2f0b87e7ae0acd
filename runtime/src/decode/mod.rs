// One file of this length: the decoder's state (relations, types, the open transaction) and its one entry point, `decode`.
//! pgoutput decoding: from logical replication payloads to [`RawEvent`]s.
//!
//! Two layers:
//!
//! - [`parse_message`] parses one pgoutput (protocol version 1) message into a
//!   borrowed [`PgOutputMessage`], without allocating for row data. It never
//!   panics: truncated or malformed input gives a [`DecodeError`].
//! - [`Decoder`] keeps the relations (`R`) and custom types (`Y`) announced by
//!   PostgreSQL and turns row messages into [`RawEvent`]s with typed
//!   [`Value`]s.
//!
//! # Session settings
//!
//! Values arrive in their text form, which depends on session settings. The
//! decoder assumes the replication connection was started with
//! [`SESSION_OPTIONS`]:
//!
//! | setting              | value      | effect                                            |
//! |----------------------|------------|---------------------------------------------------|
//! | `DateStyle`          | `ISO, MDY` | dates `2024-01-02`, timestamps `2024-01-02 03:04:05.123456` |
//! | `IntervalStyle`      | `iso_8601` | intervals `P1Y2M3DT4H5M6.789S`                    |
//! | `TimeZone`           | `UTC`      | `timestamptz` printed with offset `+00` (other offsets such as `+05:30` are accepted too) |
//! | `extra_float_digits` | `3`        | floats printed exactly (shortest round-trip form) |
//! | `bytea_output`       | `hex`      | `bytea` printed as `\x0a0b…`                      |
//!
//! # Types
//!
//! Values are typed by the column's type OID: `bool`, `int2`, `int4`, `int8`,
//! `float4`, `float8` (including `NaN`, `Infinity`, `-Infinity`), `numeric`
//! (exact text, [`Numeric`](crate::Numeric)), `text`/`varchar`/`bpchar`/`name`,
//! `uuid`, `date`, `time`, `timestamp`, `timestamptz` (microseconds kept),
//! `interval`, `json`/`jsonb`, `bytea`, and arrays of all of these (nested
//! [`Value::Array`]s for multi-dimensional arrays). A domain is decoded as
//! its base type, and an array of a domain as an array of its base, once
//! [`Decoder::set_base_types`] says so (the listener resolves them from the
//! catalog when a relation is announced). Enums and every other type become
//! [`Value::Text`] with PostgreSQL's text form.
//!
//! BC dates and timestamps (`0044-03-15 BC`) are typed: PostgreSQL's BC
//! years are proleptic Gregorian like chrono's, `N BC` being chrono's year
//! `1 - N`. Values chrono cannot represent are kept as [`Value::Text`]
//! holding the literal as PostgreSQL printed it: `infinity` and `-infinity`
//! dates, timestamps and intervals (a [`MaybeInfinite`](crate::MaybeInfinite)
//! field takes them; a plain chrono field fails naming the value and that
//! type), years beyond chrono's range, and the time `24:00:00`.
//!
//! A value that does not parse for its type is never a silently wrong
//! value, nor an error that stops the stream: the event carries
//! [`Value::Invalid`] for that column (its type, text and the reason), and
//! only what reads the column fails, naming table, column, type and text.
//! Decoding errors are protocol faults only.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::lsn::Lsn;
use crate::raw::{Change, Changes, ColumnType, EventKind, RawEvent};
use crate::value::{InvalidValue, Record, Value};

mod message;
mod text;

pub use message::{
    OldTuple, PgOutputMessage, RelationColumn, RelationMessage, TRUNCATE_CASCADE,
    TRUNCATE_RESTART_IDENTITY, TupleColumn, TupleData, TupleIter, parse_message,
};
pub use text::oid;

/// Startup options for the replication connection (the `options` connection
/// parameter) that pin the text formats the decoder reads.
pub const SESSION_OPTIONS: &str = "-c datestyle=ISO,MDY -c intervalstyle=iso_8601 -c timezone=UTC -c extra_float_digits=3 -c bytea_output=hex";

/// A pgoutput payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload was empty.
    #[error("empty pgoutput message")]
    Empty,
    /// The first byte is not a pgoutput protocol version 1 message type.
    #[error("unknown pgoutput message type {c:?} (0x{n:02x})", c = char::from(*.0), n = .0)]
    UnknownMessage(u8),
    /// The message ended before a field.
    #[error("truncated pgoutput {message} message: {what} missing")]
    Truncated {
        /// Message type, e.g. `Relation`.
        message: &'static str,
        /// The field that is missing.
        what: &'static str,
    },
    /// A field holds an impossible value.
    #[error("malformed pgoutput {message} message: {what}")]
    Malformed {
        /// Message type, e.g. `Update`.
        message: &'static str,
        /// What is wrong.
        what: String,
    },
    /// A row message refers to a relation id never announced by a Relation
    /// message.
    #[error("pgoutput message refers to unknown relation id {0}")]
    UnknownRelation(u32),
    /// A tuple does not have as many columns as its relation.
    #[error("table `{schema}.{table}`: tuple has {got} columns, relation has {expected}")]
    ColumnCount {
        /// Schema.
        schema: String,
        /// Table.
        table: String,
        /// Columns in the Relation message.
        expected: usize,
        /// Columns in the tuple.
        got: usize,
    },
    /// A value arrived in binary form (walflow never requests binary mode).
    #[error(
        "table `{table}`, column `{column}`: value in binary format, but only text format is supported (do not set `binary` in the publication options)"
    )]
    BinaryValue {
        /// Table (`schema.table`).
        table: String,
        /// Column.
        column: String,
    },
}

/// Microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's epoch) as a UTC
/// time. Saturates at chrono's limits.
pub fn pg_epoch_micros_to_utc(micros: i64) -> DateTime<Utc> {
    const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
    match micros.checked_add(PG_EPOCH_UNIX_MICROS) {
        Some(unix) => DateTime::from_timestamp_micros(unix),
        None => None,
    }
    .unwrap_or(if micros < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// The transaction being decoded.
///
/// [`Decoder::decode`] fills it from Begin (`xid`, `commit_time`,
/// `commit_lsn` = the commit record's LSN, `next_seq` = 0) and Commit
/// (`commit_lsn` = the transaction's end LSN, `commit_time`), and stamps every
/// event with it, incrementing `next_seq`. Events decoded before the Commit
/// therefore carry Begin's `final_lsn`; a listener that buffers the
/// transaction until Commit calls [`TxInfo::stamp`] to give them the end LSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxInfo {
    /// Commit position of the transaction.
    pub commit_lsn: Lsn,
    /// Commit time.
    pub commit_time: DateTime<Utc>,
    /// Transaction id.
    pub xid: u32,
    /// `seq` of the next event.
    pub next_seq: u32,
}

impl Default for TxInfo {
    fn default() -> Self {
        TxInfo {
            commit_lsn: Lsn::ZERO,
            commit_time: DateTime::<Utc>::UNIX_EPOCH,
            xid: 0,
            next_seq: 0,
        }
    }
}

impl TxInfo {
    /// Sets `commit_lsn`, `commit_time` and `xid` of `events` to this
    /// transaction's.
    pub fn stamp(&self, events: &mut [RawEvent]) {
        for e in events {
            e.commit_lsn = self.commit_lsn;
            e.commit_time = self.commit_time;
            e.xid = self.xid;
        }
    }
}

/// A table's replica identity, as announced in its Relation message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key (old rows carry the key only).
    Default,
    /// `n`: nothing (no old rows).
    Nothing,
    /// `f`: full (old rows carry every column).
    Full,
    /// `i`: a unique index (old rows carry its columns only).
    Index,
    /// Any other setting byte.
    Other(u8),
}

impl ReplicaIdentity {
    fn from_byte(b: u8) -> Self {
        match b {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            other => ReplicaIdentity::Other(other),
        }
    }
}

/// A published table, as last announced by a Relation message.
#[derive(Debug, Clone)]
pub struct RelationInfo {
    /// Relation id (the table's OID).
    pub id: u32,
    /// Schema.
    pub schema: Arc<str>,
    /// Table name.
    pub table: Arc<str>,
    /// Replica identity.
    pub replica_identity: ReplicaIdentity,
    /// Columns, in order (shared by every event of the table).
    pub columns: Arc<[ColumnType]>,
    /// Column names, in order (shared by every record of the table).
    pub names: Arc<[Arc<str>]>,
    /// Names of the key (replica identity) columns, in order. With `REPLICA
    /// IDENTITY FULL`, PostgreSQL flags every column as part of the key.
    pub key_names: Arc<[Arc<str>]>,
    /// Positions of the key columns in `columns`.
    pub key_indices: Box<[usize]>,
    /// `schema.table`, for error messages.
    qualified: String,
    /// Per column, the type its text is decoded as: the column's type, or
    /// for a domain its base type ([`Decoder::set_base_types`]).
    decode_oids: Box<[u32]>,
}

impl RelationInfo {
    /// The type column `i`'s values are decoded as (a domain's base type
    /// once [`Decoder::set_base_types`] told it).
    pub fn decode_oid(&self, i: usize) -> u32 {
        self.decode_oids[i]
    }
}

/// A custom type, as announced by a Type message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// Type OID.
    pub id: u32,
    /// Schema.
    pub schema: String,
    /// Type name.
    pub name: String,
}

/// What a payload was, as reported by [`Decoder::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Begin of a transaction (the [`TxInfo`] was reset).
    Begin {
        /// LSN of the commit record.
        final_lsn: Lsn,
        /// Transaction id.
        xid: u32,
    },
    /// Commit of the transaction (the [`TxInfo`] now holds its end LSN).
    Commit {
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// End LSN of the transaction.
        end_lsn: Lsn,
    },
    /// Insert, update, delete or truncate: this many events were pushed.
    Rows(usize),
    /// A relation was (re)defined.
    Relation(u32),
    /// A custom type was announced.
    Type(u32),
    /// The transaction comes from another origin.
    Origin,
    /// A logical decoding message.
    Message {
        /// Emitted transactionally.
        transactional: bool,
        /// LSN of the message.
        lsn: Lsn,
        /// Prefix.
        prefix: String,
        /// Content.
        content: Vec<u8>,
    },
}

/// Stateful pgoutput decoder: caches relations and types, turns row messages
/// into [`RawEvent`]s.
#[derive(Debug, Default, Clone)]
pub struct Decoder {
    relations: HashMap<u32, RelationInfo>,
    types: HashMap<u32, TypeInfo>,
}

impl Decoder {
    /// A decoder that knows no relation yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The relation with id `id`, if announced.
    pub fn relation(&self, id: u32) -> Option<&RelationInfo> {
        self.relations.get(&id)
    }

    /// Decodes the columns of relation `relation_id` whose type is a key of
    /// `base` as the type it maps to: a domain as its base type (an array
    /// of a domain as the array of its base), so a domain over `int4`
    /// arrives as [`Value::Int4`]. The listener resolves them from the
    /// catalog when a Relation message announces a column of a type that
    /// is not built in. No effect on a relation not announced.
    pub fn set_base_types(&mut self, relation_id: u32, base: &HashMap<u32, u32>) {
        if let Some(r) = self.relations.get_mut(&relation_id) {
            for (i, c) in r.columns.iter().enumerate() {
                r.decode_oids[i] = base.get(&c.type_oid).copied().unwrap_or(c.type_oid);
            }
        }
    }

    /// The custom type with OID `id`, if announced.
    pub fn type_info(&self, id: u32) -> Option<&TypeInfo> {
        self.types.get(&id)
    }

    /// Decodes one pgoutput payload at WAL position `lsn` inside transaction
    /// `tx`, pushing 0..n events to `out`.
    ///
    /// - Insert, Update and Delete push one event; Truncate one event per
    ///   table (`kind = Truncate`, no records).
    /// - Relation, Type and Origin update the decoder's state and push
    ///   nothing; a Relation message replaces an earlier one with the same id.
    /// - Begin and Commit update `tx` (see [`TxInfo`]).
    ///
    /// Records:
    ///
    /// - `new` holds every column. A TOASTed value the update did not change
    ///   (not sent by PostgreSQL) is taken from the full old row when there
    ///   is one, and is [`Value::UnchangedToast`] otherwise.
    /// - `old` is the full old row when PostgreSQL sent one (`REPLICA
    ///   IDENTITY FULL`); when it sent only the key (`K`), `old` is a record
    ///   holding **only the key columns** (names and values), not the others.
    /// - `changes` (updates with a full old row only) lists the columns whose
    ///   values differ; an unchanged TOASTed value is never listed.
    ///
    /// On error nothing is pushed to `out` and `tx` is left as it was.
    pub fn decode(
        &mut self,
        tx: &mut TxInfo,
        lsn: Lsn,
        data: &[u8],
        out: &mut Vec<RawEvent>,
    ) -> Result<Decoded, DecodeError> {
        match parse_message(data)? {
            PgOutputMessage::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                *tx = TxInfo {
                    commit_lsn: final_lsn,
                    commit_time: pg_epoch_micros_to_utc(commit_time),
                    xid,
                    next_seq: 0,
                };
                Ok(Decoded::Begin { final_lsn, xid })
            }
            PgOutputMessage::Commit {
                commit_lsn,
                end_lsn,
                commit_time,
                ..
            } => {
                tx.commit_lsn = end_lsn;
                tx.commit_time = pg_epoch_micros_to_utc(commit_time);
                Ok(Decoded::Commit {
                    commit_lsn,
                    end_lsn,
                })
            }
            PgOutputMessage::Origin { .. } => Ok(Decoded::Origin),
            PgOutputMessage::Relation(rel) => {
                let id = rel.id;
                self.relations.insert(id, RelationInfo::from_message(&rel));
                Ok(Decoded::Relation(id))
            }
            PgOutputMessage::Type {
                id,
                namespace,
                name,
            } => {
                self.types.insert(
                    id,
                    TypeInfo {
                        id,
                        schema: namespace.to_owned(),
                        name: name.to_owned(),
                    },
                );
                Ok(Decoded::Type(id))
            }
            PgOutputMessage::Insert { relation_id, new } => {
                let rel = self.rel(relation_id)?;
                let values = rel.values(&new, None)?;
                let new = Record::new(rel.names.clone(), values);
                out.push(event(
                    rel,
                    tx,
                    lsn,
                    EventKind::Insert,
                    Some(new),
                    None,
                    None,
                ));
                Ok(Decoded::Rows(1))
            }
            PgOutputMessage::Update {
                relation_id,
                old,
                new,
            } => {
                let rel = self.rel(relation_id)?;
                let (old, new, changes) = match old {
                    None => (None, rel.values(&new, None)?, None),
                    Some(OldTuple::Key(k)) => {
                        (Some(rel.key_record(&k)?), rel.values(&new, None)?, None)
                    }
                    Some(OldTuple::Full(o)) => {
                        let old = rel.values(&o, None)?;
                        let new = rel.values(&new, Some(&old))?;
                        let changes = diff(rel, &old, &new);
                        (
                            Some(Record::new(rel.names.clone(), old)),
                            new,
                            Some(changes),
                        )
                    }
                };
                let new = Record::new(rel.names.clone(), new);
                out.push(event(
                    rel,
                    tx,
                    lsn,
                    EventKind::Update,
                    Some(new),
                    old,
                    changes,
                ));
                Ok(Decoded::Rows(1))
            }
            PgOutputMessage::Delete { relation_id, old } => {
                let rel = self.rel(relation_id)?;
                let old = match old {
                    OldTuple::Key(k) => rel.key_record(&k)?,
                    OldTuple::Full(o) => Record::new(rel.names.clone(), rel.values(&o, None)?),
                };
                out.push(event(
                    rel,
                    tx,
                    lsn,
                    EventKind::Delete,
                    None,
                    Some(old),
                    None,
                ));
                Ok(Decoded::Rows(1))
            }
            PgOutputMessage::Truncate { relation_ids, .. } => {
                let rels = relation_ids
                    .iter()
                    .map(|&id| self.rel(id))
                    .collect::<Result<Vec<_>, _>>()?;
                for rel in &rels {
                    out.push(event(rel, tx, lsn, EventKind::Truncate, None, None, None));
                }
                Ok(Decoded::Rows(rels.len()))
            }
            PgOutputMessage::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => Ok(Decoded::Message {
                transactional,
                lsn,
                prefix: prefix.to_owned(),
                content: content.to_vec(),
            }),
        }
    }

    fn rel(&self, id: u32) -> Result<&RelationInfo, DecodeError> {
        self.relations
            .get(&id)
            .ok_or(DecodeError::UnknownRelation(id))
    }
}

fn event(
    rel: &RelationInfo,
    tx: &mut TxInfo,
    lsn: Lsn,
    kind: EventKind,
    new: Option<Record>,
    old: Option<Record>,
    changes: Option<Changes>,
) -> RawEvent {
    let seq = tx.next_seq;
    tx.next_seq = tx.next_seq.wrapping_add(1);
    RawEvent {
        schema: rel.schema.clone(),
        table: rel.table.clone(),
        kind,
        new,
        old,
        changes,
        columns: rel.columns.clone(),
        lsn,
        commit_lsn: tx.commit_lsn,
        commit_time: tx.commit_time,
        xid: tx.xid,
        seq,
    }
}

/// The columns whose values differ between `old` and `new`.
fn diff(rel: &RelationInfo, old: &[Value], new: &[Value]) -> Changes {
    let mut changes = Changes::new();
    for ((name, o), n) in rel.names.iter().zip(old).zip(new) {
        if matches!(o, Value::UnchangedToast)
            || matches!(n, Value::UnchangedToast)
            || same_value(o, n)
        {
            continue;
        }
        changes.insert(
            name.clone(),
            Change {
                old: o.clone(),
                new: n.clone(),
            },
        );
    }
    changes
}

/// Equality where `NaN` equals `NaN` (an update leaving a NaN alone is not a
/// change).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float4(x), Value::Float4(y)) => x == y || (x.is_nan() && y.is_nan()),
        (Value::Float8(x), Value::Float8(y)) => x == y || (x.is_nan() && y.is_nan()),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        _ => a == b,
    }
}

impl RelationInfo {
    fn from_message(m: &RelationMessage<'_>) -> Self {
        let columns: Arc<[ColumnType]> = m
            .columns
            .iter()
            .map(|c| ColumnType {
                name: Arc::from(c.name),
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
                key: c.flags & 1 != 0,
            })
            .collect();
        let names: Arc<[Arc<str>]> = columns.iter().map(|c| c.name.clone()).collect();
        let key_indices: Box<[usize]> = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
            .collect();
        let key_names = key_indices.iter().map(|&i| names[i].clone()).collect();
        RelationInfo {
            id: m.id,
            schema: Arc::from(m.namespace),
            table: Arc::from(m.name),
            replica_identity: ReplicaIdentity::from_byte(m.replica_identity),
            columns,
            names,
            key_names,
            key_indices,
            qualified: format!("{}.{}", m.namespace, m.name),
            decode_oids: m.columns.iter().map(|c| c.type_oid).collect(),
        }
    }

    fn check_len(&self, tuple: &TupleData<'_>) -> Result<(), DecodeError> {
        if tuple.len() == self.columns.len() {
            Ok(())
        } else {
            Err(DecodeError::ColumnCount {
                schema: self.schema.to_string(),
                table: self.table.to_string(),
                expected: self.columns.len(),
                got: tuple.len(),
            })
        }
    }

    /// Decodes every column; unchanged TOAST values come from `old` if given.
    fn values(
        &self,
        tuple: &TupleData<'_>,
        old: Option<&[Value]>,
    ) -> Result<Vec<Value>, DecodeError> {
        self.check_len(tuple)?;
        let mut values = Vec::with_capacity(tuple.len());
        for (i, (col, ty)) in tuple.iter().zip(self.columns.iter()).enumerate() {
            values.push(match col {
                TupleColumn::UnchangedToast => match old {
                    Some(old) => old[i].clone(),
                    None => Value::UnchangedToast,
                },
                other => self.value(i, ty, other)?,
            });
        }
        Ok(values)
    }

    /// A record of the key columns only.
    fn key_record(&self, tuple: &TupleData<'_>) -> Result<Record, DecodeError> {
        self.check_len(tuple)?;
        let mut values = Vec::with_capacity(self.key_indices.len());
        let mut keys = self.key_indices.iter().peekable();
        for (i, col) in tuple.iter().enumerate() {
            if keys.peek() == Some(&&i) {
                keys.next();
                values.push(self.value(i, &self.columns[i], col)?);
            }
        }
        Ok(Record::new(self.key_names.clone(), values))
    }

    fn value(&self, i: usize, ty: &ColumnType, col: TupleColumn<'_>) -> Result<Value, DecodeError> {
        let oid = self.decode_oids[i];
        match col {
            TupleColumn::Null => Ok(Value::Null),
            TupleColumn::UnchangedToast => Ok(Value::UnchangedToast),
            TupleColumn::Binary(_) => Err(DecodeError::BinaryValue {
                table: self.qualified.clone(),
                column: ty.name.to_string(),
            }),
            TupleColumn::Text(s) => Ok(text::decode_text(oid, s).unwrap_or_else(|reason| {
                Value::Invalid(InvalidValue {
                    type_name: text::type_name(oid),
                    text: String::from_utf8_lossy(s).into_owned(),
                    reason: reason.to_owned(),
                })
            })),
        }
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

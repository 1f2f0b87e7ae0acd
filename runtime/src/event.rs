//! Typed change events: a [`RawEvent`] decoded into the application's struct.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::declare::EventSource;
use crate::lsn::Lsn;
pub use crate::lsn::Position;
use crate::raw::{Change, Changes, EventKind, RawEvent};
use crate::value::{Record, RecordError};

/// Where and when a change happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMeta {
    /// Schema of the table.
    pub schema: Arc<str>,
    /// Table name.
    pub table: Arc<str>,
    /// Position of the change in the WAL.
    pub lsn: Lsn,
    /// LSN of the enclosing transaction's commit record.
    pub commit_lsn: Lsn,
    /// Commit time of the enclosing transaction.
    pub commit_time: DateTime<Utc>,
    /// Transaction id.
    pub xid: u32,
    /// Index of the change within its transaction, from 0.
    pub seq: u32,
}

impl EventMeta {
    /// The metadata of a raw event.
    pub fn from_raw(raw: &RawEvent) -> Self {
        EventMeta {
            schema: raw.schema.clone(),
            table: raw.table.clone(),
            lsn: raw.lsn,
            commit_lsn: raw.commit_lsn,
            commit_time: raw.commit_time,
            xid: raw.xid,
            seq: raw.seq,
        }
    }

    /// The change's [`Position`]: its stable id, the same as
    /// [`Event::id`] (see there).
    pub fn position(&self) -> Position {
        Position {
            commit_lsn: self.commit_lsn,
            seq: self.seq,
        }
    }
}

/// A change to a row of an `#[event_source]` table, with the row decoded
/// into `T`.
///
/// Serializes with a `kind` tag (`"insert"`, `"update"`, ...), in plain
/// JSON throughout: `old` and `new` as `T` serializes, and an update's
/// `changes` with each value as [`Value::to_plain_json`](crate::Value::to_plain_json)
/// writes it, e.g. `{"kind":"update","old":{"id":1,"comments_count":0},
/// "new":{"id":1,"comments_count":1},"changes":{"comments_count":{"old":0,"new":1}},
/// "meta":{...}}` (see [`Change`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event<T> {
    /// A row was inserted.
    Insert {
        /// The inserted row.
        new: T,
        /// Where and when.
        meta: EventMeta,
    },
    /// A row was updated.
    Update {
        /// The row before the update, when PostgreSQL sent all of it (tables
        /// with `REPLICA IDENTITY FULL`, which walflow sets up by default).
        old: Option<T>,
        /// The row after the update.
        new: T,
        /// The columns whose value changed (empty when the old row is unknown).
        #[serde(serialize_with = "crate::raw::serialize_plain_changes")]
        changes: Changes,
        /// Where and when.
        meta: EventMeta,
    },
    /// A row was deleted.
    Delete {
        /// The deleted row.
        old: T,
        /// Where and when.
        meta: EventMeta,
    },
    /// The table was truncated (only for operators that list `truncate`).
    Truncate {
        /// Where and when.
        meta: EventMeta,
    },
}

static NO_CHANGES: Changes = Changes::new();

impl<T> Event<T> {
    /// The row an operator reads: the new row for inserts and updates, the
    /// old row for deletes, none for truncates.
    pub fn record(&self) -> Option<&T> {
        match self {
            Event::Insert { new, .. } | Event::Update { new, .. } => Some(new),
            Event::Delete { old, .. } => Some(old),
            Event::Truncate { .. } => None,
        }
    }

    /// Like [`record`](Self::record), by value.
    pub fn into_record(self) -> Option<T> {
        match self {
            Event::Insert { new, .. } | Event::Update { new, .. } => Some(new),
            Event::Delete { old, .. } => Some(old),
            Event::Truncate { .. } => None,
        }
    }

    /// What happened.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Insert { .. } => EventKind::Insert,
            Event::Update { .. } => EventKind::Update,
            Event::Delete { .. } => EventKind::Delete,
            Event::Truncate { .. } => EventKind::Truncate,
        }
    }

    /// The stable id of this change: the LSN of its transaction's commit
    /// record and its index in the transaction ([`Position`], the same as
    /// [`EventMeta::position`]).
    ///
    /// It is the change's place in the WAL, not a count kept by the
    /// process, so it is the same every time walflow delivers the change:
    /// a handler's retry, a replayed dead letter, a redelivery after a crash
    /// or a restart, and on every node of the flow (the events a node
    /// receives from another carry it too). No two changes share it, and it
    /// orders like the WAL: commit order, then order within the
    /// transaction. (The index counts the changes the flow's publication
    /// sends, so flows publishing different tables can number one
    /// transaction's changes differently.)
    ///
    /// Its [`Display`](std::fmt::Display) form is `16/B374D848#3`: the
    /// commit LSN as PostgreSQL writes it, `#`, the index in decimal (at
    /// most 28 characters); it reads back with [`FromStr`](std::str::FromStr).
    /// That text is the `id` of the change in Server-Sent Events (what a
    /// browser sends back as `Last-Event-ID`) and the CloudEvents `id`
    /// (`subscribe::sse`, feature `axum`). In a handler it equals
    /// [`Ctx::position`](crate::ctx::Ctx::position).
    ///
    /// # Idempotency keys
    ///
    /// Handlers run at least once: after a crash, an event whose handler
    /// ran but whose completion was not recorded runs again, on this node
    /// or another. A handler whose effects leave the database (an HTTP
    /// call, an email, a payment) should pass the id as the idempotency key
    /// the other side deduplicates on (an `Idempotency-Key` header, a
    /// payment provider's idempotency key), as a consumer of Sequin passes
    /// on its `idempotency_key`, so that the effect happens once however
    /// often the handler runs. Writes to the database need no key: made
    /// through [`Ctx::transaction`](crate::ctx::Ctx::transaction) they
    /// commit together with the event's completion, exactly once.
    ///
    /// ```
    /// # #![allow(dead_code)]
    /// use walflow_runtime::{Ctx, Event};
    /// # #[derive(serde::Deserialize)] struct Order { id: i64, email: String }
    /// # struct Mailer;
    /// # impl Mailer {
    /// #     async fn send(&self, _to: &str, _body: String, _key: &str) -> std::io::Result<()> { Ok(()) }
    /// # }
    /// # static MAILER: Mailer = Mailer;
    ///
    /// async fn send_receipt(event: Event<Order>, ctx: Ctx) -> std::io::Result<()> {
    ///     let order = event.record().expect("an insert");
    ///     // The same key however often this runs for this change: `16/B374D848#3`.
    ///     let key = event.id().to_string();
    ///     assert_eq!(event.id(), ctx.position());
    ///     MAILER.send(&order.email, format!("order {}", order.id), &key).await
    /// }
    /// ```
    pub fn id(&self) -> Position {
        self.meta().position()
    }

    /// Where and when it happened.
    pub fn meta(&self) -> &EventMeta {
        match self {
            Event::Insert { meta, .. }
            | Event::Update { meta, .. }
            | Event::Delete { meta, .. }
            | Event::Truncate { meta } => meta,
        }
    }

    /// The columns an update changed, by column name: `changes().get("title")`.
    /// Empty for other kinds of events.
    pub fn changes(&self) -> &Changes {
        match self {
            Event::Update { changes, .. } => changes,
            _ => &NO_CHANGES,
        }
    }

    /// Whether an update changed `column`.
    pub fn changed(&self, column: &str) -> Option<&Change> {
        self.changes().get(column)
    }
}

impl<T: DeserializeOwned> Event<T> {
    /// Decodes a raw event's rows into `T`, without checking its table.
    ///
    /// The old row of an update is `None` when it is absent or incomplete
    /// (tables without `REPLICA IDENTITY FULL` send only the key columns).
    pub fn from_raw(raw: &RawEvent) -> Result<Self, EventDecodeError> {
        let meta = EventMeta::from_raw(raw);
        let decode = |record: Option<&Record>, row: &'static str| -> Result<T, EventDecodeError> {
            let record = record.ok_or_else(|| EventDecodeError::MissingRow {
                rust_type: std::any::type_name::<T>(),
                table: raw.table.to_string(),
                kind: raw.kind,
                row,
            })?;
            record
                .deserialize_into(&raw.table)
                .map_err(|source| EventDecodeError::Record {
                    rust_type: std::any::type_name::<T>(),
                    kind: raw.kind,
                    source,
                })
        };
        Ok(match raw.kind {
            EventKind::Insert => Event::Insert {
                new: decode(raw.new.as_ref(), "new")?,
                meta,
            },
            EventKind::Update => Event::Update {
                old: raw
                    .old
                    .as_ref()
                    .and_then(|old| old.deserialize_into(&raw.table).ok()),
                new: decode(raw.new.as_ref(), "new")?,
                changes: raw.changes.clone().unwrap_or_default(),
                meta,
            },
            EventKind::Delete => Event::Delete {
                old: decode(raw.old.as_ref(), "old")?,
                meta,
            },
            EventKind::Truncate => Event::Truncate { meta },
        })
    }
}

/// A raw event could not be turned into the typed event a handler takes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EventDecodeError {
    /// A row did not deserialize into the struct.
    #[error("cannot decode the {kind} event into `{rust_type}`: {source}")]
    Record {
        /// The Rust type the row was decoded into.
        rust_type: &'static str,
        /// The kind of event.
        kind: EventKind,
        /// Which table and column, and what went wrong.
        #[source]
        source: RecordError,
    },
    /// The event carries no row where one was expected.
    #[error("the {kind} event of table `{table}` has no {row} row to decode into `{rust_type}`")]
    MissingRow {
        /// The Rust type the row was to be decoded into.
        rust_type: &'static str,
        /// The table.
        table: String,
        /// The kind of event.
        kind: EventKind,
        /// `"new"` or `"old"`.
        row: &'static str,
    },
    /// The event belongs to a table the type does not stand for.
    #[error(
        "`{rust_type}` does not carry events of table `{schema}.{table}`; \
         list the table's `#[event_source]` type in the operator's `entities`"
    )]
    UnexpectedTable {
        /// The Rust type the event was to be decoded into.
        rust_type: &'static str,
        /// Schema of the event's table.
        schema: String,
        /// The event's table.
        table: String,
    },
}

/// A type a handler can take: built from a raw event by table.
///
/// Implemented for [`Event<T>`] of every `#[event_source]` type and by
/// `#[event_enum]` for enums of them.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event type a handler can take",
    label = "this handler's first argument is `{Self}`",
    note = "a handler takes `Event<T>` of an `#[event_source]` type `T`, or an `#[event_enum]`"
)]
pub trait FromRawEvent: Sized {
    /// Decodes the raw event.
    fn from_raw_event(raw: &RawEvent) -> Result<Self, EventDecodeError>;
}

impl<T: EventSource + DeserializeOwned> FromRawEvent for Event<T> {
    fn from_raw_event(raw: &RawEvent) -> Result<Self, EventDecodeError> {
        if !T::is_table(raw) {
            return Err(EventDecodeError::UnexpectedTable {
                rust_type: std::any::type_name::<Self>(),
                schema: raw.schema.to_string(),
                table: raw.table.to_string(),
            });
        }
        Event::from_raw(raw)
    }
}

/// `Self` can carry the events of entity `T`: [`Event<T>`] itself, or an
/// `#[event_enum]` with a variant `T(Event<T>)`.
///
/// The handler of an operator must take a type that carries the events of
/// every entity the operator lists.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not carry events of `{T}`",
    label = "this handler cannot take events of `{T}`",
    note = "a handler takes `Event<{T}>` when its operator lists only `{T}`, or an `#[event_enum]` with a variant `{T}(Event<{T}>)`"
)]
pub trait Carries<T> {}

impl<T: EventSource> Carries<T> for Event<T> {}

/// An enum generated from `#[event_enum]`: one variant per entity.
pub trait EventEnum: FromRawEvent {
    /// What happened.
    fn kind(&self) -> EventKind;
    /// Where and when it happened.
    fn meta(&self) -> &EventMeta;
    /// The stable id of the change: [`Event::id`] of the variant's event.
    fn id(&self) -> Position {
        self.meta().position()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    struct Post {
        id: i64,
        title: String,
    }

    fn record(id: i64, title: &str) -> Record {
        Record::new(
            vec![Arc::from("id"), Arc::from("title")].into(),
            vec![Value::Int8(id), Value::Text(title.into())],
        )
    }

    fn raw(kind: EventKind, new: Option<Record>, old: Option<Record>) -> RawEvent {
        RawEvent {
            schema: "public".into(),
            table: "posts".into(),
            kind,
            new,
            old,
            changes: None,
            columns: Arc::from(Vec::new()),
            lsn: Lsn(0x10),
            commit_lsn: Lsn(0x1_0000_0020),
            commit_time: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            xid: 7,
            seq: 3,
        }
    }

    #[test]
    fn decodes_each_kind() {
        let insert =
            Event::<Post>::from_raw(&raw(EventKind::Insert, Some(record(1, "a")), None)).unwrap();
        assert_eq!(insert.kind(), EventKind::Insert);
        assert_eq!(insert.record().unwrap().title, "a");
        assert!(insert.changes().is_empty());

        let mut update = raw(
            EventKind::Update,
            Some(record(1, "b")),
            Some(record(1, "a")),
        );
        update.changes = Some(Changes::from([(
            Arc::from("title"),
            Change {
                old: Value::Text("a".into()),
                new: Value::Text("b".into()),
            },
        )]));
        let update = Event::<Post>::from_raw(&update).unwrap();
        let Event::Update { old, new, .. } = &update else {
            panic!("expected an update")
        };
        assert_eq!(old.as_ref().unwrap().title, "a");
        assert_eq!(new.title, "b");
        assert_eq!(
            update.changes().get("title").unwrap().new,
            Value::Text("b".into())
        );
        assert!(update.changed("id").is_none());

        let delete =
            Event::<Post>::from_raw(&raw(EventKind::Delete, None, Some(record(1, "a")))).unwrap();
        assert_eq!(delete.into_record().unwrap().id, 1);

        let truncate = Event::<Post>::from_raw(&raw(EventKind::Truncate, None, None)).unwrap();
        assert!(truncate.record().is_none());
        assert_eq!(truncate.meta().table.as_ref(), "posts");
    }

    #[test]
    fn update_with_partial_old_row_has_no_old() {
        let key_only = Record::new(vec![Arc::from("id")].into(), vec![Value::Int8(1)]);
        let event = Event::<Post>::from_raw(&raw(
            EventKind::Update,
            Some(record(1, "b")),
            Some(key_only),
        ))
        .unwrap();
        assert!(matches!(event, Event::Update { old: None, .. }));
    }

    #[test]
    fn errors_name_type_table_and_row() {
        let err = Event::<Post>::from_raw(&raw(EventKind::Delete, None, None)).unwrap_err();
        assert!(matches!(
            err,
            EventDecodeError::MissingRow { row: "old", .. }
        ));
        let msg = err.to_string();
        assert!(
            msg.contains("delete event of table `posts` has no old row"),
            "{msg}"
        );
        assert!(msg.contains("Post"), "{msg}");

        let bad = Record::new(vec![Arc::from("id")].into(), vec![Value::Text("x".into())]);
        let err = Event::<Post>::from_raw(&raw(EventKind::Insert, Some(bad), None)).unwrap_err();
        let EventDecodeError::Record { source, .. } = &err else {
            panic!("expected a record error, got {err}")
        };
        assert_eq!(source.table, "posts");
    }

    #[test]
    fn position_orders_and_displays() {
        let event = raw(EventKind::Insert, Some(record(1, "a")), None);
        let meta = EventMeta::from_raw(&event);
        let position = meta.position();
        assert_eq!(position, Position::from(&event));
        assert_eq!(position.to_string(), "1/20#3");
        let later = Position {
            commit_lsn: position.commit_lsn,
            seq: 4,
        };
        assert!(position < later);
        assert!(
            later
                < Position {
                    commit_lsn: Lsn(0x1_0000_0021),
                    seq: 0
                }
        );
    }

    #[test]
    fn the_id_is_the_position_and_reads_back_from_its_text() {
        let raw = raw(EventKind::Insert, Some(record(1, "a")), None);
        let event = Event::<Post>::from_raw(&raw).unwrap();
        let id = event.id();
        assert_eq!(id, event.meta().position());
        assert_eq!(id, raw.position());
        assert_eq!(
            id,
            Position {
                commit_lsn: Lsn(0x1_0000_0020),
                seq: 3
            }
        );
        // The text of the SSE and CloudEvents `id`: the commit LSN as
        // PostgreSQL writes it, `#`, the index.
        assert_eq!(id.to_string(), "1/20#3");
        assert_eq!("1/20#3".parse::<Position>().unwrap(), id);
        let widest = Position {
            commit_lsn: Lsn(u64::MAX),
            seq: u32::MAX,
        };
        assert_eq!(widest.to_string(), "FFFFFFFF/FFFFFFFF#4294967295");
        assert_eq!(widest.to_string().len(), 28);

        // Decoded again (a redelivery reads the queued raw event back), the
        // same id; an event enum gives its variant's.
        let queued: RawEvent = serde_json::from_str(&serde_json::to_string(&raw).unwrap()).unwrap();
        assert_eq!(Event::<Post>::from_raw(&queued).unwrap().id(), id);
        struct Posts(Event<Post>);
        impl FromRawEvent for Posts {
            fn from_raw_event(raw: &RawEvent) -> Result<Self, EventDecodeError> {
                Event::from_raw(raw).map(Posts)
            }
        }
        impl EventEnum for Posts {
            fn kind(&self) -> EventKind {
                self.0.kind()
            }
            fn meta(&self) -> &EventMeta {
                self.0.meta()
            }
        }
        assert_eq!(EventEnum::id(&Posts::from_raw_event(&queued).unwrap()), id);
    }

    #[test]
    fn serializes_with_a_kind_tag() {
        let event =
            Event::<Post>::from_raw(&raw(EventKind::Insert, Some(record(1, "a")), None)).unwrap();
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "insert");
        assert_eq!(json["new"]["title"], "a");
        assert_eq!(json["meta"]["table"], "posts");
    }
}

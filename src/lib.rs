//! walflow turns PostgreSQL's write-ahead log into typed events.
//!
//! Application code marks structs with `#[event_source]`, declares operators
//! with `on_event!`, and walflow keeps derived tables in step in the
//! background, with durable per-operator queues, retries with backoff and
//! realtime subscriptions. A declaration that cannot work does not compile,
//! with the error under the token at fault.
//!
//! It needs PostgreSQL 15 or newer with `wal_level = logical`, and Rust 1.95
//! or newer. The README's "Adding walflow to an application" shows the
//! `Cargo.toml` lines, the features, a whole program and the grants a role
//! needs on a managed server. Return [`Report`] from `main` so that errors
//! print as messages.
//!
//! # Example
//!
//! ```
//! # #![allow(dead_code)] // the example reads only some fields
//! use walflow::prelude::*;
//!
//! #[event_source(table = "posts")] // optional: schema = "public", id = "id"
//! #[derive(Debug, Clone, serde::Deserialize)]
//! pub struct Post { pub id: i64, pub title: String, pub updated_at: DateTime<Utc> }
//!
//! #[event_source(table = "comments")]
//! #[derive(Debug, Clone, serde::Deserialize)]
//! pub struct Comment { pub id: i64, pub post_id: i64, pub body: String, pub updated_at: DateTime<Utc> }
//!
//! #[event_source(table = "post_with_comments_counts")]
//! #[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
//! pub struct PostWithCommentsCount { pub id: i64, pub title: String, pub comments_count: i64 }
//!
//! on_event! {
//!     /// Keeps post_with_comments_counts in step with posts and comments.
//!     operator PostWithCommentsCountOperator for PostWithCommentsCount {
//!         events: all,
//!         entities: [Comment, Post],
//!         id: [Comment.post_id, Post.id],
//!         delete_with: [Post],
//!         coalesce: true,
//!         query: "MERGE INTO post_with_comments_counts dest
//!                 USING (SELECT p.id, p.title, count(c.id) AS comments_count
//!                        FROM posts p LEFT JOIN comments c ON c.post_id = p.id
//!                        WHERE p.id = $1 GROUP BY p.id) src
//!                 ON dest.id = src.id
//!                 WHEN MATCHED THEN UPDATE SET title = src.title, comments_count = src.comments_count
//!                 WHEN NOT MATCHED THEN INSERT (id, title, comments_count)
//!                      VALUES (src.id, src.title, src.comments_count)",
//!     }
//!
//!     operator CommentNotifier {
//!         events: [insert],
//!         entities: [Comment],
//!         handler: notify_author,
//!     }
//!
//!     operator Audit {
//!         events: all,
//!         entities: [Comment, Post],
//!         handler: audit,
//!     }
//! }
//!
//! #[event_enum]
//! pub enum BlogEvent { Comment(Event<Comment>), Post(Event<Post>) }
//!
//! async fn notify_author(event: Event<Comment>, ctx: Ctx) -> Result<(), std::io::Error> {
//!     if let Some(comment) = event.record() {
//!         println!("{}: new comment on post {}: {}", ctx.operator(), comment.post_id, comment.body);
//!     }
//!     Ok(())
//! }
//!
//! async fn audit(event: BlogEvent, ctx: Ctx) -> Result<(), walflow::BoxError> {
//!     let title_changed = match &event {
//!         BlogEvent::Post(e) => e.changes().get("title").is_some(),
//!         BlogEvent::Comment(_) => false,
//!     };
//!     println!("{} {} at {} (title changed: {title_changed})", event.kind(), event.meta().table, ctx.position());
//!     Ok(())
//! }
//!
//! // Typed columns, for subscriptions:
//! assert_eq!(Comment::POST_ID.column(), "post_id");
//!
//! // What the runtime reads at start-up:
//! let registry = walflow::Registry::from_inventory().unwrap();
//! let names: Vec<_> = registry.operators().map(|o| o.name).collect();
//! assert_eq!(names, ["Audit", "CommentNotifier", "PostWithCommentsCountOperator"]);
//! assert_eq!(PostWithCommentsCountOperator::NAME, "PostWithCommentsCountOperator");
//! ```
//!
//! # Declaring entities
//!
//! `#[event_source(table = "...")]` goes on a struct with named fields that
//! derives `serde::Deserialize`. Keys:
//!
//! | key | meaning | default |
//! | --- | --- | --- |
//! | `table` | the table (required) | |
//! | `schema` | its schema | `"public"` |
//! | `id` | the field holding the row's id; any type (integers, `Uuid`, `String`, ...) | `"id"` |
//! | `replica_identity` | `"full"`: walflow sets `REPLICA IDENTITY FULL` so updates and deletes carry the whole old row; `"default"`: leave the table alone (deletes then carry only the key columns, so a handler taking `Event<T>` needs the other fields to be `Option` or `#[serde(default)]`) | `"full"` |
//! | `crate` | the path walflow is reached through, for a crate that re-exports it (as serde's `crate = "..."`) | `"::walflow"` |
//!
//! A field reads the column named like it, or its `#[serde(rename = "...")]`
//! (`#[serde(rename_all = "...")]` on the struct is honoured too). The struct
//! gets [`EventSource`] and one typed [`Field`] constant per field, named
//! after it in upper case: `Comment::POST_ID: Field<Comment, i64>`.
//!
//! # Declaring operators
//!
//! `on_event! { ... }` holds any number of operators, each
//! `[doc comments] [pub] operator Name [for Target] { key: value, ... }`:
//!
//! | key | value |
//! | --- | --- |
//! | `events` | `all` (insert, update and delete) or a non-empty list of `insert`, `update`, `delete`, `truncate` |
//! | `entities` | the `#[event_source]` types it listens to, such as `[Comment, Post]` |
//! | `id` | optional: `[Entity.field, ...]`, which field of each entity gives the id; an entity without an entry maps through its own id field |
//! | `query` | SQL run with the mapped id as `$1` (and no other parameter); needs `for Target`, whose id column `delete_with` deletes by |
//! | `handler` | an `async fn(E, Ctx) -> Result<(), Err>` with `Err: Into<BoxError>`; `E` is `Event<T>` when the operator lists only `T`, otherwise an `#[event_enum]` with a variant per entity |
//! | `delete_with` | query operators only, optional: entities whose deletes delete the target row instead of running the query |
//! | `coalesce` | query operators only, optional: `true` when the query recomputes from current state, so pending events for one id may run it once |
//! | `writes` | handlers only, optional: the `#[event_source]` types the handler writes (beside its `for Target`), such as `[AuditLog]`; [`Walflow::wait_processed`] waits through the operators listening to them |
//!
//! A first line `crate = "my_crate::walflow";` gives the path walflow is
//! reached through (`#[event_enum(crate = "...")]` takes it too).
//!
//! A derived table equals what its query computes from scratch when the
//! query is deterministic and reads only the operator's entities (no
//! `now()`, `random()` or other tables: coalescing and the covered-run rule
//! rely on it), with full replica identity, one live flow per slot, and the
//! rows that existed before the first start filled in, which walflow does
//! not do today. A query reading another table, or calling `now()` and the
//! like, is a warning at start (see [`on_event!`](prelude::on_event)).
//!
//! Each operator becomes a unit struct (with its doc comments and
//! visibility) whose `NAME` is the name it is registered under. The types are
//! checked where they are written: every entity and the target are event
//! sources, the `id` fields exist and have the target's id type (without a
//! target: one type across the `id` entries), and the handler takes events of
//! every entity.
//!
//! `#[event_enum]` on `enum BlogEvent { Comment(Event<Comment>), Post(Event<Post>) }`
//! generates `From<Event<T>>` per variant, decoding from a raw event by table
//! and [`EventEnum`] (`kind()`, `meta()`, `id()`).
//!
//! [`Registry::from_inventory`] collects every declaration linked into the
//! program and reports tables declared twice, operators named twice, query
//! operators listening to their own target, and tables no `#[event_source]`
//! declares.

#![doc(test(attr(deny(warnings))))]

// The flow and its configuration.
pub use walflow_runtime::config::{self, Config, ConfigBuilder, ConfigError};
pub use walflow_runtime::flow::{self, DeadLetter, FlowError, Walflow, WalflowBuilder};

// Events.
pub use walflow_runtime::event::{
    Carries, Event, EventDecodeError, EventEnum, EventMeta, FromRawEvent,
};
pub use walflow_runtime::lsn::{Lsn, ParseLsnError, ParsePositionError, Position};
pub use walflow_runtime::raw::{
    Change, Changes, ColumnType, EventKind, RawEvent, UnknownEventKind,
};
pub use walflow_runtime::value::{
    Interval, InvalidValue, MaybeInfinite, Numeric, Record, RecordError, Value,
};

// Declarations and what handlers get.
pub use walflow_runtime::ctx::Ctx;
pub use walflow_runtime::declare::{BoxError, EventSource, Field, Location, TableName, TableRef};
pub use walflow_runtime::registry::{
    EntityRegistration, HandlerError, HandlerFn, OperatorAction, OperatorRegistration, Registry,
    RegistryError, RegistryProblem,
};

// An error for `main` that prints as a person reads it.
pub use walflow_runtime::report::Report;

// Retries.
pub use walflow_runtime::backoff::Backoff;
pub use walflow_runtime::config::{ErrorLogger, FailureInfo, RetryInfo, TracingErrorLogger};

// Realtime subscriptions (and Server-Sent Events with the `axum` feature).
pub use walflow_runtime::subscribe;

// Metrics and health (and their HTTP endpoint with the `prometheus` feature).
pub use walflow_runtime::telemetry::{self, Health, HealthState};

// The listener for direct use, the set-up it needs, and the server checks.
pub use walflow_runtime::{ident, listener, migrate, preflight, setup};

// What the `walflow` command reads and changes beside a running flow.
pub use walflow_runtime::admin;

/// A throwaway PostgreSQL for tests, examples and local development.
#[cfg(feature = "embedded")]
pub use walflow_runtime::embedded;

pub use chrono;
/// The sqlx walflow is built with: [`Walflow::pool`] and [`Ctx::transaction`]
/// hand out its types, so an application that uses them through this path
/// needs no version of its own to match.
pub use sqlx;

#[doc(hidden)]
pub use walflow_runtime::crash_point;

/// What declarations need: `use walflow::prelude::*;`.
pub mod prelude {
    pub use chrono::{DateTime, Utc};
    pub use walflow_macros::{event_enum, event_source, on_event};
    pub use walflow_runtime::declare::BoxError;
    pub use walflow_runtime::event::EventEnum as _;
    pub use walflow_runtime::{Ctx, Event, EventKind, EventMeta, EventSource, Field, Walflow};
}

/// What the macros' generated code uses. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use inventory;
    pub use walflow_runtime::event::{Carries, EventEnum, FromRawEvent};
    pub use walflow_runtime::registry::support::*;
    pub use walflow_runtime::registry::{
        BoxFuture, EntityRegistration, EventSource, Field, HandlerError, HandlerFn, IdMapping,
        Location, OperatorAction, OperatorRegistration, TableRef, TargetRef,
    };
    pub use walflow_runtime::{Ctx, Event, EventDecodeError, EventKind, EventMeta, RawEvent};
}

#[cfg(test)]
mod tests {
    /// The README's table of options is the one generated from their
    /// declaration.
    #[test]
    fn the_readme_lists_every_option() {
        let readme = include_str!("../README.md");
        let start = "<!-- options table: generated from walflow::config::OPTIONS_TABLE -->\n";
        let table = readme
            .split_once(start)
            .and_then(|(_, rest)| rest.split_once("<!-- end of options table -->"))
            .map(|(table, _)| table)
            .expect("the README has the options table's markers");
        assert!(
            table == crate::config::OPTIONS_TABLE,
            "the README's options table is out of date; replace it with:\n{}",
            crate::config::OPTIONS_TABLE
        );
    }

    #[test]
    fn the_readme_lists_every_metric() {
        let readme = include_str!("../README.md");
        let start = "<!-- metrics table: generated from walflow::telemetry::METRICS_TABLE -->\n";
        let table = readme
            .split_once(start)
            .and_then(|(_, rest)| rest.split_once("<!-- end of metrics table -->"))
            .map(|(table, _)| table)
            .expect("the README has the metrics table's markers");
        assert!(
            table == crate::telemetry::METRICS_TABLE,
            "the README's metrics table is out of date; replace it with:\n{}",
            crate::telemetry::METRICS_TABLE
        );
    }
}

/// Every Rust block of the README compiles (and runs, unless `no_run`) as a
/// doctest: what an application copies from it builds.
/// Its blocks are fragments of programs: what they declare need not be used.
#[cfg(doctest)]
#[doc(test(attr(allow(dead_code))))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

//! Realtime subscriptions: follow the changes of an `#[event_source]` table
//! (every row, one row, or the rows whose fields equal given values) as a
//! [`Stream`](futures_util::Stream).
//!
//! The [`Subscriptions`] hub is fed in commit order by whoever consumes the
//! WAL (the runtime, or a [`PgPubSub`] listener on a node without the
//! replication slot) and delivers each change to the subscriptions whose
//! scope it touches:
//!
//! ```
//! # use walflow_runtime::subscribe::{Subscriptions, Scope};
//! # use walflow_runtime::{EventSource, Field};
//! # #[allow(dead_code)] #[derive(serde::Deserialize)] struct Comment { id: i64, post_id: i64 }
//! # impl Comment { const POST_ID: Field<Comment, i64> = Field::new("post_id"); }
//! # impl EventSource for Comment {
//! #     const RUST_NAME: &'static str = "Comment"; const SCHEMA: &'static str = "public";
//! #     const TABLE: &'static str = "comments"; const ID_COLUMN: &'static str = "id";
//! #     const COLUMNS: &'static [&'static str] = &["id", "post_id"];
//! #     const FIELDS: &'static [(&'static str, &'static str)] = &[("id", "id"), ("post_id", "post_id")];
//! #     const REPLICA_IDENTITY_FULL: bool = true; type Id = i64;
//! #     fn id(&self) -> &i64 { &self.id }
//! # }
//! let hub = Subscriptions::default();
//! let all = hub.subscribe::<Comment>(Scope::All);
//! let one = hub.subscribe::<Comment>(Scope::id(7));
//! let of_post = hub.subscribe::<Comment>(Comment::POST_ID.eq(5));
//! // The runtime: for each committed transaction, in commit order,
//! // `hub.publish(&raw)` per change, then `hub.publish_commit(end_lsn)`.
//! # let _ = (all, one, of_post);
//! ```
//!
//! # Semantics
//!
//! - Changes reach each subscription in commit order (the order they are
//!   published).
//! - An update that changes a scoped column is delivered as
//!   [`Action::Left`] (delete-like: remove the row) to the subscriptions of
//!   the old value and as [`Action::Entered`] (insert-like: add it) to those
//!   of the new value. This needs the old row, which tables with
//!   `REPLICA IDENTITY FULL` (walflow's default) carry.
//! - Publishing never waits: each subscription buffers up to
//!   [`HubOptions::buffer`] changes (or [`SubscriptionBuilder::buffer`])
//!   and [`HubOptions::buffer_bytes`] bytes (or
//!   [`SubscriptionBuilder::buffer_bytes`]). On overflow it drops the
//!   changes, and once the buffer is drained yields one `Err(`[`Lagged`]`)`
//!   with how many it missed and the position to [`Subscription::resume`]
//!   from.
//! - A change whose row does not deserialize into the subscription's type
//!   (a value that did not parse for its column's type, or a field that
//!   does not fit) is an `Err(`[`Undecodable`]`)` in its place, naming the
//!   position, table and column; the next changes follow, so a subscriber
//!   can skip it. Over SSE it is an `undecodable` event.
//! - The hub retains the latest changes ([`HubOptions::retain_events`],
//!   [`HubOptions::retain_for`], [`HubOptions::retain_bytes`], the bytes
//!   estimated as [`Subscriptions::retained_bytes`] says): a subscription
//!   can start after a position ([`SubscriptionBuilder::after`]) and first
//!   receive what it missed; a position older than the window is a
//!   [`TooOld`] error, one after everything the hub has published a
//!   [`FromTheFuture`] error (reload either way, see [`ResumeError`]).
//! - A hub that learns it missed transactions (a node away from its
//!   [`PgPubSub`] channel longer than the log keeps them:
//!   [`Subscriptions::publish_gap`]) gives every subscription a [`Lagged`]
//!   with `lost` set; resuming from before the gap is [`TooOld`] (reload).
//! - An authorization predicate ([`SubscriptionBuilder::authorize`]) runs
//!   once per change per subscription, on the decoded row.
//! - Each change is decoded once per type, not once per subscription.
//! - Dropping a [`Subscription`] unsubscribes; [`Subscription::set_scope`]
//!   changes its scope in place.

pub mod cloudevents;
mod hub;
pub mod pubsub;
mod relay;
mod scope;
mod size;
#[cfg(feature = "axum")]
pub mod sse;

pub use hub::{
    Action, Delivery, FromTheFuture, HubOptions, Lagged, OldestPosition, ResumeError, Subscription,
    SubscriptionBuilder, SubscriptionError, Subscriptions, TooOld, Undecodable, UnreadablePosition,
    WaitError, after_commit, parse_position, read_position,
};
pub use pubsub::{Broadcast, LocalPubSub, LogRetention, PgPubSub, PubSubError, Transaction};
pub use scope::{Filter, Scope};

pub use crate::event::Position;
pub(crate) use relay::Relay;

/// What the listener's consumer hands every change and every commit to, in
/// commit order: the hub ([`Subscriptions`]), or on the node broadcasting
/// to others the relay, which feeds the hub and the broadcaster.
pub(crate) trait Feed: Send + Sync {
    /// A change of the transaction being received.
    fn change(&self, raw: std::sync::Arc<crate::raw::RawEvent>);
    /// The end of that transaction.
    fn commit(&self, end_lsn: crate::lsn::Lsn);
}

//! walflow turns PostgreSQL's write-ahead log into typed events.
//!
//! Application code marks structs with `#[event_source]`, declares operators
//! with `on_event!`, and walflow keeps derived tables in step in the
//! background, with durable per-operator queues, retries with backoff and
//! realtime subscriptions.

#![doc(test(attr(deny(warnings))))]

pub use walflow_runtime::*;

//! Server-Sent Events for axum 0.8 (feature `axum`): a subscription as an
//! `text/event-stream` response.
//!
//! ```no_run
//! # #![allow(dead_code)]
//! # use walflow_runtime::subscribe::{Subscriptions, Scope, sse::{self, SseOptions}};
//! # use walflow_runtime::EventSource;
//! # #[derive(serde::Deserialize, serde::Serialize)] struct Post { id: i64 }
//! # impl EventSource for Post {
//! #     const RUST_NAME: &'static str = "Post"; const SCHEMA: &'static str = "public";
//! #     const TABLE: &'static str = "posts"; const ID_COLUMN: &'static str = "id";
//! #     const COLUMNS: &'static [&'static str] = &["id"];
//! #     const FIELDS: &'static [(&'static str, &'static str)] = &[("id", "id")];
//! #     const REPLICA_IDENTITY_FULL: bool = true; type Id = i64;
//! #     fn id(&self) -> &i64 { &self.id }
//! # }
//! use axum::extract::{Path, State};
//! use axum::http::HeaderMap;
//! use axum::response::IntoResponse;
//!
//! async fn post_events(
//!     State(hub): State<Subscriptions>,
//!     Path(id): Path<i64>,
//!     headers: HeaderMap,
//! ) -> impl IntoResponse {
//!     sse::stream::<Post>(&hub, Scope::id(id), &headers, SseOptions::default())
//! }
//! ```
//!
//! Each change is one SSE event whose `id` is the change's [`Position`]
//! (`0/16B3F20#0`): a browser's `EventSource` sends it back as
//! `Last-Event-ID` when it reconnects, and the stream resumes after it from
//! the hub's retained window. The `data` is JSON: the [`Delivery`]
//! (`{"action": "insert", "event": {"kind": "insert", "new": {...}, "meta": {...}}}`;
//! an update has `old`, `new` and `changes`, all plain JSON:
//! `"changes": {"title": {"old": "a", "new": "b"}}`, see [`Event`](crate::Event)),
//! or, with [`SseOptions::cloud_events`], a CloudEvents 1.0 event in
//! structured mode (`specversion`, `id`, `source`, `type` =
//! `{prefix}.{table}.{action}`, `subject` = the row's id, `time`,
//! `datacontenttype`, `data` = the delivery).
//!
//! Two named events tell the page what to do: `reload` (the resume position
//! is no longer retained, or the subscription fell too far behind: reload
//! the page's state; the stream then ends) — a lag the window still covers
//! is resumed without the page noticing.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, BoxStream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::hub::{Delivery, Subscription, SubscriptionError, Subscriptions, parse_position};
use super::scope::Scope;
use crate::event::Position;
use crate::registry::EventSource;

/// How changes are written to the event stream.
#[derive(Debug, Clone)]
pub struct SseOptions {
    /// Write CloudEvents 1.0 (structured mode) with this `source` and
    /// `type` prefix, instead of the plain delivery JSON.
    pub cloud_events: Option<CloudEvents>,
    /// Keep-alive comment interval (default 15 s).
    pub keep_alive: Duration,
}

impl Default for SseOptions {
    fn default() -> Self {
        SseOptions {
            cloud_events: None,
            keep_alive: Duration::from_secs(15),
        }
    }
}

impl SseOptions {
    /// Writes CloudEvents with `source` (a URI reference such as
    /// `/walflow/blog`) and type prefix `type_prefix` (such as `com.example.blog`).
    pub fn cloud_events(
        mut self,
        source: impl Into<String>,
        type_prefix: impl Into<String>,
    ) -> Self {
        self.cloud_events = Some(CloudEvents {
            source: source.into(),
            type_prefix: type_prefix.into(),
        });
        self
    }
}

/// CloudEvents attributes shared by every event of a stream.
#[derive(Debug, Clone)]
pub struct CloudEvents {
    /// `source` attribute.
    pub source: String,
    /// `type` is `{type_prefix}.{table}.{action}`.
    pub type_prefix: String,
}

/// The resume position a request carries in its `Last-Event-ID` header.
pub fn last_event_id(headers: &HeaderMap) -> Option<Position> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_position)
}

/// The SSE response type.
pub type SseStream =
    Sse<axum::response::sse::KeepAliveStream<BoxStream<'static, Result<SseEvent, Infallible>>>>;

/// Subscribes to `scope` (after the request's `Last-Event-ID`, if any) and
/// streams the changes as Server-Sent Events.
pub fn stream<T>(
    hub: &Subscriptions,
    scope: impl Into<Scope<T>>,
    headers: &HeaderMap,
    options: SseOptions,
) -> SseStream
where
    T: EventSource + DeserializeOwned + Serialize,
    T::Id: Serialize,
{
    stream_from(hub, scope, last_event_id(headers), options)
}

/// Subscribes to `scope`, after `after` when given (a `Last-Event-ID`, or
/// the position a page was rendered at), and streams the changes.
pub fn stream_from<T>(
    hub: &Subscriptions,
    scope: impl Into<Scope<T>>,
    after: Option<Position>,
    options: SseOptions,
) -> SseStream
where
    T: EventSource + DeserializeOwned + Serialize,
    T::Id: Serialize,
{
    let mut builder = hub.subscription(scope);
    if let Some(after) = after {
        builder = builder.after(after);
    }
    match builder.start() {
        Ok(sub) => subscription(sub, options),
        Err(too_old) => {
            let keep_alive = KeepAlive::new().interval(options.keep_alive);
            let reload = reload_event(&too_old.to_string());
            Sse::new(stream::iter([Ok(reload)]).boxed()).keep_alive(keep_alive)
        }
    }
}

fn reload_event(reason: &str) -> SseEvent {
    SseEvent::default()
        .event("reload")
        .data(serde_json::json!({ "reason": reason }).to_string())
}

/// Streams an existing subscription as Server-Sent Events.
pub fn subscription<T>(sub: Subscription<T>, options: SseOptions) -> SseStream
where
    T: EventSource + DeserializeOwned + Serialize,
    T::Id: Serialize,
{
    let keep_alive = KeepAlive::new().interval(options.keep_alive);
    let events = stream::unfold(Some((sub, options)), |state| async move {
        let (mut sub, options) = state?;
        match sub.next().await? {
            Ok(delivery) => {
                let event = encode(&delivery, &options);
                Some((Ok(event), Some((sub, options))))
            }
            Err(SubscriptionError::Undecodable(u)) => {
                // Skipped, in its place: the client learns which change.
                let event = SseEvent::default()
                    .event("undecodable")
                    .id(u.position.to_string())
                    .data(
                        serde_json::json!({
                            "position": u.position.to_string(),
                            "error": u.error.to_string(),
                        })
                        .to_string(),
                    );
                Some((Ok(event), Some((sub, options))))
            }
            Err(SubscriptionError::Lagged(lagged)) => match sub.resume(lagged.resume_from) {
                Ok(()) => Some((
                    Ok(SseEvent::default().comment("resumed")),
                    Some((sub, options)),
                )),
                Err(too_old) => Some((Ok(reload_event(&too_old.to_string())), None)),
            },
        }
    });
    Sse::new(events.boxed()).keep_alive(keep_alive)
}

/// One delivery as an SSE event.
pub fn encode<T>(delivery: &Delivery<T>, options: &SseOptions) -> SseEvent
where
    T: EventSource + Serialize,
    T::Id: Serialize,
{
    let id = delivery.position().to_string();
    let data = match &options.cloud_events {
        None => serde_json::to_string(delivery),
        Some(ce) => {
            let meta = delivery.event.meta();
            let action = serde_json::to_value(delivery.action).unwrap_or_default();
            let subject = delivery
                .row()
                .and_then(|row| serde_json::to_value(row.id()).ok())
                .map(|v| match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                });
            let mut event = serde_json::json!({
                "specversion": "1.0",
                "id": id,
                "source": ce.source,
                "type": format!("{}.{}.{}", ce.type_prefix, meta.table, action.as_str().unwrap_or("change")),
                "time": meta.commit_time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "datacontenttype": "application/json",
                "data": delivery,
            });
            if let Some(subject) = subject {
                event["subject"] = subject.into();
            }
            serde_json::to_string(&event)
        }
    };
    SseEvent::default()
        .id(id)
        .data(data.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string()))
}

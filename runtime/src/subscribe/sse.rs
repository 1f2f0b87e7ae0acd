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
//! Each change is one SSE event whose `id` is the change's stable id,
//! [`Event::id`](crate::Event::id), as [`Position`] displays it
//! (`0/16B3F20#0`: the LSN of the transaction's commit record, `#`, the
//! change's index in the transaction): a browser's `EventSource` sends it
//! back as `Last-Event-ID` when it reconnects, and the stream resumes after
//! it from the hub's retained window. The same change has the same id on
//! every node and in every stream, and a handler sees it as
//! [`Event::id`](crate::Event::id) and [`Ctx::position`](crate::Ctx::position).
//! The `data` is JSON: the [`Delivery`]
//! (`{"action": "insert", "event": {"kind": "insert", "new": {...}, "meta": {...}}}`;
//! an update has `old`, `new` and `changes`, all plain JSON:
//! `"changes": {"title": {"old": "a", "new": "b"}}`, see [`Event`](crate::Event)),
//! or, with [`SseOptions::cloud_events`], a CloudEvents 1.0 event in
//! structured mode (`specversion`, `id` = the same text as the SSE `id`,
//! `source`, `type` =
//! `{prefix}.{schema}.{table}.{action}` with the names encoded as
//! [`cloudevents`](super::cloudevents) describes, `subject` = the row's id,
//! `time`, `datacontenttype`, `data` = the delivery). `source` and `id`
//! identify the change, as CloudEvents asks: a change sent twice (in a
//! stream resumed after a reconnect, by another node) has the same pair
//! (see [`CloudEvents`] for streams of several scopes).
//!
//! # Resuming, and `reload`
//!
//! A stream starts after the request's `Last-Event-ID` header (what an
//! `EventSource` sends by itself when it reconnects), else after the
//! position the handler passes ([`stream_after`]'s `after`, such as a
//! `?after=` query parameter holding the position the page was rendered
//! at), else live from now. An empty value counts as absent.
//!
//! The stream answers with a named `reload` event, then ends, when the
//! client meant to resume but cannot be resumed without a gap; its `data`
//! is `{"reason": "..."}`:
//!
//! - the position is no longer retained ([`TooOld`](super::TooOld)), or
//!   the subscription fell behind further than the window (a lag the window
//!   still covers is resumed without the page noticing);
//! - the position does not read as one
//!   ([`UnreadablePosition`]: `garbage`, `-1`,
//!   `FFFFFFFFF/0`, an index past 4,294,967,295, 50 KB of text; the reason
//!   quotes at most its first 40 characters);
//! - the position is after everything the hub has published
//!   ([`FromTheFuture`](super::FromTheFuture)): forged, or from a node or
//!   an earlier run that had gone further.
//!
//! None of these is answered with a 4xx status: an `EventSource` treats any
//! answer but `200 text/event-stream` as final (it stops, and the page is
//! not told why), whereas it can act on `reload`. Only the HTTP server's
//! own limits answer before the handler runs: a request head over hyper's
//! limit (431), which no page sends, since the ids it resends are the
//! stream's own (at most 28 characters).
//!
//! A second named event, `undecodable`, stands in place of a change that
//! could not be read into the subscription's type; the next changes
//! follow.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, BoxStream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::hub::{
    Delivery, ResumeError, Subscription, SubscriptionError, Subscriptions, UnreadablePosition,
    read_position,
};
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
///
/// Each event's `id` is the change's [`Event::id`](crate::Event::id) as
/// [`Position`] displays it (`16/B374D848#3`), the same text as the SSE
/// `id`: a consumer deduplicating on `source` and `id` drops a change sent
/// twice (a stream resumed after a reconnect, another node's stream). The
/// `id` names the change, not the stream: streams of two scopes send one
/// change with the same `id` (a row that moves is `left` in one and
/// `entered` in the other), so give them different `source`s when one
/// consumer reads both.
#[derive(Debug, Clone)]
pub struct CloudEvents {
    /// `source` attribute.
    pub source: String,
    /// `type` is `{type_prefix}.{schema}.{table}.{action}`, the names
    /// encoded by [`encode_name`](super::cloudevents::encode_name) (read it
    /// back with [`parse_event_type`](super::cloudevents::parse_event_type));
    /// use a reverse-DNS prefix in lower-case letters, digits and dots.
    pub type_prefix: String,
}

/// The resume position a request carries in its `Last-Event-ID` header;
/// `None` when there is none, and also when it does not read:
/// [`requested_position`] tells the two apart.
pub fn last_event_id(headers: &HeaderMap) -> Option<Position> {
    requested_position(headers, None).ok().flatten()
}

/// Where a request asks its stream to start: after its `Last-Event-ID`
/// header, else after `after` (a query parameter such as `?after=`), else
/// (`Ok(None)`) live from now. Empty values count as absent; a value that
/// does not read as a position (see [`read_position`]) is an
/// [`UnreadablePosition`], answered with `reload` by [`stream_requested`].
pub fn requested_position(
    headers: &HeaderMap,
    after: Option<&str>,
) -> Result<Option<Position>, UnreadablePosition> {
    if let Some(value) = headers.get("last-event-id") {
        let text = String::from_utf8_lossy(value.as_bytes());
        if !text.trim().is_empty() {
            return read_position(&text).map(Some);
        }
    }
    match after.map(str::trim) {
        Some(text) if !text.is_empty() => read_position(text).map(Some),
        _ => Ok(None),
    }
}

/// The SSE response type.
pub type SseStream =
    Sse<axum::response::sse::KeepAliveStream<BoxStream<'static, Result<SseEvent, Infallible>>>>;

/// Subscribes to `scope` (after the request's `Last-Event-ID`, if any) and
/// streams the changes as Server-Sent Events; an id that cannot be resumed
/// from is answered with `reload` (see [the module](self)).
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
    stream_requested(hub, scope, requested_position(headers, None), options)
}

/// Subscribes to `scope` after the request's `Last-Event-ID`, else after
/// `after` (the text of a query parameter holding the position the page
/// was rendered at), else from now (see [`requested_position`]), and
/// streams the changes; a position that cannot be resumed from is answered
/// with `reload`.
///
/// ```no_run
/// # #![allow(dead_code)]
/// # use std::collections::HashMap;
/// # use walflow_runtime::subscribe::{Subscriptions, Scope, sse::{self, SseOptions}};
/// # use walflow_runtime::EventSource;
/// # #[derive(serde::Deserialize, serde::Serialize)] struct Post { id: i64 }
/// # impl EventSource for Post {
/// #     const RUST_NAME: &'static str = "Post"; const SCHEMA: &'static str = "public";
/// #     const TABLE: &'static str = "posts"; const ID_COLUMN: &'static str = "id";
/// #     const COLUMNS: &'static [&'static str] = &["id"];
/// #     const FIELDS: &'static [(&'static str, &'static str)] = &[("id", "id")];
/// #     const REPLICA_IDENTITY_FULL: bool = true; type Id = i64;
/// #     fn id(&self) -> &i64 { &self.id }
/// # }
/// use axum::extract::{Query, State};
/// use axum::http::HeaderMap;
/// use axum::response::IntoResponse;
///
/// async fn post_events(
///     State(hub): State<Subscriptions>,
///     Query(query): Query<HashMap<String, String>>,
///     headers: HeaderMap,
/// ) -> impl IntoResponse {
///     let after = query.get("after").map(String::as_str);
///     sse::stream_after::<Post>(&hub, Scope::All, &headers, after, SseOptions::default())
/// }
/// ```
pub fn stream_after<T>(
    hub: &Subscriptions,
    scope: impl Into<Scope<T>>,
    headers: &HeaderMap,
    after: Option<&str>,
    options: SseOptions,
) -> SseStream
where
    T: EventSource + DeserializeOwned + Serialize,
    T::Id: Serialize,
{
    stream_requested(hub, scope, requested_position(headers, after), options)
}

/// Subscribes to `scope` from a [`requested_position`] and streams the
/// changes; an unreadable position is answered with `reload`.
pub fn stream_requested<T>(
    hub: &Subscriptions,
    scope: impl Into<Scope<T>>,
    requested: Result<Option<Position>, UnreadablePosition>,
    options: SseOptions,
) -> SseStream
where
    T: EventSource + DeserializeOwned + Serialize,
    T::Id: Serialize,
{
    match requested {
        Ok(after) => stream_from(hub, scope, after, options),
        Err(unreadable) => {
            tracing::debug!(%unreadable, "subscription: an unreadable resume position; the client is told to reload");
            reload_only(&unreadable.to_string(), &options)
        }
    }
}

/// Subscribes to `scope`, after `after` when given (a `Last-Event-ID`, or
/// the position a page was rendered at), and streams the changes; a
/// position no longer retained, or after everything the hub has published,
/// is answered with `reload`.
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
        Err(e) => reload_only(&e.to_string(), &options),
    }
}

/// A stream of one `reload` event.
fn reload_only(reason: &str, options: &SseOptions) -> SseStream {
    let keep_alive = KeepAlive::new().interval(options.keep_alive);
    let reload = reload_event(reason);
    Sse::new(stream::iter([Ok(reload)]).boxed()).keep_alive(keep_alive)
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
                Err(e @ (ResumeError::TooOld(_) | ResumeError::FromTheFuture(_))) => {
                    Some((Ok(reload_event(&e.to_string())), None))
                }
            },
        }
    });
    Sse::new(events.boxed()).keep_alive(keep_alive)
}

/// One delivery as an SSE event: its `id` is the change's
/// [`Event::id`](crate::Event::id) as text, and so is the CloudEvents `id`.
pub fn encode<T>(delivery: &Delivery<T>, options: &SseOptions) -> SseEvent
where
    T: EventSource + Serialize,
    T::Id: Serialize,
{
    let id = delivery.event.id().to_string();
    let data = match &options.cloud_events {
        None => serde_json::to_string(delivery),
        Some(ce) => serde_json::to_string(&cloud_event(delivery, ce)),
    };
    SseEvent::default()
        .id(id)
        .data(data.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string()))
}

/// The CloudEvents 1.0 structured form of one delivery.
fn cloud_event<T>(delivery: &Delivery<T>, ce: &CloudEvents) -> serde_json::Value
where
    T: EventSource + Serialize,
    T::Id: Serialize,
{
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
        "id": delivery.event.id().to_string(),
        "source": ce.source,
        "type": super::cloudevents::event_type(
            &ce.type_prefix,
            &meta.schema,
            &meta.table,
            action.as_str().unwrap_or("change"),
        ),
        "time": meta.commit_time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "datacontenttype": "application/json",
        "data": delivery,
    });
    if let Some(subject) = subject {
        event["subject"] = subject.into();
    }
    event
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::DateTime;

    use super::*;
    use crate::event::{Event, EventMeta};
    use crate::lsn::Lsn;
    use crate::subscribe::Action;

    #[derive(Debug, serde::Deserialize, serde::Serialize)]
    struct Post {
        id: i64,
    }

    impl EventSource for Post {
        const RUST_NAME: &'static str = "Post";
        const SCHEMA: &'static str = "public";
        const TABLE: &'static str = "posts";
        const ID_COLUMN: &'static str = "id";
        const COLUMNS: &'static [&'static str] = &["id"];
        const FIELDS: &'static [(&'static str, &'static str)] = &[("id", "id")];
        const REPLICA_IDENTITY_FULL: bool = true;
        type Id = i64;
        fn id(&self) -> &i64 {
            &self.id
        }
    }

    #[test]
    fn the_cloud_events_id_is_the_event_id_as_displayed() {
        let event = Event::Insert {
            new: Post { id: 7 },
            meta: EventMeta {
                schema: "public".into(),
                table: "posts".into(),
                lsn: Lsn(0x16_B374_D800),
                commit_lsn: Lsn(0x16_B374_D848),
                commit_time: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
                xid: 9,
                seq: 3,
            },
        };
        let delivery = Delivery {
            action: Action::Insert,
            event: Arc::new(event),
        };
        let ce = CloudEvents {
            source: "/walflow/blog".into(),
            type_prefix: "com.example.blog".into(),
        };
        let json = cloud_event(&delivery, &ce);
        assert_eq!(json["id"], "16/B374D848#3");
        assert_eq!(json["id"], delivery.event.id().to_string());
        assert_eq!(json["id"], delivery.position().to_string());
        let id: Position = json["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(id, delivery.event.id());
        assert_eq!(json["subject"], "7");
        assert_eq!(json["source"], "/walflow/blog");
    }
}

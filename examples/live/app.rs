//! The live example's application: posts with live comment counts, a post
//! page with its comments live and a form to comment, and a form that
//! creates a post and redirects once the derived row exists. Shared by
//! `main.rs` and the browser test.
//!
//! Comments can be hidden by a moderator (`UPDATE
//! walflow_live_example.comments SET hidden = true WHERE id = ...`). A
//! stream is an open door to the table: without a rule, anyone who opens
//! `/events/posts/{id}/comments` receives every comment of the post as it
//! is written, hidden or not. So the comment stream is authorized with
//! [`may_see`] (`SubscriptionBuilder::authorize`), the same rule as the
//! page's query: a hidden comment, and any later change of it, never leaves
//! the server. The rule is evaluated on each change's row, without a query;
//! an application puts its own there (the viewer, taken from the request,
//! captured in the closure). A comment hidden while a page shows it stays
//! on that page until it reloads: the change that hides it is not sent
//! either. Posts and counts are public, so their streams have no rule.
//!
//! Its tables are in a schema of its own, [`SCHEMA_NAME`], created when
//! missing and kept between runs; no other table of the database is
//! touched. The flow's slot is temporary (the server drops it when the
//! example stops, however it stops), so changes made while the example is
//! not running do not reach the derived counts. Its publication,
//! [`PUBLICATION`], is dropped on a clean stop (Ctrl-C).

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::broadcast;
use walflow::prelude::*;
use walflow::subscribe::sse::{self, SseOptions};
use walflow::subscribe::{Position, Scope, Subscriptions, UnreadablePosition, after_commit};
use walflow::{ErrorLogger, FailureInfo, RetryInfo, TracingErrorLogger};

/// The example's schema: its tables, and nothing of the application's.
pub const SCHEMA_NAME: &str = "walflow_live_example";
/// The example's publication, dropped by [`drop_publication`].
pub const PUBLICATION: &str = "walflow_live_example";
/// The posts' table, as the operator's failures name it.
const POSTS_TABLE: &str = "walflow_live_example.posts";
/// How long the post form waits for the post's derived row.
const DERIVED_TIMEOUT: Duration = Duration::from_secs(10);

#[event_source(schema = "walflow_live_example", table = "posts")]
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Post {
    pub id: i64,
    pub title: String,
}

#[event_source(schema = "walflow_live_example", table = "comments")]
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Comment {
    pub id: i64,
    pub post_id: i64,
    pub body: String,
    /// Hidden by a moderator: not shown, not counted, never streamed.
    pub hidden: bool,
}

#[event_source(schema = "walflow_live_example", table = "post_with_comments_counts")]
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct PostWithCommentsCount {
    pub id: i64,
    pub title: String,
    pub comments_count: i64,
}

const SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS walflow_live_example;
CREATE TABLE IF NOT EXISTS walflow_live_example.posts (
    id bigserial PRIMARY KEY, title text NOT NULL);
CREATE TABLE IF NOT EXISTS walflow_live_example.comments (
    id bigserial PRIMARY KEY, post_id int8 NOT NULL, body text NOT NULL);
-- Added on its own, so that a schema kept from an earlier run gets it too.
ALTER TABLE walflow_live_example.comments
    ADD COLUMN IF NOT EXISTS hidden boolean NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS walflow_live_example.post_with_comments_counts (
    id int8 PRIMARY KEY, title text NOT NULL, comments_count int8 NOT NULL);
";

on_event! {
    /// Keeps `post_with_comments_counts` in step with posts and comments
    /// (hidden comments are not counted).
    pub operator PostWithCommentsCountOperator for PostWithCommentsCount {
        events: all,
        entities: [Comment, Post],
        id: [Comment.post_id, Post.id],
        delete_with: [Post],
        coalesce: true,
        query: "MERGE INTO walflow_live_example.post_with_comments_counts dest
            USING (SELECT p.id, p.title, count(c.id) FILTER (WHERE NOT c.hidden) AS comments_count
                   FROM walflow_live_example.posts p
                   LEFT JOIN walflow_live_example.comments c ON c.post_id = p.id
                   WHERE p.id = $1 GROUP BY p.id) src
            ON dest.id = src.id
            WHEN MATCHED THEN UPDATE SET title = src.title, comments_count = src.comments_count
            WHEN NOT MATCHED THEN INSERT (id, title, comments_count)
                 VALUES (src.id, src.title, src.comments_count)",
    }
}

/// An attempt of the operator that failed, as the post form hears of it.
#[derive(Debug, Clone)]
pub struct OperatorFailure {
    /// The event's table, `schema.table`.
    pub table: String,
    /// The event's row id.
    pub id: String,
    /// The error.
    pub error: String,
    /// Whether it will be retried (`false`: it is a dead letter now).
    pub retried: bool,
}

/// Logs the operator's failures as usual, and tells the post forms waiting
/// for a derived row, so they answer at the first failed attempt instead of
/// after their timeout.
struct FailureFeed(broadcast::Sender<OperatorFailure>);

impl ErrorLogger for FailureFeed {
    fn log_retry(&self, info: &RetryInfo<'_>) {
        TracingErrorLogger.log_retry(info);
        let _ = self.0.send(OperatorFailure {
            table: info.table.to_owned(),
            id: info.id.clone(),
            error: info.error.clone(),
            retried: true,
        });
    }

    fn log_failed(&self, info: &FailureInfo<'_>) {
        TracingErrorLogger.log_failed(info);
        let _ = self.0.send(OperatorFailure {
            table: info.table.to_owned(),
            id: info.id.clone(),
            error: info.error.clone(),
            retried: false,
        });
    }
}

/// The application's state.
#[derive(Clone)]
pub struct App {
    /// The application's pool (the flow runs on it too; it outlives the
    /// flow, for [`drop_publication`]).
    pub pool: PgPool,
    pub hub: Subscriptions,
    /// The running flow (operator, listener, hub), kept alive with the app.
    pub flow: std::sync::Arc<Walflow>,
    /// The operator's failed attempts, as they happen.
    pub failures: broadcast::Sender<OperatorFailure>,
}

/// Where the flow serves its metrics, health and status page.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The address (keep it on loopback: the status page shows dead
    /// letters, whose errors hold row data).
    pub addr: std::net::SocketAddr,
    /// The token `/status`, `/status/events` and `/metrics` require, if
    /// any (`metrics_endpoint_token`).
    pub token: Option<String>,
}

/// Creates the tables (in [`SCHEMA_NAME`]) and starts the flow (the
/// operator keeping the counts, the listener feeding the subscription hub)
/// on a temporary slot named `slot`, and returns the router. With
/// `metrics`, the flow serves its metrics, health and status page there.
pub async fn start(
    url: &str,
    slot: &str,
    metrics: Option<Metrics>,
) -> Result<(Router, App), walflow::BoxError> {
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(url)
        .await
        .map_err(|e| {
            let server = walflow::Config::from_database_url(url)
                .map(|c| c.server())
                .unwrap_or_else(|_| "DATABASE_URL".into());
            format!("connecting to {server}: {e}")
        })?;
    let (failures, _) = broadcast::channel(256);
    let mut builder = Walflow::builder()
        .database_url(url)
        .pool(pool.clone())
        .slot_name(slot)
        .durable_slot(false)
        .publication(PUBLICATION)
        .setup_sql(SCHEMA)
        .error_logger(FailureFeed(failures.clone()))
        .operators(["PostWithCommentsCountOperator"]);
    if let Some(metrics) = metrics {
        builder = builder.metrics_endpoint(metrics.addr);
        if let Some(token) = metrics.token {
            builder = builder.metrics_endpoint_token(token);
        }
    }
    let flow = builder.start().await?;
    let app = App {
        pool,
        hub: flow.subscriptions().clone(),
        flow: std::sync::Arc::new(flow),
        failures,
    };
    let router = Router::new()
        .route("/", get(index))
        .route("/posts", axum::routing::post(create_post))
        .route("/posts/{id}", get(post_page))
        .route("/posts/{id}/comments", axum::routing::post(create_comment))
        .route("/style.css", get(stylesheet))
        .route("/events/counts", get(count_events))
        .route("/events/posts/{id}", get(post_events))
        .route("/events/posts/{id}/comments", get(comment_events))
        .with_state(app.clone());
    Ok((router, app))
}

/// Drops the example's publication: after the flow stopped, on a clean
/// stop. (Its temporary slot is gone with the flow's replication
/// connection.)
pub async fn drop_publication(pool: &PgPool) -> Result<(), walflow::BoxError> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP PUBLICATION IF EXISTS {PUBLICATION}"
    )))
    .execute(pool)
    .await
    .map_err(|e| format!("dropping publication {PUBLICATION}: {e}"))?;
    Ok(())
}

/// After the `Last-Event-ID` an `EventSource` resends, else `?after=`; one
/// that does not read is answered with `reload`.
fn resume_position(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Option<Position>, UnreadablePosition> {
    sse::requested_position(headers, query.get("after").map(String::as_str))
}

fn position_param(app: &App) -> String {
    app.hub
        .position()
        .map(|p| p.to_string())
        .unwrap_or_default()
}

async fn count_events(
    State(app): State<App>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> impl IntoResponse {
    sse::stream_requested::<PostWithCommentsCount>(
        &app.hub,
        Scope::All,
        resume_position(&headers, &query),
        SseOptions::default(),
    )
}

async fn post_events(
    State(app): State<App>,
    Path(id): Path<i64>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> impl IntoResponse {
    sse::stream_requested::<Post>(
        &app.hub,
        Scope::id(id),
        resume_position(&headers, &query),
        SseOptions::default(),
    )
}

/// Whether a page may see `comment`: the authorization of the comment
/// stream, the same rule as [`post_page`]'s query. Evaluated by the hub on
/// each change's row before it is buffered, so nothing it refuses is ever
/// sent.
pub fn may_see(comment: &Comment) -> bool {
    !comment.hidden
}

async fn comment_events(
    State(app): State<App>,
    Path(id): Path<i64>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let after = match resume_position(&headers, &query) {
        Ok(after) => after,
        Err(unreadable) => return reload(&unreadable.to_string()),
    };
    let mut subscription = app
        .hub
        .subscription(Comment::POST_ID.eq(id))
        .authorize(may_see);
    if let Some(after) = after {
        subscription = subscription.after(after);
    }
    match subscription.start() {
        Ok(subscription) => sse::subscription(subscription, SseOptions::default()).into_response(),
        // Too old, or from the future: the page reloads (see `live`).
        Err(e) => reload(&e.to_string()),
    }
}

/// A stream of one `reload` event, as the SSE helpers answer a position
/// they cannot resume from: an `EventSource` acts on it, whereas it gives
/// up on an error status without telling the page.
fn reload(reason: &str) -> Response {
    let event = SseEvent::default()
        .event("reload")
        .data(serde_json::json!({ "reason": reason }).to_string());
    Sse::new(futures_util::stream::iter([Ok::<
        _,
        std::convert::Infallible,
    >(event)]))
    .into_response()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A page with a message, a link onwards, and `status`.
fn message_page(status: StatusCode, title: &str, body: &str, link: (&str, &str)) -> Response {
    (
        status,
        Html(format!(
            r#"<!doctype html><html><head><meta charset="utf-8"><title>{t}</title><link rel="stylesheet" href="/style.css"></head><body>
<h1>{t}</h1>
<div id="message">{body}</div>
<p><a id="onwards" href="{href}">{label}</a></p>
</body></html>"#,
            t = esc(title),
            href = esc(link.0),
            label = esc(link.1),
        )),
    )
        .into_response()
}

/// A database error while serving a page.
fn error(doing: &str, e: impl std::fmt::Display) -> Response {
    message_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        &format!(
            "<p>{}:</p><pre class=\"error\">{}</pre>",
            esc(doing),
            esc(&e.to_string())
        ),
        ("/", "All posts"),
    )
}

/// The pages' stylesheet.
const STYLE: &str = r#"
body { font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; color: #1d232a; }
h1 { font-size: 1.6rem; }
a { color: #1f5fa8; }
ul { padding-left: 1.2rem; }
li { margin: .3rem 0; }
.count { font-weight: 600; font-variant-numeric: tabular-nums; }
.empty { color: #66717d; font-style: italic; }
.error { color: #7d1a14; background: #fbd9d7; padding: .4rem .6rem; border-radius: .4rem; }
pre.error { white-space: pre-wrap; }
form { display: flex; gap: .5rem; margin-top: 1.5rem; }
input, textarea { flex: 1; font: inherit; padding: .4rem .6rem; border: 1px solid #c5ccd3; border-radius: .4rem; }
textarea { min-height: 3rem; }
button { font: inherit; padding: .4rem 1rem; border: 0; border-radius: .4rem; background: #1f5fa8; color: white; cursor: pointer; }
button:disabled { background: #8aa6c8; }
"#;

async fn stylesheet() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/css")], STYLE)
}

const LIVE_JS: &str = r#"
function live(url, after, apply) {
  const es = new EventSource(url + '?after=' + encodeURIComponent(after));
  es.onmessage = (m) => {
    const d = JSON.parse(m.data);
    const gone = d.action === 'delete' || d.action === 'left';
    const row = d.action === 'left' ? (d.event.old || d.event.new) : (d.event.new || d.event.old);
    apply(row, gone, d);
  };
  es.addEventListener('reload', () => location.reload());
  return es;
}
function upsert(list, id, html) {
  let el = document.getElementById(id);
  if (!el) { el = document.createElement('li'); el.id = id; list.appendChild(el); }
  el.innerHTML = html;
}
// Shows `empty` (a "none yet" line) while `list` has no item.
function followEmpty(list, empty) {
  const update = () => { empty.hidden = list.children.length > 0; };
  new MutationObserver(update).observe(list, { childList: true });
  update();
}
function esc(s) { const d = document.createElement('div'); d.textContent = s; return d.innerHTML; }
"#;

/// The list of posts, with the post form (and what was wrong with the last
/// one sent, if anything).
async fn list_page(
    app: &App,
    status: StatusCode,
    form_error: Option<&str>,
    title: &str,
) -> Response {
    // The position first: changes committed after it reach the page.
    let after = position_param(app);
    let rows: Vec<(i64, String, i64)> = match sqlx::query_as(
        "SELECT id, title, comments_count
         FROM walflow_live_example.post_with_comments_counts ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    {
        Ok(rows) => rows,
        Err(e) => return error("reading the posts", e),
    };
    let items: String = rows
        .iter()
        .map(|(id, title, count)| {
            format!(
                r#"<li id="post-{id}"><a href="/posts/{id}">{}</a> (<span class="count">{count}</span> comments)</li>"#,
                esc(title)
            )
        })
        .collect();
    let form_error = form_error
        .map(|m| {
            format!(
                r#"<p id="form-error" class="error" role="alert">{}</p>"#,
                esc(m)
            )
        })
        .unwrap_or_default();
    (
        status,
        Html(format!(
            r#"<!doctype html><html><head><meta charset="utf-8"><title>Posts</title><link rel="stylesheet" href="/style.css"></head><body>
<h1>Posts</h1>
<ul id="posts">{items}</ul>
<p id="no-posts" class="empty"{no_posts_hidden}>No posts yet: create the first one below.</p>
<form method="post" action="/posts"><input name="title" id="new-title" placeholder="Title" value="{title}" required> <button id="create">Create</button></form>
{form_error}
<script>{LIVE_JS}
const posts = document.getElementById('posts');
followEmpty(posts, document.getElementById('no-posts'));
live('/events/counts', {after:?}, (row, gone) => {{
  if (gone) {{ const el = document.getElementById('post-' + row.id); if (el) el.remove(); return; }}
  upsert(posts, 'post-' + row.id, '<a href="/posts/' + row.id + '">' + esc(row.title) + '</a> (<span class="count">' + row.comments_count + '</span> comments)');
}});
</script></body></html>"#,
            title = esc(title),
            no_posts_hidden = if rows.is_empty() { "" } else { " hidden" },
        )),
    )
        .into_response()
}

async fn index(State(app): State<App>) -> Response {
    list_page(&app, StatusCode::OK, None, "").await
}

async fn post_page(State(app): State<App>, Path(id): Path<i64>) -> Response {
    let after = position_param(&app);
    let post: Option<(String,)> =
        match sqlx::query_as("SELECT title FROM walflow_live_example.posts WHERE id = $1")
            .bind(id)
            .fetch_optional(&app.pool)
            .await
        {
            Ok(post) => post,
            Err(e) => return error(&format!("reading post {id}"), e),
        };
    let Some((title,)) = post else {
        return message_page(
            StatusCode::NOT_FOUND,
            "No such post",
            &format!("<p>There is no post {id}: it may have been deleted.</p>"),
            ("/", "All posts"),
        );
    };
    let comments: Vec<(i64, String)> = match sqlx::query_as(
        "SELECT id, body FROM walflow_live_example.comments
         WHERE post_id = $1 AND NOT hidden ORDER BY id",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    {
        Ok(rows) => rows,
        Err(e) => return error(&format!("reading the comments of post {id}"), e),
    };
    let items: String = comments
        .iter()
        .map(|(cid, body)| format!(r#"<li id="comment-{cid}">{}</li>"#, esc(body)))
        .collect();
    Html(format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>{t}</title><link rel="stylesheet" href="/style.css"></head><body>
<p><a href="/">All posts</a></p>
<h1 id="title">{t}</h1>
<ul id="comments">{items}</ul>
<p id="no-comments" class="empty"{no_comments_hidden}>No comments yet.</p>
<form method="post" action="/posts/{id}/comments" id="comment-form"><textarea name="body" id="new-comment" placeholder="Comment" required></textarea> <button id="send-comment">Comment</button></form>
<p id="comment-error" class="error" role="alert" hidden></p>
<script>{LIVE_JS}
// Sent without leaving the page: the comment comes back over the live
// stream; a refusal is shown under the form.
const form = document.getElementById('comment-form');
const commentError = document.getElementById('comment-error');
form.addEventListener('submit', async (e) => {{
  e.preventDefault();
  const button = document.getElementById('send-comment');
  button.disabled = true;
  try {{
    const res = await fetch(form.action, {{ method: 'POST', body: new URLSearchParams(new FormData(form)) }});
    if (res.ok) {{
      form.reset();
      commentError.hidden = true;
    }} else {{
      commentError.textContent = await res.text();
      commentError.hidden = false;
    }}
  }} catch (err) {{
    commentError.textContent = 'The comment was not sent: ' + err.message;
    commentError.hidden = false;
  }} finally {{
    button.disabled = false;
  }}
}});
const comments = document.getElementById('comments');
followEmpty(comments, document.getElementById('no-comments'));
live('/events/posts/{id}', {after:?}, (row, gone) => {{
  document.getElementById('title').textContent = gone ? '(deleted)' : row.title;
}});
live('/events/posts/{id}/comments', {after:?}, (row, gone) => {{
  if (gone) {{ const el = document.getElementById('comment-' + row.id); if (el) el.remove(); return; }}
  upsert(comments, 'comment-' + row.id, esc(row.body));
}});
</script></body></html>"#,
        t = esc(&title),
        no_comments_hidden = if comments.is_empty() { "" } else { " hidden" },
    ))
    .into_response()
}

#[derive(serde::Deserialize)]
struct NewComment {
    body: String,
}

/// Adds a comment and returns to the post's page (the comment and the new
/// count reach the open pages over their live streams). Refuses an empty
/// comment (400) and a comment on a post that does not exist (404), with a
/// message in plain text (the page shows it under its form).
async fn create_comment(
    State(app): State<App>,
    Path(id): Path<i64>,
    Form(form): Form<NewComment>,
) -> Response {
    let body = form.body.trim();
    if body.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "A comment needs some text: it is empty.",
        )
            .into_response();
    }
    // Only if the post exists, in one statement.
    let inserted: Result<Option<(i64,)>, _> = sqlx::query_as(
        "INSERT INTO walflow_live_example.comments (post_id, body)
         SELECT id, $2 FROM walflow_live_example.posts WHERE id = $1
         RETURNING id",
    )
    .bind(id)
    .bind(body)
    .fetch_optional(&app.pool)
    .await;
    match inserted {
        Ok(Some(_)) => Redirect::to(&format!("/posts/{id}")).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            format!("There is no post {id}: it may have been deleted. The comment was not saved."),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Saving the comment on post {id} failed: {e}"),
        )
            .into_response(),
    }
}

#[derive(serde::Deserialize)]
struct NewPost {
    title: String,
}

/// Creates the post, waits until its derived count row exists, then
/// redirects to its page. An empty title is refused (400, the form again
/// with a message). If the operator fails on the new post, the answer
/// comes at its first failed attempt (500, with the error), not after the
/// wait's timeout: the executor reports each failure to the flow's
/// [`ErrorLogger`], which [`FailureFeed`] passes on.
async fn create_post(State(app): State<App>, Form(form): Form<NewPost>) -> Response {
    let title = form.title.trim();
    if title.is_empty() {
        return list_page(
            &app,
            StatusCode::BAD_REQUEST,
            Some("A post needs a title: type one (spaces alone do not count)."),
            &form.title,
        )
        .await;
    }
    // Listening before the insert: no failure is missed.
    let mut failures = app.failures.subscribe();
    let before = app
        .hub
        .position()
        .unwrap_or(after_commit(walflow::Lsn::ZERO));
    let id: i64 = match sqlx::query_scalar(
        "INSERT INTO walflow_live_example.posts (title) VALUES ($1) RETURNING id",
    )
    .bind(title)
    .fetch_one(&app.pool)
    .await
    {
        Ok(id) => id,
        Err(e) => return error("saving the post", e),
    };
    let derived =
        app.flow
            .wait_for::<PostWithCommentsCount>(Scope::id(id), Some(before), DERIVED_TIMEOUT);
    tokio::pin!(derived);
    let post_link = format!("/posts/{id}");
    let failure = loop {
        tokio::select! {
            derived = &mut derived => {
                return match derived {
                    Ok(_) => Redirect::to(&post_link).into_response(),
                    Err(e) => message_page(
                        StatusCode::GATEWAY_TIMEOUT,
                        "The post is saved, not yet listed",
                        &format!(
                            "<p>Post {id} is saved, but its row in the list did not appear within {} s ({}); \
                             it appears there once walflow catches up.</p>",
                            DERIVED_TIMEOUT.as_secs(),
                            esc(&e.to_string())
                        ),
                        (&post_link, "Go to the post"),
                    ),
                };
            }
            failure = failures.recv() => match failure {
                Ok(f) if f.table == POSTS_TABLE && f.id == id.to_string() => break f,
                // Another row's failure, or failures missed: keep waiting.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    return match derived.await {
                        Ok(_) => Redirect::to(&post_link).into_response(),
                        Err(e) => error("waiting for the post's row in the list", e),
                    };
                }
            },
        }
    };
    let then = if failure.retried {
        "walflow retries it: the post appears in the list once an attempt succeeds, \
         or becomes a dead letter (see the status page) after the last one."
    } else {
        "walflow gave up on it: it is a dead letter now (see the status page)."
    };
    message_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The post is saved, but not listed",
        &format!(
            "<p>Post {id} is saved, but making its row in the list failed:</p>\
             <pre class=\"error\">{}</pre><p>{then}</p>",
            esc(&failure.error)
        ),
        (&post_link, "Go to the post"),
    )
}

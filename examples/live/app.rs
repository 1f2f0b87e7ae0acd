//! The live example's application: posts with live comment counts, a post
//! page with its comments live and a form to comment, and a form that
//! creates a post and redirects once the derived row exists. Shared by
//! `main.rs` and the browser test.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use sqlx::PgPool;
use walflow::prelude::*;
use walflow::subscribe::sse::{self, SseOptions};
use walflow::subscribe::{Position, Scope, Subscriptions, after_commit, parse_position};

#[event_source(table = "posts")]
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Post {
    pub id: i64,
    pub title: String,
}

#[event_source(table = "comments")]
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Comment {
    pub id: i64,
    pub post_id: i64,
    pub body: String,
}

#[event_source(table = "post_with_comments_counts")]
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct PostWithCommentsCount {
    pub id: i64,
    pub title: String,
    pub comments_count: i64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS posts (id bigserial PRIMARY KEY, title text NOT NULL);
CREATE TABLE IF NOT EXISTS comments (id bigserial PRIMARY KEY, post_id int8 NOT NULL, body text NOT NULL);
CREATE TABLE IF NOT EXISTS post_with_comments_counts (
    id int8 PRIMARY KEY, title text NOT NULL, comments_count int8 NOT NULL);
";

on_event! {
    /// Keeps `post_with_comments_counts` in step with posts and comments.
    pub operator PostWithCommentsCountOperator for PostWithCommentsCount {
        events: all,
        entities: [Comment, Post],
        id: [Comment.post_id, Post.id],
        delete_with: [Post],
        coalesce: true,
        query: "MERGE INTO post_with_comments_counts dest
            USING (SELECT p.id, p.title, count(c.id) AS comments_count
                   FROM posts p LEFT JOIN comments c ON c.post_id = p.id
                   WHERE p.id = $1 GROUP BY p.id) src
            ON dest.id = src.id
            WHEN MATCHED THEN UPDATE SET title = src.title, comments_count = src.comments_count
            WHEN NOT MATCHED THEN INSERT (id, title, comments_count)
                 VALUES (src.id, src.title, src.comments_count)",
    }
}

/// The application's state.
#[derive(Clone)]
pub struct App {
    pub pool: PgPool,
    pub hub: Subscriptions,
    /// The running flow (operator, listener, hub), kept alive with the app.
    pub flow: std::sync::Arc<Walflow>,
}

/// Creates the tables and starts the flow (the operator keeping the counts,
/// the listener feeding the subscription hub), and returns the router.
/// With `metrics`, the flow serves its metrics, health and status page
/// there.
pub async fn start(
    url: &str,
    slot: &str,
    metrics: Option<std::net::SocketAddr>,
) -> Result<(Router, App), walflow::BoxError> {
    let mut builder = Walflow::builder()
        .database_url(url)
        .slot_name(slot)
        .publication("walflow_live")
        .setup_sql(SCHEMA)
        .operators(["PostWithCommentsCountOperator"]);
    if let Some(addr) = metrics {
        builder = builder.metrics_endpoint(addr);
    }
    let flow = builder.start().await?;
    let app = App {
        pool: flow.pool().clone(),
        hub: flow.subscriptions().clone(),
        flow: std::sync::Arc::new(flow),
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

fn resume_position(headers: &HeaderMap, query: &HashMap<String, String>) -> Option<Position> {
    sse::last_event_id(headers).or_else(|| query.get("after").and_then(|p| parse_position(p)))
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
    sse::stream_from::<PostWithCommentsCount>(
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
    sse::stream_from::<Post>(
        &app.hub,
        Scope::id(id),
        resume_position(&headers, &query),
        SseOptions::default(),
    )
}

async fn comment_events(
    State(app): State<App>,
    Path(id): Path<i64>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> impl IntoResponse {
    sse::stream_from::<Comment>(
        &app.hub,
        Comment::POST_ID.eq(id),
        resume_position(&headers, &query),
        SseOptions::default(),
    )
}

fn error(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The pages' stylesheet.
const STYLE: &str = r#"
body { font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; color: #1d232a; }
h1 { font-size: 1.6rem; }
a { color: #1f5fa8; }
ul { padding-left: 1.2rem; }
li { margin: .3rem 0; }
.count { font-weight: 600; font-variant-numeric: tabular-nums; }
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
function esc(s) { const d = document.createElement('div'); d.textContent = s; return d.innerHTML; }
"#;

async fn index(State(app): State<App>) -> Response {
    // The position first: changes committed after it reach the page.
    let after = position_param(&app);
    let rows: Vec<(i64, String, i64)> = match sqlx::query_as(
        "SELECT id, title, comments_count FROM post_with_comments_counts ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    {
        Ok(rows) => rows,
        Err(e) => return error(e),
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
    Html(format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>Posts</title><link rel="stylesheet" href="/style.css"></head><body>
<h1>Posts</h1>
<ul id="posts">{items}</ul>
<form method="post" action="/posts"><input name="title" id="new-title" placeholder="Title" required> <button id="create">Create</button></form>
<script>{LIVE_JS}
const posts = document.getElementById('posts');
live('/events/counts', {after:?}, (row, gone) => {{
  if (gone) {{ const el = document.getElementById('post-' + row.id); if (el) el.remove(); return; }}
  upsert(posts, 'post-' + row.id, '<a href="/posts/' + row.id + '">' + esc(row.title) + '</a> (<span class="count">' + row.comments_count + '</span> comments)');
}});
</script></body></html>"#
    ))
    .into_response()
}

async fn post_page(State(app): State<App>, Path(id): Path<i64>) -> Response {
    let after = position_param(&app);
    let post: Option<(String,)> = match sqlx::query_as("SELECT title FROM posts WHERE id = $1")
        .bind(id)
        .fetch_optional(&app.pool)
        .await
    {
        Ok(post) => post,
        Err(e) => return error(e),
    };
    let Some((title,)) = post else {
        return (StatusCode::NOT_FOUND, "no such post").into_response();
    };
    let comments: Vec<(i64, String)> =
        match sqlx::query_as("SELECT id, body FROM comments WHERE post_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&app.pool)
            .await
        {
            Ok(rows) => rows,
            Err(e) => return error(e),
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
<form method="post" action="/posts/{id}/comments" id="comment-form"><textarea name="body" id="new-comment" placeholder="Comment" required></textarea> <button id="send-comment">Comment</button></form>
<script>{LIVE_JS}
// Sent without leaving the page: the comment comes back over the live stream.
const form = document.getElementById('comment-form');
form.addEventListener('submit', async (e) => {{
  e.preventDefault();
  const button = document.getElementById('send-comment');
  button.disabled = true;
  try {{
    await fetch(form.action, {{ method: 'POST', body: new URLSearchParams(new FormData(form)) }});
    form.reset();
  }} finally {{
    button.disabled = false;
  }}
}});
const comments = document.getElementById('comments');
live('/events/posts/{id}', {after:?}, (row, gone) => {{
  document.getElementById('title').textContent = gone ? '(deleted)' : row.title;
}});
live('/events/posts/{id}/comments', {after:?}, (row, gone) => {{
  if (gone) {{ const el = document.getElementById('comment-' + row.id); if (el) el.remove(); return; }}
  upsert(comments, 'comment-' + row.id, esc(row.body));
}});
</script></body></html>"#,
        t = esc(&title)
    ))
    .into_response()
}

#[derive(serde::Deserialize)]
struct NewComment {
    body: String,
}

/// Adds a comment and returns to the post's page (the comment and the new
/// count reach the open pages over their live streams).
async fn create_comment(
    State(app): State<App>,
    Path(id): Path<i64>,
    Form(form): Form<NewComment>,
) -> Response {
    let inserted = sqlx::query("INSERT INTO comments (post_id, body) VALUES ($1, $2)")
        .bind(id)
        .bind(&form.body)
        .execute(&app.pool)
        .await;
    match inserted {
        Ok(_) => Redirect::to(&format!("/posts/{id}")).into_response(),
        Err(e) => error(e),
    }
}

#[derive(serde::Deserialize)]
struct NewPost {
    title: String,
}

/// Creates the post, waits until its derived count row exists, then
/// redirects to its page.
async fn create_post(State(app): State<App>, Form(form): Form<NewPost>) -> Response {
    let before = app
        .hub
        .position()
        .unwrap_or(after_commit(walflow::Lsn::ZERO));
    let id: (i64,) = match sqlx::query_as("INSERT INTO posts (title) VALUES ($1) RETURNING id")
        .bind(&form.title)
        .fetch_one(&app.pool)
        .await
    {
        Ok(id) => id,
        Err(e) => return error(e),
    };
    let derived = app
        .flow
        .wait_for::<PostWithCommentsCount>(Scope::id(id.0), Some(before), Duration::from_secs(10))
        .await;
    match derived {
        Ok(_) => Redirect::to(&format!("/posts/{}", id.0)).into_response(),
        Err(e) => (StatusCode::GATEWAY_TIMEOUT, e.to_string()).into_response(),
    }
}

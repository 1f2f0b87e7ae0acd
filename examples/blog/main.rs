//! The blog example: posts and comments, a derived table of comment counts
//! kept in step by a query operator (the seed's MERGE, coalescing), and a
//! handler operator told about new comments.
//!
//! ```text
//! cargo run --example blog                      # a throwaway PostgreSQL
//! DATABASE_URL=postgres://... cargo run --example blog
//! ```
//!
//! With `DATABASE_URL` the example works in a schema of its own,
//! `walflow_blog_example`, which each run replaces (it drops and creates
//! that schema and its three tables); it touches no other table of the
//! database. Its replication slot is `walflow_blog_<database>` (slots are
//! per server, so the name tells the databases apart) and its publication
//! `walflow_blog_example`: both are dropped when it ends, also after an
//! error or Ctrl-C, and a slot left by a killed run is dropped at the next
//! start. walflow's own `walflow` schema stays (the queue and process
//! status of every flow of the database).

#![allow(dead_code)] // some fields are read only through serde

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use walflow::prelude::*;
use walflow::{Config, Report};

/// The example's schema: its tables, and nothing of the application's.
const SCHEMA_NAME: &str = "walflow_blog_example";
/// The example's publication (created at start, dropped at the end).
const PUBLICATION: &str = "walflow_blog_example";

#[event_source(schema = "walflow_blog_example", table = "posts")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Post {
    id: i64,
    title: String,
}

#[event_source(schema = "walflow_blog_example", table = "comments")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Comment {
    id: i64,
    post_id: i64,
    body: String,
}

#[event_source(schema = "walflow_blog_example", table = "post_with_comments_counts")]
#[derive(Debug, Clone, serde::Deserialize)]
struct PostWithCommentsCount {
    id: i64,
    title: String,
    comments_count: i64,
}

on_event! {
    /// Keeps post_with_comments_counts in step with posts and comments.
    operator PostWithCommentsCountOperator for PostWithCommentsCount {
        events: all,
        entities: [Comment, Post],
        id: [Comment.post_id, Post.id],
        delete_with: [Post],
        coalesce: true,
        query: "MERGE INTO walflow_blog_example.post_with_comments_counts dest
                USING (SELECT p.id, p.title, count(c.id) AS comments_count
                       FROM walflow_blog_example.posts p
                       LEFT JOIN walflow_blog_example.comments c ON c.post_id = p.id
                       WHERE p.id = $1 GROUP BY p.id) src
                ON dest.id = src.id
                WHEN MATCHED THEN UPDATE SET title = src.title, comments_count = src.comments_count
                WHEN NOT MATCHED THEN INSERT (id, title, comments_count)
                     VALUES (src.id, src.title, src.comments_count)",
    }

    /// Tells the post's author about a new comment.
    operator CommentNotifier {
        events: [insert],
        entities: [Comment],
        handler: notify_author,
    }
}

static NOTIFIED: AtomicUsize = AtomicUsize::new(0);

async fn notify_author(event: Event<Comment>, ctx: Ctx) -> Result<(), std::io::Error> {
    if let Some(c) = event.record() {
        NOTIFIED.fetch_add(1, Ordering::SeqCst);
        println!(
            "  [{}] new comment {} on post {}: {:?} (at {})",
            ctx.operator(),
            c.id,
            c.post_id,
            c.body,
            ctx.position()
        );
    }
    Ok(())
}

/// The example's tables, made anew at each run in its own schema.
const SCHEMA: &str = "
    DROP SCHEMA IF EXISTS walflow_blog_example CASCADE;
    CREATE SCHEMA walflow_blog_example;
    SET search_path TO walflow_blog_example;
    CREATE TABLE posts (id bigint PRIMARY KEY, title text NOT NULL,
                        updated_at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE comments (id bigint PRIMARY KEY, post_id bigint NOT NULL, body text NOT NULL,
                           updated_at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE post_with_comments_counts (id bigint PRIMARY KEY, title text NOT NULL,
                                            comments_count bigint NOT NULL);
    RESET search_path;
";

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn show(flow: &Walflow, step: &str) -> Result<Vec<(i64, String, i64)>, Error> {
    // Wait until every operator applied what was just committed.
    let lsn = flow.current_lsn().await?;
    flow.wait_processed(lsn, Duration::from_secs(30)).await?;
    let rows: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT id, title, comments_count
         FROM walflow_blog_example.post_with_comments_counts ORDER BY id",
    )
    .fetch_all(flow.pool())
    .await?;
    println!("{step}");
    for (id, title, n) in &rows {
        println!("  post_with_comments_counts: id={id} title={title:?} comments_count={n}");
    }
    if rows.is_empty() {
        println!("  post_with_comments_counts: (empty)");
    }
    Ok(rows)
}

async fn exec(flow: &Walflow, sql: &'static str) -> Result<(), Error> {
    sqlx::raw_sql(sql).execute(flow.pool()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Report> {
    let started = Instant::now();
    let _embedded;
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => {
            println!("DATABASE_URL is unset: starting a throwaway PostgreSQL");
            let pg = walflow::embedded::EmbeddedPostgres::start().await?;
            let url = pg.url();
            _embedded = pg;
            url
        }
    };
    let config = Config::from_database_url(&url)?;
    let slot = walflow::config::slot_name_for("walflow_blog", config.database());
    // The example's own pool, also for cleaning up after the flow stopped.
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&url)
        .await
        .map_err(|e| format!("connecting to {}: {e}", config.server()))?;
    drop_slot(&pool, &slot, Duration::ZERO).await?;

    let result = run_flow(&url, &pool, &slot).await;
    let cleaned = clean_up(&pool, &slot).await;
    result?;
    cleaned?;
    println!(
        "done in {:.1?}; the tables stay in schema {SCHEMA_NAME} (the next run replaces them), \
         slot {slot} and publication {PUBLICATION} are dropped",
        started.elapsed()
    );
    Ok(())
}

/// Starts the flow, runs the example, and stops the flow (also when the
/// example failed or Ctrl-C interrupted it).
async fn run_flow(url: &str, pool: &PgPool, slot: &str) -> Result<(), Error> {
    // The tables must exist before the flow publishes them.
    let flow = Walflow::builder()
        .database_url(url)
        .pool(pool.clone())
        .application_name("blog")
        .slot_name(slot)
        .publication(PUBLICATION)
        .setup_sql(SCHEMA)
        .start()
        .await?;
    // Ctrl-C stops it cleanly too.
    let result = tokio::select! {
        result = run(&flow) => result,
        _ = tokio::signal::ctrl_c() => Err("interrupted (Ctrl-C)".into()),
    };
    flow.shutdown().await?;
    result
}

/// Drops the example's slot and publication.
async fn clean_up(pool: &PgPool, slot: &str) -> Result<(), Error> {
    // The server lets go of the slot a moment after the flow's replication
    // connection closed.
    drop_slot(pool, slot, Duration::from_secs(30)).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP PUBLICATION IF EXISTS {PUBLICATION}"
    )))
    .execute(pool)
    .await
    .map_err(|e| format!("dropping publication {PUBLICATION}: {e}"))?;
    Ok(())
}

/// Drops the slot of this database named `slot` if there is one, waiting up
/// to `wait` for its holder to let go of it.
async fn drop_slot(pool: &PgPool, slot: &str, wait: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + wait;
    loop {
        let found: Option<(bool, Option<i32>)> = sqlx::query_as(
            "SELECT active, active_pid FROM pg_replication_slots
             WHERE slot_name = $1 AND database = current_database()",
        )
        .bind(slot)
        .fetch_optional(pool)
        .await
        .map_err(|e| format!("reading slot {slot}: {e}"))?;
        match found {
            None => return Ok(()),
            Some((true, pid)) if Instant::now() >= deadline => {
                return Err(format!(
                    "slot {slot} is in use by process {} (another run of the blog example on this \
                     database?); stop it, or drop the slot with `walflow drop-slot`",
                    pid.unwrap_or(0)
                )
                .into());
            }
            Some((true, _)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Some((false, _)) => {
                match sqlx::query("SELECT pg_drop_replication_slot($1)")
                    .bind(slot)
                    .execute(pool)
                    .await
                {
                    Ok(_) => return Ok(()),
                    // Taken or dropped in between: look again.
                    Err(sqlx::Error::Database(e))
                        if matches!(e.code().as_deref(), Some("55006") | Some("42704")) => {}
                    Err(e) => return Err(format!("dropping slot {slot}: {e}").into()),
                }
            }
        }
    }
}

async fn run(flow: &Walflow) -> Result<(), Error> {
    exec(
        flow,
        "INSERT INTO walflow_blog_example.posts (id, title)
         VALUES (1, 'Hello walflow'), (2, 'Second post')",
    )
    .await?;
    exec(
        flow,
        "INSERT INTO walflow_blog_example.comments (id, post_id, body) VALUES
           (1, 1, 'First!'), (2, 1, 'Nice'), (3, 2, 'Hmm')",
    )
    .await?;
    show(flow, "after two posts and three comments:").await?;

    exec(
        flow,
        "UPDATE walflow_blog_example.posts SET title = 'Hello, walflow' WHERE id = 1",
    )
    .await?;
    show(flow, "after renaming post 1:").await?;

    exec(
        flow,
        "UPDATE walflow_blog_example.comments SET post_id = 2 WHERE id = 2",
    )
    .await?;
    let moved = show(flow, "after moving comment 2 to post 2:").await?;

    exec(flow, "DELETE FROM walflow_blog_example.posts WHERE id = 1").await?;
    let last = show(flow, "after deleting post 1:").await?;

    let expected_moved = vec![
        (1, "Hello, walflow".to_owned(), 1),
        (2, "Second post".to_owned(), 2),
    ];
    let expected_last = vec![(2, "Second post".to_owned(), 2)];
    let dead = flow.dead_letters("PostWithCommentsCountOperator").await?;
    let notified = NOTIFIED.load(Ordering::SeqCst);
    println!(
        "summary: {} derived row(s), {} comment notification(s), {} dead letter(s)",
        last.len(),
        notified,
        dead.len()
    );
    if moved != expected_moved || last != expected_last || notified != 3 || !dead.is_empty() {
        return Err("the derived table is not what the operators should have made".into());
    }
    Ok(())
}

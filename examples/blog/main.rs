//! The blog example: posts and comments, a derived table of comment counts
//! kept in step by a query operator (the seed's MERGE, coalescing), and a
//! handler operator told about new comments.
//!
//! ```text
//! cargo run --example blog                      # a throwaway PostgreSQL
//! DATABASE_URL=postgres://... cargo run --example blog
//! ```
//!
//! With `DATABASE_URL` the example creates its tables in that database (and
//! drops them first if they exist).

#![allow(dead_code)] // some fields are read only through serde

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use walflow::prelude::*;

#[event_source(table = "posts")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Post {
    id: i64,
    title: String,
}

#[event_source(table = "comments")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Comment {
    id: i64,
    post_id: i64,
    body: String,
}

#[event_source(table = "post_with_comments_counts")]
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
        query: "MERGE INTO post_with_comments_counts dest
                USING (SELECT p.id, p.title, count(c.id) AS comments_count
                       FROM posts p LEFT JOIN comments c ON c.post_id = p.id
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

const SCHEMA: &str = "
    DROP TABLE IF EXISTS posts, comments, post_with_comments_counts;
    CREATE TABLE posts (id bigint PRIMARY KEY, title text NOT NULL,
                        updated_at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE comments (id bigint PRIMARY KEY, post_id bigint NOT NULL, body text NOT NULL,
                           updated_at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE post_with_comments_counts (id bigint PRIMARY KEY, title text NOT NULL,
                                            comments_count bigint NOT NULL);
";

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn show(flow: &Walflow, step: &str) -> Result<Vec<(i64, String, i64)>, Error> {
    // Wait until every operator applied what was just committed.
    let lsn = flow.current_lsn().await?;
    flow.wait_processed(lsn, Duration::from_secs(30)).await?;
    let rows: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT id, title, comments_count FROM post_with_comments_counts ORDER BY id",
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
async fn main() -> Result<(), Error> {
    let started = Instant::now();
    let mut builder = Walflow::builder().application_name("blog");
    let url = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
    match url {
        Some(url) => builder = builder.database_url(url),
        None => {
            println!("DATABASE_URL is unset: starting a throwaway PostgreSQL");
            builder = builder.embedded();
        }
    }
    // The tables must exist before the flow publishes them.
    let flow = builder
        .slot_name("blog_example")
        .setup_sql(SCHEMA)
        .start()
        .await?;
    // Ctrl-C stops it cleanly too.
    let result = tokio::select! {
        result = run(&flow) => result,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    flow.shutdown().await?;
    result?;
    println!("done in {:.1?}", started.elapsed());
    Ok(())
}

async fn run(flow: &Walflow) -> Result<(), Error> {
    exec(
        flow,
        "INSERT INTO posts (id, title) VALUES (1, 'Hello walflow'), (2, 'Second post')",
    )
    .await?;
    exec(
        flow,
        "INSERT INTO comments (id, post_id, body) VALUES
           (1, 1, 'First!'), (2, 1, 'Nice'), (3, 2, 'Hmm')",
    )
    .await?;
    show(flow, "after two posts and three comments:").await?;

    exec(
        flow,
        "UPDATE posts SET title = 'Hello, walflow' WHERE id = 1",
    )
    .await?;
    show(flow, "after renaming post 1:").await?;

    exec(flow, "UPDATE comments SET post_id = 2 WHERE id = 2").await?;
    let moved = show(flow, "after moving comment 2 to post 2:").await?;

    exec(flow, "DELETE FROM posts WHERE id = 1").await?;
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

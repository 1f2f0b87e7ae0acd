//! The blog example: posts and comments, streamed from the WAL as typed
//! events.
//!
//! ```text
//! cargo run --example blog
//! ```
//!
//! With `DATABASE_URL` unset it starts a throwaway PostgreSQL; otherwise it
//! uses that server (and a database of its own on it).

use std::time::Duration;

use walflow::listener::{Listener, ListenerMessage};
use walflow::prelude::*;
use walflow::setup::TableSpec;

#[event_source(table = "posts")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Post {
    id: i64,
    title: String,
    updated_at: DateTime<Utc>,
}

#[event_source(table = "comments")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Comment {
    id: i64,
    post_id: i64,
    body: String,
    updated_at: DateTime<Utc>,
}

#[event_enum]
enum BlogEvent {
    Comment(Event<Comment>),
    Post(Event<Post>),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // A database of our own: on DATABASE_URL's server, or a throwaway one.
    let db = walflow::embedded::test_database().await?;
    let config = db.config_builder().app_name("blog").build()?;
    let pool = db.pool().await?;
    sqlx::raw_sql(
        "CREATE TABLE posts (id int8 PRIMARY KEY, title text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE comments (id int8 PRIMARY KEY, post_id int8 NOT NULL, body text NOT NULL,
                                updated_at timestamptz NOT NULL DEFAULT now());",
    )
    .execute(&pool)
    .await?;

    let tables = [Post::TABLE, Comment::TABLE]
        .into_iter()
        .map(|t| TableSpec::new("public", t))
        .collect();
    let (mut listener, _) = Listener::connect(&config, tables).await?;

    let statements = [
        "INSERT INTO posts (id, title) VALUES (1, 'Hello WAL'), (2, 'Second post')",
        "INSERT INTO comments (id, post_id, body) VALUES (10, 1, 'First!')",
        "INSERT INTO comments (id, post_id, body) VALUES (11, 1, 'Nice')",
        "UPDATE comments SET post_id = 2, updated_at = now() WHERE id = 11",
        "UPDATE posts SET title = 'Hello, WAL', updated_at = now() WHERE id = 1",
        "DELETE FROM posts WHERE id = 2",
    ];
    for sql in statements {
        sqlx::raw_sql(sql).execute(&pool).await?;
    }

    let mut transactions = 0;
    let mut events = 0;
    while transactions < statements.len() {
        let message = tokio::time::timeout(Duration::from_secs(30), listener.recv())
            .await?
            .map_err(Box::new)?
            .ok_or("the listener stopped")?;
        match message {
            ListenerMessage::Change(raw) => {
                events += 1;
                match <BlogEvent as walflow::FromRawEvent>::from_raw_event(&raw)? {
                    BlogEvent::Post(e) => describe(
                        "post",
                        &e,
                        e.record().map(|p| {
                            format!(
                                "{:?}, updated {}",
                                p.title,
                                p.updated_at.format("%H:%M:%S%.6f")
                            )
                        }),
                    ),
                    BlogEvent::Comment(e) => {
                        describe(
                            "comment",
                            &e,
                            e.record().map(|c| {
                                format!(
                                    "{:?} on post {}, updated {}",
                                    c.body,
                                    c.post_id,
                                    c.updated_at.format("%H:%M:%S%.6f")
                                )
                            }),
                        );
                        if let Some(moved) = e.changes().get("post_id") {
                            println!("    moved: post_id {:?} -> {:?}", moved.old, moved.new);
                        }
                    }
                }
            }
            ListenerMessage::Commit(commit) => {
                transactions += 1;
                // Handed on (here: printed): acknowledge.
                listener.ack(commit.end_lsn);
            }
            _ => {}
        }
    }
    let acked = listener.shutdown().await?;
    println!("{transactions} transactions, {events} events, acknowledged up to {acked}");
    Ok(())
}

fn describe<T>(what: &str, event: &Event<T>, text: Option<String>) {
    let meta = event.meta();
    println!(
        "{:<7} {:<8} {:<48} at {}",
        event.kind().as_str(),
        what,
        text.unwrap_or_default(),
        meta.position(),
    );
}

//! The blog model of the operator tests that include it (with
//! `#[path = "common/blog.rs"] mod blog;`): posts, comments, the derived
//! comment counts (the seed's MERGE, coalescing) and a non-idempotent
//! counting operator. Opt-in, because its declarations register in every
//! test binary that includes it.

use walflow::prelude::*;

#[event_source(table = "posts")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Post {
    pub id: i64,
    pub title: String,
}

#[event_source(table = "comments")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Comment {
    pub id: i64,
    pub post_id: i64,
}

#[event_source(table = "post_with_comments_counts")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PostWithCommentsCount {
    pub id: i64,
    pub title: String,
    pub comments_count: i64,
}

on_event! {
    operator Counts for PostWithCommentsCount {
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

    /// Not idempotent: counts every run.
    operator Tally for PostWithCommentsCount {
        events: all,
        entities: [Comment],
        id: [Comment.post_id],
        query: "INSERT INTO tally (post_id, n) VALUES ($1, 1)
                ON CONFLICT (post_id) DO UPDATE SET n = tally.n + 1",
    }
}

/// The model's tables (`updated_at` feeds the process status).
pub const SCHEMA: &str = "
    CREATE TABLE posts (id bigint PRIMARY KEY, title text NOT NULL,
                        updated_at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE comments (id bigint PRIMARY KEY, post_id bigint NOT NULL,
                           updated_at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE post_with_comments_counts (id bigint PRIMARY KEY, title text NOT NULL,
                                            comments_count bigint NOT NULL);
    CREATE TABLE tally (post_id bigint PRIMARY KEY, n bigint NOT NULL);
";

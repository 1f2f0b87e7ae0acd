//! A derived table that is itself an `#[event_source]` feeds the next
//! operator: posts and comments → post_with_comments_counts → post_badges.

#![allow(dead_code)] // struct fields are read through serde

mod common;

use std::time::Duration;

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
}

#[event_source(table = "post_with_comments_counts")]
#[derive(Debug, Clone, serde::Deserialize)]
struct PostWithCommentsCount {
    id: i64,
    title: String,
    comments_count: i64,
}

#[event_source(table = "post_badges")]
#[derive(Debug, Clone, serde::Deserialize)]
struct PostBadge {
    id: i64,
    badge: String,
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

    operator Badges for PostBadge {
        events: all,
        entities: [PostWithCommentsCount],
        delete_with: [PostWithCommentsCount],
        coalesce: true,
        query: "INSERT INTO post_badges (id, badge)
                SELECT id, CASE WHEN comments_count >= 2 THEN 'popular' ELSE 'quiet' END
                FROM post_with_comments_counts WHERE id = $1
                ON CONFLICT (id) DO UPDATE SET badge = EXCLUDED.badge",
    }
}

async fn badges(db: &common::Db) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT id, badge FROM post_badges ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// Both levels applied: the second level's events come from the first
/// level's writes, so the fence runs twice (the first level's commit
/// positions are only known once it ran).
async fn settle(flow: &Walflow) {
    for _ in 0..2 {
        let lsn = flow.current_lsn().await.unwrap();
        flow.wait_processed(lsn, Duration::from_secs(20))
            .await
            .unwrap();
    }
}

fn b(id: i64, badge: &str) -> (i64, String) {
    (id, badge.to_owned())
}

#[tokio::test]
async fn two_level_chain() {
    let db = common::db().await;
    db.exec(
        "CREATE TABLE posts (id bigint PRIMARY KEY, title text NOT NULL);
         CREATE TABLE comments (id bigint PRIMARY KEY, post_id bigint NOT NULL);
         CREATE TABLE post_with_comments_counts (id bigint PRIMARY KEY, title text NOT NULL,
                                                 comments_count bigint NOT NULL);
         CREATE TABLE post_badges (id bigint PRIMARY KEY, badge text NOT NULL);",
    )
    .await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("chain"))
        .operators(["Counts", "Badges"])
        .start()
        .await
        .unwrap();
    db.exec("INSERT INTO posts VALUES (1, 'a'), (2, 'b')").await;
    db.exec("INSERT INTO comments VALUES (1, 1)").await;
    settle(&flow).await;
    assert_eq!(badges(&db).await, vec![b(1, "quiet"), b(2, "quiet")]);

    db.exec("INSERT INTO comments VALUES (2, 1)").await;
    settle(&flow).await;
    assert_eq!(badges(&db).await, vec![b(1, "popular"), b(2, "quiet")]);

    // A post delete removes its count row, whose delete removes the badge.
    db.exec("DELETE FROM posts WHERE id = 2").await;
    settle(&flow).await;
    assert_eq!(badges(&db).await, vec![b(1, "popular")]);

    db.exec("DELETE FROM comments WHERE id = 2").await;
    settle(&flow).await;
    assert_eq!(badges(&db).await, vec![b(1, "quiet")]);
    flow.shutdown().await.unwrap();
}

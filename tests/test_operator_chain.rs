//! A derived table that is itself an `#[event_source]` feeds the next
//! operator: posts and comments → post_with_comments_counts (the blog
//! model's `Counts`) → post_badges.

#![allow(dead_code)] // struct fields are read through serde

mod common;

use std::time::Duration;

use walflow::prelude::*;

#[path = "common/blog.rs"]
mod blog;

use blog::PostWithCommentsCount;

#[event_source(table = "post_badges")]
#[derive(Debug, Clone, serde::Deserialize)]
struct PostBadge {
    id: i64,
    badge: String,
}

on_event! {
    /// Second level: fed by `blog::Counts`' writes.
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

/// A database with the blog and the badges table, and a flow running the
/// two-level chain on it.
async fn chain(slot: &str) -> (common::Db, Walflow) {
    let db = common::db().await;
    db.exec(blog::SCHEMA).await;
    db.exec("CREATE TABLE post_badges (id bigint PRIMARY KEY, badge text NOT NULL)")
        .await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot(slot))
        .operators(["Counts", "Badges"])
        .start()
        .await
        .unwrap();
    (db, flow)
}

#[tokio::test]
async fn two_level_chain() {
    let (db, flow) = chain("chain").await;
    db.exec("INSERT INTO posts (id, title) VALUES (1, 'a'), (2, 'b')")
        .await;
    db.exec("INSERT INTO comments (id, post_id) VALUES (1, 1)")
        .await;
    settle(&flow).await;
    assert_eq!(badges(&db).await, vec![b(1, "quiet"), b(2, "quiet")]);

    db.exec("INSERT INTO comments (id, post_id) VALUES (2, 1)")
        .await;
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

async fn count_ids(db: &common::Db) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM post_with_comments_counts ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// A `delete_with` entity whose mapped id changes: its old id is a delete
/// for that id (the first level's MERGE finds no source row for it and
/// cannot remove its target row), and the second level follows.
#[tokio::test]
async fn a_delete_with_entity_whose_id_changes_leaves_no_row_under_its_old_id() {
    let (db, flow) = chain("chain_moved").await;
    db.exec("INSERT INTO posts (id, title) VALUES (1, 'a'), (2, 'b')")
        .await;
    db.exec("INSERT INTO comments (id, post_id) VALUES (1, 1), (2, 1)")
        .await;
    settle(&flow).await;
    assert_eq!(count_ids(&db).await, vec![1, 2]);
    assert_eq!(badges(&db).await, vec![b(1, "popular"), b(2, "quiet")]);

    // Post 1 becomes post 1000001 (its comments still point at 1).
    db.exec("UPDATE posts SET id = id + 1000000 WHERE id = (SELECT min(id) FROM posts)")
        .await;
    settle(&flow).await;
    assert_eq!(count_ids(&db).await, vec![2, 1_000_001]);
    assert_eq!(
        badges(&db).await,
        vec![b(2, "quiet"), b(1_000_001, "quiet")]
    );

    // And back, in one transaction with a comment of the new id.
    db.exec(
        "BEGIN;
         UPDATE posts SET id = 1 WHERE id = 1000001;
         INSERT INTO comments (id, post_id) VALUES (3, 2), (4, 2);
         COMMIT;",
    )
    .await;
    settle(&flow).await;
    assert_eq!(count_ids(&db).await, vec![1, 2]);
    assert_eq!(badges(&db).await, vec![b(1, "popular"), b(2, "popular")]);
    flow.shutdown().await.unwrap();
}

//! A running flow: it feeds subscriptions (the "create a post, wait until
//! the derived row exists" flow, live counts on the derived table, a scoped
//! subscription to one post's comments), a second flow on its slot is
//! refused, and a unit whose queue rows another executor finished meanwhile
//! is rolled back.

#![allow(dead_code)] // struct fields are read through serde

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use walflow::prelude::*;
use walflow::subscribe::{Action, Scope};

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
    /// The seed's MERGE.
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

    /// Marks each post in its own transaction; for post 1 its queue row is
    /// first finished "by another executor".
    operator Raced {
        events: [insert],
        entities: [Post],
        handler: raced,
    }
}

async fn raced(event: Event<Post>, ctx: Ctx) -> Result<(), walflow::BoxError> {
    let post = event.record().expect("row").id;
    if post == 1 {
        // The row may still be being queued while the handler runs.
        let at = ctx.position();
        common::wait_until(Duration::from_secs(20), || async {
            sqlx::query(
                "DELETE FROM walflow.queue
                 WHERE operator = 'Raced' AND commit_lsn = $1 AND seq = $2",
            )
            .bind(at.commit_lsn.0 as i64)
            .bind(at.seq as i32)
            .execute(ctx.pool())
            .await
            .unwrap()
            .rows_affected()
                == 1
        })
        .await;
    }
    let mut tx = ctx.transaction().await?;
    sqlx::query("INSERT INTO marks VALUES ($1)")
        .bind(post)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

const SCHEMA: &str = "
    CREATE TABLE posts (id int8 PRIMARY KEY, title text NOT NULL);
    CREATE TABLE comments (id int8 PRIMARY KEY, post_id int8 NOT NULL, body text NOT NULL);
    CREATE TABLE post_with_comments_counts (id int8 PRIMARY KEY, title text NOT NULL,
                                            comments_count int8 NOT NULL);
    CREATE TABLE marks (post int8 NOT NULL);";

#[tokio::test]
async fn the_flow_feeds_subscriptions_in_commit_order() {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("flowsubs"))
        .operators(["Counts"])
        .start()
        .await
        .expect("the flow starts");

    let mut counts = flow.subscribe::<PostWithCommentsCount>(Scope::All);
    let mut post_one_comments = flow.subscribe::<Comment>(Comment::POST_ID.eq(1));

    // Create a post, then wait until its derived row exists.
    let before = flow.subscriptions().position();
    db.exec("INSERT INTO posts VALUES (1, 'Hello')").await;
    let created = flow
        .wait_for::<PostWithCommentsCount>(Scope::id(1), before, Duration::from_secs(20))
        .await
        .expect("the derived row appears");
    assert_eq!(created.action, Action::Insert);
    let row = created.row().unwrap();
    assert_eq!((row.id, row.comments_count), (1, 0));

    db.exec("INSERT INTO comments VALUES (10, 1, 'first')")
        .await;
    db.exec("INSERT INTO comments VALUES (11, 2, 'elsewhere')")
        .await;
    db.exec("INSERT INTO comments VALUES (12, 1, 'second')")
        .await;

    // The scoped subscription sees post 1's comments only, in order.
    let mut bodies = Vec::new();
    while bodies.len() < 2 {
        let d = tokio::time::timeout(Duration::from_secs(20), post_one_comments.next())
            .await
            .expect("a comment of post 1")
            .unwrap()
            .unwrap();
        bodies.push(d.row().unwrap().body.clone());
    }
    assert_eq!(bodies, ["first", "second"]);

    // The unscoped subscription on the derived table sees the count go up.
    let mut last = 0;
    while last < 2 {
        let d = tokio::time::timeout(Duration::from_secs(20), counts.next())
            .await
            .expect("a derived row change")
            .unwrap()
            .unwrap();
        let row = d.row().unwrap();
        if row.id == 1 {
            assert!(row.comments_count >= last, "counts only go up here");
            last = row.comments_count;
        }
    }
    flow.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_second_flow_on_the_same_slot_is_refused() {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let slot = db.slot("twoflows");
    let start = || {
        Walflow::builder()
            .database_url(&db.url)
            .slot_name(&slot)
            .operators(["Counts"])
            .start()
    };
    let first = start().await.expect("the first flow starts");
    let err = tokio::time::timeout(Duration::from_secs(20), start())
        .await
        .expect("the second start does not hang")
        .expect_err("a second flow on the slot is refused");
    // Refused by the checks before the second flow sets anything up.
    assert!(
        matches!(
            &err,
            walflow::FlowError::Preflight(walflow::preflight::PreflightError::SlotInUse {
                slot: s,
                pid,
            }) if *s == slot && *pid > 0
        ),
        "{err}"
    );
    // The first one is unaffected.
    db.exec("INSERT INTO posts VALUES (7, 'still here')").await;
    let lsn = first.current_lsn().await.unwrap();
    first
        .wait_processed(lsn, Duration::from_secs(20))
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM post_with_comments_counts WHERE id = 7")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    first.shutdown().await.unwrap();
}

/// Two executors on one queue (a flow still shutting down while its
/// successor starts): the one finding its queue rows already gone rolls its
/// own transaction back, so nothing is applied twice, and goes on.
#[tokio::test]
async fn a_unit_whose_rows_another_executor_finished_is_rolled_back() {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("raced"))
        .operators(["Raced"])
        .start()
        .await
        .unwrap();
    // No id mapping: one id, so post 2 runs after post 1 has finished.
    db.exec("INSERT INTO posts VALUES (1, 'raced')").await;
    db.exec("INSERT INTO posts VALUES (2, 'plain')").await;
    let marks = || async {
        sqlx::query_scalar::<_, i64>("SELECT post FROM marks ORDER BY post")
            .fetch_all(&db.pool)
            .await
            .unwrap()
    };
    common::wait_until(Duration::from_secs(20), || async {
        marks().await.contains(&2)
    })
    .await;
    assert_eq!(
        marks().await,
        vec![2],
        "post 1's own transaction was rolled back"
    );
    assert!(flow.dead_letters("Raced").await.unwrap().is_empty());
    flow.shutdown().await.unwrap();
}

/// `Walflow::start` checks the server first and says what is wrong before
/// it creates anything: here `wal_level`, and a role without REPLICATION.
#[tokio::test]
async fn start_says_why_the_server_cannot_stream() {
    let pg = walflow::embedded::EmbeddedPostgres::builder()
        .setting("wal_level", "replica")
        .start()
        .await
        .unwrap();
    let err = Walflow::builder()
        .database_url(pg.url())
        .operators(Vec::<String>::new())
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            walflow::FlowError::Preflight(walflow::preflight::PreflightError::WalLevel { wal_level })
                if wal_level == "replica"
        ),
        "{err}"
    );
    assert!(err.to_string().contains("wal_level"), "{err}");
    // Nothing was created.
    let admin = common::Db::connect(&pg.url()).await;
    let schema: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'walflow')")
            .fetch_one(&admin.pool)
            .await
            .unwrap();
    assert!(!schema, "the walflow schema was created");

    let db = common::db().await;
    let role = format!("plain_{}", db.name);
    db.exec(&format!("CREATE ROLE {role} LOGIN PASSWORD 'pw'"))
        .await;
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some("pw")).unwrap();
    let err = Walflow::builder()
        .database_url(url.as_str())
        .slot_name(db.slot("plain"))
        .operators(Vec::<String>::new())
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            walflow::FlowError::Preflight(
                walflow::preflight::PreflightError::NoReplicationAttribute { .. }
            )
        ),
        "{err}"
    );
    db.exec(&format!("DROP ROLE {role}")).await;
}

//! A unit whose `COMMIT` gets no reply: with the stream storage,
//! nothing in walflow's tables but the server's status of
//! the unit's transaction (`pg_xact_status`) says whether it committed.
//! A proxy between walflow and PostgreSQL breaks every third `COMMIT` of
//! the flow's units, half of them after forwarding it (the server commits,
//! the reply is lost), half before (the server never commits). A
//! non-idempotent counter stays exact: nothing is applied twice, nothing is
//! lost.

#![allow(dead_code)] // struct fields are read through serde

#[path = "common/blog.rs"]
mod blog;
mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::net::SocketAddr;
use std::time::Duration;

use walflow::config::{ProcessStatusStorage, QueueStorage};
use walflow::prelude::*;

async fn counted(db: &common::Db) -> Vec<(i64, i64)> {
    sqlx::query_as("SELECT post_id, n FROM tally ORDER BY post_id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_commit_whose_reply_is_lost_is_applied_once() {
    for (queue, status) in [
        (QueueStorage::Stream, ProcessStatusStorage::Memory),
        (QueueStorage::Stream, ProcessStatusStorage::Postgres),
    ] {
        run(queue, status).await;
    }
}

async fn run(queue: QueueStorage, status: ProcessStatusStorage) {
    eprintln!("queue storage {queue:?}, process status {status:?}");
    let db = common::db().await;
    db.exec(blog::SCHEMA).await;
    let server = url::Url::parse(&db.url).unwrap();
    let upstream: SocketAddr =
        tokio::net::lookup_host((server.host_str().unwrap(), server.port().unwrap_or(5432)))
            .await
            .unwrap()
            .next()
            .unwrap();
    let proxy = proxy::CommitLosingProxy::start(upstream, 3).await;
    let flow = Walflow::builder()
        .database_url(proxy.url(&db.url))
        .slot_name(db.slot("lostcommit"))
        .queue_storage(queue)
        .process_status_storage(status)
        .min_restart_time(Duration::from_millis(10))
        .max_restart_time(Duration::from_millis(50))
        .operators(["Tally"])
        .start()
        .await
        .expect("the flow starts");
    proxy.arm(true);

    // Events per post: every comment event counts once for its post.
    let mut truth = std::collections::BTreeMap::<i64, i64>::new();
    for i in 0..120i64 {
        let post = i % 7;
        db.exec(&format!(
            "INSERT INTO comments (id, post_id) VALUES ({i}, {post})"
        ))
        .await;
        *truth.entry(post).or_default() += 1;
        if i % 4 == 0 {
            db.exec(&format!(
                "UPDATE comments SET updated_at = now() WHERE id = {i}"
            ))
            .await;
            *truth.entry(post).or_default() += 1;
        }
    }
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(60))
        .await
        .unwrap();
    proxy.arm(false);
    let (lost_replies, dropped) = proxy.broken();
    assert!(
        lost_replies > 0 && dropped > 0,
        "the proxy broke COMMITs both ways ({lost_replies} replies lost, {dropped} dropped)"
    );
    assert_eq!(
        counted(&db).await,
        truth.into_iter().collect::<Vec<_>>(),
        "{lost_replies} COMMIT replies lost, {dropped} COMMITs dropped"
    );
    flow.shutdown().await.unwrap();
}

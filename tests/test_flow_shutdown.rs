//! Stopping a flow shared with request handlers, on a signal; running it on
//! the application's own pool; the hub's options through the builder.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use walflow::prelude::*;
use walflow::subscribe::{HubOptions, Scope, SubscriptionError};

#[event_source(table = "notes")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Note {
    id: i64,
}

const TIMEOUT: Duration = Duration::from_secs(30);

async fn notes_db() -> common::Db {
    let db = common::db().await;
    db.exec("CREATE TABLE notes (id int8 PRIMARY KEY)").await;
    db
}

async fn next_id(sub: &mut walflow::subscribe::Subscription<Note>) -> i64 {
    tokio::time::timeout(TIMEOUT, sub.next())
        .await
        .expect("a change in time")
        .expect("the stream goes on")
        .expect("no lag")
        .row()
        .unwrap()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_flow_stops_on_a_signal_and_ends_its_subscriptions() {
    let db = notes_db().await;
    let slot = db.slot("signal");
    let flow = Arc::new(
        Walflow::builder()
            .database_url(&db.url)
            .slot_name(&slot)
            .start()
            .await
            .expect("the flow starts"),
    );
    // A request handler holding the flow and a live subscription, as an
    // SSE endpoint does.
    let mut sub = flow.subscribe::<Note>(Scope::All);
    let handler = tokio::spawn({
        let flow = Arc::clone(&flow);
        async move {
            let mut seen = vec![next_id(&mut sub).await];
            // The stream ends when the flow shuts down.
            while let Some(item) = tokio::time::timeout(TIMEOUT, sub.next())
                .await
                .expect("the stream ends in time")
            {
                seen.push(item.expect("no lag").row().unwrap().id);
            }
            (seen, flow.is_subscriber_only())
        }
    });
    db.exec("INSERT INTO notes VALUES (1)").await;
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, TIMEOUT).await.unwrap();

    let (signal, signalled) = tokio::sync::oneshot::channel::<()>();
    let stopping = tokio::spawn({
        let flow = Arc::clone(&flow);
        async move {
            flow.shutdown_on(async {
                let _ = signalled.await;
            })
            .await
        }
    });
    signal.send(()).unwrap();
    tokio::time::timeout(TIMEOUT, stopping)
        .await
        .expect("the shutdown finishes in time")
        .unwrap()
        .expect("a clean shutdown");
    let (seen, subscriber_only) = handler.await.unwrap();
    assert_eq!(seen, [1]);
    assert!(!subscriber_only);
    // The slot is let go of, and a second shutdown has nothing left to do.
    common::wait_slot_released(&db.url, &slot).await;
    flow.shutdown()
        .await
        .expect("a second shutdown is harmless");
    // A subscription started after the shutdown ends at once.
    let mut late = flow.subscribe::<Note>(Scope::All);
    assert!(late.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_on_the_applications_pool_leaves_it_open() {
    let db = notes_db().await;
    let slot = db.slot("app_pool");
    let url = url::Url::parse(&db.url).unwrap();
    // (The test servers' passwords are hexadecimal: nothing to decode.)
    let password = url.password().unwrap_or_default().to_owned();
    // No URL and no host: the connection comes from the pool; only the
    // password is given, since a pool does not give it back.
    let config = walflow::Config::builder()
        .password(password)
        .slot_name(&slot)
        .build()
        .unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(12)
        .connect(&db.url)
        .await
        .unwrap();
    let flow = Walflow::builder()
        .config(config)
        .pool(pool.clone())
        .start()
        .await
        .expect("the flow starts on the application's pool");
    let mut sub = flow.subscribe::<Note>(Scope::All);
    db.exec("INSERT INTO notes VALUES (7)").await;
    assert_eq!(next_id(&mut sub).await, 7);
    flow.shutdown().await.unwrap();
    assert!(!pool.is_closed(), "the application's pool stays open");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hubs_options_come_through_the_builder() {
    let db = notes_db().await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("hub_options"))
        .hub_options(HubOptions {
            buffer: 1,
            ..HubOptions::default()
        })
        .start()
        .await
        .expect("the flow starts");
    let mut sub = flow.subscribe::<Note>(Scope::All);
    for id in 1..=3 {
        db.exec(&format!("INSERT INTO notes VALUES ({id})")).await;
    }
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, TIMEOUT).await.unwrap();
    // A buffer of one change: the first is kept, the next ones are lost to
    // this slow subscriber, which is told so.
    assert_eq!(next_id(&mut sub).await, 1);
    let lagged = tokio::time::timeout(TIMEOUT, sub.next())
        .await
        .expect("an item in time")
        .expect("the stream goes on");
    match lagged {
        Err(SubscriptionError::Lagged(lagged)) => assert_eq!(lagged.missed, 2),
        other => panic!("expected a lag, got {other:?}"),
    }
    flow.shutdown().await.unwrap();
}

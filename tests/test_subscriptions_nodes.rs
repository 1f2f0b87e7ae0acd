//! Two application nodes in separate processes: the parent holds the
//! replication slot and broadcasts over PostgreSQL `LISTEN`/`NOTIFY`; the
//! child, without a slot, receives the changes in its own hub.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use walflow::listener::ListenerMessage;
use walflow::prelude::*;
use walflow::subscribe::{Broadcast, HubOptions, PgPubSub, Scope, Subscriptions, Transaction};

#[event_source(table = "comments")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Comment {
    id: i64,
    post_id: i64,
    body: String,
}

const CHILD: &str = "WALFLOW_TEST_SUBSCRIBER_NODE";
const TIMEOUT: Duration = Duration::from_secs(30);

/// In the child process (re-executed test binary), runs the subscriber node
/// instead of the test harness.
#[ctor::ctor(unsafe)]
fn child_entry() {
    if std::env::var_os(CHILD).is_some() {
        let code = match std::panic::catch_unwind(subscriber_node) {
            Ok(()) => 0,
            Err(_) => 101,
        };
        std::process::exit(code);
    }
}

/// Listens on the channel, subscribes to the comments of post 1, prints
/// `READY`, then one line per change: `<action> <id> <body length>`, and
/// exits after `COUNT` of them.
fn subscriber_node() {
    let url = std::env::var("URL").unwrap();
    let count: usize = std::env::var("COUNT").unwrap().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let db = common::Db::connect(&url).await;
        let hub = Subscriptions::new(HubOptions::default());
        let pubsub = PgPubSub::new(db.pool.clone()).await.unwrap();
        let _listening = pubsub.listen(hub.clone()).await.unwrap();
        let mut sub = hub.subscribe::<Comment>(Comment::POST_ID.eq(1));
        println!("READY");
        std::io::stdout().flush().unwrap();
        for _ in 0..count {
            let d = tokio::time::timeout(TIMEOUT, sub.next())
                .await
                .expect("no change in time")
                .unwrap()
                .unwrap();
            let row = d.row().unwrap();
            println!(
                "{} {} {}",
                serde_json::to_value(d.action).unwrap().as_str().unwrap(),
                row.id,
                row.body.len()
            );
            std::io::stdout().flush().unwrap();
        }
    });
}

#[tokio::test]
async fn a_node_without_the_slot_receives_changes_over_notify() {
    let db = common::db().await;
    db.exec(
        "CREATE TABLE comments (id int8 primary key, post_id int8 not null, body text not null)",
    )
    .await;
    let slot = db.slot("nodes");
    db.setup(&slot, &["comments"]).await;
    let pubsub = PgPubSub::new(db.pool.clone()).await.unwrap();
    // This node feeds its own hub from the channel too.
    let hub = Subscriptions::default();
    let _listening = pubsub.listen(hub.clone()).await.unwrap();
    let mut local = hub.subscribe::<Comment>(Scope::All);

    let mut listener = db.listener(&slot).await.unwrap();
    let sender = pubsub.clone();
    let _broadcasting = tokio::spawn(async move {
        let mut changes = Vec::new();
        while let Ok(Some(message)) = listener.recv().await {
            match message {
                ListenerMessage::Change(raw) => changes.push(std::sync::Arc::new(raw)),
                ListenerMessage::Commit(c) => {
                    let tx = Transaction {
                        end_lsn: c.end_lsn,
                        changes: std::mem::take(&mut changes),
                    };
                    sender.send(&tx).await.unwrap();
                    listener.ack(c.end_lsn);
                }
                _ => {}
            }
        }
    });

    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .env("URL", &db.url)
        .env("COUNT", "4")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut ready_tx = Some(ready_tx);
        let mut out = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line == "READY" {
                ready_tx.take().unwrap().send(()).unwrap();
            } else {
                out.push(line);
            }
        }
        out
    });
    tokio::time::timeout(TIMEOUT, ready_rx)
        .await
        .expect("child not ready")
        .unwrap();

    let big = "x".repeat(20_000);
    db.exec("INSERT INTO comments VALUES (1, 1, 'hello'), (2, 2, 'other post')")
        .await;
    db.exec(&format!("INSERT INTO comments VALUES (3, 1, '{big}')"))
        .await;
    db.exec("UPDATE comments SET post_id = 2 WHERE id = 1")
        .await;
    db.exec("UPDATE comments SET post_id = 1 WHERE id = 2")
        .await;

    let lines = tokio::time::timeout(TIMEOUT, lines)
        .await
        .expect("child did not finish")
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        lines,
        ["insert 1 5", "insert 3 20000", "left 1 5", "entered 2 10"],
        "in commit order, the large payload fetched by reference"
    );
    // The node holding the slot got them through the channel too.
    for id in [1, 2, 3, 1, 2] {
        let d = tokio::time::timeout(TIMEOUT, local.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.row().unwrap().id, id);
        assert!([1, 2].contains(&d.row().unwrap().post_id));
    }
    let (stored,): (i64,) = sqlx::query_as("SELECT count(*) FROM walflow.pubsub_payloads")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1, "only the large transaction went by reference");
}

//! Several application nodes in separate processes: the parent's flow holds
//! the replication slot and broadcasts over PostgreSQL (`pubsub = postgres`);
//! the child is a subscriber-only flow. Changes reach the child's scoped
//! subscription in commit order, also across a lost `LISTEN` connection,
//! and a node away longer than the log keeps, or following a sender that
//! crashed before broadcasting what it had handed on, is told to reload.
//! An update's changes reach another node with each value's type, and a
//! delivery writes them in plain JSON, like its rows.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use walflow::config::{ProcessStatusStorage, PubSub};
use walflow::prelude::*;
use walflow::subscribe::{
    Broadcast, HubOptions, PgPubSub, Scope, SubscriptionError, Subscriptions, Transaction,
};

#[event_source(table = "comments")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Comment {
    id: i64,
    post_id: i64,
    body: String,
}

/// A row with columns of several types, to follow an update's changes.
#[event_source(table = "typed_posts")]
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
struct TypedPost {
    id: i64,
    comments_count: i32,
    score: Option<String>,
    title: String,
    edited_at: chrono::DateTime<chrono::Utc>,
    tags: serde_json::Value,
    data: Vec<u8>,
}

on_event! {
    /// Gives the flow holding the slot a reason to publish `typed_posts`.
    operator SeenTyped {
        events: all,
        entities: [TypedPost],
        handler: seen_typed,
    }

    /// Gives the flow holding the slot a reason to publish `comments`.
    operator Seen {
        events: all,
        entities: [Comment],
        handler: seen,
    }
}

async fn seen(_: Event<Comment>, _: Ctx) -> Result<(), std::io::Error> {
    Ok(())
}

async fn seen_typed(_: Event<TypedPost>, _: Ctx) -> Result<(), std::io::Error> {
    Ok(())
}

const CHILD: &str = "WALFLOW_TEST_SUBSCRIBER_NODE";
const TIMEOUT: Duration = Duration::from_secs(30);
const CHANNEL: &str = PgPubSub::DEFAULT_CHANNEL;

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

/// A subscriber-only flow on `URL`: subscribes to the comments of post 1,
/// prints `READY`, then one line per change, `<action> <id> <body length>`
/// (`lost` for a lost-changes error, then `reload` when resuming is refused),
/// and exits after the change of comment `STOP_AT`.
fn subscriber_node() {
    let url = std::env::var("URL").unwrap();
    let stop_at: i64 = std::env::var("STOP_AT").unwrap().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let flow = Walflow::builder()
            .database_url(&url)
            .pubsub(PubSub::Postgres)
            .min_restart_time(Duration::from_millis(50))
            .max_restart_time(Duration::from_millis(200))
            .subscriber_only()
            .start()
            .await
            .expect("the subscriber-only flow starts");
        assert!(flow.is_subscriber_only());
        let mut sub = flow.subscribe::<Comment>(Comment::POST_ID.eq(1));
        println!("READY");
        std::io::stdout().flush().unwrap();
        loop {
            // A safety net only: the parent bounds each of its own waits,
            // and between two changes it may wait for several of them
            // (a cut connection, the log's pruning, the login allowed).
            let item = tokio::time::timeout(4 * TIMEOUT, sub.next())
                .await
                .expect("no change in time")
                .expect("the stream goes on");
            let line = match item {
                Ok(d) => {
                    let row = d.row().unwrap();
                    let line = format!(
                        "{} {} {}",
                        serde_json::to_value(d.action).unwrap().as_str().unwrap(),
                        row.id,
                        row.body.len()
                    );
                    if row.id == stop_at {
                        println!("{line}");
                        break;
                    }
                    line
                }
                Err(SubscriptionError::Lagged(lagged)) if lagged.lost => {
                    match sub.resume(lagged.resume_from) {
                        Ok(()) => "lost, then resumed".to_owned(),
                        Err(_) => "lost\nreload".to_owned(),
                    }
                }
                Err(e) => format!("lagged {e}"),
            };
            println!("{line}");
            std::io::stdout().flush().unwrap();
        }
        std::io::stdout().flush().unwrap();
        flow.shutdown().await.unwrap();
    });
}

/// A running child node and its output, line by line.
struct Node {
    process: std::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Node {
    /// Starts the child on `url` and waits until it is subscribed.
    async fn start(url: &str, stop_at: i64) -> Node {
        let mut process = Command::new(std::env::current_exe().unwrap())
            .env(CHILD, "1")
            .env("URL", url)
            .env("STOP_AT", stop_at.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = process.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap()).is_err() {
                    return;
                }
            }
        });
        let mut node = Node {
            process,
            lines,
            seen: Vec::new(),
        };
        assert_eq!(node.line().await, "READY");
        node.seen.clear();
        node
    }

    /// The next line the child prints.
    async fn line(&mut self) -> String {
        let line = tokio::time::timeout(TIMEOUT, self.lines.recv())
            .await
            .expect("the child printed nothing in time")
            .expect("the child stopped");
        self.seen.push(line.clone());
        line
    }

    /// Waits for the child to exit, and returns every line it printed
    /// after `READY`.
    async fn finish(mut self) -> Vec<String> {
        while let Some(line) = tokio::time::timeout(TIMEOUT, self.lines.recv())
            .await
            .expect("the child did not finish in time")
        {
            self.seen.push(line);
        }
        assert!(self.process.wait().unwrap().success(), "the child failed");
        self.seen
    }
}

const SCHEMA: &str =
    "CREATE TABLE comments (id int8 primary key, post_id int8 not null, body text not null)";

/// The flow holding the slot, broadcasting over PostgreSQL.
async fn sender(db: &common::Db, slot: &str, retain: usize) -> Walflow {
    Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot(slot))
        .pubsub(PubSub::Postgres)
        .pubsub_retain_transactions(retain)
        .operators(["Seen"])
        .start()
        .await
        .expect("the flow starts")
}

#[tokio::test]
async fn a_subscriber_only_node_receives_the_flow_s_changes_in_commit_order() {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let flow = sender(&db, "nodes", 100_000).await;
    let mut local = flow.subscribe::<Comment>(Scope::All);
    let mut notes = PgListener::connect(&db.url).await.unwrap();
    notes.listen(CHANNEL).await.unwrap();
    let node = Node::start(&db.url, 2).await;

    let big = "x".repeat(20_000);
    db.exec("INSERT INTO comments VALUES (1, 1, 'hello'), (2, 2, 'other post')")
        .await;
    db.exec(&format!("INSERT INTO comments VALUES (3, 1, '{big}')"))
        .await;
    db.exec("UPDATE comments SET post_id = 2 WHERE id = 1")
        .await;
    db.exec("UPDATE comments SET post_id = 1 WHERE id = 2")
        .await;

    assert_eq!(
        node.finish().await,
        ["insert 1 5", "insert 3 20000", "left 1 5", "entered 2 10"],
        "in commit order, the large transaction read from the log"
    );
    // The node holding the slot has them in the same order.
    for id in [1, 2, 3, 1, 2] {
        let d = tokio::time::timeout(TIMEOUT, local.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.row().unwrap().id, id);
        assert!([1, 2].contains(&d.row().unwrap().post_id));
    }
    // Four notifications carried changes: three inline, the large one by
    // reference (end and previous LSN only).
    let (mut inline, mut by_reference) = (0, 0);
    while inline + by_reference < 4 {
        let n = tokio::time::timeout(TIMEOUT, notes.recv())
            .await
            .expect("a notification")
            .unwrap();
        let payload = n.payload();
        assert!(payload.len() < 8000);
        match payload.splitn(3, ' ').nth(2) {
            Some(json) => {
                let tx: walflow::subscribe::Transaction = serde_json::from_str(json).unwrap();
                if !tx.changes.is_empty() {
                    inline += 1;
                }
            }
            None => by_reference += 1,
        }
    }
    assert_eq!((inline, by_reference), (3, 1));
    let logged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM walflow.pubsub_log WHERE channel = $1 AND length(payload) > 20000",
    )
    .bind(CHANNEL)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(logged, 1);
    flow.shutdown().await.unwrap();
}

/// A superuser role for the child, whose logins the test can refuse.
struct Role {
    name: String,
    url: String,
}

impl Role {
    async fn create(db: &common::Db) -> Role {
        let name = db.slot("node");
        db.exec(&format!(
            "CREATE ROLE {name} LOGIN SUPERUSER PASSWORD 'node-password'"
        ))
        .await;
        let mut url = url::Url::parse(&db.url).unwrap();
        url.set_username(&name).unwrap();
        url.set_password(Some("node-password")).unwrap();
        Role {
            name,
            url: url.to_string(),
        }
    }

    /// Refuses new connections of the role and ends its `LISTEN` session.
    async fn cut_listen(&self, db: &common::Db) {
        db.exec(&format!("ALTER ROLE {} NOLOGIN", self.name)).await;
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE usename = $1 AND query LIKE 'LISTEN %'",
        )
        .bind(&self.name)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(killed, [true], "one LISTEN session");
        common::wait_until(TIMEOUT, || async { self.listening(db).await == 0 }).await;
    }

    async fn listening(&self, db: &common::Db) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND query LIKE 'LISTEN %'",
        )
        .bind(&self.name)
        .fetch_one(&db.pool)
        .await
        .unwrap()
    }

    async fn allow_login(&self, db: &common::Db) {
        db.exec(&format!("ALTER ROLE {} LOGIN", self.name)).await;
    }

    async fn drop(self, db: &common::Db) {
        common::wait_until(TIMEOUT, || async {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE usename = $1")
                    .bind(&self.name)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            n == 0
        })
        .await;
        db.exec(&format!("DROP ROLE {}", self.name)).await;
    }
}

/// Waits until the log holds a transaction whose payload contains each of
/// `markers`.
async fn logged(db: &common::Db, markers: &[&str]) {
    for marker in markers {
        common::wait_until(TIMEOUT, || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM walflow.pubsub_log WHERE channel = $1 AND strpos(payload, $2) > 0",
            )
            .bind(CHANNEL)
            .bind(marker)
            .fetch_one(&db.pool)
            .await
            .unwrap();
            n == 1
        })
        .await;
    }
}

#[tokio::test]
async fn a_node_catches_up_after_its_listen_connection_was_lost() {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let role = Role::create(&db).await;
    let flow = sender(&db, "reconnect", 100_000).await;
    let mut node = Node::start(&role.url, 100).await;
    db.exec("INSERT INTO comments VALUES (1, 1, 'before')")
        .await;
    assert_eq!(node.line().await, "insert 1 6");

    // The child's LISTEN connection is gone and cannot come back while these
    // commit and are broadcast: nobody is listening for them on its side.
    role.cut_listen(&db).await;
    db.exec("INSERT INTO comments VALUES (2, 1, 'during-1')")
        .await;
    db.exec("UPDATE comments SET post_id = 2, body = 'during-2' WHERE id = 1")
        .await;
    let big = "y".repeat(9000);
    db.exec(&format!(
        "INSERT INTO comments VALUES (3, 1, 'during-3{big}')"
    ))
    .await;
    logged(&db, &["during-1", "during-2", "during-3"]).await;
    assert_eq!(role.listening(&db).await, 0, "still away");

    role.allow_login(&db).await;
    common::wait_until(TIMEOUT, || async { role.listening(&db).await == 1 }).await;
    db.exec("INSERT INTO comments VALUES (100, 1, 'after')")
        .await;
    assert_eq!(
        node.finish().await,
        [
            "insert 1 6",
            "insert 2 8",
            "left 1 6",
            "insert 3 9008",
            "insert 100 5"
        ],
        "every change once, in commit order"
    );
    flow.shutdown().await.unwrap();
    role.drop(&db).await;
}

#[tokio::test]
async fn a_node_away_longer_than_the_log_keeps_is_told_to_reload() {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let role = Role::create(&db).await;
    let flow = sender(&db, "retention", 2).await;
    let mut node = Node::start(&role.url, 100).await;
    db.exec("INSERT INTO comments VALUES (1, 1, 'before')")
        .await;
    assert_eq!(node.line().await, "insert 1 6");

    role.cut_listen(&db).await;
    for id in 2..=5 {
        db.exec(&format!(
            "INSERT INTO comments VALUES ({id}, 1, 'during-{id}')"
        ))
        .await;
    }
    logged(&db, &["during-5"]).await;
    // The log keeps two transactions: those of comments 2 and 3 are gone.
    common::wait_until(TIMEOUT, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM walflow.pubsub_log
             WHERE channel = $1 AND (strpos(payload, 'during-2') > 0 OR strpos(payload, 'during-3') > 0)",
        )
        .bind(CHANNEL)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        n == 0
    })
    .await;

    role.allow_login(&db).await;
    common::wait_until(TIMEOUT, || async { role.listening(&db).await == 1 }).await;
    db.exec("INSERT INTO comments VALUES (100, 1, 'after')")
        .await;
    let lines = node.finish().await;
    assert_eq!(lines[..3], ["insert 1 6", "lost", "reload"], "{lines:?}");
    assert_eq!(lines.last().unwrap(), "insert 100 5", "{lines:?}");
    // What the log still had may follow, if the subscriber took the error
    // before it was published; never what was lost.
    let between: Vec<&str> = lines[3..lines.len() - 1]
        .iter()
        .map(|l| l.as_str())
        .collect();
    assert!(
        [&[][..], &["insert 5 8"], &["insert 4 8", "insert 5 8"]].contains(&&between[..]),
        "{lines:?}"
    );
    flow.shutdown().await.unwrap();
    role.drop(&db).await;
}

#[tokio::test]
async fn a_subscriber_only_node_waits_for_changes_and_runs_no_operators() {
    let db = common::db().await;
    db.exec(SCHEMA).await;
    let subscriber = || {
        Walflow::builder()
            .database_url(&db.url)
            .slot_name(db.slot("waitfor"))
            .subscriber_only()
    };
    let err = subscriber()
        .pubsub(PubSub::Local)
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            walflow::FlowError::Config(walflow::config::ConfigError::InvalidValue {
                option: "pubsub",
                ..
            })
        ),
        "{err}"
    );
    assert!(
        err.to_string().starts_with(
            "invalid `pubsub` local: a subscriber-only node receives the changes over PostgreSQL"
        ),
        "{err}"
    );
    let err = subscriber()
        .pubsub(PubSub::Postgres)
        .operators(["Seen"])
        .start()
        .await
        .unwrap_err();
    assert!(matches!(&err, walflow::FlowError::Unsupported(_)), "{err}");
    assert!(
        err.to_string()
            .contains("a subscriber-only node runs no operators; remove `.operators(..)`"),
        "{err}"
    );

    let flow = sender(&db, "waitfor", 100_000).await;
    let node = subscriber()
        .pubsub(PubSub::Postgres)
        .operators(Vec::<String>::new())
        .start()
        .await
        .expect("the subscriber-only flow starts");
    assert!(node.operator_names().is_empty());
    let before = node.subscriptions().position();
    db.exec("INSERT INTO comments VALUES (7, 1, 'hi')").await;
    let created = node
        .wait_for::<Comment>(Scope::id(7), before, TIMEOUT)
        .await
        .expect("the change reaches the subscriber-only node");
    assert_eq!(created.row().unwrap().body, "hi");
    // The operators' progress is read from the shared tables.
    let lsn = node.current_lsn().await.unwrap();
    node.wait_processed(lsn, TIMEOUT).await.unwrap();
    assert!(matches!(
        node.retry_dead_letter(1).await,
        Err(walflow::FlowError::SubscriberOnly("retry_dead_letter"))
    ));
    node.shutdown().await.unwrap();

    // State kept in the memory of the node holding the slot cannot be read
    // here: an error at once, not a wait until the timeout.
    let node = subscriber()
        .pubsub(PubSub::Postgres)
        .process_status_storage(ProcessStatusStorage::Memory)
        .start()
        .await
        .expect("the subscriber-only flow starts");
    let err = node.processed("comments", 0).await.unwrap_err();
    assert!(
        matches!(
            err,
            walflow::FlowError::SubscriberOnly("processed with process_status_storage = memory")
        ),
        "{err}"
    );
    node.shutdown().await.unwrap();
    flow.shutdown().await.unwrap();
}

/// A sender restarted after a crash that came between handing transactions
/// on and broadcasting them: those are gone, and the receivers are told so
/// with the next transaction sent, rather than skipping them silently.
#[tokio::test]
async fn receivers_learn_of_transactions_a_crashed_sender_never_broadcast() {
    let db = common::db().await;
    let channel = "restarted_sender";
    let hub = Subscriptions::new(HubOptions::default());
    let receiver = PgPubSub::with_channel(db.pool.clone(), channel)
        .await
        .unwrap();
    let listening = receiver.listen(hub.clone()).await.unwrap();
    let mut sub = hub.subscribe::<Comment>(Scope::All);
    let empty = |end: u64| Transaction {
        end_lsn: walflow::Lsn(end),
        changes: Vec::new(),
    };
    let reached = |end: u64| {
        let hub = hub.clone();
        move || {
            let hub = hub.clone();
            async move { hub.processed() >= Some(walflow::Lsn(end)) }
        }
    };

    let first = PgPubSub::with_channel(db.pool.clone(), channel)
        .await
        .unwrap();
    first.send(&empty(100)).await.unwrap();
    common::wait_until(TIMEOUT, reached(100)).await;
    assert!(sub.try_next().is_none(), "nothing lost so far");

    // The restarted sender had handed on everything up to 300.
    let second = PgPubSub::with_channel(db.pool.clone(), channel)
        .await
        .unwrap();
    second
        .resume_sending(Some(walflow::Lsn(300)))
        .await
        .unwrap();
    second.send(&empty(400)).await.unwrap();
    common::wait_until(TIMEOUT, reached(400)).await;
    match sub.try_next() {
        Some(Err(SubscriptionError::Lagged(lagged))) => assert!(lagged.lost, "{lagged}"),
        other => panic!("expected the loss to be reported, got {other:?}"),
    }
    listening.abort();
}

/// The next delivery of `sub`.
async fn next_delivery(
    sub: &mut walflow::subscribe::Subscription<TypedPost>,
) -> walflow::subscribe::Delivery<TypedPost> {
    tokio::time::timeout(TIMEOUT, sub.next())
        .await
        .expect("a delivery in time")
        .expect("the subscription is open")
        .expect("the row decodes")
}

/// An update travels between nodes as the raw event, each value with its
/// type, and reads back the same on the receiving node; both nodes'
/// deliveries write `changes` in plain JSON, each value as in the rows.
#[tokio::test]
async fn an_update_s_changes_reach_another_node_exactly_and_serialize_like_its_rows() {
    let db = common::db().await;
    db.exec(
        "CREATE TABLE typed_posts (id int8 PRIMARY KEY, comments_count int4 NOT NULL,
             score numeric, title text NOT NULL, edited_at timestamptz NOT NULL,
             tags jsonb NOT NULL, data bytea NOT NULL)",
    )
    .await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("typed"))
        .pubsub(PubSub::Postgres)
        .operators(["SeenTyped"])
        .start()
        .await
        .expect("the flow starts");
    let hub = Subscriptions::new(HubOptions::default());
    let receiver = PgPubSub::new(db.pool.clone()).await.unwrap();
    let listening = receiver.listen(hub.clone()).await.unwrap();
    let mut remote = hub.subscribe::<TypedPost>(Scope::All);
    let mut local = flow.subscribe::<TypedPost>(Scope::All);

    db.exec(
        "INSERT INTO typed_posts VALUES (1, 0, NULL, 'a', '2024-01-02 03:04:05.5+00',
             '{\"tags\": [\"x\"]}', '\\x0102')",
    )
    .await;
    db.exec(
        "UPDATE typed_posts SET comments_count = 1, score = 1.50, title = 'b',
             edited_at = '2024-01-03 00:00:00+00', tags = '{\"tags\": []}', data = '\\x03'
         WHERE id = 1",
    )
    .await;
    for sub in [&mut local, &mut remote] {
        assert_eq!(
            next_delivery(sub).await.event.kind(),
            walflow::EventKind::Insert
        );
    }
    let (here, there) = (
        next_delivery(&mut local).await,
        next_delivery(&mut remote).await,
    );
    assert_eq!(there.event.kind(), walflow::EventKind::Update);

    // The same values, of the same types, on both nodes.
    assert_eq!(there.event.changes(), here.event.changes());
    let changes = there.event.changes();
    assert_eq!(
        changes.keys().map(|c| &**c).collect::<Vec<_>>(),
        [
            "comments_count",
            "data",
            "edited_at",
            "score",
            "tags",
            "title"
        ]
    );
    assert!(matches!(
        changes["comments_count"].new,
        walflow::Value::Int4(1)
    ));
    assert!(matches!(&changes["score"].new, walflow::Value::Numeric(n) if n.0 == "1.50"));
    assert!(matches!(changes["score"].old, walflow::Value::Null));
    assert!(matches!(
        changes["edited_at"].new,
        walflow::Value::TimestampTz(_)
    ));
    assert!(matches!(changes["tags"].new, walflow::Value::Json(_)));
    assert!(matches!(&changes["data"].new, walflow::Value::Bytea(b) if b == &[3]));

    // What a subscriber is sent (SSE's `data`): one shape for the rows and
    // the changes.
    let json = serde_json::to_value(&there).unwrap();
    assert_eq!(json, serde_json::to_value(&here).unwrap());
    let event = &json["event"];
    assert_eq!(
        event["changes"]["comments_count"],
        serde_json::json!({"old": 0, "new": 1})
    );
    for (column, change) in event["changes"].as_object().unwrap() {
        assert_eq!(change["old"], event["old"][column], "{column}: {json}");
        assert_eq!(change["new"], event["new"][column], "{column}: {json}");
    }
    listening.abort();
    flow.shutdown().await.unwrap();
}

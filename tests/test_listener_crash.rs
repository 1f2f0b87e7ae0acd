//! A consumer killed with SIGKILL gets back exactly the transactions it had
//! not acknowledged.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use walflow::Lsn;
use walflow::listener::ListenerMessage;

const CHILD: &str = "WALFLOW_TEST_CHILD";

/// In the child process (re-executed test binary), runs the consumer
/// instead of the test harness.
#[ctor::ctor(unsafe)]
fn child_entry() {
    if std::env::var_os(CHILD).is_some() {
        let code = match std::panic::catch_unwind(child_consumer) {
            Ok(()) => 0,
            Err(_) => 101,
        };
        std::process::exit(code);
    }
}

/// Receives every transaction, acknowledges the first `ACK` of them, waits
/// until the server recorded that acknowledgement, prints `READY`, then
/// blocks until killed.
fn child_consumer() {
    let url = std::env::var("URL").unwrap();
    let slot = std::env::var("SLOT").unwrap();
    let total: usize = std::env::var("TOTAL").unwrap().parse().unwrap();
    let ack: usize = std::env::var("ACK").unwrap().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let db = common::Db::connect(&url).await;
        let mut l = db.listener(&slot).await.unwrap();
        let txs = common::transactions(&mut l, total).await;
        let mut acked = Lsn::ZERO;
        for (i, tx) in txs.iter().enumerate() {
            let ListenerMessage::Commit(c) = tx.last().unwrap() else {
                panic!("transaction without commit")
            };
            println!("COMMIT {}", c.commit_lsn);
            if i < ack {
                l.ack(c.end_lsn);
                acked = c.end_lsn;
            }
        }
        common::wait_until(Duration::from_secs(10), || async {
            l.slot_status().await.unwrap().confirmed_flush_lsn >= acked
        })
        .await;
        println!("READY");
        std::future::pending::<()>().await;
    });
}

#[tokio::test]
async fn killed_consumer_gets_back_exactly_the_unacknowledged_transactions() {
    let db = common::db().await;
    db.exec("CREATE TABLE t (id int8 primary key)").await;
    let slot = db.slot("crash");
    db.setup(&slot, &["t"]).await;
    for i in 0..6 {
        db.exec(&format!("INSERT INTO t VALUES ({i})")).await;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .env("URL", &db.url)
        .env("SLOT", &slot)
        .env("TOTAL", "6")
        .env("ACK", "4")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut commits = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if line == "READY" {
                return commits;
            }
            if let Some(lsn) = line.strip_prefix("COMMIT ") {
                commits.push(lsn.parse::<Lsn>().unwrap());
            }
        }
        panic!("child exited before READY: {commits:?}");
    });
    let commits = tokio::time::timeout(Duration::from_secs(60), lines)
        .await
        .expect("child did not get ready")
        .unwrap();
    assert_eq!(commits.len(), 6);
    // SIGKILL: no clean shutdown, no last status update.
    child.kill().unwrap();
    child.wait().unwrap();

    let mut l = db.listener(&slot).await.unwrap();
    db.exec("INSERT INTO t VALUES (100)").await;
    let txs = common::transactions(&mut l, 3).await;
    let again: Vec<Lsn> = txs
        .iter()
        .map(|tx| match tx.last().unwrap() {
            ListenerMessage::Commit(c) => c.commit_lsn,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        &again[..2],
        &commits[4..],
        "exactly the unacknowledged transactions come back"
    );
    assert!(again[2] > commits[5], "then the new one");
    l.shutdown().await.unwrap();
}

//! A 1,000,000-row transaction streams through the listener in bounded
//! memory: the consumer process's peak RSS stays far below the transaction's
//! size.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use walflow::listener::ListenerMessage;

const CHILD: &str = "WALFLOW_TEST_MEMORY_CHILD";
const ROWS: i64 = 1_000_000;

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

/// Drains the transaction, checking every row, then prints its peak RSS.
fn child_consumer() {
    let url = std::env::var("URL").unwrap();
    let slot = std::env::var("SLOT").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let db = common::Db::connect(&url).await;
        let mut l = db.listener(&slot).await.unwrap();
        let mut rows = 0i64;
        let mut batch = Vec::new();
        loop {
            batch.clear();
            tokio::time::timeout(Duration::from_secs(120), l.recv_many(&mut batch, 512))
                .await
                .expect("stalled")
                .unwrap();
            for m in batch.drain(..) {
                match m {
                    ListenerMessage::Change(ev) => {
                        rows += 1;
                        let id = ev.new.as_ref().unwrap().get("id").cloned();
                        assert_eq!(id, Some(walflow::Value::Int8(rows)), "rows in order");
                    }
                    ListenerMessage::Commit(c) => {
                        assert_eq!(rows, ROWS);
                        assert_eq!(c.changes as i64, ROWS);
                        l.ack(c.end_lsn);
                        l.shutdown().await.unwrap();
                        println!("PEAK {}", peak_rss_kib());
                        return;
                    }
                    _ => {}
                }
            }
        }
    });
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_million_row_transaction_streams_in_bounded_memory() {
    let db = common::db().await;
    db.exec("CREATE TABLE big (id int8 PRIMARY KEY, pad text NOT NULL)")
        .await;
    let slot = db.slot("big");
    db.setup(&slot, &["big"]).await;
    // One transaction: 1M rows of ~120 bytes (about 120 MB of row data,
    // several times that as decoded events).
    db.exec(&format!(
        "INSERT INTO big SELECT g, repeat('x', 120) FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    let out = tokio::task::spawn_blocking({
        let url = db.url.clone();
        let slot = slot.clone();
        move || {
            Command::new(std::env::current_exe().unwrap())
                .env(CHILD, "1")
                .env("URL", url)
                .env("SLOT", slot)
                .stderr(Stdio::inherit())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "consumer failed: {:?}", out.status);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let peak_kib: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PEAK "))
        .expect("peak printed")
        .parse()
        .unwrap();
    eprintln!("consumer peak RSS: {} MiB", peak_kib / 1024);
    assert!(
        peak_kib < 96 * 1024,
        "peak RSS {peak_kib} KiB: the transaction was buffered"
    );
    // Everything acknowledged: nothing comes back.
    let status = walflow::listener::Listener::start(
        walflow::listener::PgWireConnector::from_url(&db.url).unwrap(),
        walflow::listener::ListenerOptions::new(&slot, "events"),
        db.pool.clone(),
    )
    .await
    .unwrap();
    let s = status.slot_status().await.unwrap();
    assert!(s.lag_bytes < 1 << 20, "{s:?}");
    status.shutdown().await.unwrap();
}

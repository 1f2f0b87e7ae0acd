//! The subscription hub's memory is bounded by its byte budget, whatever
//! the size of the values: 40 rows of 5 MiB through a flow with one open
//! subscription that reads nothing leave the hub within
//! `HubOptions::retain_bytes`, the subscription within its `buffer_bytes`,
//! and the process within both plus a margin. An idle hub lets go of its
//! changes after `retain_for`, with nothing published.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use walflow::listener::ListenerMessage;
use walflow::prelude::*;
use walflow::subscribe::{HubOptions, Scope, Subscriptions, after_commit};

const CHILD: &str = "WALFLOW_TEST_HUB_BOUNDS_CHILD";
const ROWS: i64 = 40;
const ROW_BYTES: usize = 5 << 20;
const RETAIN_BYTES: usize = 32 << 20;
const BUFFER_BYTES: usize = 16 << 20;
/// What the process may grow by beyond the hub's and the subscription's
/// budgets: the rows in flight (the listener's message, its decoded value,
/// the change the hub is handed, the subscription's decoded copy: a few
/// times 5 MiB) and the allocator's slack. Without the budgets the growth
/// is about 400 MiB.
const MARGIN: usize = 64 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);

#[event_source(table = "blobs")]
#[derive(Debug, Clone, serde::Deserialize)]
#[allow(dead_code)] // read, not looked at
struct Blob {
    id: i64,
    body: String,
}

fn status_kib(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Runs the flow, writes the rows, and prints what the hub, the
/// subscription and the process hold: the test run again in a process of
/// its own (its registry declares `Blob`).
async fn child() {
    let url = std::env::var("URL").unwrap();
    let slot = std::env::var("SLOT").unwrap();
    {
        let flow = Walflow::builder()
            .database_url(&url)
            .slot_name(slot)
            .hub_options(HubOptions {
                retain_bytes: RETAIN_BYTES,
                buffer_bytes: BUFFER_BYTES,
                ..HubOptions::default()
            })
            .start()
            .await
            .expect("the flow starts");
        // Open, and never read.
        let sub = flow.subscribe::<Blob>(Scope::All);
        let db = common::Db::connect(&url).await;
        // One row first, so that what a row costs on its way through is in
        // the baseline: the budgets bound what stays.
        insert(&flow, &db, 0).await;
        let baseline = status_kib("VmRSS:") << 10;
        let mut most = (0, 0);
        for id in 1..=ROWS {
            insert(&flow, &db, id).await;
            let hub = flow.subscriptions();
            most.0 = most.0.max(hub.retained_bytes());
            most.1 = most.1.max(sub.buffered_bytes());
        }
        let hub = flow.subscriptions();
        let rss = status_kib("VmRSS:") << 10;
        println!("BASELINE {baseline}");
        println!("RSS {rss}");
        println!("RETAINED {} {}", hub.retained_bytes(), most.0);
        println!("RETAINED_CHANGES {}", hub.retained_changes());
        println!("BUFFERED {} {}", sub.buffered_bytes(), most.1);
        println!("BUFFERED_CHANGES {}", sub.buffered());
        drop(sub);
        flow.shutdown().await.unwrap();
    }
}

/// Inserts row `id` of `ROW_BYTES` and waits until the flow's hub has
/// published it.
async fn insert(flow: &Walflow, db: &common::Db, id: i64) {
    let before = flow.subscriptions().position();
    db.exec(&format!(
        "INSERT INTO blobs VALUES ({id}, repeat(chr(65 + {id} % 26), {ROW_BYTES}))"
    ))
    .await;
    flow.wait_for::<Blob>(Scope::id(id), before, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("row {id}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_stay_within_the_hub_s_byte_budget() {
    if std::env::var_os(CHILD).is_some() {
        return child().await;
    }
    let db = common::db().await;
    db.exec("CREATE TABLE blobs (id int8 PRIMARY KEY, body text NOT NULL)")
        .await;
    let slot = db.slot("hub_bounds");
    let out = tokio::task::spawn_blocking({
        let url = db.url.clone();
        move || {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "large_values_stay_within_the_hub_s_byte_budget",
                    "--nocapture",
                ])
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
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "the child failed: {stdout}");
    let read = |name: &str| -> Vec<usize> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|l| l.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
            .split(' ')
            .map(|v| v.parse().unwrap())
            .collect()
    };
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    let (baseline, rss) = (read("BASELINE")[0], read("RSS")[0]);
    let retained = read("RETAINED");
    let buffered = read("BUFFERED");
    eprintln!(
        "RSS {:.1} MiB (from {:.1} MiB), hub {:.1} MiB in {} changes (at most {:.1}), \
         subscription {:.1} MiB in {} changes (at most {:.1})",
        mib(rss),
        mib(baseline),
        mib(retained[0]),
        read("RETAINED_CHANGES")[0],
        mib(retained[1]),
        mib(buffered[0]),
        read("BUFFERED_CHANGES")[0],
        mib(buffered[1]),
    );
    assert!(retained[1] <= RETAIN_BYTES, "the hub held {retained:?}");
    assert!(
        retained[0] > RETAIN_BYTES - 2 * ROW_BYTES,
        "the hub keeps what fits: {retained:?}"
    );
    // A change always fits an empty buffer: at most the budget, or one
    // change over it.
    assert!(
        buffered[1] <= BUFFER_BYTES + ROW_BYTES,
        "the subscription held {buffered:?}"
    );
    assert!(
        rss.saturating_sub(baseline) <= RETAIN_BYTES + BUFFER_BYTES + MARGIN,
        "the process grew from {:.1} MiB to {:.1} MiB",
        mib(baseline),
        mib(rss)
    );
}

/// With nothing published, changes older than `retain_for` are let go (a
/// timer): their memory is freed and resuming from them is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_hub_lets_go_of_its_changes_after_retain_for() {
    let db = common::db().await;
    db.exec("CREATE TABLE blobs (id int8 PRIMARY KEY, body text NOT NULL)")
        .await;
    let slot = db.slot("hub_idle");
    db.setup(&slot, &["blobs"]).await;
    let mut listener = db.listener(&slot).await.unwrap();
    let hub = Subscriptions::new(HubOptions {
        retain_for: Duration::from_secs(1),
        ..HubOptions::default()
    });
    let feed = hub.clone();
    let _task = tokio::spawn(async move {
        while let Ok(Some(message)) = listener.recv().await {
            match message {
                ListenerMessage::Change(raw) => feed.publish(&raw),
                ListenerMessage::Commit(c) => feed.publish_commit(c.end_lsn),
                _ => {}
            }
        }
    });
    let mut sub = hub.subscribe::<Blob>(Scope::All);
    db.exec("INSERT INTO blobs VALUES (1, repeat('x', 1048576))")
        .await;
    let delivery = tokio::time::timeout(TIMEOUT, futures_util::StreamExt::next(&mut sub))
        .await
        .expect("a change in time")
        .unwrap()
        .unwrap();
    assert_eq!(delivery.row().unwrap().id, 1);
    let published = Instant::now();
    assert_eq!(hub.retained_changes(), 1);
    assert!(hub.retained_bytes() > 1 << 20, "{hub:?}");
    // Nothing else is written: only the timer can evict.
    let deadline = Instant::now() + TIMEOUT;
    while hub.retained_changes() > 0 {
        assert!(Instant::now() < deadline, "still retained: {hub:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(published.elapsed() >= Duration::from_millis(900));
    assert_eq!(hub.retained_bytes(), 0);
    let err = hub
        .subscription::<Blob>(Scope::All)
        .after(after_commit(walflow::Lsn(
            delivery.position().commit_lsn.0 - 1,
        )))
        .start()
        .unwrap_err();
    assert!(
        err.to_string().contains("reload the current state"),
        "{err}"
    );
}

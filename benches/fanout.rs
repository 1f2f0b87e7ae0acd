//! Subscription fan-out: 10,000 subscribers across 1,000 scoped channels,
//! 1,000 changes/s for 10 s.
//!
//! ```text
//! cargo bench --bench fanout
//! ```
//!
//! On a throwaway PostgreSQL (or `DATABASE_URL`): a listener feeds a
//! [`Subscriptions`] hub in commit order; 10,000 subscriptions follow
//! `Comment::POST_ID.eq(n)` for n in 0..1,000 (10 per channel), each
//! drained by its own task. A producer inserts 10 comments per transaction
//! every 10 ms, spread over the channels. Prints delivered events/s,
//! delivery latency from commit (p50, p99, max), the process's CPU time and
//! RSS, and what the hub retains (changes and estimated bytes, the most
//! seen while producing, within the default budgets: 10,000 changes,
//! 5 minutes, 64 MiB). Figures, not assertions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod support;

use futures_util::StreamExt;
use walflow::listener::{Listener, ListenerMessage, ListenerOptions, PgWireConnector};
use walflow::prelude::*;
use walflow::setup::{SetupSpec, TableSpec, prepare};
use walflow::subscribe::{HubOptions, Subscriptions};

const CHANNELS: i64 = 1_000;
const PER_CHANNEL: usize = 10;
const RATE: u64 = 1_000;
const SECONDS: u64 = 10;
const PER_TX: u64 = 10;

#[event_source(table = "comments")]
#[derive(Debug, Clone, serde::Deserialize)]
#[allow(dead_code)]
struct Comment {
    id: i64,
    post_id: i64,
    body: String,
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async_main());
}

async fn async_main() {
    #[cfg(feature = "embedded")]
    let server;
    let base = match std::env::var("DATABASE_URL") {
        Ok(url) => url,
        #[cfg(feature = "embedded")]
        Err(_) => {
            server = walflow::embedded::EmbeddedPostgres::start()
                .await
                .expect("start PostgreSQL");
            server.url()
        }
        #[cfg(not(feature = "embedded"))]
        Err(_) => panic!("set DATABASE_URL"),
    };
    let (url, pool) =
        support::fresh_database(&base, &format!("walflow_fanout_{}", std::process::id())).await;
    support::exec(
        &pool,
        "CREATE TABLE comments (id bigserial PRIMARY KEY, post_id int8 NOT NULL, body text NOT NULL)",
    )
    .await;
    let slot = format!("fanout_{}", std::process::id());
    prepare(
        &pool,
        &SetupSpec {
            publication: "fanout".into(),
            slot: slot.clone(),
            durable_slot: true,
            tables: vec![TableSpec::new("public", "comments")],
        },
    )
    .await
    .unwrap();
    let mut listener = Listener::start(
        PgWireConnector::from_url(&url).unwrap(),
        ListenerOptions::new(&slot, "fanout"),
        pool.clone(),
    )
    .await
    .unwrap();

    let hub = Subscriptions::new(HubOptions {
        buffer: 4096,
        ..HubOptions::default()
    });
    let feed = hub.clone();
    tokio::spawn(async move {
        while let Ok(Some(message)) = listener.recv().await {
            match message {
                ListenerMessage::Change(raw) => feed.publish(&raw),
                ListenerMessage::Commit(c) => {
                    feed.publish_commit(c.end_lsn);
                    listener.ack(c.end_lsn);
                }
                _ => {}
            }
        }
    });

    let delivered = Arc::new(AtomicU64::new(0));
    let lagged = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut consumers = Vec::new();
    for n in 0..CHANNELS * PER_CHANNEL as i64 {
        let mut sub = hub.subscribe::<Comment>(Comment::POST_ID.eq(n % CHANNELS));
        let delivered = delivered.clone();
        let lagged = lagged.clone();
        let mut stop = stop_rx.clone();
        consumers.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u32> = Vec::new();
            loop {
                tokio::select! {
                    item = sub.next() => match item {
                        Some(Ok(d)) => {
                            let commit = d.event.meta().commit_time;
                            let us = (chrono::Utc::now() - commit).num_microseconds().unwrap_or(0);
                            latencies_us.push(us.clamp(0, u32::MAX as i64) as u32);
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Err(_)) => { lagged.fetch_add(1, Ordering::Relaxed); }
                        None => break,
                    },
                    _ = stop.changed() => break,
                }
            }
            latencies_us
        }));
    }
    println!(
        "walflow subscription fan-out ({} subscribers, {CHANNELS} channels, {RATE} changes/s for {SECONDS} s, {} cores)",
        hub.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let cpu_before = support::cpu_time();
    let started = Instant::now();
    let total = RATE * SECONDS;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 * PER_TX / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    let mut most_retained = (0usize, 0usize);
    while sent < total {
        tick.tick().await;
        most_retained = most_retained.max((hub.retained_bytes(), hub.retained_changes()));
        let values: Vec<String> = (0..PER_TX)
            .map(|i| format!("({}, 'comment')", (sent + i) as i64 % CHANNELS))
            .collect();
        support::exec(
            &pool,
            &format!(
                "INSERT INTO comments (post_id, body) VALUES {}",
                values.join(", ")
            ),
        )
        .await;
        sent += PER_TX;
    }
    let produced = started.elapsed();
    let expected = total * PER_CHANNEL as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered.load(Ordering::Relaxed) + lagged.load(Ordering::Relaxed) < expected
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let cpu = support::cpu_time() - cpu_before;
    stop_tx.send(true).unwrap();
    let mut latencies: Vec<u32> = Vec::new();
    for c in consumers {
        latencies.extend(c.await.unwrap());
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    let delivered = delivered.load(Ordering::Relaxed);
    println!(
        "  changes committed     {total} in {:.2} s",
        produced.as_secs_f64()
    );
    println!(
        "  deliveries            {delivered} of {expected} (lag notices: {})",
        lagged.load(Ordering::Relaxed)
    );
    println!(
        "  delivered events/s    {:.0}",
        delivered as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  latency from commit   p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "  CPU                   {:.2} s over {:.2} s ({:.0}% of one core; includes the producer and listener)",
        cpu.as_secs_f64(),
        elapsed.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64()
    );
    println!(
        "  hub retains           {} changes, {:.2} MiB (most while producing: {} changes, {:.2} MiB)",
        hub.retained_changes(),
        hub.retained_bytes() as f64 / (1 << 20) as f64,
        most_retained.1,
        most_retained.0 as f64 / (1 << 20) as f64,
    );
    println!(
        "  RSS                   {:.1} MiB now, {:.1} MiB peak",
        support::status_kib("VmRSS:") as f64 / 1024.0,
        support::status_kib("VmHWM:") as f64 / 1024.0
    );
}

//! PostgreSQL restarted (cleanly, then crashed) while changes stream: the
//! listener reconnects and delivers every committed transaction exactly once,
//! in commit order.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use walflow::embedded::{EmbeddedPostgres, ShutdownMode};
use walflow::listener::ListenerMessage;

const SENTINEL: i64 = 1_000_000;

/// Inserts rows `from..to`, one transaction each, reconnecting through
/// outages; a row whose insert failed is skipped (the table says what
/// committed).
async fn write_rows(url: &str, from: i64, to: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut id = from;
    while id < to {
        let res = async {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
            while id < to {
                sqlx::query("INSERT INTO t VALUES ($1)")
                    .bind(id)
                    .execute(&mut c)
                    .await?;
                id += 1;
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        if let Err(e) = res {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server did not come back: {e}"
            );
            id += 1;
            // The server is down: a pause between attempts, not a wait
            // for anything in particular.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_postgres_restarts_and_loses_nothing() {
    // A cluster of its own: restarting the shared one would disturb other tests.
    let pg = EmbeddedPostgres::start().await.unwrap();
    let url = pg.create_database("restart").await.unwrap();
    let db = common::Db::connect(&url).await;
    db.exec("CREATE TABLE t (id int8 PRIMARY KEY)").await;
    let slot = db.slot("restart");
    db.setup(&slot, &["t"]).await;
    let mut l = db.listener(&slot).await.unwrap();

    // The consumer receives and acknowledges everything until the sentinel.
    let max_seen = Arc::new(AtomicI64::new(-1));
    let consumer = tokio::spawn({
        let max_seen = Arc::clone(&max_seen);
        async move {
            let mut seen = Vec::new();
            let mut last_commit = walflow::Lsn::ZERO;
            loop {
                let m = tokio::time::timeout(Duration::from_secs(60), l.recv())
                    .await
                    .expect("listener stalled")
                    .unwrap()
                    .expect("listener stopped");
                match m {
                    ListenerMessage::Change(ev) => {
                        let Some(walflow::Value::Int8(id)) =
                            ev.new.as_ref().unwrap().get("id").cloned()
                        else {
                            panic!("{ev:?}")
                        };
                        seen.push(id);
                        max_seen.fetch_max(id, Ordering::AcqRel);
                    }
                    ListenerMessage::Commit(c) => {
                        assert!(c.commit_lsn > last_commit, "commit order");
                        last_commit = c.commit_lsn;
                        l.ack(c.end_lsn);
                        if seen.last() == Some(&SENTINEL) {
                            return (seen, l);
                        }
                    }
                    _ => {}
                }
            }
        }
    });

    // Rows stream while the server restarts cleanly...
    write_rows(&url, 0, 100).await;
    let restart = tokio::spawn({
        let pg = pg.clone();
        async move { pg.restart(ShutdownMode::Fast).await.unwrap() }
    });
    write_rows(&url, 100, 200).await;
    restart.await.unwrap();
    // ...the listener is back (it received rows written after the restart)...
    common::wait_until(Duration::from_secs(60), || async {
        max_seen.load(Ordering::Acquire) >= 199
    })
    .await;
    // ...then the server crashes and recovers.
    let crash = tokio::spawn({
        let pg = pg.clone();
        async move {
            pg.crash().await.unwrap();
            pg.start_again().await.unwrap();
        }
    });
    write_rows(&url, 200, 300).await;
    crash.await.unwrap();
    write_rows(&url, SENTINEL, SENTINEL + 1).await;

    let (seen, l) = tokio::time::timeout(Duration::from_secs(120), consumer)
        .await
        .expect("consumer did not finish")
        .unwrap();
    assert!(l.reconnects() >= 2, "reconnected after each outage");
    let unique: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "nothing delivered twice");
    let committed: BTreeSet<i64> = sqlx::query_scalar::<_, i64>("SELECT id FROM t")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        committed.len() > 250,
        "most rows committed: {}",
        committed.len()
    );
    assert_eq!(unique, committed, "every committed row delivered");
    l.shutdown().await.unwrap();
}

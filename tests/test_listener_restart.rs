//! PostgreSQL restarted (cleanly, then crashed) while changes stream: the
//! listener reconnects and delivers every committed transaction exactly once,
//! in commit order.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use walflow::embedded::{EmbeddedPostgres, ShutdownMode};
use walflow::listener::ListenerMessage;

#[tokio::test]
async fn reconnects_after_postgres_restarts_and_loses_nothing() {
    // A cluster of its own: restarting the shared one would disturb other tests.
    let pg = EmbeddedPostgres::start().await.unwrap();
    let url = pg.create_database("restart").await.unwrap();
    let db = common::Db::connect(&url).await;
    db.exec("CREATE TABLE t (id int8 PRIMARY KEY)").await;
    let slot = db.slot("restart");
    db.setup(&slot, &["t"]).await;
    let mut l = db.listener(&slot).await.unwrap();

    // A writer commits single-row transactions and keeps going through the
    // outages (a failed insert is retried with the next id).
    let done = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let url = url.clone();
        let done = Arc::clone(&done);
        async move {
            let mut id = 0i64;
            while id < 300 {
                let res = async {
                    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
                    loop {
                        sqlx::query("INSERT INTO t VALUES ($1)")
                            .bind(id)
                            .execute(&mut c)
                            .await?;
                        id += 1;
                        if id >= 300 {
                            return Ok::<_, sqlx::Error>(());
                        }
                    }
                }
                .await;
                if res.is_err() {
                    id += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            done.store(true, Ordering::Release);
        }
    });

    let mut seen: Vec<i64> = Vec::new();
    let mut last_commit = walflow::Lsn::ZERO;
    let mut restarted = 0;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), l.recv())
            .await
            .expect("listener stalled")
            .unwrap()
            .expect("listener stopped");
        match m {
            ListenerMessage::Change(ev) => {
                let Some(walflow::Value::Int8(id)) = ev.new.as_ref().unwrap().get("id").cloned()
                else {
                    panic!("{ev:?}")
                };
                seen.push(id);
            }
            ListenerMessage::Commit(c) => {
                assert!(c.commit_lsn > last_commit, "commit order");
                last_commit = c.commit_lsn;
                l.ack(c.end_lsn);
                if restarted == 0 && seen.len() >= 60 {
                    restarted += 1;
                    pg.restart(ShutdownMode::Fast).await.unwrap();
                } else if restarted == 1 && seen.len() >= 160 {
                    restarted += 1;
                    pg.crash().await.unwrap();
                    pg.start_again().await.unwrap();
                }
            }
            _ => {}
        }
        if done.load(Ordering::Acquire) && restarted == 2 {
            let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
                .fetch_one(&common::Db::connect(&url).await.pool)
                .await
                .unwrap();
            if seen.len() as i64 >= committed {
                break;
            }
        }
    }
    writer.await.unwrap();
    assert_eq!(restarted, 2);
    assert!(l.reconnects() >= 2, "reconnected after each outage");
    let unique: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "nothing delivered twice");
    let pool = common::Db::connect(&url).await.pool;
    let committed: BTreeSet<i64> = sqlx::query_scalar::<_, i64>("SELECT id FROM t")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(unique, committed, "every committed row delivered");
    l.shutdown().await.unwrap();
}

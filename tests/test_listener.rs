//! The WAL listener against a real PostgreSQL.

mod common;

use std::time::Duration;

use walflow::listener::{ListenerError, ListenerMessage};

#[tokio::test]
async fn delivers_transactions_in_commit_order_and_acks() {
    let db = common::db().await;
    db.exec("CREATE TABLE t (id int8 primary key, v text)")
        .await;
    let slot = db.slot("s");
    db.setup(&slot, &["t"]).await;
    let mut l = db.listener(&slot).await.unwrap();
    db.exec("INSERT INTO t VALUES (1, 'a')").await;
    db.exec("INSERT INTO t VALUES (2, 'b')").await;
    db.exec("BEGIN; UPDATE t SET v = 'c' WHERE id = 1; DELETE FROM t WHERE id = 2; COMMIT")
        .await;
    let txs = common::transactions(&mut l, 3).await;
    let mut last = walflow::Lsn::ZERO;
    for tx in &txs {
        let ListenerMessage::Commit(c) = tx.last().unwrap() else {
            panic!()
        };
        assert!(c.end_lsn > last);
        last = c.end_lsn;
        assert!(matches!(tx[0], ListenerMessage::Begin(_)));
    }
    l.ack(last);
    let acked = l.shutdown().await.unwrap();
    assert_eq!(acked, last);
    let status: (String,) = sqlx::query_as(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&slot)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let confirmed: walflow::Lsn = status.0.parse().unwrap();
    assert!(confirmed >= last, "confirmed {confirmed} < acked {last}");
    // A restart after a clean stop re-delivers nothing.
    let mut l = db.listener(&slot).await.unwrap();
    db.exec("INSERT INTO t VALUES (3, 'd')").await;
    let txs = common::transactions(&mut l, 1).await;
    let ListenerMessage::Commit(c) = txs[0].last().unwrap() else {
        panic!()
    };
    assert!(c.commit_lsn > last);
    l.shutdown().await.unwrap();
}

#[tokio::test]
async fn second_consumer_on_a_slot_gets_a_clear_error() {
    let db = common::db().await;
    db.exec("CREATE TABLE t (id int8 primary key)").await;
    let slot = db.slot("s");
    db.setup(&slot, &["t"]).await;
    let l = db.listener(&slot).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), db.listener(&slot))
        .await
        .expect("second consumer hung")
        .unwrap_err();
    let expected = slot.clone();
    match &err {
        ListenerError::SlotInUse { slot, pid } => {
            assert_eq!(slot, &expected);
            assert!(*pid > 0);
        }
        other => panic!("unexpected: {other}"),
    }
    assert!(err.to_string().starts_with(&format!(
        "slot \"{expected}\" is in use by another process (pid "
    )));
    l.shutdown().await.unwrap();
}

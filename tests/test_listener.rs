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

#[tokio::test]
async fn slot_advances_while_published_tables_are_idle() {
    let db = common::db().await;
    db.exec("CREATE TABLE t (id int8 primary key)").await;
    db.exec("CREATE TABLE other (id int8 primary key, pad text)")
        .await;
    let slot = db.slot("idle");
    db.setup(&slot, &["t"]).await;
    let l = db.listener(&slot).await.unwrap();
    let before = l.slot_status().await.unwrap();
    // Only an unpublished table is written.
    db.exec("INSERT INTO other SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
        .await;
    let written: (String,) = sqlx::query_as("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let written: walflow::Lsn = written.0.parse().unwrap();
    assert!(written > before.confirmed_flush_lsn);
    common::wait_until(Duration::from_secs(30), || async {
        l.slot_status().await.unwrap().confirmed_flush_lsn >= written
    })
    .await;
    let after = l.slot_status().await.unwrap();
    assert!(after.lag_bytes >= 0);
    assert!(
        after.retained_bytes
            < (written.as_u64() - before.confirmed_flush_lsn.as_u64()) as i64 + (1 << 20),
        "retained WAL stays bounded: {after:?}"
    );
    l.shutdown().await.unwrap();
}

#[tokio::test]
async fn hostile_identifiers_are_quoted() {
    let db = common::db().await;
    db.exec(r#"CREATE SCHEMA "Odd ""Schema""; --""#).await;
    db.exec(r#"CREATE TABLE "Odd ""Schema""; --"."t; DROP TABLE x; --" (id int8 primary key)"#)
        .await;
    let slot = db.slot("hostile");
    walflow::setup::prepare(
        &db.pool,
        &walflow::setup::SetupSpec {
            publication: "pub \"quoted\"".into(),
            slot: slot.clone(),
            durable_slot: true,
            tables: vec![walflow::setup::TableSpec::new(
                "Odd \"Schema\"; --",
                "t; DROP TABLE x; --",
            )],
        },
    )
    .await
    .unwrap();
    let identity: (String,) = sqlx::query_as(
        r#"SELECT relreplident::text FROM pg_class WHERE relname = 't; DROP TABLE x; --'"#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        identity.0, "f",
        "REPLICA IDENTITY FULL set on the quoted table"
    );
    let mut opts = walflow::listener::ListenerOptions::new(&slot, "pub \"quoted\"");
    opts.heartbeat_interval = None;
    let mut l = walflow::listener::Listener::start(
        walflow::listener::PgWireConnector::from_url(&db.url).unwrap(),
        opts,
        db.pool.clone(),
    )
    .await
    .unwrap();
    db.exec(r#"INSERT INTO "Odd ""Schema""; --"."t; DROP TABLE x; --" VALUES (1)"#)
        .await;
    let txs = common::transactions(&mut l, 1).await;
    assert!(matches!(txs[0][0], ListenerMessage::Begin(_)));
    l.shutdown().await.unwrap();
}

#[tokio::test]
async fn publication_follows_the_declared_tables() {
    let db = common::db().await;
    db.exec("CREATE TABLE a (id int8 primary key)").await;
    db.exec("CREATE TABLE b (id int8 primary key)").await;
    db.exec("CREATE TABLE c (id int8 primary key)").await;
    let slot = db.slot("pubs");
    db.setup(&slot, &["a", "b"]).await;
    let report = walflow::setup::prepare(
        &db.pool,
        &walflow::setup::SetupSpec {
            publication: "events".into(),
            slot: slot.clone(),
            durable_slot: true,
            tables: vec![
                walflow::setup::TableSpec::new("public", "b"),
                walflow::setup::TableSpec {
                    replica_identity_full: false,
                    ..walflow::setup::TableSpec::new("public", "c")
                },
            ],
        },
    )
    .await
    .unwrap();
    assert_eq!(report.tables_added, vec!["public.c"]);
    assert_eq!(report.tables_removed, vec!["public.a"]);
    assert!(!report.slot_created);
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'events' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(tables, vec![("b".to_owned(),), ("c".to_owned(),)]);
    let identity: Vec<(String, String)> = sqlx::query_as(
        "SELECT relname::text, relreplident::text FROM pg_class WHERE relname IN ('b', 'c') ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        identity,
        vec![("b".into(), "f".into()), ("c".into(), "d".into())],
        "opt-out leaves the identity as it is"
    );
    let missing = walflow::setup::prepare(
        &db.pool,
        &walflow::setup::SetupSpec {
            publication: "events".into(),
            slot,
            durable_slot: true,
            tables: vec![walflow::setup::TableSpec::new("public", "nope")],
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        missing.to_string(),
        "table `public.nope` does not exist; create it (or fix the `table`/`schema` of its `#[event_source]`) before starting walflow"
    );
}

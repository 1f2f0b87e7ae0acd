//! `$1` is bound with the mapped column's real type: `int4`, `int8`, `uuid`
//! and `text` ids.

#![allow(dead_code)] // struct fields are read through serde

mod common;

use std::time::Duration;

use walflow::prelude::*;

#[event_source(table = "accounts")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Account {
    id: uuid::Uuid,
    name: String,
}

#[event_source(table = "account_copies")]
#[derive(Debug, Clone, serde::Deserialize)]
struct AccountCopy {
    id: uuid::Uuid,
    name: String,
}

#[event_source(table = "labels", id = "code")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Label {
    code: String,
    title: String,
}

#[event_source(table = "label_copies", id = "code")]
#[derive(Debug, Clone, serde::Deserialize)]
struct LabelCopy {
    code: String,
    title: String,
}

#[event_source(table = "counters")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Counter {
    id: i32,
    v: i32,
}

#[event_source(table = "counter_copies")]
#[derive(Debug, Clone, serde::Deserialize)]
struct CounterCopy {
    id: i32,
    v: i32,
}

on_event! {
    operator CopyAccounts for AccountCopy {
        events: all,
        entities: [Account],
        delete_with: [Account],
        query: "INSERT INTO account_copies SELECT id, name FROM accounts WHERE id = $1
                ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name",
    }

    operator CopyLabels for LabelCopy {
        events: all,
        entities: [Label],
        delete_with: [Label],
        query: "INSERT INTO label_copies SELECT code, title FROM labels WHERE code = $1
                ON CONFLICT (code) DO UPDATE SET title = EXCLUDED.title",
    }

    operator CopyCounters for CounterCopy {
        events: all,
        entities: [Counter],
        delete_with: [Counter],
        query: "INSERT INTO counter_copies SELECT id, v FROM counters WHERE id = $1
                ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
    }
}

#[tokio::test]
async fn ids_of_every_bindable_type() {
    let db = common::db().await;
    db.exec(
        "CREATE TABLE accounts (id uuid PRIMARY KEY, name text NOT NULL);
         CREATE TABLE account_copies (id uuid PRIMARY KEY, name text NOT NULL);
         CREATE TABLE labels (code text PRIMARY KEY, title text NOT NULL);
         CREATE TABLE label_copies (code text PRIMARY KEY, title text NOT NULL);
         CREATE TABLE counters (id int4 PRIMARY KEY, v int4 NOT NULL);
         CREATE TABLE counter_copies (id int4 PRIMARY KEY, v int4 NOT NULL);",
    )
    .await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("ids"))
        .start()
        .await
        .unwrap();
    db.exec(
        "INSERT INTO accounts VALUES ('6f1c2a1e-0000-4000-8000-000000000001', 'ann'),
                                     ('6f1c2a1e-0000-4000-8000-000000000002', 'bob');
         INSERT INTO labels VALUES ('a', 'A'), ('b', 'B');
         INSERT INTO counters VALUES (1, 10), (2, 20);
         UPDATE accounts SET name = 'anne' WHERE name = 'ann';
         UPDATE labels SET title = 'AA' WHERE code = 'a';
         UPDATE counters SET v = 11 WHERE id = 1;
         DELETE FROM accounts WHERE name = 'bob';
         DELETE FROM labels WHERE code = 'b';
         DELETE FROM counters WHERE id = 2;",
    )
    .await;
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(20))
        .await
        .unwrap();
    let accounts: Vec<(uuid::Uuid, String)> = sqlx::query_as("SELECT id, name FROM account_copies")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        accounts,
        vec![(
            "6f1c2a1e-0000-4000-8000-000000000001".parse().unwrap(),
            "anne".to_owned()
        )]
    );
    let labels: Vec<(String, String)> = sqlx::query_as("SELECT code, title FROM label_copies")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(labels, vec![("a".to_owned(), "AA".to_owned())]);
    let counters: Vec<(i32, i32)> = sqlx::query_as("SELECT id, v FROM counter_copies")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(counters, vec![(1, 11)]);
    for op in ["CopyAccounts", "CopyLabels", "CopyCounters"] {
        assert!(flow.dead_letters(op).await.unwrap().is_empty(), "{op}");
    }
    flow.shutdown().await.unwrap();
}

//! Row changes decoded from a real PostgreSQL's WAL: kinds, old and new
//! values, every supported type, unchanged TOAST.

mod common;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use walflow::listener::ListenerMessage;
use walflow::{EventKind, Interval, Numeric, RawEvent, Value};

/// The changes of the next `n` transactions.
async fn tx_changes(l: &mut walflow::listener::Listener, n: usize) -> Vec<Vec<RawEvent>> {
    common::transactions(l, n)
        .await
        .into_iter()
        .map(|tx| {
            tx.into_iter()
                .filter_map(|m| match m {
                    ListenerMessage::Change(e) => Some(e),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

fn int8(v: i64) -> Value {
    Value::Int8(v)
}

fn text(v: &str) -> Value {
    Value::Text(v.into())
}

#[tokio::test]
async fn insert_update_delete_truncate_with_old_and_new_values() {
    let db = common::db().await;
    db.exec("CREATE TABLE posts (id int8 PRIMARY KEY, title text, votes int4)")
        .await;
    let slot = db.slot("kinds");
    db.setup(&slot, &["posts"]).await;
    let mut l = db.listener(&slot).await.unwrap();
    db.exec("INSERT INTO posts VALUES (1, 'hello', 0)").await;
    db.exec("UPDATE posts SET title = 'hello world' WHERE id = 1")
        .await;
    db.exec("DELETE FROM posts WHERE id = 1").await;
    db.exec("INSERT INTO posts VALUES (2, 'x', 1)").await;
    db.exec("TRUNCATE posts").await;
    let txs = tx_changes(&mut l, 5).await;

    let ins = &txs[0][0];
    assert_eq!(ins.kind, EventKind::Insert);
    assert_eq!(&*ins.table, "posts");
    assert_eq!(&*ins.schema, "public");
    let new = ins.new.as_ref().unwrap();
    assert_eq!(new.get("id"), Some(&int8(1)));
    assert_eq!(new.get("title"), Some(&text("hello")));
    assert_eq!(new.get("votes"), Some(&Value::Int4(0)));
    assert!(ins.old.is_none() && ins.changes.is_none());
    assert_eq!(ins.columns.len(), 3);
    assert_eq!(&*ins.columns[1].name, "title");
    assert_eq!(ins.columns[1].type_oid, 25);

    let upd = &txs[1][0];
    assert_eq!(upd.kind, EventKind::Update);
    assert_eq!(upd.old.as_ref().unwrap().get("title"), Some(&text("hello")));
    assert_eq!(
        upd.new.as_ref().unwrap().get("title"),
        Some(&text("hello world"))
    );
    let changes = upd.changes.as_ref().unwrap();
    assert_eq!(changes.len(), 1, "only the changed field: {changes:?}");
    assert_eq!(changes["title"].old, text("hello"));
    assert_eq!(changes["title"].new, text("hello world"));

    let del = &txs[2][0];
    assert_eq!(del.kind, EventKind::Delete);
    assert!(del.new.is_none());
    let old = del.old.as_ref().unwrap();
    assert_eq!(old.get("title"), Some(&text("hello world")), "full old row");
    assert_eq!(old.get("votes"), Some(&Value::Int4(0)));

    let trunc = &txs[4][0];
    assert_eq!(trunc.kind, EventKind::Truncate);
    assert_eq!(&*trunc.table, "posts");
    assert!(trunc.new.is_none() && trunc.old.is_none());

    // Positions: commit order, seq within the transaction.
    for w in txs.windows(2) {
        assert!(w[0][0].commit_lsn < w[1][0].commit_lsn);
    }
    assert_eq!(ins.seq, 0);
    l.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_transaction_arrives_together_and_in_order() {
    let db = common::db().await;
    db.exec("CREATE TABLE a (id int8 PRIMARY KEY)").await;
    db.exec("CREATE TABLE b (id int8 PRIMARY KEY)").await;
    let slot = db.slot("together");
    db.setup(&slot, &["a", "b"]).await;
    let mut l = db.listener(&slot).await.unwrap();
    db.exec(
        "BEGIN; INSERT INTO a VALUES (1); INSERT INTO b VALUES (1); DELETE FROM a WHERE id = 1; \
         INSERT INTO a VALUES (2); UPDATE b SET id = 3; COMMIT",
    )
    .await;
    let tx = common::transactions(&mut l, 1).await.remove(0);
    let ListenerMessage::Begin(begin) = &tx[0] else {
        panic!("{:?}", tx[0])
    };
    let ListenerMessage::Commit(commit) = tx.last().unwrap() else {
        panic!()
    };
    assert_eq!(commit.changes, 5);
    assert_eq!(begin.commit_lsn, commit.commit_lsn);
    let got: Vec<(String, EventKind, u32)> = tx[1..tx.len() - 1]
        .iter()
        .map(|m| match m {
            ListenerMessage::Change(e) => {
                assert_eq!(e.commit_lsn, commit.commit_lsn);
                assert_eq!(e.xid, begin.xid);
                (e.table.to_string(), e.kind, e.seq)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    // Statement order, not grouped by table or kind.
    assert_eq!(
        got,
        vec![
            ("a".into(), EventKind::Insert, 0),
            ("b".into(), EventKind::Insert, 1),
            ("a".into(), EventKind::Delete, 2),
            ("a".into(), EventKind::Insert, 3),
            ("b".into(), EventKind::Update, 4),
        ]
    );
    l.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_supported_type_round_trips_exactly() {
    let db = common::db().await;
    db.exec("CREATE TYPE mood AS ENUM ('sad', 'happy')").await;
    db.exec(
        "CREATE TABLE types (id int8 PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, f4 float4, \
         f8 float8, f8_nan float8, num numeric, t text, vc varchar(10), bp char(3), nm name, u uuid, \
         d date, tm time, ts timestamp, tstz timestamptz, iv interval, j json, jb jsonb, by bytea, \
         m mood, ai int4[], at text[], an numeric[], ats timestamptz[], nul text, \
         big_num numeric, neg_iv interval, inf_ts timestamptz)",
    )
    .await;
    let slot = db.slot("types");
    db.setup(&slot, &["types"]).await;
    let mut l = db.listener(&slot).await.unwrap();
    db.exec(
        r#"SET TIME ZONE 'Asia/Kolkata';
        INSERT INTO types VALUES (1, true, -32768, 2147483647, -9223372036854775808, 1.5, 0.1,
        'NaN', 12345.678900, 'tëxt "quoted"', 'varchar', 'ab', 'a_name',
        'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29', '13:14:15.123456',
        '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.123456+05:30', '1 year 2 mons 3 days 04:05:06.789',
        '{"a": [1, 2.5, "x"]}', '{"b": {"c": null}}', '\xdeadbeef00', 'happy',
        '{1,NULL,3}', '{"a,b","c\"d",NULL,""}', '{1.10,2.20}', '{"2024-01-02 03:04:05.000001+00"}', NULL,
        123456789012345678901234567890.123456789, '-1 mons -2 days -00:00:01.5', 'infinity')"#,
    )
    .await;
    let ev = tx_changes(&mut l, 1).await.remove(0).remove(0);
    let r = ev.new.as_ref().unwrap();
    let get = |c: &str| r.get(c).unwrap().clone();
    assert_eq!(get("b"), Value::Bool(true));
    assert_eq!(get("i2"), Value::Int2(-32768));
    assert_eq!(get("i4"), Value::Int4(2147483647));
    assert_eq!(get("i8"), Value::Int8(i64::MIN));
    assert_eq!(get("f4"), Value::Float4(1.5));
    assert_eq!(get("f8"), Value::Float8(0.1));
    assert!(matches!(get("f8_nan"), Value::Float8(f) if f.is_nan()));
    assert_eq!(get("num"), Value::Numeric(Numeric("12345.678900".into())));
    assert_eq!(
        get("big_num"),
        Value::Numeric(Numeric("123456789012345678901234567890.123456789".into()))
    );
    assert_eq!(get("t"), text("tëxt \"quoted\""));
    assert_eq!(get("vc"), text("varchar"));
    assert_eq!(get("bp"), text("ab "));
    assert_eq!(get("nm"), text("a_name"));
    assert_eq!(
        get("u"),
        Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".parse().unwrap())
    );
    assert_eq!(
        get("d"),
        Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap())
    );
    assert_eq!(
        get("tm"),
        Value::Time(NaiveTime::from_hms_micro_opt(13, 14, 15, 123456).unwrap())
    );
    assert_eq!(
        get("ts"),
        Value::Timestamp(
            NaiveDateTime::parse_from_str("2024-01-02 03:04:05.123456", "%Y-%m-%d %H:%M:%S%.f")
                .unwrap()
        )
    );
    assert_eq!(
        get("tstz"),
        Value::TimestampTz(
            DateTime::parse_from_rfc3339("2024-01-02T03:04:05.123456+05:30")
                .unwrap()
                .with_timezone(&Utc)
        )
    );
    assert_eq!(
        get("iv"),
        Value::Interval(Interval {
            months: 14,
            days: 3,
            microseconds: ((4 * 60 + 5) * 60 + 6) * 1_000_000 + 789_000
        })
    );
    assert_eq!(
        get("neg_iv"),
        Value::Interval(Interval {
            months: -1,
            days: -2,
            microseconds: -1_500_000
        })
    );
    assert_eq!(
        get("j"),
        Value::Json(serde_json::json!({"a": [1, 2.5, "x"]}))
    );
    assert_eq!(
        get("jb"),
        Value::Json(serde_json::json!({"b": {"c": null}}))
    );
    assert_eq!(get("by"), Value::Bytea(vec![0xde, 0xad, 0xbe, 0xef, 0]));
    assert_eq!(get("m"), text("happy"));
    assert_eq!(
        get("ai"),
        Value::Array(vec![Value::Int4(1), Value::Null, Value::Int4(3)])
    );
    assert_eq!(
        get("at"),
        Value::Array(vec![text("a,b"), text("c\"d"), Value::Null, text("")])
    );
    assert_eq!(
        get("an"),
        Value::Array(vec![
            Value::Numeric(Numeric("1.10".into())),
            Value::Numeric(Numeric("2.20".into()))
        ])
    );
    assert_eq!(
        get("ats"),
        Value::Array(vec![Value::TimestampTz(
            DateTime::parse_from_rfc3339("2024-01-02T03:04:05.000001Z")
                .unwrap()
                .with_timezone(&Utc)
        )])
    );
    assert_eq!(get("nul"), Value::Null);
    assert_eq!(get("inf_ts"), text("infinity"));

    // And into a user's struct.
    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Row {
        id: i64,
        u: uuid::Uuid,
        tstz: DateTime<Utc>,
        ts: NaiveDateTime,
        d: NaiveDate,
        num: String,
        ai: Vec<Option<i32>>,
        by: Vec<u8>,
        jb: serde_json::Value,
        nul: Option<String>,
        #[serde(rename = "t")]
        body: String,
    }
    let row: Row = r.deserialize_into("types").unwrap();
    assert_eq!(row.id, 1);
    assert_eq!(row.tstz.timestamp_subsec_micros(), 123456);
    assert_eq!(row.ai, vec![Some(1), None, Some(3)]);
    assert_eq!(row.body, "tëxt \"quoted\"");
    assert_eq!(row.nul, None);

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Wrong {
        id: i64,
        t: i64,
    }
    let err = r.deserialize_into::<Wrong>("types").unwrap_err();
    assert_eq!(err.table, "types");
    assert_eq!(err.column.as_deref(), Some("t"));
    assert!(
        err.to_string()
            .starts_with("table `types`, column `t`: invalid type: string"),
        "{err}"
    );
    l.shutdown().await.unwrap();
}

#[tokio::test]
async fn unchanged_toast_is_filled_from_the_old_row() {
    let db = common::db().await;
    db.exec("CREATE TABLE docs (id int8 PRIMARY KEY, body text, n int4)")
        .await;
    // Force out-of-line storage without compression so the value is TOASTed.
    db.exec("ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")
        .await;
    let slot = db.slot("toast");
    db.setup(&slot, &["docs"]).await;
    let mut l = db.listener(&slot).await.unwrap();
    let big: String = (0..20_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    sqlx::query("INSERT INTO docs VALUES (1, $1, 0)")
        .bind(&big)
        .execute(&db.pool)
        .await
        .unwrap();
    db.exec("UPDATE docs SET n = 1 WHERE id = 1").await;
    let txs = tx_changes(&mut l, 2).await;
    let upd = &txs[1][0];
    assert_eq!(upd.kind, EventKind::Update);
    assert_eq!(
        upd.new.as_ref().unwrap().get("body"),
        Some(&Value::Text(big.clone())),
        "the unchanged TOAST value is filled in, never a placeholder"
    );
    let changes = upd.changes.as_ref().unwrap();
    assert_eq!(changes.keys().map(|k| &**k).collect::<Vec<_>>(), vec!["n"]);
    l.shutdown().await.unwrap();

    // Without REPLICA IDENTITY FULL the value is not available: it says so.
    let db = common::db().await;
    db.exec("CREATE TABLE docs (id int8 PRIMARY KEY, body text, n int4)")
        .await;
    db.exec("ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")
        .await;
    let slot = db.slot("toast_default");
    walflow::setup::prepare(
        &db.pool,
        &walflow::setup::SetupSpec {
            publication: "events".into(),
            slot: slot.clone(),
            durable_slot: true,
            tables: vec![walflow::setup::TableSpec {
                replica_identity_full: false,
                ..walflow::setup::TableSpec::new("public", "docs")
            }],
        },
    )
    .await
    .unwrap();
    let mut l = db.listener(&slot).await.unwrap();
    sqlx::query("INSERT INTO docs VALUES (1, $1, 0)")
        .bind(&big)
        .execute(&db.pool)
        .await
        .unwrap();
    db.exec("UPDATE docs SET n = 1 WHERE id = 1").await;
    let txs = tx_changes(&mut l, 2).await;
    let upd = &txs[1][0];
    assert_eq!(
        upd.new.as_ref().unwrap().get("body"),
        Some(&Value::UnchangedToast)
    );
    let old = upd.old.as_ref();
    assert!(
        old.is_none(),
        "no old row without REPLICA IDENTITY FULL: {old:?}"
    );
    l.shutdown().await.unwrap();
}

/// A JSON `null` is a value, SQL `NULL` is `None`: decoded from the WAL
/// exactly as sqlx reads the same rows, for `json`, `jsonb` and the
/// elements of `jsonb[]`.
#[tokio::test]
async fn json_null_is_not_sql_null() {
    #[derive(Debug, PartialEq, serde::Deserialize, sqlx::FromRow)]
    struct Doc {
        id: i64,
        j: Option<serde_json::Value>,
        jb: Option<serde_json::Value>,
        arr: Option<Vec<Option<serde_json::Value>>>,
    }
    let db = common::db().await;
    db.exec("CREATE TABLE docs (id int8 PRIMARY KEY, j json, jb jsonb, arr jsonb[])")
        .await;
    let slot = db.slot("jsonnull");
    db.setup(&slot, &["docs"]).await;
    let mut l = db.listener(&slot).await.unwrap();
    db.exec(
        "INSERT INTO docs VALUES
           (1, 'null', 'null', ARRAY['null'::jsonb, NULL, '1'::jsonb]),
           (2, NULL, NULL, NULL),
           (3, '{\"a\": null}', '[null]', '{}')",
    )
    .await;
    let decoded: Vec<Doc> = tx_changes(&mut l, 1).await[0]
        .iter()
        .map(|e| e.new.as_ref().unwrap().deserialize_into("docs").unwrap())
        .collect();
    let read: Vec<Doc> = sqlx::query_as("SELECT id, j, jb, arr FROM docs ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(decoded, read);
    assert_eq!(decoded[0].jb, Some(serde_json::Value::Null));
    assert_eq!(decoded[1].jb, None);
}

/// JSON that PostgreSQL accepts never stops the stream: a number beyond
/// `f64` and a lone surrogate arrive as their text, nesting deeper than
/// serde_json's default limit as JSON, and the rows after them arrive too.
#[tokio::test]
async fn json_postgresql_accepts_never_stops_the_stream() {
    let db = common::db().await;
    db.exec("CREATE TABLE docs (id int8 PRIMARY KEY, j json, jb jsonb)")
        .await;
    let slot = db.slot("jsonodd");
    db.setup(&slot, &["docs"]).await;
    let mut l = db.listener(&slot).await.unwrap();
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    db.exec(&format!(
        r#"INSERT INTO docs VALUES (1, '{{"a": 1}}', '{{"a": 1}}');
           INSERT INTO docs VALUES (2, '{{"x": 1e400}}', '{{"x": 1e400}}');
           INSERT INTO docs VALUES (3, '{{"s": "\ud800"}}', '{deep}');
           INSERT INTO docs VALUES (4, '{{"b": 2}}', '{{"b": 2}}');"#
    ))
    .await;
    // One transaction (one simple query), four changes.
    let txs = tx_changes(&mut l, 1).await;
    let col = |row: usize, c: &str| txs[0][row].new.as_ref().unwrap().get(c).cloned().unwrap();
    assert_eq!(col(0, "jb"), Value::Json(serde_json::json!({"a": 1})));
    assert_eq!(col(1, "j"), Value::Text(r#"{"x": 1e400}"#.to_owned()));
    // jsonb stores the number as numeric and prints it in full.
    assert!(matches!(col(1, "jb"), Value::Text(t) if t.starts_with(r#"{"x": 1000000"#)));
    assert_eq!(col(2, "j"), Value::Text(r#"{"s": "\ud800"}"#.to_owned()));
    let Value::Json(mut j) = col(2, "jb") else {
        panic!("deep jsonb is JSON")
    };
    let mut depth = 0;
    while let serde_json::Value::Array(mut a) = j {
        depth += 1;
        j = a.pop().unwrap();
    }
    assert_eq!(depth, 200);
    assert_eq!(col(3, "jb"), Value::Json(serde_json::json!({"b": 2})));
}

/// A domain arrives as its base type (through a domain over a domain, and
/// for an array of a domain), so it deserializes into the base type's Rust
/// type; its declared type stays in the event's columns.
#[tokio::test]
async fn a_domain_arrives_as_its_base_type() {
    let db = common::db().await;
    db.exec(
        "CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
         CREATE DOMAIN small_posint AS posint CHECK (VALUE < 100);
         CREATE DOMAIN label AS text;
         CREATE DOMAIN moment AS timestamptz;
         CREATE TYPE mood AS ENUM ('ok', 'meh');
         CREATE TABLE typed (id int8 PRIMARY KEY, n posint, s small_posint, l label,
                             m moment, ns posint[], mood mood);",
    )
    .await;
    let slot = db.slot("domains");
    db.setup(&slot, &["typed"]).await;
    let mut l = db.listener(&slot).await.unwrap();
    db.exec(
        "INSERT INTO typed VALUES (1, 7, 42, 'x', '2024-05-06 07:08:09.123456+00',
                                   '{1,2,3}', 'meh')",
    )
    .await;
    let txs = tx_changes(&mut l, 1).await;
    let event = &txs[0][0];
    let row = event.new.as_ref().unwrap();
    assert_eq!(row.get("n"), Some(&Value::Int4(7)));
    assert_eq!(row.get("s"), Some(&Value::Int4(42)));
    assert_eq!(row.get("l"), Some(&text("x")));
    assert!(
        matches!(row.get("m"), Some(Value::TimestampTz(_))),
        "{row:?}"
    );
    assert_eq!(
        row.get("ns"),
        Some(&Value::Array(vec![
            Value::Int4(1),
            Value::Int4(2),
            Value::Int4(3)
        ]))
    );
    // Other types that are not built in stay text.
    assert_eq!(row.get("mood"), Some(&text("meh")));

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Typed {
        id: i64,
        n: i32,
        s: i32,
        l: String,
        m: chrono::DateTime<chrono::Utc>,
        ns: Vec<i32>,
    }
    let typed: Typed = row.deserialize_into("typed").unwrap();
    assert_eq!((typed.n, typed.s, typed.ns), (7, 42, vec![1, 2, 3]));
    // The declared type stays visible.
    let posint: i64 = sqlx::query_scalar("SELECT 'posint'::regtype::oid::int8")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let n = event.columns.iter().find(|c| &*c.name == "n").unwrap();
    assert_eq!(i64::from(n.type_oid), posint);
}

/// BC dates and timestamps arrive typed, as sqlx reads the same rows
/// (PostgreSQL's BC years are proleptic Gregorian, 1 BC being chrono's year
/// 0); `infinity` arrives as text and deserializes into `MaybeInfinite`.
#[tokio::test]
async fn bc_and_infinite_dates_match_sqlx() {
    let db = common::db().await;
    db.exec("CREATE TABLE eras (id int8 PRIMARY KEY, d date, t timestamp, tz timestamptz)")
        .await;
    let slot = db.slot("eras");
    db.setup(&slot, &["eras"]).await;
    let mut l = db.listener(&slot).await.unwrap();
    db.exec(
        "INSERT INTO eras VALUES
           (1, '0044-03-15 BC', '0044-03-15 12:34:56.789 BC', '0001-12-31 23:59:59+00 BC'),
           (2, '0001-02-29 BC', '4713-01-01 00:00:00 BC', '2024-02-29 12:00:00+00'),
           (3, 'infinity', '-infinity', 'infinity')",
    )
    .await;
    let txs = tx_changes(&mut l, 1).await;
    type Finite = (
        i64,
        chrono::NaiveDate,
        chrono::NaiveDateTime,
        chrono::DateTime<chrono::Utc>,
    );
    let truth: Vec<Finite> =
        sqlx::query_as("SELECT id, d, t, tz FROM eras WHERE id < 3 ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    for (event, (id, d, t, tz)) in txs[0].iter().zip(&truth) {
        let row = event.new.as_ref().unwrap();
        assert_eq!(row.get("id"), Some(&int8(*id)));
        assert_eq!(row.get("d"), Some(&Value::Date(*d)), "row {id}");
        assert_eq!(row.get("t"), Some(&Value::Timestamp(*t)), "row {id}");
        assert_eq!(row.get("tz"), Some(&Value::TimestampTz(*tz)), "row {id}");
    }
    #[derive(Debug, serde::Deserialize)]
    struct Era {
        d: walflow::MaybeInfinite<chrono::NaiveDate>,
        t: walflow::MaybeInfinite<chrono::NaiveDateTime>,
        tz: walflow::MaybeInfinite<chrono::DateTime<chrono::Utc>>,
    }
    let era: Era = txs[0][2]
        .new
        .as_ref()
        .unwrap()
        .deserialize_into("eras")
        .unwrap();
    use walflow::MaybeInfinite::{Infinity, NegInfinity};
    assert_eq!((era.d, era.t, era.tz), (Infinity, NegInfinity, Infinity));
    let first: Era = txs[0][0]
        .new
        .as_ref()
        .unwrap()
        .deserialize_into("eras")
        .unwrap();
    assert_eq!(first.d.finite(), Some(truth[0].1));
}

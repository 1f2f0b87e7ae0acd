//! Property: values of every supported type, generated at random and
//! written through sqlx, decode from the WAL into the same Rust values sqlx
//! reads back from the table (against a real PostgreSQL).

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use walflow::RawEvent;

mod common;

#[derive(Debug, Clone, serde::Deserialize, sqlx::FromRow)]
struct Row {
    id: i64,
    b: bool,
    i2: i16,
    i4: i32,
    i8: i64,
    f4: f32,
    f8: f64,
    t: String,
    u: uuid::Uuid,
    d: NaiveDate,
    tm: NaiveTime,
    ts: NaiveDateTime,
    tz: DateTime<Utc>,
    by: Vec<u8>,
    j: serde_json::Value,
    a4: Vec<i32>,
    at: Vec<Option<String>>,
    n: Option<i64>,
}

/// Text PostgreSQL stores (no NUL).
fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,24}"
}

fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(text(), inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Microseconds from 4000 BC to 200000 AD, within PostgreSQL's and
/// chrono's ranges.
fn micros() -> impl Strategy<Value = i64> {
    -188_000_000_000_000_000i64..6_250_000_000_000_000_000
}

fn row(id: i64) -> impl Strategy<Value = Row> {
    let scalars = (
        any::<bool>(),
        any::<i16>(),
        any::<i32>(),
        any::<i64>(),
        any::<f32>(),
        any::<f64>(),
        text(),
        any::<u128>(),
    );
    let times = (micros(), 0i64..86_400_000_000, micros(), micros());
    let rest = (
        prop::collection::vec(any::<u8>(), 0..32),
        json(),
        prop::collection::vec(any::<i32>(), 0..6),
        prop::collection::vec(proptest::option::of(text()), 0..6),
        proptest::option::of(any::<i64>()),
    );
    (scalars, times, rest).prop_map(
        move |((b, i2, i4, i8, f4, f8, t, u), (d, tm, ts, tz), (by, j, a4, at, n))| {
            let at_micros = |m: i64| DateTime::<Utc>::from_timestamp_micros(m).expect("in range");
            Row {
                id,
                b,
                i2,
                i4,
                i8,
                f4,
                f8,
                t,
                u: uuid::Uuid::from_u128(u),
                d: at_micros(d).date_naive(),
                tm: NaiveTime::from_num_seconds_from_midnight_opt(
                    (tm / 1_000_000) as u32,
                    (tm % 1_000_000) as u32 * 1000,
                )
                .expect("a time"),
                ts: at_micros(ts).naive_utc(),
                tz: at_micros(tz),
                by,
                j,
                a4,
                at,
                n,
            }
        },
    )
}

#[tokio::test]
async fn generated_values_decode_as_sqlx_reads_them() {
    const ROWS: i64 = 1000;
    let db = common::db().await;
    db.exec(
        "CREATE TABLE every (id int8 PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8,
            f4 float4, f8 float8, t text, u uuid, d date, tm time, ts timestamp,
            tz timestamptz, by bytea, j jsonb, a4 int4[], at text[], n int8)",
    )
    .await;
    let slot = db.slot("roundtrip");
    db.setup(&slot, &["every"]).await;
    let mut l = db.listener(&slot).await.unwrap();

    let seed = common::seed();
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    );
    let mut tx = db.pool.begin().await.unwrap();
    for id in 0..ROWS {
        let r = row(id).new_tree(&mut runner).unwrap().current();
        sqlx::query(
            "INSERT INTO every VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                                      $14, $15, $16, $17, $18)",
        )
        .bind(r.id)
        .bind(r.b)
        .bind(r.i2)
        .bind(r.i4)
        .bind(r.i8)
        .bind(r.f4)
        .bind(r.f8)
        .bind(&r.t)
        .bind(r.u)
        .bind(r.d)
        .bind(r.tm)
        .bind(r.ts)
        .bind(r.tz)
        .bind(&r.by)
        .bind(&r.j)
        .bind(&r.a4)
        .bind(&r.at)
        .bind(r.n)
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{r:?}: {e}"));
    }
    tx.commit().await.unwrap();

    let read: Vec<Row> = sqlx::query_as("SELECT * FROM every ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let mut decoded: Vec<RawEvent> = Vec::new();
    while decoded.len() < ROWS as usize {
        let message = common::next(&mut l, std::time::Duration::from_secs(30)).await;
        if let walflow::listener::ListenerMessage::Change(ev) = message {
            decoded.push(ev);
        }
    }
    for (ev, sqlx_row) in decoded.iter().zip(&read) {
        let walflow_row: Row = ev
            .new
            .as_ref()
            .unwrap()
            .deserialize_into("every")
            .unwrap_or_else(|e| panic!("row {}: {e}", sqlx_row.id));
        // Debug compares floats by their text: NaN equals NaN, -0 is not 0.
        assert_eq!(
            format!("{walflow_row:?}"),
            format!("{sqlx_row:?}"),
            "row {} (WALFLOW_SEED={seed})",
            sqlx_row.id
        );
    }
}

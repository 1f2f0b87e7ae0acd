use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::*;

fn record(pairs: Vec<(&str, Value)>) -> Record {
    let names: Arc<[Arc<str>]> = pairs.iter().map(|(n, _)| Arc::from(*n)).collect();
    Record::new(names, pairs.into_iter().map(|(_, v)| v).collect())
}

fn ts() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2024, 1, 2)
        .unwrap()
        .and_hms_micro_opt(3, 4, 5, 123_456)
        .unwrap()
}

const ID: &str = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Mood {
    Happy,
    Sad,
}

#[derive(Debug, Deserialize, PartialEq)]
struct Everything {
    id: i64,
    small: i16,
    widened: i64,
    narrowed: u8,
    flag: bool,
    ratio: f64,
    ratio32: f32,
    #[serde(rename = "title")]
    name: String,
    missing_text: Option<String>,
    present_text: Option<String>,
    toast: Option<String>,
    #[serde(default)]
    not_a_column: i32,
    uuid: Uuid,
    uuid_text: String,
    at: DateTime<Utc>,
    naive: NaiveDateTime,
    day: NaiveDate,
    time: NaiveTime,
    bytes: Vec<u8>,
    ints: Vec<i32>,
    grid: Vec<Vec<Option<i32>>>,
    doc: serde_json::Value,
    doc_typed: HashMap<String, Vec<u32>>,
    price: String,
    price_f64: f64,
    numeric_int: i64,
    interval: Interval,
    mood: Mood,
    maybe_mood: Option<Mood>,
}

fn everything() -> Record {
    record(vec![
        ("id", Value::Int8(42)),
        ("small", Value::Int2(-7)),
        ("widened", Value::Int4(5)),
        ("narrowed", Value::Int4(255)),
        ("flag", Value::Bool(true)),
        ("ratio", Value::Float8(0.25)),
        ("ratio32", Value::Float4(1.5)),
        ("title", Value::Text("hello".into())),
        ("missing_text", Value::Null),
        ("present_text", Value::Text("x".into())),
        ("toast", Value::UnchangedToast),
        ("uuid", Value::Uuid(Uuid::parse_str(ID).unwrap())),
        ("uuid_text", Value::Uuid(Uuid::parse_str(ID).unwrap())),
        ("at", Value::TimestampTz(ts().and_utc())),
        ("naive", Value::Timestamp(ts())),
        (
            "day",
            Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
        ),
        (
            "time",
            Value::Time(NaiveTime::from_hms_micro_opt(23, 59, 59, 1).unwrap()),
        ),
        ("bytes", Value::Bytea(vec![0, 1, 255])),
        ("ints", Value::Array(vec![Value::Int4(1), Value::Int4(-2)])),
        (
            "grid",
            Value::Array(vec![
                Value::Array(vec![Value::Int4(1), Value::Null]),
                Value::Array(vec![Value::Int4(3), Value::Int4(4)]),
            ]),
        ),
        ("doc", Value::Json(serde_json::json!({"a": [1, null]}))),
        ("doc_typed", Value::Json(serde_json::json!({"a": [1, 2]}))),
        (
            "price",
            Value::Numeric(Numeric("123456789012345678901234567890.123456789".into())),
        ),
        ("price_f64", Value::Numeric(Numeric("12.5".into()))),
        ("numeric_int", Value::Numeric(Numeric("-9000".into()))),
        (
            "interval",
            Value::Interval(Interval {
                months: -14,
                days: 3,
                microseconds: 1_500_000,
            }),
        ),
        ("mood", Value::Text("happy".into())),
        ("maybe_mood", Value::Text("sad".into())),
        ("extra_column", Value::Text("ignored".into())),
    ])
}

#[test]
fn deserializes_every_kind_of_value() {
    let got: Everything = everything().deserialize_into("t").unwrap();
    assert_eq!(
        got,
        Everything {
            id: 42,
            small: -7,
            widened: 5,
            narrowed: 255,
            flag: true,
            ratio: 0.25,
            ratio32: 1.5,
            name: "hello".into(),
            missing_text: None,
            present_text: Some("x".into()),
            toast: None,
            not_a_column: 0,
            uuid: Uuid::parse_str(ID).unwrap(),
            uuid_text: ID.into(),
            at: Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()
                + chrono::TimeDelta::microseconds(123_456),
            naive: ts(),
            day: NaiveDate::from_ymd_opt(2024, 2, 29).unwrap(),
            time: NaiveTime::from_hms_micro_opt(23, 59, 59, 1).unwrap(),
            bytes: vec![0, 1, 255],
            ints: vec![1, -2],
            grid: vec![vec![Some(1), None], vec![Some(3), Some(4)]],
            doc: serde_json::json!({"a": [1, null]}),
            doc_typed: HashMap::from([("a".to_owned(), vec![1, 2])]),
            price: "123456789012345678901234567890.123456789".into(),
            price_f64: 12.5,
            numeric_int: -9000,
            interval: Interval {
                months: -14,
                days: 3,
                microseconds: 1_500_000
            },
            mood: Mood::Happy,
            maybe_mood: Some(Mood::Sad),
        }
    );
}

#[test]
fn error_names_table_column_and_expected_type() {
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Comment {
        id: i64,
        post_id: i64,
    }
    let r = record(vec![
        ("id", Value::Int8(1)),
        ("post_id", Value::Text("abc".into())),
    ]);
    let err = r.deserialize_into::<Comment>("comments").unwrap_err();
    assert_eq!(
        err.to_string(),
        "table `comments`, column `post_id`: invalid type: string \"abc\", expected i64"
    );
    assert_eq!(err.column.as_deref(), Some("post_id"));
    assert_eq!(err.table, "comments");

    let r = record(vec![("id", Value::Int8(1))]);
    let err = r.deserialize_into::<Comment>("comments").unwrap_err();
    assert_eq!(
        err.to_string(),
        "table `comments`, column `post_id`: missing field `post_id`"
    );

    let r = record(vec![("id", Value::Int4(1)), ("post_id", Value::Null)]);
    let err = r.deserialize_into::<Comment>("comments").unwrap_err();
    assert_eq!(
        err.to_string(),
        "table `comments`, column `post_id`: NULL, expected i64"
    );

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Small {
        n: i16,
    }
    let err = record(vec![("n", Value::Int8(70_000))])
        .deserialize_into::<Small>("t")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "table `t`, column `n`: invalid value: integer `70000`, expected i16"
    );

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct When {
        at: DateTime<Utc>,
    }
    // A timestamp without time zone does not become a `DateTime<Utc>`.
    let err = record(vec![("at", Value::Timestamp(ts()))])
        .deserialize_into::<When>("t")
        .unwrap_err();
    assert_eq!(err.column.as_deref(), Some("at"));

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        doc: Vec<i32>,
    }
    let err = record(vec![("doc", Value::Json(serde_json::json!({"a": 1})))])
        .deserialize_into::<Doc>("docs")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "table `docs`, column `doc`: invalid type: map, expected a sequence"
    );

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Arr {
        a: Vec<i32>,
    }
    let err = record(vec![(
        "a",
        Value::Array(vec![Value::Int4(1), Value::Text("x".into())]),
    )])
    .deserialize_into::<Arr>("t")
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "table `t`, column `a`: invalid type: string \"x\", expected i32"
    );
}

#[test]
fn unknown_fields_are_named() {
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        a: i32,
    }
    let err = record(vec![("a", Value::Int4(1)), ("b", Value::Int4(2))])
        .deserialize_into::<Strict>("t")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "table `t`, column `b`: unknown field `b`, expected `a`"
    );
}

#[test]
fn flatten_and_newtypes_work() {
    #[derive(Debug, Deserialize, PartialEq)]
    struct Inner {
        b: String,
        c: Option<i64>,
    }
    #[derive(Debug, Deserialize, PartialEq)]
    struct UserId(i64);
    #[derive(Debug, Deserialize, PartialEq)]
    struct Outer {
        a: UserId,
        #[serde(flatten)]
        inner: Inner,
    }
    let r = record(vec![
        ("a", Value::Int8(1)),
        ("b", Value::Text("x".into())),
        ("c", Value::Int4(3)),
    ]);
    assert_eq!(
        r.deserialize_into::<Outer>("t").unwrap(),
        Outer {
            a: UserId(1),
            inner: Inner {
                b: "x".into(),
                c: Some(3)
            }
        }
    );
    // Flatten over every value kind must not fail on buffering.
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Rest {
        id: i64,
        #[serde(flatten)]
        rest: HashMap<String, serde_json::Value>,
    }
    let rest: Rest = everything().deserialize_into("t").unwrap();
    assert_eq!(rest.rest["title"], serde_json::json!("hello"));
    assert_eq!(rest.rest["bytes"], serde_json::json!([0, 1, 255]));
    assert_eq!(
        rest.rest["interval"],
        serde_json::json!({"months": -14, "days": 3, "microseconds": 1_500_000})
    );
    assert_eq!(
        rest.rest["at"],
        serde_json::json!("2024-01-02T03:04:05.123456Z")
    );
    // The whole record into a JSON value or a map.
    let all: serde_json::Value = everything().deserialize_into("t").unwrap();
    assert_eq!(all["uuid"], serde_json::json!(ID));
    assert_eq!(all["missing_text"], serde_json::Value::Null);
}

#[test]
fn plain_json_is_kept() {
    let r = everything();
    assert_eq!(
        r.get("bytes").unwrap().to_plain_json(),
        serde_json::json!([0, 1, 255])
    );
    assert_eq!(
        r.get("at").unwrap().to_plain_json(),
        serde_json::json!("2024-01-02T03:04:05.123456Z")
    );
}

#[test]
fn records_round_trip_through_json() {
    let r = everything();
    let json = serde_json::to_string(&r).unwrap();
    let back: Record = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    let specials = record(vec![
        ("inf", Value::Float8(f64::INFINITY)),
        ("ninf", Value::Float4(f32::NEG_INFINITY)),
        ("tiny", Value::Float8(5e-324)),
        ("f32", Value::Float4(0.1)),
    ]);
    let json = serde_json::to_string(&specials).unwrap();
    assert_eq!(
        json,
        r#"{"inf":{"Float8":"Infinity"},"ninf":{"Float4":"-Infinity"},"tiny":{"Float8":5e-324},"f32":{"Float4":0.1}}"#
    );
    assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), specials);
}

#[test]
fn json_null_is_a_value_and_sql_null_is_none() {
    #[derive(Debug, Deserialize, PartialEq)]
    struct Row {
        doc: Option<serde_json::Value>,
        missing: Option<serde_json::Value>,
        docs: Vec<Option<serde_json::Value>>,
    }
    let row: Row = record(vec![
        ("doc", Value::Json(serde_json::Value::Null)),
        ("missing", Value::Null),
        (
            "docs",
            Value::Array(vec![
                Value::Json(serde_json::Value::Null),
                Value::Null,
                Value::Json(serde_json::json!(1)),
            ]),
        ),
    ])
    .deserialize_into("t")
    .unwrap();
    assert_eq!(
        row,
        Row {
            doc: Some(serde_json::Value::Null),
            missing: None,
            docs: vec![
                Some(serde_json::Value::Null),
                None,
                Some(serde_json::json!(1))
            ],
        }
    );
}

#[test]
fn special_dates_and_times_are_typed_or_named() {
    #[derive(Debug, Deserialize, PartialEq)]
    struct Row {
        d: MaybeInfinite<NaiveDate>,
        t: MaybeInfinite<NaiveDateTime>,
        tz: MaybeInfinite<DateTime<Utc>>,
    }
    let bc = NaiveDate::from_ymd_opt(-43, 3, 15).unwrap();
    let finite = record(vec![
        ("d", Value::Date(bc)),
        ("t", Value::Timestamp(ts())),
        ("tz", Value::TimestampTz(Utc.from_utc_datetime(&ts()))),
    ]);
    assert_eq!(
        finite.deserialize_into::<Row>("t").unwrap(),
        Row {
            d: MaybeInfinite::Finite(bc),
            t: MaybeInfinite::Finite(ts()),
            tz: MaybeInfinite::Finite(Utc.from_utc_datetime(&ts())),
        }
    );
    let special = record(vec![
        ("d", Value::Text("infinity".into())),
        ("t", Value::Text("-infinity".into())),
        ("tz", Value::Text("infinity".into())),
    ]);
    assert_eq!(
        special.deserialize_into::<Row>("t").unwrap(),
        Row {
            d: MaybeInfinite::Infinity,
            t: MaybeInfinite::NegInfinity,
            tz: MaybeInfinite::Infinity,
        }
    );
    assert!(MaybeInfinite::NegInfinity < MaybeInfinite::Finite(bc));
    assert!(MaybeInfinite::Finite(bc) < MaybeInfinite::Infinity);
    // A BC date is a plain chrono date too.
    #[derive(Debug, Deserialize)]
    struct Plain {
        d: NaiveDate,
    }
    let plain = record(vec![("d", Value::Date(bc))]);
    assert_eq!(plain.deserialize_into::<Plain>("t").unwrap().d, bc);
    // A plain chrono field names the special value and what takes it.
    let err = record(vec![("d", Value::Text("infinity".into()))])
        .deserialize_into::<Plain>("events")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("table `events`, column `d`:")
            && err.contains(
                "the value is PostgreSQL's `infinity`; read it as `walflow::MaybeInfinite<…>`"
            ),
        "{err}"
    );
    #[derive(Debug, Deserialize)]
    struct Clock {
        #[allow(dead_code)]
        t: NaiveTime,
    }
    let err = record(vec![("t", Value::Text("24:00:00".into()))])
        .deserialize_into::<Clock>("events")
        .unwrap_err()
        .to_string();
    assert!(err.contains("chrono has no 24:00:00"), "{err}");
}

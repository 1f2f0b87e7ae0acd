//! Property tests of the text decoder: it never panics on any input, and
//! every value printed the way PostgreSQL prints it decodes back exactly.

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Timelike, Utc};
use proptest::prelude::*;

use super::text::{decode_text, oid};
use super::{Decoder, Lsn, TxInfo};
use crate::value::{Numeric, Value};

/// Every type the decoder knows, and arrays of several.
const OIDS: &[u32] = &[
    oid::BOOL,
    oid::BYTEA,
    oid::NAME,
    oid::INT8,
    oid::INT2,
    oid::INT4,
    oid::TEXT,
    oid::JSON,
    oid::FLOAT4,
    oid::FLOAT8,
    oid::BPCHAR,
    oid::VARCHAR,
    oid::DATE,
    oid::TIME,
    oid::TIMESTAMP,
    oid::TIMESTAMPTZ,
    oid::INTERVAL,
    oid::NUMERIC,
    oid::UUID,
    oid::JSONB,
    1000, // bool[]
    1001, // bytea[]
    1007, // int4[]
    1009, // text[]
    1016, // int8[]
    1022, // float8[]
    1182, // date[]
    1185, // timestamptz[]
    1231, // numeric[]
    2951, // uuid[]
    3807, // jsonb[]
];

fn decoded(oid: u32, text: &str) -> Value {
    decode_text(oid, text.as_bytes()).unwrap_or_else(|e| panic!("{oid} {text:?}: {e}"))
}

/// `text` as an element of a PostgreSQL array literal.
fn array_element(text: &str) -> String {
    let plain = !text.is_empty()
        && !text.eq_ignore_ascii_case("NULL")
        && !text
            .chars()
            .any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_whitespace());
    if plain {
        return text.to_owned();
    }
    let mut out = String::from("\"");
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A date as PostgreSQL prints it (`ISO` date style): year `N BC` for
/// chrono's year `1 - N`.
fn pg_date(d: NaiveDate) -> (String, &'static str) {
    let (year, era) = if d.year() <= 0 {
        (1 - d.year(), " BC")
    } else {
        (d.year(), "")
    };
    (format!("{year:04}-{:02}-{:02}", d.month(), d.day()), era)
}

fn pg_time(h: u32, m: u32, s: u32, micros: u32) -> String {
    let mut t = format!("{h:02}:{m:02}:{s:02}");
    if micros > 0 {
        let frac = format!("{micros:06}");
        t.push('.');
        t.push_str(frac.trim_end_matches('0'));
    }
    t
}

fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z]{0,6}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn any_bytes_of_any_type_never_panic(
        oid in prop::sample::select(OIDS),
        bytes in prop::collection::vec(any::<u8>(), 0..48),
    ) {
        let _ = decode_text(oid, &bytes);
    }

    #[test]
    fn text_shaped_input_never_panics(
        oid in prop::sample::select(OIDS),
        text in r#"[-+0-9a-fA-FxXeEtTPYMDHS:. {},"\\\[\]=NUL]{0,40}"#,
    ) {
        let _ = decode_text(oid, text.as_bytes());
    }

    #[test]
    fn any_message_never_panics(
        tag in prop::sample::select(b"BCORYIUDTMX".to_vec()),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut dec = Decoder::new();
        let mut out = Vec::new();
        let mut tx = TxInfo::default();
        let mut m = vec![tag];
        m.extend(body);
        let _ = dec.decode(&mut tx, Lsn(1), &m, &mut out);
    }

    #[test]
    fn integers(v in any::<i64>()) {
        prop_assert_eq!(decoded(oid::INT8, &v.to_string()), Value::Int8(v));
        prop_assert_eq!(decoded(oid::INT4, &(v as i32).to_string()), Value::Int4(v as i32));
        prop_assert_eq!(decoded(oid::INT2, &(v as i16).to_string()), Value::Int2(v as i16));
    }

    #[test]
    fn floats_in_every_notation(v in any::<f64>()) {
        let texts = if v.is_nan() {
            vec!["NaN".to_owned()]
        } else if v.is_infinite() {
            vec![if v > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()]
        } else {
            // Shortest round trip, as with extra_float_digits > 0, in
            // fixed and in exponent notation (PostgreSQL writes `1e+100`).
            let e = format!("{v:e}");
            let pg = match e.split_once('e') {
                Some((m, x)) if !x.starts_with('-') => format!("{m}e+{x}"),
                _ => e.clone(),
            };
            vec![format!("{v}"), e, pg]
        };
        for text in texts {
            match decoded(oid::FLOAT8, &text) {
                Value::Float8(got) => prop_assert!(
                    got.to_bits() == v.to_bits() || (got.is_nan() && v.is_nan()),
                    "{} -> {}", text, got
                ),
                other => prop_assert!(false, "{} -> {:?}", text, other),
            }
        }
    }

    #[test]
    fn numerics_are_exact(
        negative in any::<bool>(),
        int in "[1-9][0-9]{0,40}|0",
        frac in proptest::option::of("[0-9]{1,30}"),
    ) {
        let mut text = String::new();
        if negative {
            text.push('-');
        }
        text.push_str(&int);
        if let Some(f) = &frac {
            text.push('.');
            text.push_str(f);
        }
        prop_assert_eq!(decoded(oid::NUMERIC, &text), Value::Numeric(Numeric(text.clone())));
    }

    #[test]
    fn dates_including_bc(days in -1_721_059i32..95_000_000) {
        // From 4713 BC (PostgreSQL's first year) to chrono's last.
        let Some(d) = NaiveDate::from_num_days_from_ce_opt(days) else {
            return Ok(());
        };
        let (date, era) = pg_date(d);
        prop_assert_eq!(decoded(oid::DATE, &format!("{date}{era}")), Value::Date(d));
    }

    #[test]
    fn timestamptz_with_any_offset(
        secs in -210_000_000_000i64..200_000_000_000,
        micros in 0u32..1_000_000,
        offset_minutes in -15 * 60i32..=15 * 60,
    ) {
        let utc = DateTime::<Utc>::from_timestamp(secs, micros * 1000).unwrap();
        let local = utc.naive_utc() + TimeDelta::minutes(i64::from(offset_minutes));
        let (date, era) = pg_date(local.date());
        let sign = if offset_minutes < 0 { '-' } else { '+' };
        let (oh, om) = (offset_minutes.abs() / 60, offset_minutes.abs() % 60);
        let offset = if om == 0 {
            format!("{sign}{oh:02}")
        } else {
            format!("{sign}{oh:02}:{om:02}")
        };
        let t = local.time();
        let text = format!(
            "{date} {}{offset}{era}",
            pg_time(t.hour(), t.minute(), t.second(), t.nanosecond() / 1000)
        );
        prop_assert_eq!(decoded(oid::TIMESTAMPTZ, &text), Value::TimestampTz(utc));
    }

    #[test]
    fn text_arrays_with_any_elements(elems in prop::collection::vec(proptest::option::of(".{0,8}"), 0..8)) {
        let literal = format!(
            "{{{}}}",
            elems
                .iter()
                .map(|e| e.as_deref().map_or("NULL".to_owned(), array_element))
                .collect::<Vec<_>>()
                .join(",")
        );
        let want = Value::Array(
            elems
                .iter()
                .map(|e| e.clone().map_or(Value::Null, Value::Text))
                .collect(),
        );
        prop_assert_eq!(decoded(1009, &literal), want);
    }

    #[test]
    fn json_documents(doc in json()) {
        let text = serde_json::to_string(&doc).unwrap();
        prop_assert_eq!(decoded(oid::JSONB, &text), Value::Json(doc.clone()));
        prop_assert_eq!(decoded(oid::JSON, &text), Value::Json(doc));
    }

    #[test]
    fn bytea_and_uuid(bytes in prop::collection::vec(any::<u8>(), 0..64), id in any::<u128>()) {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        prop_assert_eq!(decoded(oid::BYTEA, &format!("\\x{hex}")), Value::Bytea(bytes));
        let id = uuid::Uuid::from_u128(id);
        prop_assert_eq!(decoded(oid::UUID, &id.hyphenated().to_string()), Value::Uuid(id));
    }
}

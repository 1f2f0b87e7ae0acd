// One file of this length: the decoder's unit tests, one per message and type case.
use super::*;
use crate::value::{Interval, Numeric};
use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeZone};

/// Encodes pgoutput messages by hand.
#[derive(Default)]
struct Msg(Vec<u8>);

/// A tuple column for the encoder.
#[derive(Clone, Copy)]
enum Col<'a> {
    N,
    U,
    T(&'a str),
    B(&'a [u8]),
}

impl Msg {
    fn tag(t: u8) -> Self {
        Msg(vec![t])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn cstr(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    fn tuple(mut self, cols: &[Col<'_>]) -> Self {
        self = self.u16(cols.len() as u16);
        for c in cols {
            self = match *c {
                Col::N => self.u8(b'n'),
                Col::U => self.u8(b'u'),
                Col::T(s) => {
                    let mut m = self.u8(b't').i32(s.len() as i32);
                    m.0.extend_from_slice(s.as_bytes());
                    m
                }
                Col::B(b) => {
                    let mut m = self.u8(b'b').i32(b.len() as i32);
                    m.0.extend_from_slice(b);
                    m
                }
            };
        }
        self
    }
}

fn begin(final_lsn: u64, time: i64, xid: u32) -> Vec<u8> {
    Msg::tag(b'B').u64(final_lsn).i64(time).u32(xid).0
}

fn commit(commit_lsn: u64, end_lsn: u64, time: i64) -> Vec<u8> {
    Msg::tag(b'C')
        .u8(0)
        .u64(commit_lsn)
        .u64(end_lsn)
        .i64(time)
        .0
}

/// `(name, type oid, key)`.
fn relation(id: u32, schema: &str, table: &str, ident: u8, cols: &[(&str, u32, bool)]) -> Vec<u8> {
    let mut m = Msg::tag(b'R')
        .u32(id)
        .cstr(schema)
        .cstr(table)
        .u8(ident)
        .u16(cols.len() as u16);
    for &(name, oid, key) in cols {
        m = m.u8(u8::from(key)).cstr(name).u32(oid).i32(-1);
    }
    m.0
}

fn insert(id: u32, cols: &[Col<'_>]) -> Vec<u8> {
    Msg::tag(b'I').u32(id).u8(b'N').tuple(cols).0
}

fn update(id: u32, old: Option<(u8, &[Col<'_>])>, new: &[Col<'_>]) -> Vec<u8> {
    let mut m = Msg::tag(b'U').u32(id);
    if let Some((tag, cols)) = old {
        m = m.u8(tag).tuple(cols);
    }
    m.u8(b'N').tuple(new).0
}

fn delete(id: u32, tag: u8, cols: &[Col<'_>]) -> Vec<u8> {
    Msg::tag(b'D').u32(id).u8(tag).tuple(cols).0
}

fn truncate(options: u8, ids: &[u32]) -> Vec<u8> {
    let mut m = Msg::tag(b'T').u32(ids.len() as u32).u8(options);
    for &id in ids {
        m = m.u32(id);
    }
    m.0
}

fn logical_message(transactional: bool, lsn: u64, prefix: &str, content: &[u8]) -> Vec<u8> {
    let mut m = Msg::tag(b'M')
        .u8(u8::from(transactional))
        .u64(lsn)
        .cstr(prefix)
        .u32(content.len() as u32);
    m.0.extend_from_slice(content);
    m.0
}

fn type_msg(id: u32, schema: &str, name: &str) -> Vec<u8> {
    Msg::tag(b'Y').u32(id).cstr(schema).cstr(name).0
}

fn origin(lsn: u64, name: &str) -> Vec<u8> {
    Msg::tag(b'O').u64(lsn).cstr(name).0
}

fn decode_all(dec: &mut Decoder, msgs: &[Vec<u8>]) -> Vec<RawEvent> {
    let mut tx = TxInfo::default();
    let mut out = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        dec.decode(&mut tx, Lsn(100 + i as u64), m, &mut out)
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
    }
    out
}

/// Decodes one value of type `oid` from its text.
fn value_of(oid: u32, text: &str) -> Result<Value, DecodeError> {
    let mut dec = Decoder::new();
    let mut tx = TxInfo::default();
    let mut out = Vec::new();
    dec.decode(
        &mut tx,
        Lsn(1),
        &relation(1, "public", "t", b'd', &[("c", oid, false)]),
        &mut out,
    )?;
    dec.decode(&mut tx, Lsn(2), &insert(1, &[Col::T(text)]), &mut out)?;
    Ok(out.pop().unwrap().new.unwrap().values()[0].clone())
}

fn v(oid: u32, text: &str) -> Value {
    value_of(oid, text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn names(ns: &[&str]) -> Arc<[Arc<str>]> {
    ns.iter().map(|n| Arc::from(*n)).collect()
}

const USERS: u32 = 16384;

fn users_relation(ident: u8) -> Vec<u8> {
    relation(
        USERS,
        "public",
        "users",
        ident,
        &[
            ("id", oid::INT8, true),
            ("name", oid::TEXT, false),
            ("bio", oid::TEXT, false),
        ],
    )
}

#[test]
fn transaction_insert_and_tx_info() {
    let mut dec = Decoder::new();
    let mut tx = TxInfo::default();
    let mut out = Vec::new();
    // 2024-01-01 00:00:00 UTC = 757382400 s after 2000-01-01.
    let t = 757_382_400_000_000 + 123_456;
    assert_eq!(
        dec.decode(&mut tx, Lsn(10), &begin(0x500, t, 777), &mut out)
            .unwrap(),
        Decoded::Begin {
            final_lsn: Lsn(0x500),
            xid: 777
        }
    );
    assert_eq!(
        dec.decode(&mut tx, Lsn(11), &users_relation(b'd'), &mut out)
            .unwrap(),
        Decoded::Relation(USERS)
    );
    for i in 0..2 {
        let id = i.to_string();
        let r = dec
            .decode(
                &mut tx,
                Lsn(12 + i),
                &insert(USERS, &[Col::T(&id), Col::T("ann"), Col::N]),
                &mut out,
            )
            .unwrap();
        assert_eq!(r, Decoded::Rows(1));
    }
    assert_eq!(
        dec.decode(&mut tx, Lsn(20), &commit(0x500, 0x530, t), &mut out)
            .unwrap(),
        Decoded::Commit {
            commit_lsn: Lsn(0x500),
            end_lsn: Lsn(0x530)
        }
    );
    assert_eq!(tx.commit_lsn, Lsn(0x530));
    assert_eq!(out.len(), 2);
    let e = &out[1];
    assert_eq!(&*e.schema, "public");
    assert_eq!(&*e.table, "users");
    assert_eq!(e.kind, EventKind::Insert);
    assert_eq!(e.lsn, Lsn(13));
    assert_eq!(e.commit_lsn, Lsn(0x500));
    assert_eq!(e.xid, 777);
    assert_eq!(e.seq, 1);
    assert_eq!(out[0].seq, 0);
    let expected_time = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()
        + chrono::TimeDelta::microseconds(123_456);
    assert_eq!(e.commit_time, expected_time);
    let rec = e.new.as_ref().unwrap();
    assert_eq!(rec.get("id"), Some(&Value::Int8(1)));
    assert_eq!(rec.get("name"), Some(&Value::Text("ann".into())));
    assert_eq!(rec.get("bio"), Some(&Value::Null));
    assert!(e.old.is_none() && e.changes.is_none());
    assert_eq!(e.columns.len(), 3);
    assert!(e.columns[0].key && !e.columns[1].key);
    // Names are shared with the relation cache.
    let rel = dec.relation(USERS).unwrap();
    assert!(std::ptr::eq(rec.names().as_ptr(), rel.names.as_ptr()));
    assert!(Arc::ptr_eq(&e.columns, &rel.columns));
    assert!(Arc::ptr_eq(&e.table, &rel.table));

    tx.stamp(&mut out);
    assert!(out.iter().all(|e| e.commit_lsn == Lsn(0x530)));
}

#[test]
fn pg_epoch() {
    assert_eq!(
        pg_epoch_micros_to_utc(0),
        Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap()
    );
    assert_eq!(
        pg_epoch_micros_to_utc(-1),
        Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap()
            + chrono::TimeDelta::microseconds(999_999)
    );
    assert_eq!(pg_epoch_micros_to_utc(i64::MAX), DateTime::<Utc>::MAX_UTC);
    assert_eq!(pg_epoch_micros_to_utc(i64::MIN), DateTime::<Utc>::MIN_UTC);
}

#[test]
fn update_with_full_old_row_lists_changes_and_fills_toast() {
    let mut dec = Decoder::new();
    let out = decode_all(
        &mut dec,
        &[
            users_relation(b'f'),
            update(
                USERS,
                Some((b'O', &[Col::T("1"), Col::T("ann"), Col::T("long bio")])),
                &[Col::T("1"), Col::T("anne"), Col::U],
            ),
        ],
    );
    let e = &out[0];
    assert_eq!(e.kind, EventKind::Update);
    let new = e.new.as_ref().unwrap();
    assert_eq!(new.get("bio"), Some(&Value::Text("long bio".into())));
    assert_eq!(new.get("name"), Some(&Value::Text("anne".into())));
    let old = e.old.as_ref().unwrap();
    assert_eq!(old.len(), 3);
    assert_eq!(old.get("name"), Some(&Value::Text("ann".into())));
    let changes = e.changes.as_ref().unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        changes.get("name"),
        Some(&Change {
            old: Value::Text("ann".into()),
            new: Value::Text("anne".into())
        })
    );
}

#[test]
fn update_nan_is_not_a_change() {
    let mut dec = Decoder::new();
    let rel = relation(
        1,
        "s",
        "f",
        b'f',
        &[("x", oid::FLOAT8, false), ("y", oid::FLOAT8, false)],
    );
    let out = decode_all(
        &mut dec,
        &[
            rel,
            update(
                1,
                Some((b'O', &[Col::T("NaN"), Col::T("1")])),
                &[Col::T("NaN"), Col::T("2")],
            ),
        ],
    );
    let changes = out[0].changes.as_ref().unwrap();
    assert_eq!(changes.keys().map(|k| &**k).collect::<Vec<_>>(), ["y"]);
}

#[test]
fn update_without_old_row_keeps_unchanged_toast() {
    let mut dec = Decoder::new();
    let out = decode_all(
        &mut dec,
        &[
            users_relation(b'd'),
            update(USERS, None, &[Col::T("1"), Col::T("bob"), Col::U]),
        ],
    );
    let e = &out[0];
    assert_eq!(
        e.new.as_ref().unwrap().get("bio"),
        Some(&Value::UnchangedToast)
    );
    assert!(e.old.is_none());
    assert!(e.changes.is_none());
}

#[test]
fn update_with_key_old_tuple_gives_key_only_record() {
    let mut dec = Decoder::new();
    let out = decode_all(
        &mut dec,
        &[
            users_relation(b'd'),
            update(
                USERS,
                Some((b'K', &[Col::T("1"), Col::N, Col::N])),
                &[Col::T("2"), Col::T("bob"), Col::U],
            ),
        ],
    );
    let e = &out[0];
    let old = e.old.as_ref().unwrap();
    assert_eq!(old.names().iter().map(|n| &**n).collect::<Vec<_>>(), ["id"]);
    assert_eq!(old.values(), [Value::Int8(1)]);
    assert!(e.changes.is_none());
    assert_eq!(
        e.new.as_ref().unwrap().get("bio"),
        Some(&Value::UnchangedToast)
    );
}

#[test]
fn delete_key_and_full() {
    let mut dec = Decoder::new();
    let out = decode_all(
        &mut dec,
        &[
            users_relation(b'd'),
            delete(USERS, b'K', &[Col::T("7"), Col::N, Col::N]),
            delete(USERS, b'O', &[Col::T("8"), Col::T("x"), Col::N]),
        ],
    );
    assert_eq!(out[0].kind, EventKind::Delete);
    assert!(out[0].new.is_none());
    assert_eq!(out[0].old.as_ref().unwrap().values(), [Value::Int8(7)]);
    assert_eq!(out[0].record(), out[0].old.as_ref());
    let full = out[1].old.as_ref().unwrap();
    assert_eq!(
        full.values(),
        [Value::Int8(8), Value::Text("x".into()), Value::Null]
    );
}

#[test]
fn truncate_pushes_one_event_per_table() {
    let mut dec = Decoder::new();
    let mut tx = TxInfo::default();
    let mut out = Vec::new();
    dec.decode(&mut tx, Lsn(1), &users_relation(b'd'), &mut out)
        .unwrap();
    dec.decode(
        &mut tx,
        Lsn(2),
        &relation(5, "s", "posts", b'd', &[("id", oid::INT4, true)]),
        &mut out,
    )
    .unwrap();
    let r = dec
        .decode(
            &mut tx,
            Lsn(3),
            &truncate(TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY, &[USERS, 5]),
            &mut out,
        )
        .unwrap();
    assert_eq!(r, Decoded::Rows(2));
    assert_eq!(out.len(), 2);
    assert!(
        out.iter()
            .all(|e| e.kind == EventKind::Truncate && e.new.is_none() && e.old.is_none())
    );
    assert_eq!(&*out[1].table, "posts");
    assert_eq!((out[0].seq, out[1].seq), (0, 1));
    assert_eq!(
        parse_message(&truncate(3, &[USERS, 5])).unwrap(),
        PgOutputMessage::Truncate {
            options: 3,
            relation_ids: vec![USERS, 5]
        }
    );
    // Unknown relation in a truncate: error, nothing pushed.
    out.clear();
    assert_eq!(
        dec.decode(&mut tx, Lsn(4), &truncate(0, &[USERS, 99]), &mut out),
        Err(DecodeError::UnknownRelation(99))
    );
    assert!(out.is_empty());
}

#[test]
fn unknown_relation() {
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let err = dec
        .decode(
            &mut TxInfo::default(),
            Lsn(1),
            &insert(42, &[Col::T("1")]),
            &mut out,
        )
        .unwrap_err();
    assert_eq!(err, DecodeError::UnknownRelation(42));
    assert_eq!(
        err.to_string(),
        "pgoutput message refers to unknown relation id 42"
    );
}

#[test]
fn relation_redefinition_replaces_cache() {
    let mut dec = Decoder::new();
    let out = decode_all(
        &mut dec,
        &[
            relation(9, "public", "t", b'd', &[("a", oid::INT4, true)]),
            insert(9, &[Col::T("1")]),
            relation(
                9,
                "public",
                "t",
                b'd',
                &[("a", oid::INT4, true), ("b", oid::TEXT, false)],
            ),
            insert(9, &[Col::T("2"), Col::T("x")]),
        ],
    );
    assert_eq!(out[0].new.as_ref().unwrap().len(), 1);
    assert_eq!(
        out[1].new.as_ref().unwrap().get("b"),
        Some(&Value::Text("x".into()))
    );
    assert_eq!(dec.relation(9).unwrap().columns.len(), 2);
    // The old shape no longer fits.
    let mut outv = Vec::new();
    let err = dec
        .decode(
            &mut TxInfo::default(),
            Lsn(1),
            &insert(9, &[Col::T("3")]),
            &mut outv,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "table `public.t`: tuple has 1 columns, relation has 2"
    );
}

#[test]
fn type_origin_and_message() {
    let mut dec = Decoder::new();
    let mut tx = TxInfo::default();
    let mut out = Vec::new();
    assert_eq!(
        dec.decode(
            &mut tx,
            Lsn(1),
            &type_msg(50001, "public", "mood"),
            &mut out
        )
        .unwrap(),
        Decoded::Type(50001)
    );
    assert_eq!(dec.type_info(50001).unwrap().name, "mood");
    assert_eq!(
        dec.decode(&mut tx, Lsn(1), &origin(5, "node1"), &mut out)
            .unwrap(),
        Decoded::Origin
    );
    assert_eq!(
        parse_message(&origin(5, "node1")).unwrap(),
        PgOutputMessage::Origin {
            commit_lsn: Lsn(5),
            name: "node1"
        }
    );
    assert_eq!(
        dec.decode(
            &mut tx,
            Lsn(1),
            &logical_message(true, 77, "walflow", b"hello\0x"),
            &mut out
        )
        .unwrap(),
        Decoded::Message {
            transactional: true,
            lsn: Lsn(77),
            prefix: "walflow".into(),
            content: b"hello\0x".to_vec()
        }
    );
    assert!(out.is_empty());
    // Enum values are text.
    let mut dec = Decoder::new();
    let out = decode_all(
        &mut dec,
        &[
            relation(1, "public", "p", b'd', &[("m", 50001, false)]),
            insert(1, &[Col::T("happy")]),
        ],
    );
    assert_eq!(
        out[0].new.as_ref().unwrap().values(),
        [Value::Text("happy".into())]
    );
}

#[test]
fn binary_value_is_an_error() {
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let mut tx = TxInfo::default();
    dec.decode(&mut tx, Lsn(1), &users_relation(b'd'), &mut out)
        .unwrap();
    let err = dec
        .decode(
            &mut tx,
            Lsn(2),
            &insert(USERS, &[Col::T("1"), Col::B(b"\x00\x01"), Col::N]),
            &mut out,
        )
        .unwrap_err();
    assert!(matches!(err, DecodeError::BinaryValue { .. }));
    assert!(
        err.to_string()
            .starts_with("table `public.users`, column `name`: value in binary format"),
        "{err}"
    );
}

#[test]
fn scalar_types() {
    assert_eq!(v(oid::BOOL, "t"), Value::Bool(true));
    assert_eq!(v(oid::BOOL, "f"), Value::Bool(false));
    assert_eq!(v(oid::INT2, "-32768"), Value::Int2(i16::MIN));
    assert_eq!(v(oid::INT4, "2147483647"), Value::Int4(i32::MAX));
    assert_eq!(v(oid::INT8, "-9223372036854775808"), Value::Int8(i64::MIN));
    assert_eq!(v(oid::INT8, "9223372036854775807"), Value::Int8(i64::MAX));
    assert_eq!(v(oid::FLOAT4, "1.5"), Value::Float4(1.5));
    assert_eq!(v(oid::FLOAT4, "0.1"), Value::Float4(0.1));
    assert_eq!(
        v(oid::FLOAT8, "0.30000000000000004"),
        Value::Float8(0.1 + 0.2)
    );
    assert_eq!(v(oid::FLOAT8, "1e+300"), Value::Float8(1e300));
    assert_eq!(v(oid::FLOAT8, "Infinity"), Value::Float8(f64::INFINITY));
    assert_eq!(
        v(oid::FLOAT8, "-Infinity"),
        Value::Float8(f64::NEG_INFINITY)
    );
    assert!(matches!(v(oid::FLOAT8, "NaN"), Value::Float8(x) if x.is_nan()));
    assert!(matches!(v(oid::FLOAT4, "NaN"), Value::Float4(x) if x.is_nan()));
    assert_eq!(
        v(oid::FLOAT4, "-Infinity"),
        Value::Float4(f32::NEG_INFINITY)
    );
    let big = "123456789012345678901234567890.123456789";
    assert_eq!(v(oid::NUMERIC, big), Value::Numeric(Numeric(big.into())));
    assert_eq!(
        v(oid::NUMERIC, "-0.000100"),
        Value::Numeric(Numeric("-0.000100".into()))
    );
    assert_eq!(
        v(oid::NUMERIC, "NaN"),
        Value::Numeric(Numeric("NaN".into()))
    );
    assert_eq!(
        v(oid::NUMERIC, "-Infinity"),
        Value::Numeric(Numeric("-Infinity".into()))
    );
    for t in [oid::TEXT, oid::VARCHAR, oid::BPCHAR, oid::NAME] {
        assert_eq!(
            v(t, "héllo, \"wörld\"\\"),
            Value::Text("héllo, \"wörld\"\\".into())
        );
    }
    assert_eq!(v(oid::TEXT, ""), Value::Text(String::new()));
    assert_eq!(
        v(oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        Value::Uuid(uuid::Uuid::parse_str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap())
    );
    assert_eq!(
        v(oid::BYTEA, "\\x00ff10Ab"),
        Value::Bytea(vec![0, 0xff, 0x10, 0xab])
    );
    assert_eq!(v(oid::BYTEA, "\\x"), Value::Bytea(vec![]));
    assert_eq!(
        v(oid::JSONB, r#"{"a": [1, 2.5, null], "b": "x"}"#),
        Value::Json(serde_json::json!({"a": [1, 2.5, null], "b": "x"}))
    );
    assert_eq!(v(oid::JSON, "\"s\""), Value::Json(serde_json::json!("s")));
}

#[test]
fn date_time_types() {
    assert_eq!(
        v(oid::DATE, "2024-02-29"),
        Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap())
    );
    assert_eq!(v(oid::DATE, "infinity"), Value::Text("infinity".into()));
    assert_eq!(v(oid::DATE, "-infinity"), Value::Text("-infinity".into()));
    assert_eq!(
        v(oid::DATE, "0044-03-15 BC"),
        Value::Date(NaiveDate::from_ymd_opt(-43, 3, 15).unwrap())
    );
    // 1 BC is chrono's year 0, a leap year in both.
    assert_eq!(
        v(oid::DATE, "0001-02-29 BC"),
        Value::Date(NaiveDate::from_ymd_opt(0, 2, 29).unwrap())
    );
    assert_eq!(
        v(oid::DATE, "5874897-12-31"),
        Value::Text("5874897-12-31".into())
    );
    assert_eq!(
        v(oid::DATE, "12345-01-01"),
        Value::Date(NaiveDate::from_ymd_opt(12345, 1, 1).unwrap())
    );
    assert_eq!(
        v(oid::TIME, "13:14:15.123456"),
        Value::Time(NaiveTime::from_hms_micro_opt(13, 14, 15, 123_456).unwrap())
    );
    assert_eq!(v(oid::TIME, "00:00:00"), Value::Time(NaiveTime::MIN));
    assert_eq!(v(oid::TIME, "24:00:00"), Value::Text("24:00:00".into()));
    let ts = NaiveDateTime::new(
        NaiveDate::from_ymd_opt(2024, 1, 2).unwrap(),
        NaiveTime::from_hms_micro_opt(3, 4, 5, 120_000).unwrap(),
    );
    assert_eq!(
        v(oid::TIMESTAMP, "2024-01-02 03:04:05.12"),
        Value::Timestamp(ts)
    );
    assert_eq!(
        v(oid::TIMESTAMP, "infinity"),
        Value::Text("infinity".into())
    );
    assert_eq!(
        v(oid::TIMESTAMP, "0044-03-15 12:00:00 BC"),
        Value::Timestamp(
            NaiveDate::from_ymd_opt(-43, 3, 15)
                .unwrap()
                .and_hms_opt(12, 0, 0)
                .unwrap()
        )
    );
    let tstz = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()
        + chrono::TimeDelta::microseconds(123_456);
    assert_eq!(
        v(oid::TIMESTAMPTZ, "2024-01-02 03:04:05.123456+00"),
        Value::TimestampTz(tstz)
    );
    assert_eq!(
        v(oid::TIMESTAMPTZ, "2024-01-02 08:34:05.123456+05:30"),
        Value::TimestampTz(tstz)
    );
    assert_eq!(
        v(oid::TIMESTAMPTZ, "2024-01-01 22:04:05.123456-05"),
        Value::TimestampTz(tstz)
    );
    assert_eq!(
        v(oid::TIMESTAMPTZ, "1900-01-01 00:00:00+00:09:21"),
        Value::TimestampTz(Utc.with_ymd_and_hms(1899, 12, 31, 23, 50, 39).unwrap())
    );
    assert_eq!(
        v(oid::TIMESTAMPTZ, "-infinity"),
        Value::Text("-infinity".into())
    );
    assert_eq!(
        v(oid::TIMESTAMPTZ, "0001-01-01 00:00:00+00 BC"),
        Value::TimestampTz(
            NaiveDate::from_ymd_opt(0, 1, 1)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
        )
    );
    if let Value::TimestampTz(t) = v(oid::TIMESTAMPTZ, "2024-01-02 03:04:05.000001+00") {
        assert_eq!(t.timestamp_subsec_micros(), 1);
    } else {
        panic!("not a timestamptz");
    }
}

#[test]
fn intervals() {
    let iv = |months, days, microseconds| {
        Value::Interval(Interval {
            months,
            days,
            microseconds,
        })
    };
    assert_eq!(
        v(oid::INTERVAL, "P1Y2M3DT4H5M6.789S"),
        iv(14, 3, ((4 * 60 + 5) * 60 + 6) * 1_000_000 + 789_000)
    );
    assert_eq!(
        v(oid::INTERVAL, "P-1Y-2M3DT-4H-5M-6.789S"),
        iv(-14, 3, -(((4 * 60 + 5) * 60 + 6) * 1_000_000 + 789_000))
    );
    assert_eq!(v(oid::INTERVAL, "PT0S"), iv(0, 0, 0));
    assert_eq!(v(oid::INTERVAL, "P-5D"), iv(0, -5, 0));
    assert_eq!(v(oid::INTERVAL, "PT-0.000001S"), iv(0, 0, -1));
    assert_eq!(
        v(oid::INTERVAL, "PT1000000H"),
        iv(0, 0, 1_000_000 * 3_600_000_000)
    );
    assert_eq!(v(oid::INTERVAL, "infinity"), Value::Text("infinity".into()));
    for bad in ["1 day", "P", "PT", "P1H", "P1.5Y", "PT1X", "P1Y2", "PT.S"] {
        assert!(is_invalid(oid::INTERVAL, bad), "{bad}");
    }
}

#[test]
fn arrays() {
    let arr = Value::Array;
    assert_eq!(
        v(1007, "{1,2,NULL,-4}"),
        arr(vec![
            Value::Int4(1),
            Value::Int4(2),
            Value::Null,
            Value::Int4(-4)
        ])
    );
    assert_eq!(v(1007, "{}"), arr(vec![]));
    assert_eq!(
        v(1000, "{t,f}"),
        arr(vec![Value::Bool(true), Value::Bool(false)])
    );
    assert_eq!(v(1005, "{1}"), arr(vec![Value::Int2(1)]));
    assert_eq!(
        v(1016, "{9223372036854775807}"),
        arr(vec![Value::Int8(i64::MAX)])
    );
    let text = |s: &str| Value::Text(s.into());
    assert_eq!(
        v(
            1009,
            r#"{plain,"with space","quote \" and \\ backslash","NULL",NULL,"", trimmed ,"{x,y}"}"#
        ),
        arr(vec![
            text("plain"),
            text("with space"),
            text("quote \" and \\ backslash"),
            text("NULL"),
            Value::Null,
            text(""),
            text("trimmed"),
            text("{x,y}"),
        ])
    );
    assert_eq!(v(1015, "{a\\,b}"), arr(vec![text("a,b")]));
    assert_eq!(v(1014, r#"{"ab  "}"#), arr(vec![text("ab  ")]));
    assert_eq!(v(1003, "{pg_class}"), arr(vec![text("pg_class")]));
    assert_eq!(
        v(1007, "{{1,2},{3,4}}"),
        arr(vec![
            arr(vec![Value::Int4(1), Value::Int4(2)]),
            arr(vec![Value::Int4(3), Value::Int4(4)])
        ])
    );
    assert_eq!(
        v(1007, "[0:1]={5,6}"),
        arr(vec![Value::Int4(5), Value::Int4(6)])
    );
    let floats = v(1022, "{1.5,NaN,-Infinity}");
    let Value::Array(f) = &floats else { panic!() };
    assert_eq!(f[0], Value::Float8(1.5));
    assert!(matches!(f[1], Value::Float8(x) if x.is_nan()));
    assert_eq!(f[2], Value::Float8(f64::NEG_INFINITY));
    assert_eq!(v(1021, "{0.25}"), arr(vec![Value::Float4(0.25)]));
    assert_eq!(
        v(1231, "{1.10,NaN}"),
        arr(vec![
            Value::Numeric(Numeric("1.10".into())),
            Value::Numeric(Numeric("NaN".into()))
        ])
    );
    assert_eq!(
        v(2951, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"),
        arr(vec![Value::Uuid(
            uuid::Uuid::parse_str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap()
        )])
    );
    assert_eq!(
        v(1182, "{2024-01-02,infinity}"),
        arr(vec![
            Value::Date(NaiveDate::from_ymd_opt(2024, 1, 2).unwrap()),
            text("infinity")
        ])
    );
    assert_eq!(
        v(1183, "{10:00:00}"),
        arr(vec![Value::Time(
            NaiveTime::from_hms_opt(10, 0, 0).unwrap()
        )])
    );
    let ts = NaiveDate::from_ymd_opt(2024, 1, 2)
        .unwrap()
        .and_hms_opt(3, 4, 5)
        .unwrap();
    assert_eq!(
        v(1115, r#"{"2024-01-02 03:04:05"}"#),
        arr(vec![Value::Timestamp(ts)])
    );
    assert_eq!(
        v(1185, r#"{"2024-01-02 03:04:05+00",NULL}"#),
        arr(vec![Value::TimestampTz(ts.and_utc()), Value::Null])
    );
    assert_eq!(
        v(1187, "{P1D,PT-1S}"),
        arr(vec![
            Value::Interval(Interval {
                months: 0,
                days: 1,
                microseconds: 0
            }),
            Value::Interval(Interval {
                months: 0,
                days: 0,
                microseconds: -1_000_000
            })
        ])
    );
    assert_eq!(
        v(3807, r#"{"{\"a\": 1}","[1, \"x\"]",null}"#),
        arr(vec![
            Value::Json(serde_json::json!({"a": 1})),
            Value::Json(serde_json::json!([1, "x"])),
            Value::Null
        ])
    );
    assert_eq!(
        v(199, r#"{"\"s\""}"#),
        arr(vec![Value::Json(serde_json::json!("s"))])
    );
    assert_eq!(
        v(1001, r#"{"\\x0102",NULL}"#),
        arr(vec![Value::Bytea(vec![1, 2]), Value::Null])
    );
    // Arrays of unknown element types stay text.
    assert_eq!(v(50002, "{happy,sad}"), text("{happy,sad}"));
    for bad in [
        "",
        "{",
        "{1,2",
        "{1,,2}",
        "{1}x",
        "{\"1}",
        "{1,2}}",
        "{{{{{{{1}}}}}}}",
        "{a}",
        "1,2",
    ] {
        assert!(is_invalid(1007, bad), "{bad:?}");
    }
}

fn is_invalid(oid: u32, text: &str) -> bool {
    matches!(value_of(oid, text), Ok(Value::Invalid(_)))
}

/// The error a typed field of `oid` gets for `text`.
fn field_error(oid: u32, text: &str) -> String {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Row {
        c: serde_json::Value,
    }
    let record = Record::new(names(&["c"]), vec![value_of(oid, text).unwrap()]);
    record
        .deserialize_into::<Row>("public.t")
        .unwrap_err()
        .to_string()
}

#[test]
fn invalid_values_name_table_column_and_type() {
    // The event arrives; the value carries its type, text and reason.
    assert_eq!(
        value_of(oid::INT4, "12x").unwrap(),
        Value::Invalid(crate::value::InvalidValue {
            type_name: "int4".into(),
            text: "12x".into(),
            reason: "not an integer".into(),
        })
    );
    // A field that reads it fails, naming table, column, type and text.
    assert_eq!(
        field_error(oid::INT4, "12x"),
        "table `public.t`, column `c`: invalid int4 value \"12x\": not an integer"
    );
    let err = field_error(oid::TIMESTAMPTZ, "2024-13-01 00:00:00+00");
    assert!(
        err.starts_with("table `public.t`, column `c`: invalid timestamptz value"),
        "{err}"
    );
    let err = field_error(1007, "{1,x}");
    assert!(err.contains("invalid int4[] value"), "{err}");
    // Long text is cut in messages, kept whole in the value.
    let long = "9".repeat(300) + "x";
    let err = field_error(oid::INT8, &long);
    assert!(err.contains(&format!("\"{}…\"", "9".repeat(100))), "{err}");
    let Ok(Value::Invalid(i)) = value_of(oid::INT8, &long) else {
        panic!("invalid")
    };
    assert_eq!(i.text, long);
    // A struct that does not read the column is not bothered.
    #[derive(Debug, serde::Deserialize)]
    struct Other {
        #[serde(default)]
        d: Option<i64>,
    }
    let record = Record::new(names(&["c"]), vec![value_of(oid::INT4, "12x").unwrap()]);
    assert_eq!(
        record.deserialize_into::<Other>("public.t").unwrap().d,
        None
    );
    let cases: &[(u32, &str)] = &[
        (oid::BOOL, "yes"),
        (oid::INT2, "40000"),
        (oid::INT4, "2147483648"),
        (oid::INT8, "9223372036854775808"),
        (oid::INT8, ""),
        (oid::INT8, "-"),
        (oid::FLOAT8, "inf"),
        (oid::FLOAT8, "abc"),
        (oid::FLOAT4, ""),
        (oid::NUMERIC, "1e5"),
        (oid::NUMERIC, "."),
        (oid::NUMERIC, "abc"),
        (oid::UUID, "not-a-uuid"),
        (oid::DATE, "2024-02-30"),
        (oid::DATE, "24-01-01"),
        (oid::DATE, "2024-01-01x"),
        (oid::TIME, "25:00:00"),
        (oid::TIME, "10:00"),
        (oid::TIMESTAMP, "2024-01-01"),
        (oid::TIMESTAMP, "2024-01-01 00:00:00+00"),
        (oid::TIMESTAMPTZ, "2024-01-01 00:00:00"),
        (oid::TIMESTAMPTZ, "2024-01-01 00:00:00+0"),
        (oid::JSONB, "{"),
        (oid::BYTEA, "\\x0"),
        (oid::BYTEA, "\\xzz"),
        (oid::BYTEA, "abc"),
    ];
    for &(t, text) in cases {
        assert!(is_invalid(t, text), "{t} {text:?}: {:?}", value_of(t, text));
    }
    // Invalid UTF-8 in text.
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let mut tx = TxInfo::default();
    dec.decode(
        &mut tx,
        Lsn(1),
        &relation(1, "public", "t", b'd', &[("c", oid::TEXT, false)]),
        &mut out,
    )
    .unwrap();
    let mut m = Msg::tag(b'I').u32(1).u8(b'N').u16(1).u8(b't').i32(2);
    m.0.extend_from_slice(&[0xff, 0xfe]);
    dec.decode(&mut tx, Lsn(2), &m.0, &mut out).unwrap();
    let event = out.pop().unwrap();
    let invalid = event.new.as_ref().unwrap().values()[0].clone();
    assert_eq!(
        invalid,
        Value::Invalid(crate::value::InvalidValue {
            type_name: "text".into(),
            text: "\u{fffd}\u{fffd}".into(),
            reason: "not valid UTF-8".into(),
        })
    );
    assert_eq!(event.invalid_columns().len(), 1);
}

fn sample_messages() -> Vec<Vec<u8>> {
    vec![
        begin(1, 2, 3),
        commit(1, 2, 3),
        origin(9, "o"),
        users_relation(b'f'),
        type_msg(1, "s", "t"),
        insert(USERS, &[Col::T("1"), Col::N, Col::U]),
        update(
            USERS,
            Some((b'O', &[Col::T("1"), Col::T("a"), Col::N])),
            &[Col::T("1"), Col::T("b"), Col::U],
        ),
        update(
            USERS,
            Some((b'K', &[Col::T("1"), Col::N, Col::N])),
            &[Col::T("1"), Col::T("b"), Col::U],
        ),
        update(USERS, None, &[Col::T("1"), Col::T("b"), Col::N]),
        delete(USERS, b'K', &[Col::T("1"), Col::N, Col::N]),
        delete(USERS, b'O', &[Col::T("1"), Col::T("x"), Col::T("y")]),
        truncate(1, &[USERS, USERS]),
        logical_message(false, 5, "p", b"content"),
    ]
}

#[test]
fn truncated_and_garbage_input_gives_errors() {
    for msg in sample_messages() {
        assert!(parse_message(&msg).is_ok());
        for len in 0..msg.len() {
            let prefix = &msg[..len];
            let r = parse_message(prefix);
            assert!(r.is_err(), "prefix {len} of {msg:?} parsed: {r:?}");
            let mut dec = Decoder::new();
            let mut out = Vec::new();
            dec.decode(
                &mut TxInfo::default(),
                Lsn(1),
                &users_relation(b'f'),
                &mut out,
            )
            .unwrap();
            assert!(
                dec.decode(&mut TxInfo::default(), Lsn(1), prefix, &mut out)
                    .is_err()
            );
            assert!(out.is_empty());
        }
        // Trailing garbage.
        let mut long = msg.clone();
        long.push(0);
        assert!(parse_message(&long).is_err());
        // Every single-byte corruption: must not panic.
        for i in 0..msg.len() {
            for b in [0u8, 0x7f, 0xff, b'n', b't', b'u'] {
                let mut m = msg.clone();
                m[i] = b;
                let _ = parse_message(&m);
                let mut dec = Decoder::new();
                let mut out = Vec::new();
                let mut tx = TxInfo::default();
                let _ = dec.decode(&mut tx, Lsn(1), &users_relation(b'f'), &mut out);
                let _ = dec.decode(&mut tx, Lsn(1), &m, &mut out);
            }
        }
    }
    assert_eq!(parse_message(&[]), Err(DecodeError::Empty));
    assert_eq!(parse_message(b"Z"), Err(DecodeError::UnknownMessage(b'Z')));
    assert_eq!(
        parse_message(&begin(1, 2, 3)[..5]).unwrap_err().to_string(),
        "truncated pgoutput Begin message: final LSN missing"
    );
    // Huge counts do not allocate or panic.
    assert!(parse_message(&Msg::tag(b'T').u32(u32::MAX).u8(0).0).is_err());
    assert!(
        parse_message(
            &Msg::tag(b'R')
                .u32(1)
                .cstr("s")
                .cstr("t")
                .u8(b'd')
                .u16(0x7fff)
                .0
        )
        .is_err()
    );
    assert!(parse_message(&Msg::tag(b'I').u32(1).u8(b'N').u16(0xffff).0).is_err());
    assert!(parse_message(&Msg::tag(b'I').u32(1).u8(b'N').u16(1).u8(b't').i32(-1).0).is_err());
    assert!(
        parse_message(
            &Msg::tag(b'I')
                .u32(1)
                .u8(b'N')
                .u16(1)
                .u8(b't')
                .i32(i32::MAX)
                .0
        )
        .is_err()
    );
    assert!(parse_message(&Msg::tag(b'I').u32(1).u8(b'N').u16(1).u8(b'x').0).is_err());
    assert!(parse_message(&Msg::tag(b'D').u32(1).u8(b'N').u16(0).0).is_err());
    assert!(parse_message(&Msg::tag(b'M').u8(0).u64(0).cstr("p").u32(u32::MAX).0).is_err());
    // A pseudo-random fuzz pass over garbage.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let mut tx = TxInfo::default();
    dec.decode(&mut tx, Lsn(1), &users_relation(b'f'), &mut out)
        .unwrap();
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 40) as usize;
        let tag = b"BCORYIUDTMX"[(seed >> 8) as usize % 11];
        let mut m = vec![tag];
        let mut s = seed;
        for _ in 0..len {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            m.push((s >> 56) as u8);
        }
        let _ = dec.decode(&mut tx, Lsn(1), &m, &mut out);
    }
}

#[test]
fn garbage_values_never_panic() {
    let samples: &[&[u8]] = &[
        b"{1,2}",
        b"{\"a\\\"b\",NULL}",
        b"2024-01-02 03:04:05.123456+05:30",
        b"P1Y2M3DT4H5M6.789S",
        b"\\x0102",
        b"12:00:00.5",
        b"[1:2]={{1},{2}}",
    ];
    let oids = [
        oid::BOOL,
        oid::INT2,
        oid::INT8,
        oid::FLOAT4,
        oid::NUMERIC,
        oid::UUID,
        oid::DATE,
        oid::TIME,
        oid::TIMESTAMP,
        oid::TIMESTAMPTZ,
        oid::INTERVAL,
        oid::JSONB,
        oid::BYTEA,
        1007,
        1009,
        1185,
        1187,
    ];
    for s in samples {
        for len in 0..=s.len() {
            for &t in &oids {
                let _ = text::decode_text(t, &s[..len]);
                let mut m = s[..len].to_vec();
                for i in 0..m.len() {
                    let keep = m[i];
                    for b in [b'{', b'}', b'"', b'\\', b',', b'-', b'9', b'.', b'T', 0xff] {
                        m[i] = b;
                        let _ = text::decode_text(t, &m);
                    }
                    m[i] = keep;
                }
            }
        }
    }
}

#[test]
fn relation_message_parses() {
    let m = users_relation(b'f');
    let PgOutputMessage::Relation(r) = parse_message(&m).unwrap() else {
        panic!()
    };
    assert_eq!(
        (r.id, r.namespace, r.name, r.replica_identity),
        (USERS, "public", "users", b'f')
    );
    assert_eq!(r.columns.len(), 3);
    assert_eq!(r.columns[0].name, "id");
    assert_eq!(r.columns[0].flags, 1);
    assert_eq!(r.columns[2].type_oid, oid::TEXT);
    let mut dec = Decoder::new();
    decode_all(&mut dec, &[m]);
    let rel = dec.relation(USERS).unwrap();
    assert_eq!(rel.replica_identity, ReplicaIdentity::Full);
    assert_eq!(&*rel.key_names, [Arc::from("id")]);
    assert!(dec.relation(1).is_none());
}

#[test]
fn events_round_trip_through_json() {
    let mut dec = Decoder::new();
    let rel = relation(
        1,
        "public",
        "all_types",
        b'f',
        &[
            ("b", oid::BOOL, true),
            ("i2", oid::INT2, false),
            ("i8", oid::INT8, false),
            ("f4", oid::FLOAT4, false),
            ("f8", oid::FLOAT8, false),
            ("n", oid::NUMERIC, false),
            ("u", oid::UUID, false),
            ("d", oid::DATE, false),
            ("t", oid::TIME, false),
            ("ts", oid::TIMESTAMP, false),
            ("tz", oid::TIMESTAMPTZ, false),
            ("iv", oid::INTERVAL, false),
            ("j", oid::JSONB, false),
            ("by", oid::BYTEA, false),
            ("a", 1007, false),
            ("inf", oid::FLOAT8, false),
            ("e", 50001, false),
            ("nul", oid::TEXT, false),
        ],
    );
    let row = [
        Col::T("t"),
        Col::T("-3"),
        Col::T("9007199254740993"),
        Col::T("3.4028235e+38"),
        Col::T("-1.2345678901234567e-300"),
        Col::T("123456789012345678901234567890.123456789"),
        Col::T("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        Col::T("2024-01-02"),
        Col::T("13:14:15.000001"),
        Col::T("2024-01-02 03:04:05.999999"),
        Col::T("2024-01-02 03:04:05.123456+00"),
        Col::T("P-1Y2DT-3.5S"),
        Col::T(r#"{"k": [1, {"z": null}]}"#),
        Col::T("\\xdeadbeef"),
        Col::T("{{1,NULL},{3,4}}"),
        Col::T("-Infinity"),
        Col::T("happy"),
        Col::N,
    ];
    let mut row2 = row;
    row2[0] = Col::T("f");
    row2[15] = Col::T("Infinity");
    let events = decode_all(
        &mut dec,
        &[rel, insert(1, &row), update(1, Some((b'O', &row)), &row2)],
    );
    assert_eq!(events[1].changes.as_ref().unwrap().len(), 2);
    let json = serde_json::to_string(&events).unwrap();
    let back: Vec<RawEvent> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, events);
    // NaN does not equal itself: compare it separately.
    let nan = Record::new(
        names(&["x", "y"]),
        vec![Value::Float8(f64::NAN), Value::Float4(f32::NAN)],
    );
    let back: Record = serde_json::from_str(&serde_json::to_string(&nan).unwrap()).unwrap();
    assert!(
        matches!(back.values(), [Value::Float8(x), Value::Float4(y)] if x.is_nan() && y.is_nan())
    );
}

#[test]
fn json_that_postgresql_accepts_is_always_delivered() {
    let v = |oid: u32, s: &str| super::text::decode_text(oid, s.as_bytes()).unwrap();
    // A number beyond f64: its text.
    assert_eq!(
        v(oid::JSONB, r#"{"x": 1e400}"#),
        Value::Text(r#"{"x": 1e400}"#.to_owned())
    );
    // Deeper than serde_json's default limit of 128.
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let Value::Json(mut j) = v(oid::JSONB, &deep) else {
        panic!("jsonb")
    };
    let mut depth = 0;
    while let serde_json::Value::Array(mut a) = j {
        depth += 1;
        j = a.pop().unwrap();
    }
    assert_eq!((depth, j), (5000, serde_json::json!(1)));
    // A lone surrogate (kept by `json`): its original text.
    assert_eq!(
        v(oid::JSON, r#"{"s": "\ud800"}"#),
        Value::Text(r#"{"s": "\ud800"}"#.to_owned())
    );
}

#[test]
fn json_numbers_are_never_rounded() {
    let v = |s: &str| super::text::decode_text(oid::JSONB, s.as_bytes()).unwrap();
    let is_json = |s: &str| matches!(v(s), Value::Json(_));
    // Held exactly: as JSON.
    for exact in [
        r#"{"a": 0.1}"#,
        "[1E2, 2.50, -0, 0.0, 1e-7, 123456789.125]",
        "[9223372036854775807, -9223372036854775808, 18446744073709551615]",
        "1180591620717411303424",
        r#"{"s": "12345678901234567890123 in a string", "n": 1}"#,
        r#"["\"", "\\", 5]"#,
        // serde_json writes its `f64` back as `…565.2` (Rust's formatter
        // would choose `…565.3`, the other shortest form).
        "-1985492020740565.2",
    ] {
        assert!(is_json(exact), "{exact}");
    }
    // f64 would round: the text, exact.
    for rounded in [
        "12345678901234567890123",
        r#"{"pi": 3.14159265358979323846}"#,
        "[1, 18446744073709551617]",
        "0.10000000000000000001",
        "9007199254740993.0",
    ] {
        assert_eq!(v(rounded), Value::Text(rounded.to_owned()), "{rounded}");
    }
}

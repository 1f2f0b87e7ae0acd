//! Typed column values and records.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod de;

/// An exact `numeric` value, kept as PostgreSQL's text (never through `f64`).
///
/// Also holds `NaN`, `Infinity` and `-Infinity`. Deserializes into
/// `rust_decimal::Decimal`, `bigdecimal::BigDecimal` or `String` fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Numeric(pub String);

impl Numeric {
    /// The value as PostgreSQL prints it, e.g. `"12345.678900"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Numeric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A PostgreSQL `interval`, in its three independent parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Interval {
    /// Months (years are 12 months).
    pub months: i32,
    /// Days.
    pub days: i32,
    /// Microseconds (hours, minutes, seconds).
    pub microseconds: i64,
}

/// A `date`, `timestamp` or `timestamptz` that may be `infinity` or
/// `-infinity`: PostgreSQL's special values, which chrono cannot hold. A
/// plain chrono field fails on them (the error names the value and this
/// type); a `MaybeInfinite<NaiveDate>` (or `<NaiveDateTime>`,
/// `<DateTime<Utc>>`) field takes them.
///
/// ```
/// # use walflow_runtime::{MaybeInfinite, Record, Value};
/// # use std::sync::Arc;
/// #[derive(serde::Deserialize)]
/// struct Offer {
///     valid_until: MaybeInfinite<chrono::NaiveDate>,
/// }
/// let record = Record::new(
///     Arc::from(vec![Arc::from("valid_until")]),
///     vec![Value::Text("infinity".into())],
/// );
/// let offer: Offer = record.deserialize_into("offers").unwrap();
/// assert_eq!(offer.valid_until, MaybeInfinite::Infinity);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MaybeInfinite<T> {
    /// `-infinity`: before every other value.
    NegInfinity,
    /// A value chrono holds.
    Finite(T),
    /// `infinity`: after every other value.
    Infinity,
}

impl<T> MaybeInfinite<T> {
    /// The finite value, if it is one.
    pub fn finite(self) -> Option<T> {
        match self {
            MaybeInfinite::Finite(t) => Some(t),
            _ => None,
        }
    }
}

impl<'de, T> Deserialize<'de> for MaybeInfinite<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        match &*text {
            "infinity" => Ok(MaybeInfinite::Infinity),
            "-infinity" => Ok(MaybeInfinite::NegInfinity),
            other => other
                .parse()
                .map(MaybeInfinite::Finite)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl<T: Serialize> Serialize for MaybeInfinite<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MaybeInfinite::NegInfinity => s.serialize_str("-infinity"),
            MaybeInfinite::Finite(t) => t.serialize(s),
            MaybeInfinite::Infinity => s.serialize_str("infinity"),
        }
    }
}

/// A value whose text did not parse for its column's type
/// ([`Value::Invalid`]): the event still arrives, and only what needs this
/// value fails, with an error naming the table, the column, the type and
/// the text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InvalidValue {
    /// The SQL type name, e.g. `timestamptz`.
    pub type_name: String,
    /// The text PostgreSQL sent, whole (bytes that are not UTF-8 replaced
    /// by `U+FFFD`).
    pub text: String,
    /// Why it did not parse.
    pub reason: String,
}

impl InvalidValue {
    /// The text cut after 100 characters, for messages.
    pub fn text_truncated(&self) -> std::borrow::Cow<'_, str> {
        match self.text.char_indices().nth(100) {
            Some((i, _)) => format!("{}…", &self.text[..i]).into(),
            None => self.text.as_str().into(),
        }
    }
}

impl std::fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid {} value {:?}: {}",
            self.type_name,
            self.text_truncated(),
            self.reason
        )
    }
}

/// A column value decoded from the WAL, typed by the column's type OID.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// `bool`.
    Bool(bool),
    /// `int2` / `smallint`.
    Int2(i16),
    /// `int4` / `integer`.
    Int4(i32),
    /// `int8` / `bigint`.
    Int8(i64),
    /// `float4` / `real`.
    Float4(#[serde(with = "float_serde")] f32),
    /// `float8` / `double precision`.
    Float8(#[serde(with = "float_serde")] f64),
    /// `numeric`, exact.
    Numeric(Numeric),
    /// `text`, `varchar`, `bpchar`, `name`, enums and types without a
    /// dedicated variant (their text form).
    Text(String),
    /// `uuid`.
    Uuid(Uuid),
    /// `date`.
    Date(NaiveDate),
    /// `time` (microseconds kept).
    Time(NaiveTime),
    /// `timestamp` without time zone (microseconds kept).
    Timestamp(NaiveDateTime),
    /// `timestamptz` (microseconds kept).
    TimestampTz(DateTime<Utc>),
    /// `interval`.
    Interval(Interval),
    /// `json` / `jsonb`, at any nesting depth. A JSON `null` is
    /// `Json(Null)` (and `Some(..)` in an `Option` field); only SQL `NULL`
    /// is [`Value::Null`]. Numbers are never rounded: integers that fit
    /// `i64`/`u64` are exact, other numbers are `f64`s that print back as
    /// written (`0.1`, `1E2`). What serde_json cannot hold exactly arrives
    /// as its original JSON text in [`Value::Text`] instead (the stream
    /// never stops for a value): a number beyond `f64` such as `1e400`, one
    /// `f64` would round (`12345678901234567890123`,
    /// `3.14159265358979323846`), and a lone surrogate escape such as
    /// `"\ud800"` (which `json` keeps as written). Parse that text with
    /// serde_json's `arbitrary_precision` feature when you need the
    /// numbers.
    Json(serde_json::Value),
    /// `bytea`.
    Bytea(Vec<u8>),
    /// An array of one of the above (`NULL` elements allowed). A
    /// multi-dimensional array (up to PostgreSQL's 6 dimensions) nests:
    /// `{{1,2},{3,4}}` is an `Array` of two `Array`s, which deserializes
    /// into `Vec<Vec<i32>>`; explicit lower bounds (`[0:1]={1,2}`) are not
    /// kept.
    Array(Vec<Value>),
    /// A TOASTed value the update did not change, on a table without
    /// `REPLICA IDENTITY FULL`: PostgreSQL did not send it and there is no
    /// old row to take it from. Never present on tables with full identity
    /// (the default walflow sets up).
    UnchangedToast,
    /// A value whose text did not parse for its type (for instance text
    /// that is not UTF-8 from a `SQL_ASCII` database). The stream never
    /// stops for a value: the event carries this instead, and whatever
    /// needs the column fails with an error naming the table, the column,
    /// the type and the text — a typed field ([`RecordError`]), or a query
    /// operator's id (the event is dead-lettered). Fields a struct does not
    /// declare are not read, so an event whose invalid column nobody reads
    /// is delivered as usual.
    Invalid(InvalidValue),
}

/// A row: column names (shared by every row of a relation) and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    names: Arc<[Arc<str>]>,
    values: Vec<Value>,
}

impl Record {
    /// A record from column names and their values (same length).
    pub fn new(names: Arc<[Arc<str>]>, values: Vec<Value>) -> Self {
        debug_assert_eq!(names.len(), values.len());
        Record { names, values }
    }

    /// The value of column `name`, if the record has that column.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.names
            .iter()
            .position(|n| &**n == name)
            .map(|i| &self.values[i])
    }

    /// Column names, in table order.
    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    /// Values, in table order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// `(name, value)` pairs in table order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.names.iter().map(|n| &**n).zip(self.values.iter())
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the record has no columns.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.values.len()))?;
        for (name, value) in self.iter() {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RecordVisitor;
        impl<'de> serde::de::Visitor<'de> for RecordVisitor {
            type Value = Record;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of column names to values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Record, A::Error> {
                let mut names = Vec::with_capacity(map.size_hint().unwrap_or(0));
                let mut values = Vec::with_capacity(names.capacity());
                while let Some((name, value)) = map.next_entry::<Arc<str>, Value>()? {
                    names.push(name);
                    values.push(value);
                }
                Ok(Record::new(names.into(), values))
            }
        }
        d.deserialize_map(RecordVisitor)
    }
}

/// A record did not deserialize into the application's struct.
///
/// Names the table, the column at fault (when known) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("table `{table}`{}: {message}", column.as_ref().map(|c| format!(", column `{c}`")).unwrap_or_default())]
pub struct RecordError {
    /// The table the record belongs to.
    pub table: String,
    /// The column whose value did not fit, when known.
    pub column: Option<String>,
    /// What went wrong, e.g. `invalid type: string "x", expected i64`.
    pub message: String,
}

impl Record {
    /// Deserializes the record into `T` (usually the struct marked
    /// `#[event_source]`). `table` is named in the error.
    ///
    /// Reads the record directly (no intermediate JSON) and honours serde
    /// attributes. Column values map to serde as follows:
    ///
    /// | value                         | serde                                              |
    /// |-------------------------------|----------------------------------------------------|
    /// | `Null`, `UnchangedToast`      | none / unit                                        |
    /// | `Bool`, `Int2/4/8`, `Float4/8`| bool, i16/i32/i64 (range-checked into other ints), f32/f64 |
    /// | `Numeric`                     | string (for `Decimal`, `BigDecimal`, `String`); also read by integer and float fields when it fits |
    /// | `Text`                        | string; unit variant name for enum fields          |
    /// | `Uuid`                        | hyphenated string                                  |
    /// | `Date`, `Time`                | `2024-01-02`, `03:04:05.123456`                    |
    /// | `Timestamp`                   | `2024-01-02T03:04:05.123456` (`NaiveDateTime`)     |
    /// | `TimestampTz`                 | `2024-01-02T03:04:05.123456Z` (`DateTime<Utc>`)    |
    /// | `Interval`                    | map `{months, days, microseconds}`                 |
    /// | `Json`                        | the JSON value itself (any `Deserialize` type)     |
    /// | `Bytea`                       | bytes (`serde_bytes`), or a sequence of `u8` (`Vec<u8>`) |
    /// | `Array`                       | sequence                                           |
    ///
    /// ```
    /// use std::sync::Arc;
    /// use walflow_runtime::{Record, Value};
    ///
    /// #[derive(Debug, serde::Deserialize)]
    /// #[allow(dead_code)]
    /// struct Comment {
    ///     post_id: i64,
    ///     body: Option<String>,
    /// }
    ///
    /// let names: Arc<[Arc<str>]> = vec![Arc::from("post_id"), Arc::from("body")].into();
    /// let record = Record::new(names, vec![Value::Text("abc".into()), Value::Null]);
    /// let err = record.deserialize_into::<Comment>("comments").unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "table `comments`, column `post_id`: invalid type: string \"abc\", expected i64"
    /// );
    /// ```
    pub fn deserialize_into<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
    ) -> Result<T, RecordError> {
        T::deserialize(de::RecordDeserializer(self)).map_err(|e| RecordError {
            table: table.to_owned(),
            column: e.column,
            message: e.message,
        })
    }
}

impl Value {
    /// The value as plain JSON (numbers, strings, arrays; dates and times as
    /// ISO 8601 text, bytea as an array of bytes, numeric as text, an
    /// invalid value as the text PostgreSQL sent).
    pub fn to_plain_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null | Value::UnchangedToast => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int2(v) => J::from(*v),
            Value::Int4(v) => J::from(*v),
            Value::Int8(v) => J::from(*v),
            Value::Float4(v) => J::from(*v),
            Value::Float8(v) => J::from(*v),
            Value::Numeric(n) => J::String(n.0.clone()),
            Value::Text(s) => J::String(s.clone()),
            Value::Uuid(u) => J::String(u.to_string()),
            Value::Date(d) => J::String(d.to_string()),
            Value::Time(t) => J::String(t.to_string()),
            Value::Timestamp(t) => J::String(t.format("%Y-%m-%dT%H:%M:%S%.f").to_string()),
            Value::TimestampTz(t) => {
                J::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            }
            Value::Interval(i) => serde_json::to_value(i).unwrap_or(J::Null),
            Value::Json(j) => j.clone(),
            Value::Bytea(b) => J::Array(b.iter().map(|x| J::from(*x)).collect()),
            Value::Array(a) => J::Array(a.iter().map(Value::to_plain_json).collect()),
            // What PostgreSQL sent.
            Value::Invalid(i) => J::String(i.text.clone()),
        }
    }
}

/// Floats serialize as numbers, except `NaN`, `Infinity` and `-Infinity`,
/// which human-readable formats (JSON) cannot hold as numbers: those are
/// strings there, so queued values round-trip exactly.
mod float_serde {
    use serde::{Deserializer, Serializer, de};

    pub(super) trait Float: Copy + Sized {
        fn is_finite(self) -> bool;
        fn is_nan(self) -> bool;
        fn is_sign_positive(self) -> bool;
        fn from_f64(v: f64) -> Self;
        fn serialize<S: Serializer>(self, s: S) -> Result<S::Ok, S::Error>;
        fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
            v: FloatVisitor<Self>,
        ) -> Result<Self, D::Error>;
    }

    macro_rules! float {
        ($t:ty, $ser:ident, $de:ident) => {
            impl Float for $t {
                fn is_finite(self) -> bool {
                    <$t>::is_finite(self)
                }
                fn is_nan(self) -> bool {
                    <$t>::is_nan(self)
                }
                fn is_sign_positive(self) -> bool {
                    <$t>::is_sign_positive(self)
                }
                fn from_f64(v: f64) -> Self {
                    v as $t
                }
                fn serialize<S: Serializer>(self, s: S) -> Result<S::Ok, S::Error> {
                    s.$ser(self)
                }
                fn deserialize<'de, D: Deserializer<'de>>(
                    d: D,
                    v: FloatVisitor<Self>,
                ) -> Result<Self, D::Error> {
                    if d.is_human_readable() {
                        // JSON reports strings to `deserialize_any` only.
                        d.deserialize_any(v)
                    } else {
                        d.$de(v)
                    }
                }
            }
        };
    }
    float!(f32, serialize_f32, deserialize_f32);
    float!(f64, serialize_f64, deserialize_f64);

    pub(super) fn serialize<T: Float, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        let v = *v;
        if v.is_finite() || !s.is_human_readable() {
            v.serialize(s)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if v.is_sign_positive() {
            s.serialize_str("Infinity")
        } else {
            s.serialize_str("-Infinity")
        }
    }

    pub(super) fn deserialize<'de, T: Float, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        T::deserialize(d, FloatVisitor(std::marker::PhantomData))
    }

    pub(super) struct FloatVisitor<T>(std::marker::PhantomData<T>);

    impl<T: Float> de::Visitor<'_> for FloatVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a number, \"NaN\", \"Infinity\" or \"-Infinity\"")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
            Ok(T::from_f64(v))
        }
        fn visit_f32<E: de::Error>(self, v: f32) -> Result<T, E> {
            Ok(T::from_f64(f64::from(v)))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            Ok(T::from_f64(v as f64))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            Ok(T::from_f64(v as f64))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            match v {
                "NaN" => Ok(T::from_f64(f64::NAN)),
                "Infinity" => Ok(T::from_f64(f64::INFINITY)),
                "-Infinity" => Ok(T::from_f64(f64::NEG_INFINITY)),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
    }
}

#[cfg(test)]
mod tests;

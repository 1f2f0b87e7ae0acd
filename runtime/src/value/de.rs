//! A serde `Deserializer` reading a [`Record`] directly (no JSON round trip).

use std::fmt::{self, Write as _};

use serde::de::value::{BorrowedStrDeserializer, MapDeserializer};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::forward_to_deserialize_any;

use super::{Record, Value};

/// Error of the record deserializer: a message and the column it concerns.
#[derive(Debug)]
pub(crate) struct DeError {
    pub(crate) column: Option<String>,
    pub(crate) message: String,
}

impl DeError {
    fn in_column(mut self, column: &str) -> Self {
        if self.column.is_none() {
            self.column = Some(column.to_owned());
        }
        self
    }

    fn json(e: serde_json::Error) -> Self {
        DeError {
            column: None,
            message: e.to_string(),
        }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            column: None,
            message: msg.to_string(),
        }
    }

    /// A unit comes only from SQL `NULL` (a JSON `null` inside a `json`
    /// column is reported by serde_json): say so.
    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let message = match unexp {
            de::Unexpected::Unit => format!("NULL, expected {exp}"),
            other => format!("invalid type: {other}, expected {exp}"),
        };
        DeError {
            column: None,
            message,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError {
            column: Some(field.to_owned()),
            message: format!("missing field `{field}`"),
        }
    }
}

/// A field that does not take one of PostgreSQL's special date and time
/// values, which arrive as text: the error says which value it was and
/// what takes it.
fn hint(mut e: DeError, text: &str) -> DeError {
    let alternative = match text {
        "infinity" | "-infinity" => "`walflow::MaybeInfinite<…>` or `String`",
        "24:00:00" => "`String` (chrono has no 24:00:00)",
        _ => return e,
    };
    e.message = format!(
        "{} (the value is PostgreSQL's `{text}`; read it as {alternative})",
        e.message
    );
    e
}

/// Deserializes a whole record as a map of column names to values.
pub(crate) struct RecordDeserializer<'a>(pub(crate) &'a Record);

impl<'de> de::Deserializer<'de> for RecordDeserializer<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_map(RecordMap {
            names: self.0.names.iter(),
            values: self.0.values.iter(),
            current: None,
        })
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn is_human_readable(&self) -> bool {
        true
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct RecordMap<'de> {
    names: std::slice::Iter<'de, std::sync::Arc<str>>,
    values: std::slice::Iter<'de, Value>,
    current: Option<(&'de str, &'de Value)>,
}

impl<'de> MapAccess<'de> for RecordMap<'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match (self.names.next(), self.values.next()) {
            (Some(name), Some(value)) => {
                self.current = Some((name, value));
                seed.deserialize(BorrowedStrDeserializer::new(name))
                    .map(Some)
                    .map_err(|e: DeError| e.in_column(name))
            }
            _ => Ok(None),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, DeError> {
        let (name, value) = self
            .current
            .take()
            .ok_or_else(|| <DeError as de::Error>::custom("value requested before key"))?;
        seed.deserialize(ValueDeserializer(value))
            .map_err(|e| e.in_column(name))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.values.len())
    }
}

/// A small stack buffer for formatting dates and UUIDs without allocating.
struct StackStr {
    buf: [u8; 64],
    len: usize,
}

impl StackStr {
    fn new() -> Self {
        StackStr {
            buf: [0; 64],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        // Only whole `&str`s are written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Formats a value with `args` and visits it as a string.
fn visit_formatted<'de, V: Visitor<'de>>(
    visitor: V,
    args: fmt::Arguments<'_>,
) -> Result<V::Value, DeError> {
    let mut s = StackStr::new();
    if s.write_fmt(args).is_ok() {
        visitor.visit_str(s.as_str())
    } else {
        visitor.visit_string(fmt::format(args))
    }
}

/// Deserializes one value.
struct ValueDeserializer<'de>(&'de Value);

impl<'de> IntoDeserializer<'de, DeError> for ValueDeserializer<'de> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

/// Forwards to the JSON value's own deserializer when the value is JSON.
macro_rules! json_or {
    ($self:ident . $method:ident ( $($arg:expr),* ) else $fallback:expr) => {
        match $self.0 {
            Value::Json(j) => j.$method($($arg),*).map_err(DeError::json),
            _ => $fallback,
        }
    };
}

/// Integer methods: numeric text is parsed, JSON forwarded, others as-is.
macro_rules! de_int {
    ($($method:ident $ty:ty => $visit:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            match self.0 {
                Value::Json(j) => j.$method(visitor).map_err(DeError::json),
                Value::Numeric(n) => match n.0.parse::<$ty>() {
                    Ok(v) => visitor.$visit(v),
                    Err(_) => visitor.visit_str(&n.0),
                },
                _ => self.deserialize_any(visitor),
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for ValueDeserializer<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Null | Value::UnchangedToast => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int2(v) => visitor.visit_i16(*v),
            Value::Int4(v) => visitor.visit_i32(*v),
            Value::Int8(v) => visitor.visit_i64(*v),
            Value::Float4(v) => visitor.visit_f32(*v),
            Value::Float8(v) => visitor.visit_f64(*v),
            Value::Numeric(n) => visitor.visit_borrowed_str(&n.0),
            Value::Text(s) => visitor.visit_borrowed_str(s).map_err(|e| hint(e, s)),
            Value::Uuid(u) => {
                let mut buf = uuid::Uuid::encode_buffer();
                visitor.visit_str(u.hyphenated().encode_lower(&mut buf))
            }
            Value::Date(d) => visit_formatted(visitor, format_args!("{}", d.format("%Y-%m-%d"))),
            Value::Time(t) => visit_formatted(visitor, format_args!("{}", t.format("%H:%M:%S%.f"))),
            Value::Timestamp(t) => visit_formatted(
                visitor,
                format_args!("{}", t.format("%Y-%m-%dT%H:%M:%S%.f")),
            ),
            Value::TimestampTz(t) => visit_formatted(
                visitor,
                format_args!("{}", t.format("%Y-%m-%dT%H:%M:%S%.fZ")),
            ),
            Value::Interval(i) => visitor.visit_map(MapDeserializer::new(
                [
                    ("months", i64::from(i.months)),
                    ("days", i64::from(i.days)),
                    ("microseconds", i.microseconds),
                ]
                .into_iter(),
            )),
            Value::Json(j) => j.deserialize_any(visitor).map_err(DeError::json),
            Value::Bytea(b) => {
                visitor.visit_seq(de::value::SeqDeserializer::new(b.iter().copied()))
            }
            Value::Array(a) => visitor.visit_seq(de::value::SeqDeserializer::new(
                a.iter().map(ValueDeserializer),
            )),
            Value::Invalid(i) => Err(DeError {
                column: None,
                message: i.to_string(),
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            // Only SQL NULL is `None`: a JSON `null` is a value (as sqlx
            // reads it, `Some(Value::Null)`).
            Value::Null | Value::UnchangedToast => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        json_or!(self.deserialize_unit(visitor) else self.deserialize_any(visitor))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        json_or!(self.deserialize_unit_struct(name, visitor) else self.deserialize_any(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        json_or!(self.deserialize_newtype_struct(name, visitor) else visitor.visit_newtype_struct(self))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        json_or!(self.deserialize_bool(visitor) else self.deserialize_any(visitor))
    }

    de_int! {
        deserialize_i8 i8 => visit_i8,
        deserialize_i16 i16 => visit_i16,
        deserialize_i32 i32 => visit_i32,
        deserialize_i64 i64 => visit_i64,
        deserialize_i128 i128 => visit_i128,
        deserialize_u8 u8 => visit_u8,
        deserialize_u16 u16 => visit_u16,
        deserialize_u32 u32 => visit_u32,
        deserialize_u64 u64 => visit_u64,
        deserialize_u128 u128 => visit_u128,
        deserialize_f32 f32 => visit_f32,
        deserialize_f64 f64 => visit_f64,
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        json_or!(self.deserialize_char(visitor) else self.deserialize_any(visitor))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        json_or!(self.deserialize_str(visitor) else self.deserialize_any(visitor))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        json_or!(self.deserialize_string(visitor) else self.deserialize_any(visitor))
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Bytea(b) => visitor.visit_borrowed_bytes(b),
            Value::Json(j) => j.deserialize_bytes(visitor).map_err(DeError::json),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Bytea(b) => visitor.visit_byte_buf(b.clone()),
            Value::Json(j) => j.deserialize_byte_buf(visitor).map_err(DeError::json),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        json_or!(self.deserialize_seq(visitor) else self.deserialize_any(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        json_or!(self.deserialize_tuple(len, visitor) else self.deserialize_any(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        json_or!(self.deserialize_tuple_struct(name, len, visitor) else self.deserialize_any(visitor))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        json_or!(self.deserialize_map(visitor) else self.deserialize_any(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        json_or!(self.deserialize_struct(name, fields, visitor) else self.deserialize_any(visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self.0 {
            // PostgreSQL enums arrive as text: unit variants by name.
            Value::Text(s) => visitor.visit_enum(BorrowedStrDeserializer::new(s)),
            Value::Json(j) => j
                .deserialize_enum(name, variants, visitor)
                .map_err(DeError::json),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        json_or!(self.deserialize_identifier(visitor) else self.deserialize_any(visitor))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        true
    }
}

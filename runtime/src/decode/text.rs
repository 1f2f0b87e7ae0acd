// One file of this length: one small parser per PostgreSQL type's text form, a table read top to bottom.
//! Text form of column values → [`Value`], by type OID.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};

use crate::value::{Interval, Numeric, Value};

/// OIDs of the types with a dedicated decoding (arrays of them too).
pub mod oid {
    /// `bool`.
    pub const BOOL: u32 = 16;
    /// `bytea`.
    pub const BYTEA: u32 = 17;
    /// `name`.
    pub const NAME: u32 = 19;
    /// `int8`.
    pub const INT8: u32 = 20;
    /// `int2`.
    pub const INT2: u32 = 21;
    /// `int4`.
    pub const INT4: u32 = 23;
    /// `text`.
    pub const TEXT: u32 = 25;
    /// `json`.
    pub const JSON: u32 = 114;
    /// `float4`.
    pub const FLOAT4: u32 = 700;
    /// `float8`.
    pub const FLOAT8: u32 = 701;
    /// `bpchar`.
    pub const BPCHAR: u32 = 1042;
    /// `varchar`.
    pub const VARCHAR: u32 = 1043;
    /// `date`.
    pub const DATE: u32 = 1082;
    /// `time`.
    pub const TIME: u32 = 1083;
    /// `timestamp`.
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamptz`.
    pub const TIMESTAMPTZ: u32 = 1184;
    /// `interval`.
    pub const INTERVAL: u32 = 1186;
    /// `numeric`.
    pub const NUMERIC: u32 = 1700;
    /// `uuid`.
    pub const UUID: u32 = 2950;
    /// `jsonb`.
    pub const JSONB: u32 = 3802;
}

/// The element type of the array types decoded element-wise.
pub(crate) fn array_element(array_oid: u32) -> Option<u32> {
    Some(match array_oid {
        1000 => oid::BOOL,
        1005 => oid::INT2,
        1007 => oid::INT4,
        1016 => oid::INT8,
        1021 => oid::FLOAT4,
        1022 => oid::FLOAT8,
        1231 => oid::NUMERIC,
        1009 => oid::TEXT,
        1015 => oid::VARCHAR,
        1014 => oid::BPCHAR,
        1003 => oid::NAME,
        2951 => oid::UUID,
        1182 => oid::DATE,
        1183 => oid::TIME,
        1115 => oid::TIMESTAMP,
        1185 => oid::TIMESTAMPTZ,
        1187 => oid::INTERVAL,
        199 => oid::JSON,
        3807 => oid::JSONB,
        1001 => oid::BYTEA,
        _ => return None,
    })
}

/// The SQL name of a type OID, for error messages.
pub(crate) fn type_name(type_oid: u32) -> String {
    let name = match type_oid {
        oid::BOOL => "bool",
        oid::BYTEA => "bytea",
        oid::NAME => "name",
        oid::INT8 => "int8",
        oid::INT2 => "int2",
        oid::INT4 => "int4",
        oid::TEXT => "text",
        oid::JSON => "json",
        oid::FLOAT4 => "float4",
        oid::FLOAT8 => "float8",
        oid::BPCHAR => "bpchar",
        oid::VARCHAR => "varchar",
        oid::DATE => "date",
        oid::TIME => "time",
        oid::TIMESTAMP => "timestamp",
        oid::TIMESTAMPTZ => "timestamptz",
        oid::INTERVAL => "interval",
        oid::NUMERIC => "numeric",
        oid::UUID => "uuid",
        oid::JSONB => "jsonb",
        other => {
            return match array_element(other) {
                Some(elem) => format!("{}[]", type_name(elem)),
                None => format!("type with OID {other}"),
            };
        }
    };
    name.to_owned()
}

/// Why a value did not parse (the caller adds table, column and type).
pub(crate) type Reason = &'static str;

/// Decodes the text form `s` of a value of type `type_oid`.
pub(crate) fn decode_text(type_oid: u32, s: &[u8]) -> Result<Value, Reason> {
    Ok(match type_oid {
        oid::BOOL => Value::Bool(parse_bool(s)?),
        oid::INT2 => Value::Int2(
            parse_i64(s)?
                .try_into()
                .map_err(|_| "out of range for int2")?,
        ),
        oid::INT4 => Value::Int4(
            parse_i64(s)?
                .try_into()
                .map_err(|_| "out of range for int4")?,
        ),
        oid::INT8 => Value::Int8(parse_i64(s)?),
        oid::FLOAT4 => Value::Float4(parse_f32(s)?),
        oid::FLOAT8 => Value::Float8(parse_f64(s)?),
        oid::NUMERIC => Value::Numeric(Numeric(parse_numeric(s)?.to_owned())),
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => Value::Text(utf8(s)?.to_owned()),
        oid::UUID => Value::Uuid(uuid::Uuid::try_parse_ascii(s).map_err(|_| "not a UUID")?),
        oid::DATE => parse_date_value(s)?,
        oid::TIME => parse_time_value(s)?,
        oid::TIMESTAMP => parse_timestamp_value(s, false)?,
        oid::TIMESTAMPTZ => parse_timestamp_value(s, true)?,
        oid::INTERVAL => match s {
            b"infinity" | b"-infinity" => Value::Text(utf8(s)?.to_owned()),
            _ => Value::Interval(parse_interval(s)?),
        },
        oid::JSON | oid::JSONB => parse_json(s)?,
        oid::BYTEA => Value::Bytea(parse_bytea(s)?),
        other => match array_element(other) {
            Some(elem) => parse_array(elem, s)?,
            None => Value::Text(utf8(s)?.to_owned()),
        },
    })
}

fn utf8(s: &[u8]) -> Result<&str, Reason> {
    std::str::from_utf8(s).map_err(|_| "not valid UTF-8")
}

fn parse_bool(s: &[u8]) -> Result<bool, Reason> {
    match s {
        b"t" | b"true" => Ok(true),
        b"f" | b"false" => Ok(false),
        _ => Err("expected `t` or `f`"),
    }
}

fn parse_i64(s: &[u8]) -> Result<i64, Reason> {
    let (neg, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, s),
    };
    if digits.is_empty() {
        return Err("not an integer");
    }
    let mut v: i64 = 0;
    for &c in digits {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return Err("not an integer");
        }
        let d = i64::from(d);
        v = v
            .checked_mul(10)
            .and_then(|v| {
                if neg {
                    v.checked_sub(d)
                } else {
                    v.checked_add(d)
                }
            })
            .ok_or("integer out of range")?;
    }
    Ok(v)
}

/// Checks that `s` looks like a decimal float (Rust's parser also accepts
/// `inf`/`nan` spellings PostgreSQL never prints).
fn float_text(s: &[u8]) -> Result<&str, Reason> {
    if s.is_empty()
        || !s
            .iter()
            .all(|&c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'))
    {
        return Err("not a number");
    }
    utf8(s)
}

fn parse_f64(s: &[u8]) -> Result<f64, Reason> {
    match s {
        b"NaN" => Ok(f64::NAN),
        b"Infinity" => Ok(f64::INFINITY),
        b"-Infinity" => Ok(f64::NEG_INFINITY),
        _ => float_text(s)?.parse().map_err(|_| "not a number"),
    }
}

fn parse_f32(s: &[u8]) -> Result<f32, Reason> {
    match s {
        b"NaN" => Ok(f32::NAN),
        b"Infinity" => Ok(f32::INFINITY),
        b"-Infinity" => Ok(f32::NEG_INFINITY),
        _ => float_text(s)?.parse().map_err(|_| "not a number"),
    }
}

fn parse_numeric(s: &[u8]) -> Result<&str, Reason> {
    const BAD: Reason = "not a numeric";
    match s {
        b"NaN" | b"Infinity" | b"-Infinity" => return utf8(s),
        _ => {}
    }
    let digits = match s {
        [b'-' | b'+', rest @ ..] => rest,
        _ => s,
    };
    let (int, frac) = match digits.iter().position(|&c| c == b'.') {
        Some(i) => (&digits[..i], &digits[i + 1..]),
        None => (digits, &[][..]),
    };
    if int.is_empty() && frac.is_empty() {
        return Err(BAD);
    }
    if !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    utf8(s)
}

fn parse_bytea(s: &[u8]) -> Result<Vec<u8>, Reason> {
    let hex = s
        .strip_prefix(b"\\x")
        .ok_or("expected hex format `\\x…` (bytea_output=hex)")?;
    if hex.len() % 2 != 0 {
        return Err("odd number of hex digits");
    }
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(h), Some(l)) => out.push((h << 4) | l),
            _ => return Err("invalid hex digit"),
        }
    }
    Ok(out)
}

/// A cursor over the bytes of a date/time literal.
struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8, reason: Reason) -> Result<(), Reason> {
        if self.eat(c) { Ok(()) } else { Err(reason) }
    }

    /// Exactly `n` digits.
    fn fixed(&mut self, n: usize, reason: Reason) -> Result<u32, Reason> {
        let d = self.s.get(self.pos..self.pos + n).ok_or(reason)?;
        let mut v = 0u32;
        for &c in d {
            if !c.is_ascii_digit() {
                return Err(reason);
            }
            v = v * 10 + u32::from(c - b'0');
        }
        self.pos += n;
        Ok(v)
    }

    /// One or more digits (at most 9).
    fn number(&mut self, reason: Reason) -> Result<u32, Reason> {
        let start = self.pos;
        let mut v = 0u32;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            if self.pos - start == 9 {
                return Err(reason);
            }
            v = v * 10 + u32::from(c - b'0');
            self.pos += 1;
        }
        if self.pos == start {
            Err(reason)
        } else {
            Ok(v)
        }
    }

    fn done(&self) -> bool {
        self.pos == self.s.len()
    }
}

const BAD_DATE: Reason = "not a date (expected YYYY-MM-DD)";
const BAD_TIME: Reason = "not a time (expected HH:MM:SS[.ffffff])";

/// `YYYY-MM-DD` (a date of a text ending in ` BC` in year `1 - YYYY`:
/// PostgreSQL's BC years are proleptic Gregorian like chrono's, 1 BC being
/// chrono's year 0); `Ok(None)` for a valid-looking date chrono cannot hold
/// (years beyond its range).
fn date_part(c: &mut Cursor<'_>) -> Result<Option<NaiveDate>, Reason> {
    let bc = c.s.ends_with(b" BC");
    let start = c.pos;
    let year = c.number(BAD_DATE)?;
    if c.pos - start < 4 {
        return Err(BAD_DATE);
    }
    c.expect(b'-', BAD_DATE)?;
    let month = c.fixed(2, BAD_DATE)?;
    c.expect(b'-', BAD_DATE)?;
    let day = c.fixed(2, BAD_DATE)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err("date out of range");
    }
    let year = i32::try_from(year).map_err(|_| "date out of range")?;
    let year = if bc { 1 - year } else { year };
    match NaiveDate::from_ymd_opt(year, month, day) {
        Some(d) => Ok(Some(d)),
        None if year > 9999 || bc => Ok(None),
        None => Err("date out of range"),
    }
}

/// `HH:MM:SS[.f…]`; `Ok(None)` for `24:00:00`.
fn time_part(c: &mut Cursor<'_>) -> Result<Option<NaiveTime>, Reason> {
    let h = c.fixed(2, BAD_TIME)?;
    c.expect(b':', BAD_TIME)?;
    let m = c.fixed(2, BAD_TIME)?;
    c.expect(b':', BAD_TIME)?;
    let s = c.fixed(2, BAD_TIME)?;
    let mut nanos = 0u32;
    if c.eat(b'.') {
        let start = c.pos;
        let frac = c.number(BAD_TIME)?;
        let digits = (c.pos - start) as u32;
        nanos = frac * 10u32.pow(9 - digits);
    }
    if h == 24 && m == 0 && s == 0 && nanos == 0 {
        return Ok(None);
    }
    if h > 23 || m > 59 || s > 59 {
        return Err("time out of range");
    }
    NaiveTime::from_hms_nano_opt(h, m, s, nanos)
        .map(Some)
        .ok_or("time out of range")
}

fn literal(s: &[u8]) -> Result<Value, Reason> {
    Ok(Value::Text(utf8(s)?.to_owned()))
}

fn is_infinity(s: &[u8]) -> bool {
    matches!(s, b"infinity" | b"-infinity")
}

fn parse_date_value(s: &[u8]) -> Result<Value, Reason> {
    if is_infinity(s) {
        return literal(s);
    }
    let mut c = Cursor { s, pos: 0 };
    let d = date_part(&mut c)?;
    if &s[c.pos..] == b" BC" {
        c.pos += 3;
    }
    if !c.done() {
        return Err(BAD_DATE);
    }
    match d {
        Some(d) => Ok(Value::Date(d)),
        None => literal(s),
    }
}

fn parse_time_value(s: &[u8]) -> Result<Value, Reason> {
    let mut c = Cursor { s, pos: 0 };
    let t = time_part(&mut c)?;
    if !c.done() {
        return Err(BAD_TIME);
    }
    match t {
        Some(t) => Ok(Value::Time(t)),
        None => literal(s),
    }
}

fn parse_timestamp_value(s: &[u8], tz: bool) -> Result<Value, Reason> {
    const BAD: Reason = "not a timestamp (expected YYYY-MM-DD HH:MM:SS[.ffffff])";
    const BAD_TZ: Reason = "not a timestamptz (expected YYYY-MM-DD HH:MM:SS[.ffffff]+HH[:MM[:SS]])";
    if is_infinity(s) {
        return literal(s);
    }
    let mut c = Cursor { s, pos: 0 };
    let d = date_part(&mut c)?;
    if !(c.eat(b' ') || c.eat(b'T')) {
        return Err(if tz { BAD_TZ } else { BAD });
    }
    let t = time_part(&mut c)?;
    let mut offset_secs: i64 = 0;
    if tz {
        let sign = match c.peek() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            Some(b'Z') if c.s.len() == c.pos + 1 => {
                c.pos += 1;
                0
            }
            _ => return Err(BAD_TZ),
        };
        if sign != 0 {
            c.pos += 1;
            let h = c.fixed(2, BAD_TZ)?;
            let mut m = 0;
            let mut sec = 0;
            if c.eat(b':') {
                m = c.fixed(2, BAD_TZ)?;
                if c.eat(b':') {
                    sec = c.fixed(2, BAD_TZ)?;
                }
            }
            if m > 59 || sec > 59 {
                return Err(BAD_TZ);
            }
            offset_secs = sign * i64::from(h * 3600 + m * 60 + sec);
        }
    }
    if &s[c.pos..] == b" BC" {
        c.pos += 3;
    }
    if !c.done() {
        return Err(if tz { BAD_TZ } else { BAD });
    }
    let (Some(d), Some(t)) = (d, t) else {
        return literal(s);
    };
    let naive = NaiveDateTime::new(d, t);
    if !tz {
        return Ok(Value::Timestamp(naive));
    }
    match naive.checked_sub_signed(chrono::TimeDelta::seconds(offset_secs)) {
        Some(utc) => Ok(Value::TimestampTz(utc.and_utc())),
        None => literal(s),
    }
}

/// Parses PostgreSQL's ISO 8601 interval output (`intervalstyle=iso_8601`),
/// e.g. `P1Y2M3DT4H5M6.789S`, `P-1Y-2M3DT-4H-5M-6.789S`, `PT0S`.
pub(crate) fn parse_interval(s: &[u8]) -> Result<Interval, Reason> {
    const BAD: Reason =
        "not an ISO 8601 interval (expected e.g. P1Y2M3DT4H5M6.789S; intervalstyle=iso_8601)";
    const RANGE: Reason = "interval out of range";
    let mut c = Cursor { s, pos: 0 };
    c.expect(b'P', BAD)?;
    if c.done() {
        return Err(BAD);
    }
    let (mut months, mut days, mut micros) = (0i64, 0i64, 0i64);
    let mut in_time = false;
    while !c.done() {
        if c.eat(b'T') {
            if in_time || c.done() {
                return Err(BAD);
            }
            in_time = true;
            continue;
        }
        let neg = if c.eat(b'-') {
            true
        } else {
            c.eat(b'+');
            false
        };
        let start = c.pos;
        let mut int: i64 = 0;
        while let Some(d @ b'0'..=b'9') = c.peek() {
            int = int
                .checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(d - b'0')))
                .ok_or(RANGE)?;
            c.pos += 1;
        }
        let mut frac_micros: i64 = 0;
        let mut has_frac = false;
        if c.eat(b'.') {
            has_frac = true;
            let mut scale = 100_000;
            while let Some(d @ b'0'..=b'9') = c.peek() {
                frac_micros += i64::from(d - b'0') * scale;
                scale /= 10;
                c.pos += 1;
            }
        }
        if c.pos == start || (has_frac && c.pos == start + 1) {
            return Err(BAD);
        }
        let designator = c.peek().ok_or(BAD)?;
        c.pos += 1;
        if has_frac && !(in_time && designator == b'S') {
            return Err(BAD);
        }
        let sign = if neg { -1 } else { 1 };
        let (target, factor, extra) = match (in_time, designator) {
            (false, b'Y') => (&mut months, 12, 0),
            (false, b'M') => (&mut months, 1, 0),
            (false, b'W') => (&mut days, 7, 0),
            (false, b'D') => (&mut days, 1, 0),
            (true, b'H') => (&mut micros, 3_600_000_000, 0),
            (true, b'M') => (&mut micros, 60_000_000, 0),
            (true, b'S') => (&mut micros, 1_000_000, frac_micros),
            _ => return Err(BAD),
        };
        let part = int
            .checked_mul(factor)
            .and_then(|v| v.checked_add(extra))
            .and_then(|v| v.checked_mul(sign))
            .ok_or(RANGE)?;
        *target = target.checked_add(part).ok_or(RANGE)?;
    }
    Ok(Interval {
        months: i32::try_from(months).map_err(|_| RANGE)?,
        days: i32::try_from(days).map_err(|_| RANGE)?,
        microseconds: micros,
    })
}

/// Parses an array literal (`{1,2,NULL}`, `{"a \"b\"",c}`, `{{1,2},{3,4}}`,
/// `[0:1]={1,2}`) whose elements have type `elem`.
pub(crate) fn parse_array(elem: u32, s: &[u8]) -> Result<Value, Reason> {
    let mut c = Cursor { s, pos: 0 };
    if c.peek() == Some(b'[') {
        // Dimension decoration, present when a lower bound is not 1.
        let eq = s
            .iter()
            .position(|&b| b == b'=')
            .ok_or("malformed array dimensions")?;
        c.pos = eq + 1;
    }
    let mut scratch = Vec::new();
    let v = array_level(elem, &mut c, &mut scratch, 0)?;
    skip_ws(&mut c);
    if !c.done() {
        return Err("trailing characters after array");
    }
    Ok(v)
}

fn skip_ws(c: &mut Cursor<'_>) {
    while matches!(
        c.peek(),
        Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
    ) {
        c.pos += 1;
    }
}

fn array_level(
    elem: u32,
    c: &mut Cursor<'_>,
    scratch: &mut Vec<u8>,
    depth: u32,
) -> Result<Value, Reason> {
    const BAD: Reason = "malformed array literal";
    if depth >= 6 {
        return Err("array has more than 6 dimensions");
    }
    skip_ws(c);
    c.expect(b'{', BAD)?;
    let mut items = Vec::new();
    skip_ws(c);
    if c.eat(b'}') {
        return Ok(Value::Array(items));
    }
    loop {
        skip_ws(c);
        match c.peek().ok_or(BAD)? {
            b'{' => items.push(array_level(elem, c, scratch, depth + 1)?),
            b'"' => {
                c.pos += 1;
                let start = c.pos;
                let mut escaped = false;
                loop {
                    match c.peek().ok_or(BAD)? {
                        b'"' => break,
                        b'\\' => {
                            escaped = true;
                            c.pos += 2;
                        }
                        _ => c.pos += 1,
                    }
                }
                let raw = &c.s[start..c.pos];
                c.pos += 1;
                let text = if escaped {
                    unescape(raw, scratch);
                    &scratch[..]
                } else {
                    raw
                };
                items.push(decode_text(elem, text)?);
            }
            _ => {
                let start = c.pos;
                let mut escaped = false;
                loop {
                    match c.peek().ok_or(BAD)? {
                        b',' | b'}' => break,
                        b'{' | b'"' => return Err(BAD),
                        b'\\' => {
                            escaped = true;
                            c.pos += 2;
                        }
                        _ => c.pos += 1,
                    }
                }
                let mut raw = &c.s[start..c.pos.min(c.s.len())];
                while let [rest @ .., b' ' | b'\t' | b'\n' | b'\r'] = raw {
                    raw = rest;
                }
                if !escaped && raw.eq_ignore_ascii_case(b"NULL") {
                    items.push(Value::Null);
                } else if escaped {
                    unescape(raw, scratch);
                    items.push(decode_text(elem, scratch)?);
                } else {
                    items.push(decode_text(elem, raw)?);
                }
            }
        }
        skip_ws(c);
        match c.peek().ok_or(BAD)? {
            b',' => c.pos += 1,
            b'}' => {
                c.pos += 1;
                return Ok(Value::Array(items));
            }
            _ => return Err(BAD),
        }
    }
}

fn unescape(raw: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut it = raw.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            if let Some(&n) = it.next() {
                out.push(n);
            }
        } else {
            out.push(b);
        }
    }
}

/// A `json` / `jsonb` value PostgreSQL accepted, at any depth (the stack
/// grows as needed). What serde_json cannot represent exactly arrives as
/// the original JSON text in [`Value::Text`] rather than stopping the
/// stream or being rounded: a number beyond `f64` (`1e400`), a number
/// `f64` would round (more digits than it keeps, such as
/// `12345678901234567890123` or `3.14159265358979323846`), and a lone
/// surrogate escape (`"\ud800"`, which `json` keeps as written).
fn parse_json(s: &[u8]) -> Result<Value, Reason> {
    use serde::Deserialize;
    let mut de = serde_json::Deserializer::from_slice(s);
    de.disable_recursion_limit();
    let parsed = serde_json::Value::deserialize(serde_stacker::Deserializer::new(&mut de))
        .and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(v) if numbers_exact(s) => Ok(Value::Json(v)),
        Ok(_) => Ok(Value::Text(utf8(s)?.to_owned())),
        Err(e) if unrepresentable(&e) => Ok(Value::Text(utf8(s)?.to_owned())),
        Err(_) => Err("invalid JSON"),
    }
}

/// Whether every number of the (valid) JSON text `s` is held exactly by
/// serde_json: an integer that fits `i64` or `u64` or whose `f64` is
/// exactly it, or a number whose `f64` prints back as the same decimal
/// (`0.1`, `1E2`, `2.50`).
fn numbers_exact(s: &[u8]) -> bool {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'"' => {
                i += 1;
                while i < s.len() && s[i] != b'"' {
                    i += if s[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < s.len() && matches!(s[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                // Valid JSON: the token is ASCII.
                let token = std::str::from_utf8(&s[start..i]).unwrap_or("");
                if !number_exact(token) {
                    return false;
                }
            }
            _ => i += 1,
        }
    }
    true
}

fn number_exact(token: &str) -> bool {
    // What serde_json holds for the token, as serde_json writes it back (its
    // own parser and printer: Rust's may choose another of two shortest
    // forms of one `f64`, such as `…565.3` for serde_json's `…565.2`).
    let Ok(number) = serde_json::from_str::<serde_json::Number>(token) else {
        return false;
    };
    let token = decimal(token);
    if token == decimal(&number.to_string()) {
        return true;
    }
    // An integer beyond `u64` whose `f64` is exactly it (2^70 prints
    // shorter, as 1.1805916207174113e21).
    let integer = token
        .as_ref()
        .is_some_and(|(_, _, exponent)| *exponent >= 0);
    integer
        && number
            .as_f64()
            .is_some_and(|f| token == decimal(&format!("{f:.0}")))
}

/// A decimal number as `(negative, digits, exponent)`: `digits × 10^exponent`,
/// digits without leading or trailing zeros (zero: no digits, sign ignored);
/// `None` for an exponent beyond `i64`.
fn decimal(text: &str) -> Option<(bool, String, i64)> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut exponent = exponent.checked_sub(frac.len() as i64)?;
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let trimmed = digits.trim_end_matches('0');
    exponent = exponent.checked_add((digits.len() - trimmed.len()) as i64)?;
    if trimmed.is_empty() {
        return Some((false, String::new(), 0));
    }
    Some((negative, trimmed.to_owned(), exponent))
}

/// Whether serde_json refused valid JSON for want of a representation.
fn unrepresentable(e: &serde_json::Error) -> bool {
    let text = e.to_string();
    // serde_json reports a lone surrogate as a surrogate or hex escape
    // error, depending on what follows it.
    text.contains("surrogate")
        || text.contains("hex escape")
        || text.contains("number out of range")
}

//! Positions in the WAL: log sequence numbers ([`Lsn`]) and the position
//! of one change ([`Position`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A position in PostgreSQL's write-ahead log.
///
/// Displayed and parsed in PostgreSQL's own `16/B374D848` form (two hexadecimal
/// halves), ordered like the WAL itself. `Lsn::ZERO` is "no position".
///
/// ```
/// use walflow_runtime::Lsn;
/// let lsn: Lsn = "16/B374D848".parse().unwrap();
/// assert_eq!(lsn.to_string(), "16/B374D848");
/// assert_eq!(u64::from(lsn), 0x16_B374_D848);
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The zero position.
    pub const ZERO: Lsn = Lsn(0);

    /// The position as a plain integer (byte offset in the WAL).
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(v: Lsn) -> Self {
        v.0
    }
}

impl From<walflow_pgwire_replication::Lsn> for Lsn {
    fn from(v: walflow_pgwire_replication::Lsn) -> Self {
        Lsn(v.as_u64())
    }
}

impl From<Lsn> for walflow_pgwire_replication::Lsn {
    fn from(v: Lsn) -> Self {
        walflow_pgwire_replication::Lsn::from_u64(v.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

/// The text could not be read as an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid LSN `{0}`: expected two hexadecimal numbers separated by `/`, such as `16/B374D848`"
)]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// A stable identifier of one change: the LSN of its transaction's commit
/// record and its index within the transaction.
///
/// What [`Event::id`](crate::Event::id) returns: the same on every delivery
/// of the change (retries, a replayed dead letter, a redelivery after a
/// crash) and on every node, so it serves as an idempotency key (see
/// there). Ordered like the WAL (commit order, then order within the
/// transaction). To skip changes already applied, record the ids applied
/// (a unique column) rather than only the highest: the events of one id run
/// in commit order, but a replayed dead letter comes after later events.
///
/// Displayed as `16/B374D848#3` (the commit LSN as PostgreSQL writes it,
/// `#`, the index in decimal; at most 28 characters), the SSE and
/// CloudEvents `id` of the change; [`FromStr`] reads that form back.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// LSN of the enclosing transaction's commit record (the `commit_lsn`
    /// of PostgreSQL's Commit message, just before its `end_lsn`).
    pub commit_lsn: Lsn,
    /// Index of the change within its transaction, from 0.
    pub seq: u32,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.commit_lsn, self.seq)
    }
}

/// The text could not be read as a [`Position`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid position `{0}`: expected an LSN, `#` and the change's index, such as `16/B374D848#3`"
)]
pub struct ParsePositionError(String);

impl FromStr for Position {
    type Err = ParsePositionError;

    /// Reads the [`Display`](fmt::Display) form, `16/B374D848#3`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePositionError(s.to_owned());
        let (lsn, seq) = s.split_once('#').ok_or_else(err)?;
        Ok(Position {
            commit_lsn: lsn.parse().map_err(|_| err())?,
            seq: seq.parse().map_err(|_| err())?,
        })
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            u64::deserialize(d).map(Lsn)
        }
    }
}

/// Stored as a `bigint` (walflow's tables; PostgreSQL's `pg_lsn` is
/// unsigned, a `bigint` orders the same below 2⁶³).
impl sqlx::Type<sqlx::Postgres> for Lsn {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <i64 as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for Lsn {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <i64 as sqlx::Encode<sqlx::Postgres>>::encode(self.0 as i64, buf)
    }
}

impl sqlx::Decode<'_, sqlx::Postgres> for Lsn {
    fn decode(value: sqlx::postgres::PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(Lsn(
            <i64 as sqlx::Decode<sqlx::Postgres>>::decode(value)? as u64
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_postgres_form() {
        for s in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/1"] {
            let lsn: Lsn = s.parse().unwrap();
            assert_eq!(lsn.to_string(), s);
        }
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("/1".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
        assert!("123456789/0".parse::<Lsn>().is_err());
        assert!(Lsn(1) < Lsn(0x1_0000_0000));
    }

    #[test]
    fn serializes_as_text_in_json() {
        let lsn: Lsn = "1/2A".parse().unwrap();
        let json = serde_json::to_string(&lsn).unwrap();
        assert_eq!(json, "\"1/2A\"");
        assert_eq!(serde_json::from_str::<Lsn>(&json).unwrap(), lsn);
    }
}

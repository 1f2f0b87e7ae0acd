//! pgoutput decoding.

use chrono::{DateTime, Utc};

use crate::lsn::Lsn;
use crate::raw::RawEvent;

/// Session settings the listener pins so values arrive in the text forms the
/// decoder reads.
pub const SESSION_OPTIONS: &str = "-c datestyle=ISO,MDY -c intervalstyle=iso_8601 -c timezone=UTC -c extra_float_digits=3 -c bytea_output=hex";

/// The transaction a change belongs to.
#[derive(Debug, Clone)]
pub struct TxInfo {
    /// Commit LSN.
    pub commit_lsn: Lsn,
    /// Commit time.
    pub commit_time: DateTime<Utc>,
    /// Transaction id.
    pub xid: u32,
    /// Next change index.
    pub next_seq: u32,
}

/// A pgoutput message could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

/// Stateful pgoutput decoder.
#[derive(Debug, Default)]
pub struct Decoder {}

impl Decoder {
    /// A decoder with no relations known.
    pub fn new() -> Self {
        Decoder {}
    }

    /// Decodes one payload.
    pub fn decode(
        &mut self,
        _tx: &mut TxInfo,
        _lsn: Lsn,
        _data: &[u8],
        _out: &mut Vec<RawEvent>,
    ) -> Result<(), DecodeError> {
        Ok(())
    }
}

/// Converts microseconds since 2000-01-01 UTC.
pub fn pg_epoch_micros_to_utc(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros + 946_684_800_000_000).unwrap_or_default()
}

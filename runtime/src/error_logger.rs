//! The error-logger hook (EventStreamex's `error_logger_adapter`): what an
//! operator's retries and final failures are reported to.

use std::time::Duration;

/// What an [`ErrorLogger`] is told when an operator failed and will be
/// retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryInfo<'a> {
    /// Name of the operator.
    pub operator: &'a str,
    /// Table of the event the operator failed on.
    pub table: &'a str,
    /// Primary key of the row, rendered as text.
    pub id: String,
    /// Which attempt failed, starting at 1.
    pub attempt: u32,
    /// The configured [`max_retries`](crate::Config::max_retries).
    pub max_retries: u32,
    /// How long the operator waits before the next attempt.
    pub next_wait: Duration,
    /// The error, rendered as text.
    pub error: String,
}

/// What an [`ErrorLogger`] is told when an operator failed for the last time
/// and its event is given up.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureInfo<'a> {
    /// Name of the operator.
    pub operator: &'a str,
    /// Table of the event the operator failed on.
    pub table: &'a str,
    /// Primary key of the row, rendered as text.
    pub id: String,
    /// The number of the last attempt.
    pub attempt: u32,
    /// The configured [`max_retries`](crate::Config::max_retries).
    pub max_retries: u32,
    /// The last error, rendered as text.
    pub error: String,
}

/// Receives operator failures (EventStreamex's `error_logger_adapter`).
pub trait ErrorLogger: Send + Sync + 'static {
    /// An operator failed and will be retried after `info.next_wait`.
    fn log_retry(&self, info: &RetryInfo<'_>);
    /// An operator failed and will not be retried.
    fn log_failed(&self, info: &FailureInfo<'_>);
}

/// The default [`ErrorLogger`]: retries are logged with `tracing` at `warn`
/// level, final failures at `error` level.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingErrorLogger;

impl ErrorLogger for TracingErrorLogger {
    fn log_retry(&self, info: &RetryInfo<'_>) {
        tracing::warn!(
            operator = info.operator,
            table = info.table,
            id = %info.id,
            attempt = info.attempt,
            max_retries = info.max_retries,
            next_wait_ms = info.next_wait.as_millis() as u64,
            error = %crate::text::Escaped(&info.error),
            "operator failed, retrying"
        );
    }

    fn log_failed(&self, info: &FailureInfo<'_>) {
        tracing::error!(
            operator = info.operator,
            table = info.table,
            id = %info.id,
            attempt = info.attempt,
            max_retries = info.max_retries,
            error = %crate::text::Escaped(&info.error),
            "operator failed, giving up"
        );
    }
}

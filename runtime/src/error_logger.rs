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
            id = %crate::text::Escaped(&info.id),
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
            id = %crate::text::Escaped(&info.id),
            attempt = info.attempt,
            max_retries = info.max_retries,
            error = %crate::text::Escaped(&info.error),
            "operator failed, giving up"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::{ErrorLogger, FailureInfo, TracingErrorLogger};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn row_data_reaches_the_log_escaped() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            TracingErrorLogger.log_failed(&FailureInfo {
                operator: "Op",
                table: "posts",
                id: "\"\x1b]0;id\x07\"".into(),
                attempt: 1,
                max_retries: 0,
                error: "value \x1b]0;TITLE\x07\x1b[2J\u{9b}31m".into(),
            });
        });
        let logged = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(
            logged.contains("\\x1b]0;TITLE\\x07\\x1b[2J\\u{9b}31m"),
            "{logged}"
        );
        assert!(logged.contains("\\x1b]0;id\\x07"), "{logged}");
        assert!(
            !logged.trim_end().chars().any(char::is_control),
            "a control character reached the log: {logged:?}"
        );
    }
}

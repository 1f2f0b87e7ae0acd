//! The one backoff: how long to wait before attempt `n` after failures.
//!
//! Used by operator retries and restarts (`min_restart_time`,
//! `backoff_multiplicator`, `max_restart_time`, see
//! [`Config::backoff`](crate::Config::backoff)), the pubsub `LISTEN`
//! reconnection and the listener's reconnection.

use std::time::Duration;

/// Capped exponential backoff: `min × factor^(attempt − 1)`, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first wait.
    pub min: Duration,
    /// Factor applied after each failure (at least 1).
    pub factor: f64,
    /// The longest wait.
    pub max: Duration,
}

impl Backoff {
    /// Waits `min`, multiplied by `factor` after each failure, up to `max`
    /// (raised to `min` if lower).
    pub fn new(min: Duration, factor: f64, max: Duration) -> Self {
        Backoff {
            min,
            factor: if factor.is_finite() {
                factor.max(1.0)
            } else {
                1.0
            },
            max: max.max(min),
        }
    }

    /// The wait before attempt number `attempt` after a failure (1 for the
    /// first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(i32::MAX as u32) as i32;
        let secs = self.min.as_secs_f64() * self.factor.powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let b = Backoff::new(Duration::from_millis(100), 2.0, Duration::from_millis(350));
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(3), Duration::from_millis(350));
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(350));
        assert_eq!(b.delay(0), Duration::from_millis(100));
    }

    #[test]
    fn a_factor_of_one_waits_the_same() {
        let b = Backoff::new(Duration::from_millis(10), 1.0, Duration::from_secs(1));
        assert_eq!(b.delay(50), Duration::from_millis(10));
    }
}

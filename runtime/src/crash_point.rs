//! Crash points, for the tests that prove nothing is lost or applied twice
//! when the process dies between two steps of the queue protocol.
//!
//! Compiled in only with the `crash-points` feature (walflow's own tests
//! enable it; applications never do). Then `WALFLOW_CRASH_AT=<point>:<n>`
//! makes the process kill itself with `SIGKILL`, as `kill -9` would (no
//! destructor runs, nothing is flushed), the `n`-th time it reaches
//! `<point>`. Without the feature, [`hit`] is empty.
//!
//! The points, in the order a transaction meets them:
//!
//! | point | where |
//! | --- | --- |
//! | `start.migrated` | start-up: the `walflow` schema migrated |
//! | `start.prepared` | start-up: publication and slot set up |
//! | `start.streams_read` | start-up: the queue's position read |
//! | `executor.fetched` | an executor read rows back from the queue |
//! | `queue.partial` | part of a big transaction queued, not yet acknowledged |
//! | `queue.flushed` | a batch queued (committed), not yet acknowledged |
//! | `queue.acked` | a batch acknowledged to the listener |
//! | `unit.before_commit` | a unit's statements run, its transaction not committed |
//! | `unit.after_commit` | a unit committed, the executor not yet told |
//! | `stream.acked` | the stream storage acknowledged what units applied |
//! | `stream.skipped` | the stream storage skipped rows delivered again, applied before |
//! | `stream.spilled` | the stream storage wrote held rows to the queue, not yet counted as spilled |
//! | `stream.returned` | a spilled operator caught up and runs from memory again |

/// Every crash point, for tests to pick from.
pub const POINTS: &[&str] = &[
    "start.migrated",
    "start.prepared",
    "start.streams_read",
    "executor.fetched",
    "queue.partial",
    "queue.flushed",
    "queue.acked",
    "unit.before_commit",
    "unit.after_commit",
    "stream.acked",
    "stream.skipped",
    "stream.spilled",
    "stream.returned",
];

/// Reached `point`: with the feature and `WALFLOW_CRASH_AT` naming it, the
/// process dies here on the configured hit.
#[cfg(feature = "crash-points")]
pub fn hit(point: &'static str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static AT: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let at = AT.get_or_init(|| {
        let v = std::env::var("WALFLOW_CRASH_AT").ok()?;
        let (name, n) = v.split_once(':').unwrap_or((&v, "1"));
        Some((name.to_owned(), n.parse().unwrap_or(1)))
    });
    let Some((name, n)) = at else { return };
    if name != point {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
        eprintln!("walflow crash point `{point}` reached: killing the process");
        // SAFETY: kill and getpid have no preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Reached `point` where a test may make the code around it panic: with
/// the feature and `WALFLOW_PANIC_AT=<point>` naming it, panics on the
/// first hit (an executor's own loop, `executor.loop`).
#[cfg(feature = "crash-points")]
pub fn panic_at(point: &'static str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};
    static AT: OnceLock<Option<String>> = OnceLock::new();
    static DONE: AtomicBool = AtomicBool::new(false);
    let at = AT.get_or_init(|| std::env::var("WALFLOW_PANIC_AT").ok());
    if at.as_deref() == Some(point) && !DONE.swap(true, Ordering::SeqCst) {
        panic!("walflow panic point `{point}` reached");
    }
}

/// Reached a panic point (crash points are compiled out).
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn panic_at(_point: &'static str) {}

/// Reached `point` (crash points are compiled out).
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn hit(_point: &'static str) {}

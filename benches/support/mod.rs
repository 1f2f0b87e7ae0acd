//! Helpers shared by the benchmarks: a fresh database, SQL, process CPU time
//! and memory.

#![allow(dead_code)] // each bench uses a subset

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

#[path = "../../tests/common/random.rs"]
mod random;
#[allow(unused_imports)] // each bench uses a part
pub use random::{Rng, seed_or};

/// Creates (replacing) the database `name` on `base`'s server; returns its
/// URL and a pool.
pub async fn fresh_database(base: &str, name: &str) -> (String, PgPool) {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(base)
        .await
        .unwrap();
    exec(&admin, &format!("DROP DATABASE IF EXISTS {name}")).await;
    exec(&admin, &format!("CREATE DATABASE {name}")).await;
    let mut url = url::Url::parse(base).unwrap();
    url.set_path(name);
    let url = url.to_string();
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .unwrap();
    (url, pool)
}

/// Runs `sql` (several statements allowed), panicking with it on error.
pub async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// User + system CPU time of this process (Linux `/proc/self/stat`).
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime), counted after `comm`.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Duration::from_secs_f64(ticks as f64 / hz.max(1) as f64)
}

/// A `/proc/self/status` field (such as `VmHWM:`) in KiB.
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets the process's peak RSS (`VmHWM`; Linux `clear_refs` value 5).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

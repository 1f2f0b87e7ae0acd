//! The long convergence run: `test_convergence`'s workload and check
//! (`tests/common/convergence.rs`) with four writers, both `coalesce`
//! settings, the runtime killed many times. Run only when asked for:
//!
//! ```text
//! WALFLOW_SOAK=1 WALFLOW_SOAK_TXNS=20000 WALFLOW_SOAK_KILLS=30 \
//!   cargo test --test convergence_soak -- --nocapture
//! ```
//!
//! (`WALFLOW_SOAK_TXNS`, default 20,000 transactions per setting;
//! `WALFLOW_SOAK_KILLS`, default 30; `WALFLOW_SOAK_SPILLING=1`, the stream
//! storage with small spill bounds; `WALFLOW_QUEUE_STORAGE=postgres`, the
//! durable queue.) It prints its seed;
//! `WALFLOW_SEED=<n>` replays the same statement choices. Without
//! `WALFLOW_SOAK` it says so and exits: a `harness = false` target, so it
//! is no test that passes without running. The binary is also the child
//! process running the flow until killed.

mod common;
#[path = "common/convergence.rs"]
mod convergence;
#[path = "common/harness.rs"]
mod harness;

use std::process::ExitCode;

use convergence::{Run, Storage};

fn main() -> ExitCode {
    if harness::is_child(convergence::CHILD) {
        return harness::child(convergence::child());
    }
    if std::env::args().any(|a| a == "--list") {
        // Lists no tests.
        return ExitCode::SUCCESS;
    }
    if std::env::var_os("WALFLOW_SOAK").is_none() {
        println!("convergence soak not asked for (set WALFLOW_SOAK=1 to run it)");
        return ExitCode::SUCCESS;
    }
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .map(|v| v.parse().expect("a number"))
            .unwrap_or(default)
    };
    let soak = async {
        for coalesce in [true, false] {
            Run {
                writers: 4,
                transactions: env("WALFLOW_SOAK_TXNS", 20_000),
                kills: env("WALFLOW_SOAK_KILLS", 30) as u32,
                coalesce,
                restarts: false,
                async_commit: false,
                crash_at: None,
                // The default storage (`WALFLOW_QUEUE_STORAGE` chooses);
                // `WALFLOW_SOAK_SPILLING=1`: the stream storage with small
                // spill bounds.
                storage: if env("WALFLOW_SOAK_SPILLING", 0) == 1 {
                    Storage::Spilling
                } else {
                    Storage::Default
                },
            }
            .go()
            .await;
        }
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(soak);
    println!("convergence soak: converged");
    ExitCode::SUCCESS
}

//! The runner of the test targets declared with `harness = false` whose
//! binary is also the child process their tests spawn (a flow killed with
//! SIGKILL must run in a process of its own, with the same declarations).
//! Their `main` runs the child when its variable is set and these tests
//! otherwise, so the child is not one more test that passes without
//! checking anything. (Not a `ctor` run before the test harness: the
//! declarations of `on_event!` must be collected before a flow starts.)
//!
//! The tests run through `libtest-mimic`, which takes the usual arguments of
//! a test binary (filters, `--exact`, `--skip`, `--list`, `--test-threads`,
//! ...). Each test runs in a current-thread runtime of its own, as
//! `#[tokio::test]` does. Included with
//! `#[path = "common/harness.rs"] mod harness;`.

#![allow(dead_code)] // each target uses a part

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;

/// A test: its name and its body.
pub type Test = (&'static str, fn() -> Pin<Box<dyn Future<Output = ()>>>);

/// The tests of a target, for [`run`]: `tests![a, b]` for `async fn a()`
/// and `async fn b()`.
#[allow(unused_macros)] // a target that runs no tests
macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), || Box::pin($name()))),*]
    };
}
#[allow(unused_imports)]
pub(crate) use tests;

/// Whether the child process's variable is set, for `main`.
pub fn is_child(var: &str) -> bool {
    std::env::var_os(var).is_some()
}

/// Runs `body` in the child process: a multi-threaded runtime, exit status
/// 101 on a panic.
pub fn child(body: impl Future<Output = ()>) -> ExitCode {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(body))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(101),
    }
}

/// Runs the selected `tests`; the exit status is 101 when one fails.
///
/// `WALFLOW_REPEAT=<n>` runs each selected test `n` times in a row (in a
/// fresh runtime each time); it fails at the first failing run, and says
/// which.
pub fn run(tests: &[Test]) -> ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let repeat: u32 = std::env::var("WALFLOW_REPEAT")
        .ok()
        .map(|v| v.parse().expect("WALFLOW_REPEAT is a number of runs"))
        .unwrap_or(1)
        .max(1);
    let trials = tests
        .iter()
        .map(|&(name, test)| {
            libtest_mimic::Trial::test(name, move || {
                for run in 1..=repeat {
                    if repeat > 1 {
                        eprintln!("{name}: run {run} of {repeat}");
                    }
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime");
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(test())))
                        .map_err(|panic| {
                            let message = panic
                                .downcast_ref::<String>()
                                .map(String::as_str)
                                .or_else(|| panic.downcast_ref::<&str>().copied())
                                .unwrap_or("the test panicked");
                            let failed: libtest_mimic::Failed = if repeat > 1 {
                                format!("run {run} of {repeat}: {message}").into()
                            } else {
                                message.into()
                            };
                            failed
                        })?;
                }
                Ok(())
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

//! The runner of the test targets declared with `harness = false` whose
//! binary is also the child process their tests spawn (a flow killed with
//! SIGKILL must run in a process of its own, with the same declarations).
//! Their `main` runs the child when its variable is set and these tests
//! otherwise, so the child is not one more test that passes without
//! checking anything. (Not a `ctor` run before the test harness: the
//! declarations of `on_event!` must be collected before a flow starts.)
//!
//! It takes the usual arguments of a test binary: name filters (with
//! `--exact`, `--skip`), `--list`, `--test-threads`; `--nocapture` and the
//! like are accepted (a test's output is never captured). Each test runs on
//! a thread of its own in a current-thread runtime, as `#[tokio::test]`
//! does. Included with `#[path = "common/harness.rs"] mod harness;`.

#![allow(dead_code)] // each target uses a part

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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

struct Args {
    filters: Vec<String>,
    skip: Vec<String>,
    exact: bool,
    list: bool,
    ignored: bool,
    threads: usize,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut out = Args {
        filters: Vec::new(),
        skip: Vec::new(),
        exact: false,
        list: false,
        ignored: false,
        threads: std::env::var("RUST_TEST_THREADS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--exact" => out.exact = true,
            "--list" => out.list = true,
            "--ignored" => out.ignored = true,
            "--include-ignored" | "--nocapture" | "--show-output" | "--quiet" | "-q" => {}
            "--test-threads" => {
                out.threads = value("--test-threads")?
                    .parse()
                    .map_err(|_| "--test-threads takes a number".to_owned())?;
            }
            "--skip" => out.skip.push(value("--skip")?),
            "--color" | "--format" | "-Z" => {
                value(&flag)?;
            }
            f if f.starts_with('-') => return Err(format!("unknown option `{arg}`")),
            _ => out.filters.push(arg),
        }
    }
    out.threads = out.threads.max(1);
    Ok(out)
}

/// Runs the selected `tests`; the exit status is 101 when one fails.
pub fn run(tests: &[Test]) -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(101);
        }
    };
    let matches = |name: &str, pattern: &String| {
        if args.exact {
            name == pattern
        } else {
            name.contains(pattern.as_str())
        }
    };
    // None is ignored: `--ignored` selects nothing.
    let selected: Vec<Test> = tests
        .iter()
        .copied()
        .filter(|_| !args.ignored)
        .filter(|(name, _)| {
            args.filters.is_empty() || args.filters.iter().any(|f| matches(name, f))
        })
        .filter(|(name, _)| !args.skip.iter().any(|s| matches(name, s)))
        .collect();
    if args.list {
        for (name, _) in &selected {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }

    let t0 = Instant::now();
    println!("\nrunning {} tests", selected.len());
    let filtered_out = tests.len() - selected.len();
    let queue = Arc::new(Mutex::new(VecDeque::from(selected)));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..args.threads)
        .map(|_| {
            let queue = queue.clone();
            let failed = failed.clone();
            std::thread::spawn(move || {
                loop {
                    let Some((name, body)) = queue.lock().unwrap().pop_front() else {
                        return;
                    };
                    let test = std::thread::Builder::new()
                        .name(name.to_owned())
                        .spawn(move || {
                            tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()
                                .expect("a runtime")
                                .block_on(body())
                        })
                        .expect("a test thread");
                    let ok = test.join().is_ok();
                    println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
                    if !ok {
                        failed.lock().unwrap().push(name);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a worker");
    }
    let failed = failed.lock().unwrap();
    let total = tests.len() - filtered_out;
    if !failed.is_empty() {
        println!("\nfailures:");
        for name in failed.iter() {
            println!("    {name}");
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed; 0 ignored; 0 measured; {filtered_out} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        total - failed.len(),
        failed.len(),
        t0.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(101)
    }
}

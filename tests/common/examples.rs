//! The examples' binaries, for the tests that run them as a person does.
//! `cargo test --test <one>` does not build the examples, so the first
//! call builds them through the cargo running these tests (`cargo build
//! --example blog --example live`, the same profile; a no-op when
//! `cargo test` built them already) and takes their paths from its
//! messages. Included with `#[path = "common/examples.rs"] mod examples;`.

#![allow(dead_code)] // each target uses a part

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

static BUILT: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();

/// The path of example `name`'s binary, built first if need be (blocking:
/// call it from `spawn_blocking`, or before the runtime is busy).
pub fn example(name: &str) -> PathBuf {
    let built = BUILT.get_or_init(build);
    built
        .get(name)
        .unwrap_or_else(|| panic!("cargo built no example named {name}: {built:?}"))
        .clone()
}

/// [`example`] from async code.
pub async fn example_async(name: &'static str) -> PathBuf {
    tokio::task::spawn_blocking(move || example(name))
        .await
        .expect("building the examples")
}

fn build() -> HashMap<String, PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--example", "blog", "--example", "live"])
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", cargo.to_string_lossy()));
    assert!(
        output.status.success(),
        "`cargo build --example blog --example live` failed ({}): see its messages above",
        output.status
    );
    let mut built = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_example = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "example"));
        if message["reason"] == "compiler-artifact"
            && is_example
            && let (Some(name), Some(exe)) = (
                message["target"]["name"].as_str(),
                message["executable"].as_str(),
            )
        {
            built.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    built
}

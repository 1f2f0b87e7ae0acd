//! What a person sees when a start goes wrong: a port where nothing listens
//! fails at once with the cause, a refused password reads as the server's
//! message (never PostgreSQL's C source line), a `Report` from `main`
//! prints the message rather than a Debug dump, and a mistyped `WALFLOW_`
//! variable is warned about with the nearest name.

mod common;

use std::time::Duration;

use walflow::{Report, Walflow};

/// A loopback port where nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_port_where_nothing_listens_fails_at_once_with_the_cause() {
    let port = closed_port();
    let start = Walflow::builder()
        .database_url(format!(
            "postgres://postgres:secret@127.0.0.1:{port}/postgres"
        ))
        .operators(Vec::<String>::new())
        .start();
    // The pool's acquire timeout (30 s) is what this must not wait for.
    let error = tokio::time::timeout(Duration::from_secs(15), start)
        .await
        .expect("the start failed at once, not after the pool's timeout")
        .map(drop)
        .expect_err("nothing listens there");
    let text = error.to_string();
    assert!(
        text.contains(&format!("cannot reach PostgreSQL at 127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(!text.contains("pool timed out"), "{text}");
}

#[tokio::test]
async fn a_refused_password_reads_as_the_servers_message() {
    let db = common::db().await;
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_password(Some("not-the-password")).unwrap();
    let error = Walflow::builder()
        .database_url(url.as_str())
        .operators(Vec::<String>::new())
        .start()
        .await
        .map(drop)
        .expect_err("a wrong password is refused");
    let shown = format!("{:?}", Report::from(error));
    let first = shown.lines().next().unwrap();
    assert!(
        first.contains("password authentication failed for user"),
        "{shown}"
    );
    assert!(!shown.contains(" at line "), "no C source line: {shown}");
    assert!(!shown.contains("Refused {"), "no Debug dump: {shown}");
    assert!(!shown.contains("not-the-password"), "no password: {shown}");
}

#[tokio::test]
async fn a_failing_statement_names_the_sqlstate_and_not_the_source_line() {
    let db = common::db().await;
    let error = Walflow::builder()
        .database_url(&db.url)
        .operators(Vec::<String>::new())
        .setup_sql("CREATE TABLE t (n int CHECK (n > 0)); INSERT INTO t VALUES (0)")
        .start()
        .await
        .map(drop)
        .expect_err("the set-up SQL violates the check");
    let shown = format!("{:?}", Report::from(error));
    assert!(
        shown.contains("violates check constraint \"t_n_check\""),
        "{shown}"
    );
    assert!(shown.contains("(SQLSTATE 23514)"), "{shown}");
    assert!(
        shown.contains("detail: Failing row contains (0)."),
        "{shown}"
    );
    assert!(!shown.contains(" at line "), "no C source line: {shown}");
    assert!(
        !shown.contains("Caused by"),
        "the message already says it all: {shown}"
    );
}

/// Set in the child process of the next test.
const CHILD: &str = "WALFLOW_TEST_UNKNOWN_VARIABLE_CHILD";

#[test]
fn a_mistyped_variable_is_warned_about_with_the_nearest_name() {
    if std::env::var_os(CHILD).is_some() {
        // The child: read the configuration with the mistyped variable set.
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .without_time()
            .with_ansi(false)
            .init();
        walflow::ConfigBuilder::from_env().expect("a warning, never an error");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_mistyped_variable_is_warned_about_with_the_nearest_name",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("WALFLOW_SLOTNAME", "typo")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "WALFLOW_SLOTNAME is set but no walflow option reads it; did you mean WALFLOW_SLOT_NAME?"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("WARN"), "{stderr}");
}

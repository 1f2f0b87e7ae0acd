//! No password reaches what walflow shows: its logs (also while it loses
//! and regains its connections), `/metrics`, `/healthz`, `/readyz`,
//! `/status`, the configuration's `Debug`, and its errors.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::http::get;
use walflow::{Report, Walflow};

/// Everything logged, at every level.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn no_password_in_logs_endpoints_or_errors() {
    let logs = Logs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let db = common::db().await;
    let url = url::Url::parse(&db.url).unwrap();
    let password = url
        .password()
        .expect("the test server has a password")
        .to_owned();
    assert!(
        password.len() >= 8,
        "a password that cannot appear by chance"
    );
    db.exec("CREATE TABLE secrets_probe (id bigint PRIMARY KEY)")
        .await;

    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("nopw"))
        .operators(Vec::<String>::new())
        .metrics_endpoint(([127, 0, 0, 1], 0))
        .start()
        .await
        .unwrap();
    let addr = flow.metrics_addr().unwrap();
    let mut shown = vec![format!("{:?}", flow.config()), flow.config().server()];

    // Lose every connection walflow holds, so that its reconnection paths
    // log, then wait until it streams again.
    db.exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE pid <> pg_backend_pid() AND datname = current_database()",
    )
    .await;
    let ready = async {
        loop {
            if flow.health().ready && get(addr, "/readyz").await.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .expect("ready again after losing its connections");
    for path in ["/metrics", "/healthz", "/readyz", "/status"] {
        shown.push(get(addr, path).await.1);
    }
    flow.shutdown().await.unwrap();

    // Errors that name the server: a refused password, and a URL that does not parse.
    let mut wrong = url.clone();
    wrong.set_password(Some(&format!("{password}x"))).unwrap();
    let refused = Walflow::builder()
        .database_url(wrong.as_str())
        .operators(Vec::<String>::new())
        .start()
        .await
        .map(drop)
        .expect_err("refused");
    shown.push(format!("{refused} {refused:?}"));
    shown.push(format!("{:?}", Report::from(refused)));
    let mangled = db.url.replace(&password, &format!("{password}/#?"));
    let invalid = Walflow::builder()
        .database_url(mangled)
        .operators(Vec::<String>::new())
        .start()
        .await
        .map(drop)
        .expect_err("refused");
    shown.push(format!("{invalid} {invalid:?}"));

    shown.push(logs.text());
    for text in &shown {
        assert!(
            !text.contains(&password),
            "the password is shown in:\n{text}"
        );
    }
    assert!(
        logs.text().contains("WARN") || logs.text().contains("INFO"),
        "the logs were captured"
    );
}

//! The status page of the metrics endpoint in a real headless Chromium:
//! the state, an operator's queue depth and its dead letters (with their
//! errors) update live over Server-Sent Events, without a reload; an empty
//! dead-letter table says there are none, and times read as dates, not as
//! RFC 3339 values with nanoseconds. All of it under the page's
//! Content-Security-Policy, which reports no violation from the page's own
//! script and style, and stops a script injected into the page; with the
//! endpoint's token, the page works in the browser given the token as the
//! password of its Basic credentials.

#![allow(dead_code)] // struct fields are read through serde

mod common;

use std::time::Duration;

use common::browser::browser;
use fantoccini::{Client, Locator};
use tokio::sync::Semaphore;
use walflow::prelude::*;

const TIMEOUT: Duration = Duration::from_secs(30);

#[event_source(table = "status_held")]
#[derive(Debug, Clone, serde::Deserialize)]
struct StatusHeld {
    id: i64,
}

#[event_source(table = "status_poison")]
#[derive(Debug, Clone, serde::Deserialize)]
struct StatusPoison {
    id: i64,
}

on_event! {
    operator StatusHold {
        events: [insert],
        entities: [StatusHeld],
        handler: hold,
    }

    operator StatusPoisoned {
        events: [insert],
        entities: [StatusPoison],
        handler: poison,
    }
}

static GATE: Semaphore = Semaphore::const_new(0);

async fn hold(_event: Event<StatusHeld>, _ctx: Ctx) -> Result<(), std::io::Error> {
    let _permit = GATE.acquire().await.expect("the gate stays open");
    Ok(())
}

async fn poison(event: Event<StatusPoison>, _ctx: Ctx) -> Result<(), std::io::Error> {
    let id = event.record().unwrap().id;
    Err(std::io::Error::other(format!("<b>row {id}</b> is poison")))
}

/// The text of the first element matching `css`, once it equals `want`.
async fn wait_text(client: &Client, css: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let got = match client.find(Locator::Css(css)).await {
            Ok(el) => el.text().await.ok(),
            Err(_) => None,
        };
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{css}: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The page's own script and style work under its policy: the state's
/// badge has its colours, the policy is enforced (a script injected into
/// the page does not run), and the only violation the page's reports hold
/// is that script's: none from the page's own script or style.
async fn assert_policy_holds(client: &Client) {
    let badge = client
        .execute(
            "return getComputedStyle(document.getElementById('state')).backgroundColor;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(badge, "rgb(212, 243, 220)", "the page's style applies");
    let answer = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const blocked = [];
             document.addEventListener('securitypolicyviolation', (e) => blocked.push(e.effectiveDirective));
             const s = document.createElement('script');
             s.textContent = 'window.injected = true;';
             document.body.appendChild(s);
             // Every report since the page loaded (buffered), once the
             // injected script's has come.
             const reported = [];
             const observer = new ReportingObserver(
                 (reports) => { for (const r of reports) reported.push(r.body.effectiveDirective + ' ' + r.body.blockedURL); },
                 { types: ['csp-violation'], buffered: true });
             observer.observe();
             const deadline = Date.now() + 10000;
             (function check() {
                 if (reported.length > 0 || Date.now() > deadline) {
                     done({ ran: window.injected === true, blocked, reported });
                 } else {
                     setTimeout(check, 20);
                 }
             })();",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        answer,
        serde_json::json!({
            "ran": false,
            "blocked": ["script-src-elem"],
            "reported": ["script-src-elem inline"],
        }),
        "the policy blocks an injected script, and only it"
    );
}

/// The element `css` shows a local date and time to the second
/// (`2025-06-01 14:03:07`) on one line, the exact value in its tooltip.
async fn assert_time(client: &Client, css: &str) {
    // Read at once: the rows are made anew at each status event.
    let read = client
        .execute(
            "const el = document.querySelector(arguments[0]);
             return el && [el.textContent, el.title, getComputedStyle(el).whiteSpace];",
            vec![css.into()],
        )
        .await
        .unwrap();
    let [shown, exact, wrap] = [0, 1, 2].map(|i| read[i].as_str().unwrap_or_default().to_owned());
    let digits: String = shown
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(digits, "9999-99-99 99:99:99", "{css} shows {shown:?}");
    assert!(
        exact.contains('T') && exact.ends_with('Z'),
        "{css}'s tooltip: {exact:?}"
    );
    assert_eq!(wrap, "nowrap", "{css} does not wrap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_follows_queues_and_dead_letters_live() {
    let db = common::db().await;
    db.exec(
        "CREATE TABLE status_held (id bigint PRIMARY KEY);
         CREATE TABLE status_poison (id bigint PRIMARY KEY);",
    )
    .await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("status"))
        .operators(["StatusHold", "StatusPoisoned"])
        .health_interval(Duration::from_millis(100))
        .min_restart_time(Duration::from_millis(10))
        .max_restart_time(Duration::from_millis(20))
        .max_retries(1)
        .metrics_endpoint(([127, 0, 0, 1], 0))
        .start()
        .await
        .unwrap();
    let addr = flow.metrics_addr().unwrap();

    let profile = tempfile::tempdir().unwrap();
    let (_driver, client) = browser(profile.path()).await;
    client.goto(&format!("http://{addr}/status")).await.unwrap();
    wait_text(&client, "#state", "ready").await;
    wait_text(&client, "#op-StatusHold .rows", "0").await;
    wait_text(
        &client,
        "#dead-letters .empty",
        "No dead letters: no event has failed for good.",
    )
    .await;
    assert_time(&client, "#checked").await;
    assert_policy_holds(&client).await;
    client
        .execute("window.notReloaded = true; return true;", vec![])
        .await
        .unwrap();

    db.exec("INSERT INTO status_held SELECT g FROM generate_series(1, 3) g")
        .await;
    wait_text(&client, "#op-StatusHold .rows", "3").await;

    db.exec("INSERT INTO status_poison VALUES (9)").await;
    wait_text(&client, "#op-StatusPoisoned .dead", "1").await;
    // The handler's error, shown as text (not markup).
    wait_text(
        &client,
        "#dead-letters .error",
        "the handler failed: <b>row 9</b> is poison",
    )
    .await;
    assert!(client.find(Locator::Css("#dead-letters b")).await.is_err());
    assert!(
        client
            .find(Locator::Css("#dead-letters .empty"))
            .await
            .is_err(),
        "the empty state is gone"
    );
    assert_time(&client, "#dead-letters td.when").await;

    GATE.add_permits(1);
    wait_text(&client, "#op-StatusHold .rows", "0").await;
    let same = client
        .execute("return window.notReloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same, serde_json::Value::Bool(true), "the page was reloaded");
    client.close().await.unwrap();
    flow.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_works_in_a_browser_with_the_token() {
    let db = common::db().await;
    let token = "a-token-for-the-status-page-0123";
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("status_token"))
        .operators(Vec::<String>::new())
        .health_interval(Duration::from_millis(100))
        .metrics_endpoint(([127, 0, 0, 1], 0))
        .metrics_endpoint_token(token)
        .start()
        .await
        .unwrap();
    let addr = flow.metrics_addr().unwrap();

    let profile = tempfile::tempdir().unwrap();
    let (_driver, client) = browser(profile.path()).await;
    // The browser answers the Basic challenge with the URL's credentials,
    // and sends them again for the page's event stream.
    client
        .goto(&format!("http://walflow:{token}@{addr}/status"))
        .await
        .unwrap();
    wait_text(&client, "#state", "ready").await;
    wait_text(
        &client,
        "#operators .empty",
        "No operators: this flow only feeds subscriptions.",
    )
    .await;
    assert_policy_holds(&client).await;
    client.close().await.unwrap();
    flow.shutdown().await.unwrap();
}

//! The live example in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver): counts update without a
//! reload, and the form lands on the new post's page once its derived row
//! exists.

mod common;

#[allow(dead_code)]
#[path = "../examples/live/app.rs"]
mod app;

use std::time::Duration;

use common::browser::browser;
use fantoccini::{Client, Locator};
use walflow::subscribe::Scope;

const TIMEOUT: Duration = Duration::from_secs(30);
/// Types `text` into the field `input`, then clicks `button`.
async fn submit(client: &Client, input: &str, text: &str, button: &str) {
    let field = client.find(Locator::Css(input)).await.unwrap();
    field.send_keys(text).await.unwrap();
    client
        .find(Locator::Css(button))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn text(client: &Client, css: &str) -> Option<String> {
    match client.find(Locator::Css(css)).await {
        Ok(el) => el.text().await.ok(),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_update_live_and_the_form_lands_on_the_new_post() {
    let db = common::db().await;
    let (router, app) = app::start(&db.url, &db.slot("live"), None).await.unwrap();
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(server, router).await.unwrap() });

    let before = app.hub.position();
    db.exec("INSERT INTO posts (title) VALUES ('first')").await;
    app.hub
        .wait_for::<app::PostWithCommentsCount>(Scope::id(1), before, TIMEOUT)
        .await
        .unwrap();

    let profile = tempfile::tempdir().unwrap();
    let (_driver, client) = browser(profile.path()).await;
    client.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(text(&client, "#post-1 .count").await.as_deref(), Some("0"));
    // Marks this page load: a reload would lose it.
    client
        .execute("window.notReloaded = true; return true;", vec![])
        .await
        .unwrap();

    db.exec("INSERT INTO comments (post_id, body) VALUES (1, 'straight into the database')")
        .await;
    common::wait_until(TIMEOUT, || async {
        text(&client, "#post-1 .count").await.as_deref() == Some("1")
    })
    .await;
    let same_page = client
        .execute("return window.notReloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(
        same_page,
        serde_json::Value::Bool(true),
        "the count changed without a reload"
    );

    // Create a post through the form: the server redirects once the derived
    // row exists.
    submit(&client, "#new-title", "from the browser", "#create").await;
    common::wait_until(TIMEOUT, || async {
        text(&client, "#title").await.as_deref() == Some("from the browser")
    })
    .await;
    let url = client.current_url().await.unwrap();
    assert_eq!(url.path(), "/posts/2");

    // The post page follows its comments (scoped) and the post (direct).
    db.exec("INSERT INTO comments (post_id, body) VALUES (2, 'live comment'), (1, 'elsewhere')")
        .await;
    common::wait_until(TIMEOUT, || async {
        text(&client, "#comments").await.as_deref() == Some("live comment")
    })
    .await;
    db.exec("UPDATE posts SET title = 'renamed' WHERE id = 2")
        .await;
    common::wait_until(TIMEOUT, || async {
        text(&client, "#title").await.as_deref() == Some("renamed")
    })
    .await;
    // A comment through the page's form: it comes back over the live
    // stream, without leaving the page.
    client
        .execute("window.notReloaded = true; return true;", vec![])
        .await
        .unwrap();
    submit(
        &client,
        "#new-comment",
        "typed in the browser",
        "#send-comment",
    )
    .await;
    common::wait_until(TIMEOUT, || async {
        text(&client, "#comments").await.as_deref() == Some("live comment\ntyped in the browser")
    })
    .await;
    let same_page = client
        .execute("return window.notReloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(
        same_page,
        serde_json::Value::Bool(true),
        "the comment came without a reload"
    );
    assert_eq!(
        client
            .find(Locator::Css("#new-comment"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some(""),
        "the form is cleared"
    );
    // The page is styled.
    let styled = client
        .execute(
            "return getComputedStyle(document.querySelector('button')).borderRadius;",
            vec![],
        )
        .await
        .unwrap();
    assert_ne!(
        styled,
        serde_json::Value::String("0px".into()),
        "the stylesheet applies"
    );

    // Back on the list, the new post is there with both comments counted.
    client.goto(&format!("{base}/")).await.unwrap();
    common::wait_until(TIMEOUT, || async {
        text(&client, "#post-2 .count").await.as_deref() == Some("2")
    })
    .await;
    client.close().await.unwrap();
}

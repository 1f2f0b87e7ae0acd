//! The live example in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver): the empty list, counts that
//! update without a reload, the form that lands on the new post's page once
//! its derived row exists, and the inputs it refuses: an empty title, an
//! empty comment, a comment on a deleted post, and a post whose derived row
//! fails (answered at once, not after the form's timeout); and the comment
//! stream's authorization: a hidden comment is not shown, not counted and
//! never delivered to an open page (nor its later edits), while the
//! comments around it are.

mod common;

#[allow(dead_code)]
#[path = "../examples/live/app.rs"]
mod app;

use std::time::{Duration, Instant};

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

/// Whether the element `css` exists and is displayed.
async fn shown(client: &Client, css: &str) -> bool {
    match client.find(Locator::Css(css)).await {
        Ok(el) => el.is_displayed().await.unwrap_or(false),
        Err(_) => false,
    }
}

/// Waits until the text of `css` is `want`.
async fn wait_text(client: &Client, css: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let got = text(client, css).await;
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{css}: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Posts `form` (url-encoded) to `path` from the page, as a script would:
/// the status and the answer's text.
async fn post_from_page(client: &Client, path: &str, form: serde_json::Value) -> (u64, String) {
    let answer = client
        .execute(
            "return fetch(arguments[0], { method: 'POST', body: new URLSearchParams(arguments[1]) })
                 .then(async (r) => [r.status, await r.text()]);",
            vec![path.into(), form],
        )
        .await
        .unwrap();
    (
        answer[0].as_u64().unwrap(),
        answer[1].as_str().unwrap().to_owned(),
    )
}

async fn mark_page(client: &Client) {
    client
        .execute("window.notReloaded = true; return true;", vec![])
        .await
        .unwrap();
}

async fn same_page(client: &Client) -> bool {
    client
        .execute("return window.notReloaded === true;", vec![])
        .await
        .unwrap()
        == serde_json::Value::Bool(true)
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_update_live_and_the_form_lands_on_the_new_post() {
    let db = common::db().await;
    let (router, app) = app::start(&db.url, &db.slot("live"), None).await.unwrap();
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(server, router).await.unwrap() });

    let profile = tempfile::tempdir().unwrap();
    let (_driver, client) = browser(profile.path()).await;

    // No posts yet: the page says so, until the first one arrives live.
    client.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(
        text(&client, "#no-posts").await.as_deref(),
        Some("No posts yet: create the first one below.")
    );
    assert!(shown(&client, "#no-posts").await);
    mark_page(&client).await;
    let before = app.hub.position();
    db.exec("INSERT INTO walflow_live_example.posts (title) VALUES ('first')")
        .await;
    app.hub
        .wait_for::<app::PostWithCommentsCount>(Scope::id(1), before, TIMEOUT)
        .await
        .unwrap();
    wait_text(&client, "#post-1 .count", "0").await;
    assert!(
        !shown(&client, "#no-posts").await,
        "the empty state is gone"
    );

    db.exec(
        "INSERT INTO walflow_live_example.comments (post_id, body)
         VALUES (1, 'straight into the database')",
    )
    .await;
    wait_text(&client, "#post-1 .count", "1").await;
    assert!(
        same_page(&client).await,
        "the count changed without a reload"
    );

    // A title of spaces only is refused: the form again, with a message.
    submit(&client, "#new-title", "   ", "#create").await;
    wait_text(
        &client,
        "#form-error",
        "A post needs a title: type one (spaces alone do not count).",
    )
    .await;
    assert_eq!(client.current_url().await.unwrap().path(), "/posts");
    assert!(
        shown(&client, "#new-title").await,
        "the form is shown again"
    );
    assert_eq!(
        text(&client, "#posts").await.as_deref(),
        Some("first (1 comments)"),
        "no post was made"
    );

    // Create a post through the form: the server redirects once the derived
    // row exists.
    client.goto(&format!("{base}/")).await.unwrap();
    submit(&client, "#new-title", "from the browser", "#create").await;
    wait_text(&client, "#title", "from the browser").await;
    let url = client.current_url().await.unwrap();
    assert_eq!(url.path(), "/posts/2");
    assert_eq!(
        text(&client, "#no-comments").await.as_deref(),
        Some("No comments yet.")
    );
    assert!(shown(&client, "#no-comments").await);

    // The post page follows its comments (scoped) and the post (direct).
    db.exec(
        "INSERT INTO walflow_live_example.comments (post_id, body)
         VALUES (2, 'live comment'), (1, 'elsewhere')",
    )
    .await;
    wait_text(&client, "#comments", "live comment").await;
    assert!(
        !shown(&client, "#no-comments").await,
        "the empty state is gone"
    );
    db.exec("UPDATE walflow_live_example.posts SET title = 'renamed' WHERE id = 2")
        .await;
    wait_text(&client, "#title", "renamed").await;
    // A comment through the page's form: it comes back over the live
    // stream, without leaving the page.
    mark_page(&client).await;
    submit(
        &client,
        "#new-comment",
        "typed in the browser",
        "#send-comment",
    )
    .await;
    wait_text(&client, "#comments", "live comment\ntyped in the browser").await;
    assert!(
        same_page(&client).await,
        "the comment came without a reload"
    );
    // The form is cleared once the answer came (the comment may come back
    // over the stream before it).
    common::wait_until(TIMEOUT, || async {
        let field = client.find(Locator::Css("#new-comment")).await.unwrap();
        field.prop("value").await.unwrap().as_deref() == Some("")
    })
    .await;
    assert!(!shown(&client, "#comment-error").await);
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

    // An empty comment is refused, with the message under the form.
    submit(&client, "#new-comment", "  ", "#send-comment").await;
    wait_text(
        &client,
        "#comment-error",
        "A comment needs some text: it is empty.",
    )
    .await;
    // A comment on a post deleted meanwhile: refused (404), said so.
    db.exec("DELETE FROM walflow_live_example.posts WHERE id = 2")
        .await;
    wait_text(&client, "#title", "(deleted)").await;
    client
        .find(Locator::Css("#new-comment"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    submit(&client, "#new-comment", "too late", "#send-comment").await;
    wait_text(
        &client,
        "#comment-error",
        "There is no post 2: it may have been deleted. The comment was not saved.",
    )
    .await;
    assert!(same_page(&client).await, "refusals do not reload the page");
    let (status, message) = post_from_page(
        &client,
        "/posts/999/comments",
        serde_json::json!({ "body": "nowhere" }),
    )
    .await;
    assert_eq!(status, 404, "{message}");
    for title in ["", " \t "] {
        let (status, message) =
            post_from_page(&client, "/posts", serde_json::json!({ "title": title })).await;
        assert_eq!(status, 400, "{title:?}: {message}");
        assert!(message.contains("A post needs a title"), "{message}");
    }
    let comments: i64 =
        sqlx::query_scalar("SELECT count(*) FROM walflow_live_example.comments WHERE post_id <> 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(comments, 2, "no refused comment was saved");

    // Back on the list, the first post has both its comments counted.
    client.goto(&format!("{base}/")).await.unwrap();
    wait_text(&client, "#post-1 .count", "2").await;

    // A post whose derived row fails: the form answers at the operator's
    // first failed attempt, long before its 10 s wait would end.
    db.exec(
        "ALTER TABLE walflow_live_example.post_with_comments_counts
         ADD CONSTRAINT no_poison CHECK (title <> 'poison')",
    )
    .await;
    let sent = Instant::now();
    submit(&client, "#new-title", "poison", "#create").await;
    wait_text(&client, "h1", "The post is saved, but not listed").await;
    let waited = sent.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the answer took {waited:?}"
    );
    let error = text(&client, "#message pre.error").await.unwrap();
    assert!(error.contains("no_poison"), "{error}");
    client.close().await.unwrap();
    app.flow.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn hidden_comments_never_reach_the_page() {
    let db = common::db().await;
    let (router, app) = app::start(&db.url, &db.slot("live_hidden"), None)
        .await
        .unwrap();
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(server, router).await.unwrap() });
    let profile = tempfile::tempdir().unwrap();
    let (_driver, client) = browser(profile.path()).await;

    db.exec(
        "INSERT INTO walflow_live_example.posts (title) VALUES ('moderated');
         INSERT INTO walflow_live_example.comments (post_id, body, hidden)
         VALUES (1, 'kept before', false), (1, 'hidden before', true);",
    )
    .await;
    // Hidden comments are not counted.
    client.goto(&format!("{base}/")).await.unwrap();
    wait_text(&client, "#post-1 .count", "1").await;

    // Nor shown by the page...
    client.goto(&format!("{base}/posts/1")).await.unwrap();
    wait_text(&client, "#comments", "kept before").await;
    mark_page(&client).await;
    // ...nor streamed to it: each statement commits on its own, in this
    // order, and the stream delivers in commit order, so once the visible
    // comment after it is shown, the hidden one would have been too.
    db.exec(
        "INSERT INTO walflow_live_example.comments (post_id, body, hidden)
         VALUES (1, 'hidden live', true)",
    )
    .await;
    db.exec(
        "INSERT INTO walflow_live_example.comments (post_id, body)
         VALUES (1, 'shown live')",
    )
    .await;
    wait_text(&client, "#comments", "kept before\nshown live").await;
    // Nor are its later edits.
    db.exec(
        "UPDATE walflow_live_example.comments SET body = 'hidden, edited'
         WHERE body = 'hidden live'",
    )
    .await;
    db.exec(
        "INSERT INTO walflow_live_example.comments (post_id, body)
         VALUES (1, 'after the edit')",
    )
    .await;
    wait_text(
        &client,
        "#comments",
        "kept before\nshown live\nafter the edit",
    )
    .await;
    assert!(
        same_page(&client).await,
        "the comments came without a reload"
    );
    let source = client.source().await.unwrap();
    for body in ["hidden before", "hidden live", "hidden, edited"] {
        assert!(!source.contains(body), "{body:?} is in the page: {source}");
    }

    client.goto(&format!("{base}/")).await.unwrap();
    wait_text(&client, "#post-1 .count", "3").await;
    client.close().await.unwrap();
    app.flow.shutdown().await.unwrap();
}

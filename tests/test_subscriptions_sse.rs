//! Subscriptions as Server-Sent Events (feature `axum`).

mod common;

use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::IntoResponse;
use futures_util::StreamExt;
use walflow::listener::ListenerMessage;
use walflow::prelude::*;
use walflow::subscribe::sse::{self, SseOptions};
use walflow::subscribe::{HubOptions, Scope, Subscriptions};

#[event_source(table = "posts")]
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
struct Post {
    id: i64,
    title: String,
}

const TIMEOUT: Duration = Duration::from_secs(20);

async fn setup(options: HubOptions) -> (common::Db, Subscriptions, tokio::task::JoinHandle<()>) {
    let db = common::db().await;
    db.exec("CREATE TABLE posts (id int8 primary key, title text not null)")
        .await;
    let slot = db.slot("sse");
    db.setup(&slot, &["posts"]).await;
    let mut listener = db.listener(&slot).await.unwrap();
    let hub = Subscriptions::new(options);
    let feed = hub.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(message)) = listener.recv().await {
            match message {
                ListenerMessage::Change(raw) => feed.publish(&raw),
                ListenerMessage::Commit(c) => feed.publish_commit(c.end_lsn),
                _ => {}
            }
        }
    });
    (db, hub, task)
}

/// Reads SSE events (`field: value` blocks) from a response body.
struct Events {
    body: futures_util::stream::BoxStream<'static, Result<axum::body::Bytes, axum::Error>>,
    pending: String,
}

impl Events {
    fn new(response: axum::response::Response) -> Self {
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events {
            body: response.into_body().into_data_stream().boxed(),
            pending: String::new(),
        }
    }

    /// The next event that is not a comment, as `(field, value)` lines.
    async fn next(&mut self) -> Vec<(String, String)> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let fields: Vec<(String, String)> = block
                    .lines()
                    .filter(|l| !l.is_empty() && !l.starts_with(':'))
                    .map(|l| {
                        let (k, v) = l.split_once(':').unwrap_or((l, ""));
                        (k.to_owned(), v.trim_start().to_owned())
                    })
                    .collect();
                if !fields.is_empty() {
                    return fields;
                }
                continue;
            }
            let chunk = tokio::time::timeout(TIMEOUT, self.body.next())
                .await
                .expect("no event in time")
                .expect("stream ended")
                .unwrap();
            self.pending.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

fn field<'a>(event: &'a [(String, String)], name: &str) -> Option<&'a str> {
    event
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn streams_json_and_resumes_after_last_event_id() {
    let (db, hub, _task) = setup(HubOptions::default()).await;
    let response = sse::stream::<Post>(&hub, Scope::All, &HeaderMap::new(), SseOptions::default())
        .into_response();
    let mut events = Events::new(response);
    db.exec("INSERT INTO posts VALUES (1, 'a')").await;
    db.exec("INSERT INTO posts VALUES (2, 'b')").await;
    let first = events.next().await;
    let data: serde_json::Value = serde_json::from_str(field(&first, "data").unwrap()).unwrap();
    assert_eq!(data["action"], "insert");
    assert_eq!(data["event"]["new"]["title"], "a");
    let id = field(&first, "id").unwrap().to_owned();
    assert!(id.contains('#'), "{id}");
    events.next().await;

    // A reconnecting EventSource sends the last id it saw.
    let mut headers = HeaderMap::new();
    headers.insert("last-event-id", id.parse().unwrap());
    let response =
        sse::stream::<Post>(&hub, Scope::All, &headers, SseOptions::default()).into_response();
    let mut resumed = Events::new(response);
    let second = resumed.next().await;
    let data: serde_json::Value = serde_json::from_str(field(&second, "data").unwrap()).unwrap();
    assert_eq!(data["event"]["new"]["id"], 2);

    // Too old: the page is told to reload.
    headers.insert("last-event-id", "0/1#0".parse().unwrap());
    let response =
        sse::stream::<Post>(&hub, Scope::All, &headers, SseOptions::default()).into_response();
    let reload = Events::new(response).next().await;
    assert_eq!(field(&reload, "event"), Some("reload"));
    assert!(
        field(&reload, "data")
            .unwrap()
            .contains("reload the current state")
    );
}

#[tokio::test]
async fn cloud_events_structured_mode() {
    let (db, hub, _task) = setup(HubOptions::default()).await;
    let options = SseOptions::default().cloud_events("/blog", "com.example.blog");
    let response =
        sse::stream::<Post>(&hub, Scope::id(5), &HeaderMap::new(), options).into_response();
    let mut events = Events::new(response);
    db.exec("INSERT INTO posts VALUES (4, 'no'), (5, 'yes')")
        .await;
    let event = events.next().await;
    let ce: serde_json::Value = serde_json::from_str(field(&event, "data").unwrap()).unwrap();
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["source"], "/blog");
    assert_eq!(ce["type"], "com.example.blog.posts.insert");
    assert_eq!(ce["subject"], "5");
    assert_eq!(ce["datacontenttype"], "application/json");
    assert_eq!(ce["id"], field(&event, "id").unwrap());
    assert!(ce["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(ce["data"]["event"]["new"]["title"], "yes");
}

/// An update's `changes` are plain JSON like its rows (`{"old":"a","new":"b"}`),
/// in the plain delivery and in a CloudEvent's `data`.
#[tokio::test]
async fn an_update_s_changes_are_written_like_its_rows() {
    let (db, hub, _task) = setup(HubOptions::default()).await;
    let plain = sse::stream::<Post>(&hub, Scope::All, &HeaderMap::new(), SseOptions::default())
        .into_response();
    let cloud = sse::stream::<Post>(
        &hub,
        Scope::All,
        &HeaderMap::new(),
        SseOptions::default().cloud_events("/blog", "com.example.blog"),
    )
    .into_response();
    let (mut plain, mut cloud) = (Events::new(plain), Events::new(cloud));
    db.exec("INSERT INTO posts VALUES (1, 'a')").await;
    db.exec("UPDATE posts SET title = 'b' WHERE id = 1").await;
    plain.next().await;
    cloud.next().await;
    let data = |event: Vec<(String, String)>| -> serde_json::Value {
        serde_json::from_str(field(&event, "data").unwrap()).unwrap()
    };
    let delivery = data(plain.next().await);
    let cloud_event = data(cloud.next().await);
    assert_eq!(cloud_event["data"], delivery);
    let event = &delivery["event"];
    assert_eq!(event["kind"], "update");
    assert_eq!(
        event["changes"],
        serde_json::json!({"title": {"old": "a", "new": "b"}}),
        "{delivery}"
    );
    assert_eq!(event["old"]["title"], "a");
    assert_eq!(event["new"]["title"], "b");
}

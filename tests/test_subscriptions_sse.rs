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
    assert_eq!(ce["type"], "com.example.blog.public.posts.insert");
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

/// The live example's kind of endpoint: `Last-Event-ID`, else `?after=`.
async fn events(
    axum::extract::State(hub): axum::extract::State<Subscriptions>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let after = query.get("after").map(String::as_str);
    sse::stream_after::<Post>(&hub, Scope::All, &headers, after, SseOptions::default())
}

/// Serves `/events` over HTTP on a free loopback port.
async fn serve(hub: &Subscriptions) -> std::net::SocketAddr {
    let router = axum::Router::new()
        .route("/events", axum::routing::get(events))
        .with_state(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// GETs `path_and_query` with `headers` over HTTP/1.1: the status and the
/// SSE events of the body.
async fn get_events(
    addr: std::net::SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> (u16, Events) {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, axum::body::Body> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = axum::http::Request::get(format!("http://{addr}{path_and_query}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(
        TIMEOUT,
        client.request(request.body(axum::body::Body::empty()).unwrap()),
    )
    .await
    .expect("an answer in time")
    .expect("an HTTP answer");
    let status = response.status().as_u16();
    (status, Events::new(response.map(axum::body::Body::new)))
}

/// A resume position the server cannot honour, sent as `Last-Event-ID`
/// (what an `EventSource` resends by itself) or as `?after=`, starts the
/// stream with `reload` and a status of 200: never a live stream from now,
/// which would leave a gap the client cannot see.
#[tokio::test]
async fn a_position_that_cannot_be_resumed_from_is_answered_with_reload_over_http() {
    let (db, hub, _task) = setup(HubOptions::default()).await;
    let addr = serve(&hub).await;
    // Something published, so that a position can be too old and too new.
    let (_, mut live) = get_events(addr, "/events", &[]).await;
    db.exec("INSERT INTO posts VALUES (1, 'a')").await;
    let first = live.next().await;
    let first_id = field(&first, "id").unwrap().to_owned();

    let long = "F".repeat(50_000);
    let cases: [(&str, &str); 7] = [
        ("garbage", "cannot be read"),
        ("-1", "cannot be read"),
        ("FFFFFFFFF/0", "cannot be read"),
        ("0/1#99999999999999999999", "cannot be read"),
        (&long, "cannot be read"),
        ("FFFFFFFF/FFFFFFFF#4294967295", "did not come from it"),
        ("0/1#0", "changes are retained only after"),
    ];
    for (position, reason) in cases {
        let shown = &position[..position.len().min(40)];
        let encoded = url::form_urlencoded::byte_serialize(position.as_bytes()).collect::<String>();
        for (path, headers) in [
            ("/events".to_owned(), vec![("last-event-id", position)]),
            (format!("/events?after={encoded}"), vec![]),
        ] {
            let (status, mut events) = get_events(addr, &path, &headers).await;
            assert_eq!(status, 200, "{shown} in {path:.60} {headers:.60?}");
            let event = events.next().await;
            assert_eq!(
                field(&event, "event"),
                Some("reload"),
                "{shown}: {event:.200?}"
            );
            let data: serde_json::Value =
                serde_json::from_str(field(&event, "data").unwrap()).unwrap();
            let text = data["reason"].as_str().unwrap();
            assert!(text.contains(reason), "{shown}: {text}");
            assert!(text.contains("reload the current state"), "{text}");
            assert!(text.len() < 400, "the reason quotes a short part: {text}");
        }
    }

    // The header wins over the parameter (an EventSource reconnecting
    // resends both); empty values mean live from now; a good position
    // resumes, by either form.
    for (path, headers) in [
        (format!("/events?after={first_id}"), vec![]),
        (
            "/events?after=garbage".to_owned(),
            vec![("last-event-id", first_id.as_str())],
        ),
        ("/events?after=".to_owned(), vec![("last-event-id", "")]),
    ] {
        let (status, mut events) = get_events(addr, &path, &headers).await;
        assert_eq!(status, 200);
        db.exec(&format!(
            "INSERT INTO posts VALUES ({}, 'b')",
            100 + path.len() + headers.len()
        ))
        .await;
        let event = events.next().await;
        assert_eq!(
            field(&event, "event"),
            None,
            "{path} {headers:?}: {event:?}"
        );
        let data: serde_json::Value = serde_json::from_str(field(&event, "data").unwrap()).unwrap();
        assert_eq!(data["action"], "insert");
        assert_ne!(data["event"]["new"]["id"], 1, "resumed after the first");
    }
}

#[event_source(schema = "other", table = "posts")]
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
struct OtherPost {
    id: i64,
    title: String,
}

#[event_source(table = "Weird \"Quoted\" Tablé")]
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
struct Weird {
    id: String,
}

/// CloudEvents read by an independent implementation (the CloudEvents
/// SDK): tables of one name in two schemas have different types, the
/// names are written in `a`–`z`, `0`–`9` and `.` and read back exactly,
/// and `subject` carries the row's id.
#[tokio::test]
async fn cloud_events_types_name_the_schema_and_read_back() {
    let db = common::db().await;
    db.exec(
        "CREATE SCHEMA other;
         CREATE TABLE posts (id int8 primary key, title text not null);
         CREATE TABLE other.posts (id int8 primary key, title text not null);
         CREATE TABLE \"Weird \"\"Quoted\"\" Tablé\" (id text primary key)",
    )
    .await;
    let slot = db.slot("ce");
    walflow::setup::prepare(
        &db.pool,
        &walflow::setup::SetupSpec {
            publication: "events".into(),
            slot: slot.clone(),
            durable_slot: true,
            tables: vec![
                walflow::setup::TableSpec::new("public", "posts"),
                walflow::setup::TableSpec::new("other", "posts"),
                walflow::setup::TableSpec::new("public", "Weird \"Quoted\" Tablé"),
            ],
        },
    )
    .await
    .unwrap();
    let mut listener = db.listener(&slot).await.unwrap();
    let hub = Subscriptions::default();
    let feed = hub.clone();
    let _task = tokio::spawn(async move {
        while let Ok(Some(message)) = listener.recv().await {
            match message {
                ListenerMessage::Change(raw) => feed.publish(&raw),
                ListenerMessage::Commit(c) => feed.publish_commit(c.end_lsn),
                _ => {}
            }
        }
    });
    let options = SseOptions::default().cloud_events("/blog", "com.example.blog");
    let none = HeaderMap::new();
    let mut public =
        Events::new(sse::stream::<Post>(&hub, Scope::All, &none, options.clone()).into_response());
    let mut other = Events::new(
        sse::stream::<OtherPost>(&hub, Scope::All, &none, options.clone()).into_response(),
    );
    let mut weird =
        Events::new(sse::stream::<Weird>(&hub, Scope::All, &none, options).into_response());
    db.exec(
        "INSERT INTO posts VALUES (1, 'p');
         INSERT INTO other.posts VALUES (2, 'o');
         INSERT INTO \"Weird \"\"Quoted\"\" Tablé\" VALUES ('ä/1')",
    )
    .await;
    let mut types = Vec::new();
    for (events, schema, table, subject) in [
        (&mut public, "public", "posts", "1"),
        (&mut other, "other", "posts", "2"),
        (&mut weird, "public", "Weird \"Quoted\" Tablé", "ä/1"),
    ] {
        let event = events.next().await;
        let data = field(&event, "data").unwrap();
        let ce: cloudevents::Event =
            serde_json::from_str(data).unwrap_or_else(|e| panic!("not a CloudEvent ({e}): {data}"));
        use cloudevents::AttributesReader;
        assert_eq!(ce.specversion(), cloudevents::event::SpecVersion::V10);
        assert_eq!(ce.id(), field(&event, "id").unwrap());
        assert_eq!(ce.source().to_string(), "/blog");
        assert_eq!(ce.subject(), Some(subject));
        assert_eq!(ce.datacontenttype(), Some("application/json"));
        assert!(ce.time().is_some());
        let ty = ce.ty().to_owned();
        assert!(
            ty.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.'),
            "{ty}"
        );
        let parsed =
            walflow::subscribe::cloudevents::parse_event_type("com.example.blog", &ty).unwrap();
        assert_eq!(
            (
                parsed.schema.as_str(),
                parsed.table.as_str(),
                parsed.action.as_str()
            ),
            (schema, table, "insert"),
            "{ty}"
        );
        types.push(ty);
    }
    assert_eq!(types[0], "com.example.blog.public.posts.insert");
    assert_eq!(types[1], "com.example.blog.other.posts.insert");
    assert_eq!(
        types[2],
        "com.example.blog.public.z57eirdz20z22z51uotedz22z20z54ablzc3za9.insert"
    );
}

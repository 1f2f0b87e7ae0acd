//! The metrics endpoint's HTTP answers over real HTTP, from a real flow:
//!
//! - every path (`/status`, `/status/events`, `/healthz`, `/readyz`,
//!   `/metrics`, and a 404) answers with `X-Content-Type-Options: nosniff`,
//!   `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` and a
//!   `Content-Security-Policy` with `default-src 'none'` and
//!   `frame-ancestors 'none'`; the status page's allows its own inline
//!   script and style by hash and its event stream;
//! - with `metrics_endpoint_token`, `/status`, `/status/events` and
//!   `/metrics` answer 401 (`WWW-Authenticate: Bearer`) without the token
//!   or with a wrong one, 200 with it (Bearer, or Basic with the token as
//!   the password), while `/healthz` and `/readyz` stay open; on a
//!   subscriber-only node too;
//! - a short token is refused at start, without repeating it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walflow::Walflow;
use walflow::config::PubSub;

const TIMEOUT: Duration = Duration::from_secs(30);
const TOKEN: &str = "s3cr3t-t0ken-of-32-characters-xx";

/// An answer's status, headers (names in lower case, in order) and body
/// (empty for an event stream, which does not end).
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    /// The values of header `name`.
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one value of header `name`.
    fn header(&self, name: &str) -> &str {
        match self.all(name)[..] {
            [one] => one,
            ref other => panic!("{name}: {other:?}"),
        }
    }
}

/// `GET path` on `addr` with an `Authorization` value, if any.
async fn get(addr: SocketAddr, path: &str, authorization: Option<&str>) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut read = Vec::new();
    let head_end = loop {
        if let Some(at) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(TIMEOUT, s.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "{path}: the connection closed before the head ended");
        read.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(read[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("a header line");
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let streaming = headers
        .iter()
        .any(|(n, v)| n == "content-type" && v.starts_with("text/event-stream"));
    let body = if streaming {
        String::new()
    } else {
        let mut rest = read[head_end + 4..].to_vec();
        tokio::time::timeout(TIMEOUT, s.read_to_end(&mut rest))
            .await
            .expect("the body in time")
            .unwrap();
        String::from_utf8_lossy(&rest).into_owned()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn basic(user: &str, password: &str) -> String {
    // A few lines of base64 rather than a dependency.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = format!("{user}:{password}").into_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

/// The headers every answer carries, whatever its path and status.
fn assert_hardened(path: &str, answer: &Answer) {
    assert_eq!(answer.header("x-content-type-options"), "nosniff", "{path}");
    assert_eq!(answer.header("x-frame-options"), "DENY", "{path}");
    assert_eq!(answer.header("referrer-policy"), "no-referrer", "{path}");
    let policy = answer.header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ] {
        assert!(
            policy.split(';').any(|d| d.trim() == directive),
            "{path}: {directive} missing from {policy:?}"
        );
    }
}

async fn start(db: &common::Db, slot: &str, token: Option<&str>) -> Walflow {
    let mut builder = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot(slot))
        .operators(Vec::<String>::new())
        .health_interval(Duration::from_millis(100))
        .metrics_endpoint(([127, 0, 0, 1], 0));
    if let Some(token) = token {
        builder = builder.metrics_endpoint_token(token);
    }
    builder.start().await.unwrap()
}

/// Waits until `/readyz` answers 200 without credentials.
async fn wait_ready(addr: SocketAddr) {
    common::wait_until(TIMEOUT, || async move {
        get(addr, "/readyz", None).await.status == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_answers_with_the_security_headers() {
    let db = common::db().await;
    let flow = start(&db, "headers", None).await;
    let addr = flow.metrics_addr().unwrap();
    wait_ready(addr).await;

    for path in [
        "/status",
        "/status/events",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        let answer = get(addr, path, None).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert_hardened(path, &answer);
    }
    let missing = get(addr, "/nowhere", None).await;
    assert_eq!(missing.status, 404);
    assert_hardened("/nowhere", &missing);

    // The page: its own inline script and style (by hash) and its event
    // stream, nothing else.
    let page = get(addr, "/status", None).await;
    let policy = page.header("content-security-policy");
    let directives: Vec<&str> = policy.split(';').map(str::trim).collect();
    for prefix in ["script-src 'sha256-", "style-src 'sha256-"] {
        let directive = directives
            .iter()
            .find(|d| d.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} missing from {policy:?}"));
        assert_eq!(directive.split(' ').count(), 2, "one hash: {directive}");
    }
    assert!(directives.contains(&"connect-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    assert_eq!(page.header("cache-control"), "no-store");
    // Every other answer allows nothing at all.
    for path in ["/status/events", "/healthz", "/metrics"] {
        let answer = get(addr, path, None).await;
        assert_eq!(
            answer.header("content-security-policy"),
            "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            "{path}"
        );
    }
    // The event stream keeps its own caching rule.
    assert_eq!(
        get(addr, "/status/events", None)
            .await
            .header("cache-control"),
        "no-cache"
    );
    flow.shutdown().await.unwrap();
}

/// `/status`, `/status/events` and `/metrics` need the token; the health
/// paths do not.
async fn assert_guarded(addr: SocketAddr) {
    for path in ["/status", "/status/events", "/metrics"] {
        for wrong in [
            None,
            Some("Bearer wrong-token-of-32-characters-xxx".to_owned()),
            Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
            Some(format!("Bearer {TOKEN}x")),
            Some(TOKEN.to_owned()),
            Some(basic(TOKEN, "wrong")),
        ] {
            let answer = get(addr, path, wrong.as_deref()).await;
            assert_eq!(answer.status, 401, "{path} with {wrong:?}: {}", answer.body);
            let challenges = answer.all("www-authenticate");
            assert!(
                challenges.iter().any(|c| c.starts_with("Bearer ")),
                "{path}: {challenges:?}"
            );
            assert!(
                answer.body.contains("Authorization: Bearer <token>"),
                "{}",
                answer.body
            );
            assert!(
                !answer.body.contains("walflow_"),
                "nothing leaks: {}",
                answer.body
            );
            assert_hardened(path, &answer);
        }
        for right in [
            format!("Bearer {TOKEN}"),
            format!("bearer {TOKEN}"),
            basic("anyone", TOKEN),
        ] {
            let answer = get(addr, path, Some(&right)).await;
            assert_eq!(answer.status, 200, "{path} with {right:?}: {}", answer.body);
            assert_hardened(path, &answer);
        }
    }
    for path in ["/healthz", "/readyz"] {
        let answer = get(addr, path, None).await;
        assert_eq!(answer.status, 200, "{path} stays open: {}", answer.body);
        assert!(answer.body.contains("\"alive\":true"), "{}", answer.body);
        assert_hardened(path, &answer);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_the_status_page_its_events_and_metrics() {
    let db = common::db().await;
    let flow = start(&db, "token", Some(TOKEN)).await;
    let addr = flow.metrics_addr().unwrap();
    wait_ready(addr).await;
    assert_guarded(addr).await;
    // With the token, the page's data is there.
    let metrics = get(addr, "/metrics", Some(&format!("Bearer {TOKEN}"))).await;
    assert!(metrics.body.contains("walflow_"), "{}", metrics.body);
    flow.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_a_subscriber_only_node_too() {
    let db = common::db().await;
    // The node holding the slot sets up the shared tables.
    let holder = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("holder"))
        .operators(Vec::<String>::new())
        .pubsub(PubSub::Postgres)
        .start()
        .await
        .unwrap();
    let node = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("holder"))
        .pubsub(PubSub::Postgres)
        .subscriber_only()
        .metrics_endpoint(([127, 0, 0, 1], 0))
        .metrics_endpoint_token(TOKEN)
        .start()
        .await
        .unwrap();
    let addr = node.metrics_addr().unwrap();
    wait_ready(addr).await;
    assert_guarded(addr).await;
    node.shutdown().await.unwrap();
    holder.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_token_is_refused_at_start() {
    let db = common::db().await;
    let refused = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("short"))
        .operators(Vec::<String>::new())
        .metrics_endpoint(([127, 0, 0, 1], 0))
        .metrics_endpoint_token("hunter2")
        .start()
        .await
        .expect_err("a 7-character token is refused");
    let message = refused.to_string();
    assert!(
        message.contains("metrics_endpoint_token")
            && message.contains("7 characters long: use at least 16"),
        "{message}"
    );
    assert!(
        !message.contains("hunter2"),
        "the token is not repeated: {message}"
    );
}

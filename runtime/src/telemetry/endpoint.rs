//! The HTTP endpoint of [`WalflowBuilder::metrics_endpoint`](crate::WalflowBuilder::metrics_endpoint):
//! `/metrics` (Prometheus' text format), `/healthz` and `/readyz` (200 or
//! 503, with the [`Health`](super::Health) as JSON), and `/status`, a page
//! fed live by `/status/events` (Server-Sent Events, one `status` event
//! with the whole state at each reading).
//!
//! Every answer carries `X-Content-Type-Options: nosniff`,
//! `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` and a
//! `Content-Security-Policy` that allows nothing (`default-src 'none'`,
//! `frame-ancestors 'none'`); the status page's allows its own inline
//! script and style by their SHA-256 hashes, and its event stream
//! (`connect-src 'self'`). With
//! [`metrics_endpoint_token`](crate::WalflowBuilder::metrics_endpoint_token),
//! `/status`, `/status/events` and `/metrics` answer 401 without the token;
//! `/healthz` and `/readyz` stay open for orchestrators.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use futures_util::stream::{self, Stream};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::validate_request::{ValidateRequest, ValidateRequestHeaderLayer};

use super::HealthCell;

/// How often the recorder folds the recorded samples into its histograms
/// (also done at each scrape): without it, samples would pile up between
/// scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

/// Buckets of the `_seconds` histograms: 1 ms to 5 min.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The process's Prometheus recorder, installed as the global `metrics`
/// recorder by the first endpoint (a process has one global recorder).
fn recorder() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .map_err(|e| e.to_string())?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|_| {
                "another `metrics` recorder is installed in this process; serve its metrics \
                 instead of `metrics_endpoint`, or install none"
                    .to_owned()
            })?;
            super::describe();
            Ok(handle)
        })
        .clone()
}

/// A running endpoint; stops when dropped.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Stops serving, letting the requests under way finish.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Binds `addr` and serves until stopped; with `token`, `/status`,
/// `/status/events` and `/metrics` require it.
pub(crate) async fn serve(
    addr: SocketAddr,
    health: HealthCell,
    slot: String,
    token: Option<String>,
) -> Result<Endpoint, String> {
    let guard = token.as_deref().map(TokenCheck::new).transpose()?;
    let handle = recorder()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop, mut stopped) = watch::channel(false);
    let h = health.clone();
    let ready = health.clone();
    let (feed, feed_stop) = (health, stop.subscribe());
    let upkeep = handle.clone();
    let guarded = Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move {
                    handle.run_upkeep();
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        handle.render(),
                    )
                }
            }),
        )
        .route(
            "/status",
            get(|| async { Html(STATUS_PAGE) }).layer(SetResponseHeaderLayer::overriding(
                header::CONTENT_SECURITY_POLICY,
                status_page_policy().clone(),
            )),
        )
        .route(
            "/status/events",
            get(move || {
                let events = status_events(feed.clone(), slot.clone(), feed_stop.clone());
                async move { Sse::new(events).keep_alive(KeepAlive::default()) }
            }),
        );
    let guarded = match guard {
        Some(guard) => guarded.route_layer(ValidateRequestHeaderLayer::custom(guard)),
        None => guarded,
    };
    let app = Router::new()
        .route(
            "/healthz",
            get(move || {
                let health = h.health();
                async move { json(health.alive, &health) }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let health = ready.health();
                async move { json(health.ready, &health) }
            }),
        )
        .merge(guarded)
        // The status page sets its own policy; every other answer (JSON,
        // text, event stream, errors) allows nothing.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(NOTHING_POLICY),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        // Dead letters hold row data: no cache keeps them (the event
        // stream's own `no-cache` stays).
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    let mut upkeep_stop = stopped.clone();
    let task = tokio::spawn(async move {
        let upkeep = async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(UPKEEP) => upkeep.run_upkeep(),
                    _ = upkeep_stop.wait_for(|s| *s) => return,
                }
            }
        };
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
        let (served, ()) = tokio::join!(serve.into_future(), upkeep);
        if let Err(e) = served {
            tracing::warn!(%addr, error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(Endpoint {
        addr,
        stop,
        task: Some(task),
    })
}

/// The status page (plain HTML and a few lines of JavaScript).
const STATUS_PAGE: &str = include_str!("status.html");

/// The policy of every answer but the status page: nothing may load, run
/// or frame it.
const NOTHING_POLICY: &str =
    "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The status page's policy: nothing but its own inline script and style
/// (by their hashes) and its event stream.
fn status_page_policy() -> &'static HeaderValue {
    static POLICY: OnceLock<HeaderValue> = OnceLock::new();
    POLICY.get_or_init(|| {
        let policy = format!(
            "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            inline_hash(STATUS_PAGE, "script"),
            inline_hash(STATUS_PAGE, "style"),
        );
        HeaderValue::from_str(&policy).expect("the policy is visible ASCII")
    })
}

/// The CSP source (`sha256-...`) of the one inline `<tag>` element of
/// `page`: the hash of its text, as the browser computes it.
fn inline_hash(page: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = page.find(&open).expect("the page has the element") + open.len();
    let end = start + page[start..].find(&close).expect("the element is closed");
    let digest = Sha256::digest(&page.as_bytes()[start..end]);
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The shortest token [`TokenCheck`] takes.
const MIN_TOKEN_LEN: usize = 16;

/// Lets through the requests that carry the endpoint's token, as
/// `Authorization: Bearer <token>` or as the password of Basic credentials
/// (what a browser sends once its user typed it); answers 401 otherwise.
/// Compares SHA-256 digests in constant time, so neither the token's
/// content nor its length shows in the time an answer takes.
#[derive(Clone)]
struct TokenCheck {
    digest: Arc<[u8; 32]>,
}

impl TokenCheck {
    fn new(token: &str) -> Result<TokenCheck, String> {
        if let Some(at) = token.chars().position(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "the token (metrics_endpoint_token) has a character other than visible ASCII at \
                 position {}: use letters, digits and punctuation, such as the output of \
                 `openssl rand -hex 32`",
                at + 1
            ));
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the token (metrics_endpoint_token) is {} characters long: use at least \
                 {MIN_TOKEN_LEN}, such as the output of `openssl rand -hex 32`",
                token.len()
            ));
        }
        Ok(TokenCheck {
            digest: Arc::new(Sha256::digest(token.as_bytes()).into()),
        })
    }

    fn accepts(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(presented) = authorization.and_then(|v| presented_token(v.as_bytes())) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(&presented).into();
        digest.ct_eq(&self.digest[..]).into()
    }
}

/// The token an `Authorization` value carries: a Bearer token, or the
/// password of Basic credentials (the user name is not checked). Schemes
/// are read without regard to case (RFC 9110).
fn presented_token(value: &[u8]) -> Option<Vec<u8>> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        return Some(decoded[colon + 1..].to_vec());
    }
    None
}

impl<B> ValidateRequest<B> for TokenCheck {
    type ResponseBody = Body;

    fn validate(&mut self, request: &mut Request<B>) -> Result<(), Response> {
        if self.accepts(request.headers().get(header::AUTHORIZATION)) {
            return Ok(());
        }
        let mut answer = (
            StatusCode::UNAUTHORIZED,
            "this page needs the metrics endpoint's token: send `Authorization: Bearer <token>` \
             (or, in a browser, any user name and the token as the password)\n",
        )
            .into_response();
        let headers = answer.headers_mut();
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"walflow\""),
        );
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"walflow\", charset=\"UTF-8\""),
        );
        Err(answer)
    }
}

/// The state now, then at each change, as `status` events; ends when the
/// endpoint stops.
fn status_events(
    health: HealthCell,
    slot: String,
    stop: watch::Receiver<bool>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let changes = health.changes();
    stream::unfold(
        (health, slot, changes, stop, true),
        |(health, slot, mut changes, mut stop, first)| async move {
            if !first {
                tokio::select! {
                    changed = changes.changed() => changed.ok()?,
                    _ = stop.wait_for(|s| *s) => return None,
                }
            }
            changes.mark_unchanged();
            let status = health.status(&slot);
            let data = serde_json::to_string(&status).expect("the status serializes");
            let event = SseEvent::default().event("status").data(data);
            Some((Ok(event), (health, slot, changes, stop, false)))
        },
    )
}

fn json(ok: bool, health: &super::Health) -> Response {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string(health).expect("health serializes");
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_page_has_one_inline_script_and_style_and_no_inline_handlers() {
        for tag in ["script", "style"] {
            assert_eq!(
                STATUS_PAGE.matches(&format!("<{tag}")).count(),
                1,
                "<{tag}>"
            );
        }
        // Attributes the policy would block: handlers and style attributes.
        for attr in [
            " style=",
            " onclick=",
            " onload=",
            " onerror=",
            "javascript:",
        ] {
            assert!(!STATUS_PAGE.contains(attr), "{attr}");
        }
        let policy = status_page_policy().to_str().unwrap();
        assert!(
            policy.starts_with("default-src 'none'; script-src 'sha256-"),
            "{policy}"
        );
    }

    #[test]
    fn the_hash_is_of_the_element_text() {
        // From the CSP specification's example: `alert('Hello, world.');`.
        assert_eq!(
            inline_hash("<script>alert('Hello, world.');</script>", "script"),
            "sha256-qznLcsROx4GACP2dm0UCKCzCG+HiZ1guq6ZZDob/Tng="
        );
    }

    #[test]
    fn tokens_are_read_from_bearer_and_basic_credentials() {
        let check = TokenCheck::new("0123456789abcdef").unwrap();
        let accepts = |v: &str| check.accepts(Some(&HeaderValue::from_str(v).unwrap()));
        assert!(accepts("Bearer 0123456789abcdef"));
        assert!(accepts("bearer  0123456789abcdef "));
        // `anyone:0123456789abcdef`
        assert!(accepts("Basic YW55b25lOjAxMjM0NTY3ODlhYmNkZWY="));
        assert!(!accepts("Bearer 0123456789abcde"));
        assert!(!accepts("Bearer 0123456789abcdef0"));
        assert!(!accepts("0123456789abcdef"));
        assert!(!accepts("Basic MDEyMzQ1Njc4OWFiY2RlZg=="), "no colon");
        assert!(!accepts("Digest 0123456789abcdef"));
        assert!(!check.accepts(None));
    }

    #[test]
    fn short_tokens_and_invisible_characters_are_refused() {
        let short = TokenCheck::new("secret").err().unwrap();
        assert!(
            short.contains("6 characters long: use at least 16"),
            "{short}"
        );
        let space = TokenCheck::new("0123456789 abcdef").err().unwrap();
        assert!(space.contains("at position 11"), "{space}");
        assert!(
            !space.contains("0123456789"),
            "the token is not repeated: {space}"
        );
    }
}

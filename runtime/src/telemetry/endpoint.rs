//! The HTTP endpoint of [`WalflowBuilder::metrics_endpoint`](crate::WalflowBuilder::metrics_endpoint):
//! `/metrics` (Prometheus' text format), `/healthz` and `/readyz` (200 or
//! 503, with the [`Health`](super::Health) as JSON), and `/status`, a page
//! fed live by `/status/events` (Server-Sent Events, one `status` event
//! with the whole state at each reading).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures_util::stream::{self, Stream};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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

/// Binds `addr` and serves until stopped.
pub(crate) async fn serve(
    addr: SocketAddr,
    health: HealthCell,
    slot: String,
) -> Result<Endpoint, String> {
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
    let app = Router::new()
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
        .route("/status", get(|| async { Html(STATUS_PAGE) }))
        .route(
            "/status/events",
            get(move || {
                let events = status_events(feed.clone(), slot.clone(), feed_stop.clone());
                async move { Sse::new(events).keep_alive(KeepAlive::default()) }
            }),
        );
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

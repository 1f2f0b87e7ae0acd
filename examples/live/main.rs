//! A live web page: `cargo run --example live`, then open the printed URL.
//!
//! Uses `DATABASE_URL` when set (a PostgreSQL with `wal_level = logical`),
//! otherwise starts a throwaway cluster from the PostgreSQL binaries on
//! `PATH`. `LISTEN` sets the address (default `127.0.0.1:3000`); the flow's
//! metrics, health and status page are on `METRICS_LISTEN` (default
//! `127.0.0.1:0`, a free port, printed), and with `METRICS_TOKEN` (at least
//! 16 characters, such as `openssl rand -hex 32`) the status page and
//! `/metrics` require that token (in a browser: any user name, the token as
//! the password). Both stay on loopback by default: the status page shows
//! dead letters, whose errors hold row data. Ctrl-C
//! stops it cleanly: the flow shuts down (its live streams end, so open pages
//! let go), then the server.
//!
//! Comments hidden by a moderator (`hidden = true`) are not shown, counted
//! or streamed: the comment stream is authorized (see `app.rs`).
//!
//! On `DATABASE_URL`'s database it keeps its tables in the schema
//! `walflow_live_example` (created when missing, kept between runs) and
//! touches no other table. Its replication slot, `walflow_live_<database>`,
//! is temporary: the server drops it when the example stops, however it
//! stops. Its publication, `walflow_live_example`, is dropped on Ctrl-C.

mod app;

use walflow::{Config, Report};

#[tokio::main]
async fn main() -> Result<(), Report> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let _embedded;
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => {
            let pg = walflow::embedded::EmbeddedPostgres::start().await?;
            let url = pg.url();
            _embedded = pg;
            url
        }
    };
    let slot =
        walflow::config::slot_name_for("walflow_live", Config::from_database_url(&url)?.database());
    let metrics = std::env::var("METRICS_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".into());
    let metrics = metrics.parse().map_err(|e| {
        format!("METRICS_LISTEN={metrics:?} is not an address such as 127.0.0.1:9000: {e}")
    })?;
    let token = std::env::var("METRICS_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty());
    let guarded = token.is_some();
    let metrics = app::Metrics {
        addr: metrics,
        token,
    };
    let (router, app) = app::start(&url, &slot, Some(metrics)).await?;
    println!(
        "tables in schema {}, temporary slot {slot}, publication {} (dropped on Ctrl-C)",
        app::SCHEMA_NAME,
        app::PUBLICATION
    );
    if let Some(addr) = app.flow.metrics_addr() {
        let access = if guarded {
            "guarded by METRICS_TOKEN: any user name, the token as the password"
        } else {
            "open to whoever reaches it: set METRICS_TOKEN to guard it"
        };
        println!("status page on http://{addr}/status (metrics on /metrics; {access})");
    }
    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("listening on LISTEN={addr}: {e}"))?;
    println!("live example on http://{}", listener.local_addr()?);
    let flow = app.flow.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            println!("stopping");
            if let Err(e) = flow.shutdown().await {
                eprintln!("the flow did not stop cleanly: {e}");
            }
        })
        .await?;
    app::drop_publication(&app.pool).await?;
    println!("stopped");
    Ok(())
}

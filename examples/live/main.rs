//! A live web page: `cargo run --example live`, then open the printed URL.
//!
//! Uses `DATABASE_URL` when set (a PostgreSQL with `wal_level = logical`),
//! otherwise starts a throwaway cluster from the PostgreSQL binaries on
//! `PATH`. `LISTEN` sets the address (default `127.0.0.1:3000`).

mod app;

#[tokio::main]
async fn main() -> Result<(), walflow::BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let _embedded;
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) => url,
        Err(_) => {
            let pg = walflow::embedded::EmbeddedPostgres::start().await?;
            let url = pg.url();
            _embedded = pg;
            url
        }
    };
    let (router, _app) = app::start(&url, "walflow_live").await?;
    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("live example on http://{}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}

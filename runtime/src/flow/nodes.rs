//! Several nodes: the broadcaster of the node holding the slot, the
//! subscriber-only node, and keeping this flow's record among the flows
//! running a slot's operators (`walflow.nodes`, with a heartbeat) that the
//! LSN fence reads: the statements are in [`crate::queue::nodes`].

use std::sync::Arc;

use sqlx::postgres::PgPoolOptions;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{FlowError, Walflow, WalflowBuilder};
use crate::config::{Config, ConfigError, PubSub};
use crate::lsn::Lsn;
use crate::queue::{Handover, Shared, Store};
use crate::subscribe::{Broadcast, HubOptions, PgPubSub, Relay, Subscriptions, Transaction};

/// With [`PubSub::Postgres`], what the listener's consumer feeds instead of
/// the hub: a relay that hands each committed transaction, in commit order,
/// to the node's own hub at once and to the broadcaster task.
///
/// The consumer never waits for the broadcast: transactions not broadcast
/// yet wait in memory, in order, while the broadcaster retries with the
/// configured backoff (`min_restart_time`, `backoff_multiplicator`,
/// `max_restart_time`).
pub(super) async fn start_broadcaster(
    pool: &sqlx::PgPool,
    config: &Config,
    hub: Subscriptions,
    handed_on: Option<Lsn>,
    stop: watch::Receiver<bool>,
) -> Result<(Relay, JoinHandle<()>), FlowError> {
    let pubsub = PgPubSub::from_config(pool.clone(), config).await?;
    pubsub.resume_sending(handed_on).await?;
    let (out, queued) = mpsc::unbounded_channel();
    let relay = Relay::new(hub, out);
    let task = tokio::spawn(broadcast(pubsub, queued, config.clone(), stop));
    Ok((relay, task))
}

/// Sends the transactions in order, each until it succeeds. Ends when the
/// consumer is gone and everything queued is sent, or when a send fails
/// after the flow was asked to stop (what is left is reported to the
/// receivers as missed by the next start: see
/// [`PgPubSub::resume_sending`]).
async fn broadcast(
    pubsub: PgPubSub,
    mut queued: mpsc::UnboundedReceiver<Transaction>,
    config: Config,
    mut stop: watch::Receiver<bool>,
) {
    while let Some(tx) = queued.recv().await {
        metrics::gauge!(crate::telemetry::PUBSUB_PENDING).set((queued.len() + 1) as f64);
        let mut attempt = 0u32;
        while let Err(e) = pubsub.send(&tx).await {
            attempt += 1;
            let waiting = queued.len() + 1;
            if *stop.borrow() {
                tracing::error!(
                    end_lsn = %tx.end_lsn,
                    waiting,
                    error = %e,
                    "pubsub: broadcasting failed while stopping; receivers will be told \
                     they missed these transactions"
                );
                return;
            }
            tracing::warn!(
                end_lsn = %tx.end_lsn,
                attempt,
                waiting,
                error = %e,
                "pubsub: broadcasting a transaction failed; retrying (later ones wait, in order)"
            );
            tokio::select! {
                _ = tokio::time::sleep(config.restart_delay(attempt)) => {}
                // One more attempt, then give up if it fails.
                _ = stop.wait_for(|s| *s) => {}
            }
        }
        metrics::gauge!(crate::telemetry::PUBSUB_PENDING).set(queued.len() as f64);
    }
}

/// Starts a node that only receives: see [`WalflowBuilder::subscriber_only`].
pub(super) async fn start_subscriber(builder: WalflowBuilder) -> Result<Walflow, FlowError> {
    let config = builder.config?;
    #[cfg(feature = "embedded")]
    let (config, embedded) = if builder.embedded {
        let pg = crate::embedded::EmbeddedPostgres::start().await?;
        (config.database_url(pg.url()), Some(pg))
    } else {
        (config, None)
    };
    let config = config.build()?;
    if config.pubsub() != PubSub::Postgres {
        return Err(ConfigError::InvalidValue {
            option: "pubsub",
            value: "local".into(),
            reason: "a subscriber-only node receives the changes over PostgreSQL; \
                     set `.pubsub(PubSub::Postgres)` or `WALFLOW_PUBSUB=postgres`"
                .into(),
        }
        .into());
    }
    if builder.operators.as_ref().is_some_and(|o| !o.is_empty()) {
        return Err(FlowError::Unsupported(
            "a subscriber-only node runs no operators; remove `.operators(..)` \
             (they run on the node holding the slot)"
                .into(),
        ));
    }
    let pool = match builder.pool.clone() {
        Some(pool) => pool,
        None => PgPoolOptions::new()
            .max_connections(builder.max_connections)
            .connect_with(config.connect_options())
            .await
            .map_err(FlowError::sql(format!("connecting to {}", config.server())))?,
    };
    for sql in &builder.setup_sql {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&pool)
            .await
            .map_err(FlowError::sql(format!("running the set-up SQL {sql:?}")))?;
    }
    let pubsub = PgPubSub::from_config(pool.clone(), &config).await?;
    // Subscriptions see every transaction sent from now on.
    let hub = Subscriptions::new(HubOptions {
        start: Some(pubsub.latest().await?.unwrap_or(Lsn::ZERO)),
        ..builder.hub_options.clone()
    });
    let listening = pubsub.listen(hub.clone()).await?;
    let (stop, _) = watch::channel(false);
    crate::telemetry::describe();
    // No slot: ready once it listens.
    let health = crate::telemetry::HealthCell::without_slot();
    health.streaming(true);
    #[cfg(feature = "prometheus")]
    let endpoint = match builder.metrics_endpoint {
        Some(addr) => Some(
            crate::telemetry::endpoint::serve(
                addr,
                health.clone(),
                config.slot_name().to_owned(),
                builder.metrics_endpoint_token.clone(),
            )
            .await
            .map_err(|reason| FlowError::MetricsEndpoint { addr, reason })?,
        ),
        None => None,
    };
    #[cfg(feature = "prometheus")]
    let metrics_addr = endpoint.as_ref().map(|e| e.addr);
    Ok(Walflow {
        hub,
        shared: Arc::new(Shared {
            pool,
            slot: config.slot_name().to_owned(),
            store: Store::new(&config, true),
            handover: Handover::new(&[], false),
            config,
            server_gone: watch::channel(0).0,
            health,
        }),
        operators: Vec::new(),
        stop,
        tasks: std::sync::Mutex::new(Some(super::Tasks {
            consumer: None,
            executors: Vec::new(),
            broadcaster: None,
            listening: Some(listening),
            health: None,
            #[cfg(feature = "prometheus")]
            endpoint,
            requests: None,
        })),
        stopped: watch::channel(false).0,
        owns_pool: builder.pool.is_none(),
        subscriber_only: true,
        #[cfg(feature = "prometheus")]
        metrics_addr,
        #[cfg(feature = "embedded")]
        _embedded: embedded,
    })
}

/// Records every [`NODE_HEARTBEAT`](crate::queue::status::NODE_HEARTBEAT)
/// that node `node` still runs, until `stop` (recording it again should
/// its row be gone: removed as stale after a long outage).
pub(super) async fn heartbeat(
    shared: &Shared,
    node: &str,
    operators: &[String],
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(crate::queue::status::NODE_HEARTBEAT) => {}
        }
        if let Err(e) =
            crate::queue::nodes::heartbeat(&shared.pool, &shared.slot, node, operators).await
        {
            shared.note_error(&e);
            tracing::warn!(
                slot = %shared.slot,
                error = %crate::pg_error::DbError(&e),
                "cannot record this flow's heartbeat in walflow.nodes"
            );
        }
    }
}

/// Removes node `node`: the flow has stopped, its operators no longer
/// count for the LSN fence unless another running flow declares them.
pub(super) async fn deregister(shared: &Shared, node: &str) {
    if let Err(e) = crate::queue::nodes::deregister(&shared.pool, &shared.slot, node).await {
        // Its heartbeat stops: it stops counting after NODE_LIVE_FOR.
        tracing::warn!(
            slot = %shared.slot,
            error = %crate::pg_error::DbError(&e),
            "cannot remove this flow from walflow.nodes"
        );
    }
}

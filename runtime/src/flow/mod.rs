// One file of this length: most of it is the module's documentation; the builder's `start` wires every stage, in order.
//! [`Walflow`]: the runtime that keeps derived tables in step.
//!
//! [`Walflow::builder`]`...`[`start`](WalflowBuilder::start) checks the server
//! ([`preflight`](crate::preflight)), migrates the
//! `walflow` schema (see [`migrate`](crate::migrate)), publishes the tables
//! of the selected operators, creates the slot, starts the listener and one
//! supervised executor per operator.
//!
//! # Guarantees
//!
//! With either queue storage ([`QueueStorage`](crate::config::QueueStorage)):
//!
//! - Query operators apply each event exactly once: the query (or the
//!   `delete_with` delete) commits in one transaction with what records
//!   that the event is done. Should two flows work the same events for a
//!   moment (one still shutting down while its successor starts), a unit
//!   that finds them already done by the other rolls back.
//! - Handler operators run at least once; a handler that writes through
//!   [`Ctx::transaction`](crate::Ctx::transaction) has its writes committed
//!   with the event's completion, so exactly once.
//! - Per operator, the events of one mapped id are applied in commit order;
//!   different ids run concurrently ([`WalflowBuilder::concurrency`]). A
//!   failing id is retried with backoff (`min_restart_time`,
//!   `backoff_multiplicator`, `max_restart_time`, `max_retries`) and then
//!   dead-lettered; it holds up neither other ids nor other operators. A lost
//!   database connection is retried without counting as an attempt.
//!
//! With the default, [`QueueStorage::Stream`](crate::config::QueueStorage::Stream),
//! the slot is the queue: rows are handed to the executors in memory and
//! no queue row is written; each unit records the positions of the events
//! it applied (`walflow.applied`) in its own transaction, and the slot is
//! acknowledged only up to the oldest event some operator has neither
//! applied nor spilled. After a crash or a stop the slot delivers the rest
//! again and each operator skips what its record says it applied. An
//! operator that falls behind ([`spill_rows`](WalflowBuilder::spill_rows),
//! [`spill_after`](WalflowBuilder::spill_after)) or whose id waits to try
//! again spills its held events to `walflow.queue` and runs from there
//! until it has caught up, so it holds back neither the others nor the
//! slot's acknowledgement. The argument is rule 12 of the queue protocol
//! (`runtime/src/queue/mod.rs`).
//!
//! With [`QueueStorage::Postgres`](crate::config::QueueStorage::Postgres),
//! a transaction's events are in the durable queue (`walflow.queue`)
//! before the listener acknowledges it, and each unit deletes its queue
//! rows; a transaction delivered again after a crash is recognised by its
//! position and skipped. A transaction too big to hold is queued in chunks
//! before its commit arrives, and the queue remembers how far into it it
//! got. It writes a queue row per event and operator (the README's
//! benchmarks compare the WAL each storage writes).
//!
//! # Throughput
//!
//! - Rows are handed to the executors in memory; the durable queue also
//!   writes them with one statement per batch of transactions, and never
//!   reads them back while they are held.
//! - For a `coalesce: true` operator, consecutive events of one id (up to a
//!   delete, which is a barrier) collapse into one queue row when queued,
//!   and the executor merges whatever is pending for an id when it gets to
//!   it: the query runs once for all of them.
//! - A query operator runs up to 64 ids per transaction; should that
//!   transaction fail, each id runs on its own with its own retries.
//!
//! # Memory
//!
//! With the stream storage, the rows handed over and neither applied nor
//! spilled are bounded (20,000, and at least twice `spill_rows`): past
//! that the listener waits, while the operator that fell behind spills.
//! With the durable queue, the queue rows of a transaction are held until
//! its commit arrives or 10,000 of them accumulate (then they are queued
//! in part); each executor holds at most 20,000 queued rows.
//!
//! # Selecting operators
//!
//! By default every operator of the [`Registry`] runs and every declared
//! table is published. [`WalflowBuilder::operators`] runs only the named
//! operators and publishes only the tables they listen to (useful when one
//! program declares operators for several databases, and in tests, where
//! every declaration linked into the test binary is registered).
//!
//! # Queue and process status storage
//!
//! See [Guarantees](#guarantees) for the two queue storages.
//!
//! [`ProcessStatusStorage::Memory`](crate::config::ProcessStatusStorage::Memory) keeps the process status
//! ([`Walflow::processed`]) in memory: it starts empty at each start and
//! covers the events seen since.
//!
//! # Several nodes
//!
//! With [`PubSub::Postgres`] ([`WalflowBuilder::pubsub`],
//! `WALFLOW_PUBSUB=postgres`), the flow holding the slot broadcasts each
//! committed transaction, in commit order, over
//! [`PgPubSub`](crate::subscribe::PgPubSub) on
//! [`pubsub_channel`](WalflowBuilder::pubsub_channel) (default
//! `walflow_events`). Its own hub is fed directly, in the same order, as
//! each transaction commits; the other nodes' hubs are fed from the
//! channel. Other processes start a [subscriber-only](WalflowBuilder::subscriber_only)
//! flow: no slot, no operators, only `LISTEN` and a hub, so
//! [`Walflow::subscribe`], [`Walflow::subscription`] and
//! [`Walflow::wait_for`] work there too.
//!
//! Broadcasting never holds up the operator queues: the listener's consumer
//! hands each transaction on and goes on; the transactions not broadcast
//! yet wait in memory, in order, and a failed broadcast is retried with the
//! configured backoff (`min_restart_time`, `backoff_multiplicator`,
//! `max_restart_time`) until it succeeds, later ones waiting behind it, so
//! none is lost or reordered while the process runs. Should the process
//! stop before broadcasting some (a crash, or the database unreachable at
//! shutdown), the next start finds the log behind the slot's queued
//! position and the receivers are told they missed transactions
//! ([`Lagged`](crate::subscribe::Lagged) with `lost` set) rather than
//! skipping them silently. A node whose `LISTEN` connection drops catches
//! up from `walflow.pubsub_log`; see [`crate::subscribe::pubsub`].

mod consumer;
mod health;
mod nodes;
mod requests;

use serde::de::DeserializeOwned;

use crate::registry::{EventSource, OperatorAction};
use crate::subscribe::{
    Delivery, HubOptions, Scope, Subscription, SubscriptionBuilder, Subscriptions, WaitError,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigBuilder, ConfigError, ErrorLogger, PubSub};
use crate::event::Position;
use crate::listener::{ListenerError, ListenerOptions};
use crate::lsn::Lsn;
use crate::operator::executor;
use crate::pg_error::transient_retried;
use crate::queue::handover::Signals;
pub use crate::queue::status::DeadLetter;
use crate::queue::store::StoreError;
use crate::queue::{Handover, Shared, Store};
use crate::registry::{OperatorRegistration, Registry, RegistryError};
use crate::setup::{SetupError, SetupSpec, TableSpec, prepare};
use crate::telemetry::{Health, HealthCell};

/// Why the flow could not start or answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The declarations do not fit together.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A database statement failed; `step` says what walflow was doing
    /// and on what ("reading the dead letters of operator `PostStats`").
    #[error("{step}: {}", crate::pg_error::DbError(.source))]
    Sql {
        /// What walflow was doing, and on what.
        step: String,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// Publishing the tables or creating the slot failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The listener could not start.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// The server cannot stream to walflow (`wal_level`, the REPLICATION
    /// attribute, free WAL senders and slots, the slot itself), checked
    /// before anything is set up.
    #[error(transparent)]
    Preflight(#[from] crate::preflight::PreflightError),
    /// The throwaway PostgreSQL could not start.
    #[cfg(feature = "embedded")]
    #[error(transparent)]
    Embedded(#[from] crate::embedded::EmbeddedError),
    /// [`WalflowBuilder::operators`] names an operator that is not
    /// registered.
    #[error("no operator is named `{0}`; declared operators: {1}")]
    UnknownOperator(String, String),
    /// An option that is not implemented yet.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// Broadcasting or receiving over PostgreSQL failed to start.
    #[error(transparent)]
    PubSub(#[from] crate::subscribe::PubSubError),
    /// A method that needs the operators, called on a
    /// [subscriber-only](WalflowBuilder::subscriber_only) node.
    #[error(
        "`{0}` needs the node running the operators; this node is subscriber-only, \
         call it on the node holding the slot"
    )]
    SubscriberOnly(&'static str),
    /// The metrics endpoint could not start (the address is taken, or
    /// another `metrics` recorder is installed).
    #[cfg(feature = "prometheus")]
    #[error("the metrics endpoint on {addr} could not start: {reason}")]
    MetricsEndpoint {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
    /// [`Walflow::wait_processed`] ran out of time.
    #[error("the operators did not reach {lsn} within {timeout:?}")]
    Timeout {
        /// The position waited for.
        lsn: Lsn,
        /// How long it waited.
        timeout: Duration,
    },
}

impl FlowError {
    /// A database error met while doing `step`.
    pub(crate) fn sql(step: impl Into<String>) -> impl FnOnce(sqlx::Error) -> FlowError {
        let step = step.into();
        move |source| FlowError::Sql { step, source }
    }

    /// A queue store error met while doing `step`.
    pub(crate) fn store(step: impl Into<String>) -> impl FnOnce(StoreError) -> FlowError {
        let step = step.into();
        move |e| match e {
            StoreError::Sql(source) => FlowError::Sql { step, source },
            StoreError::Unavailable(what) => FlowError::SubscriberOnly(what),
        }
    }
}

/// Configures and starts a [`Walflow`]. Every [`Config`] option has a method;
/// options not set come from `DATABASE_URL` and the `WALFLOW_*` environment
/// variables, then the defaults.
pub struct WalflowBuilder {
    config: Result<ConfigBuilder, ConfigError>,
    operators: Option<Vec<String>>,
    concurrency: Option<usize>,
    operator_concurrency: HashMap<String, usize>,
    registry: Option<&'static Registry>,
    max_connections: u32,
    pool: Option<PgPool>,
    hub_options: HubOptions,
    setup_sql: Vec<String>,
    subscriber_only: bool,
    #[cfg(feature = "embedded")]
    embedded: bool,
    #[cfg(feature = "prometheus")]
    metrics_endpoint: Option<std::net::SocketAddr>,
    #[cfg(feature = "prometheus")]
    metrics_endpoint_token: Option<String>,
}

impl std::fmt::Debug for WalflowBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalflowBuilder")
            .field("operators", &self.operators)
            .field("concurrency", &self.concurrency)
            .field("subscriber_only", &self.subscriber_only)
            .finish_non_exhaustive()
    }
}

impl WalflowBuilder {
    fn map(mut self, f: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Self {
        self.config = self.config.map(f);
        self
    }

    /// Starts from this configuration instead of the environment.
    pub fn config(mut self, config: Config) -> Self {
        self.config = Ok(config.into_builder());
        self
    }

    // One setter per option of the configuration, forwarded to it.
    crate::config::with_options!(crate::config::forward_setters);

    /// Receiver of retries and final failures, already shared.
    pub fn error_logger_arc(self, logger: Arc<dyn ErrorLogger>) -> Self {
        self.map(|b| b.error_logger_arc(logger))
    }

    /// Runs walflow's statements on the application's pool instead of one
    /// of its own ([`max_connections`](Self::max_connections) then does not
    /// apply: give it at least 10 connections, one per operator more with
    /// many operators).
    ///
    /// The replication connection cannot come from a pool: it is opened
    /// from the configured connection options. Those not configured
    /// (neither `database_url` nor `host` and the rest) are taken from the
    /// pool's: host, port, user name and database. A password cannot be
    /// read back from a pool: set it with [`password`](Self::password) or
    /// `WALFLOW_PASSWORD` if the server asks for one.
    pub fn pool(mut self, pool: PgPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// The subscription hub's options: how much it retains for resuming and
    /// the default buffer per subscription (see [`HubOptions`]; its `start`
    /// is the flow's to set and is ignored).
    pub fn hub_options(mut self, options: HubOptions) -> Self {
        self.hub_options = options;
        self
    }

    /// Runs only these operators (by name) and publishes only the tables
    /// they listen to. Default: every registered operator, every declared
    /// table.
    pub fn operators<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.operators = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// How many transactions one operator runs at once. A handler operator
    /// runs one id per transaction (default 8: handlers often wait on other
    /// services). A query operator runs up to 64 ids per transaction
    /// (default 2: its queries keep the database busy, and under a backlog
    /// fewer transactions at once leave more events to coalesce per id).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n.max(1));
        self
    }

    /// [`concurrency`](Self::concurrency) for the named operator.
    pub fn operator_concurrency(mut self, operator: impl Into<String>, n: usize) -> Self {
        self.operator_concurrency.insert(operator.into(), n.max(1));
        self
    }

    /// Uses this registry instead of [`Registry::global`].
    pub fn registry(mut self, registry: &'static Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Size of the connection pool (default 10).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(2);
        self
    }

    /// SQL run once connected, before the tables are published: the
    /// application's own schema, e.g. on an embedded server (the `embedded`
    /// feature). Run as a simple-query batch; may be given several times.
    pub fn setup_sql(mut self, sql: impl Into<String>) -> Self {
        self.setup_sql.push(sql.into());
        self
    }

    /// Starts a node that only receives: it holds no replication slot, runs
    /// no operators and migrates nothing; it `LISTEN`s on
    /// [`pubsub_channel`](Self::pubsub_channel) and feeds its hub with what
    /// the node holding the slot broadcasts, so [`Walflow::subscribe`],
    /// [`Walflow::subscription`] and [`Walflow::wait_for`] work as on that
    /// node, in the same commit order. Needs [`PubSub::Postgres`] (`start`
    /// fails otherwise) and no [`operators`](Self::operators).
    ///
    /// [`Walflow::current_lsn`] and [`Walflow::shutdown`] work as usual;
    /// [`Walflow::wait_processed`], [`Walflow::processed`] and
    /// [`Walflow::dead_letters`] read the shared tables of the slot named by
    /// [`slot_name`](Self::slot_name); [`Walflow::retry_dead_letter`]
    /// returns [`FlowError::SubscriberOnly`], and so does `processed` with
    /// [`ProcessStatusStorage::Memory`](crate::config::ProcessStatusStorage::Memory):
    /// that state is only in the memory of the node holding the slot.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn run() -> Result<(), walflow_runtime::FlowError> {
    /// use walflow_runtime::Walflow;
    /// use walflow_runtime::config::PubSub;
    ///
    /// let flow = Walflow::builder()
    ///     .database_url("postgres://app:secret@db/app")
    ///     .pubsub(PubSub::Postgres)
    ///     .subscriber_only()
    ///     .start()
    ///     .await?;
    /// // flow.subscribe::<Comment>(Comment::POST_ID.eq(7)), flow.wait_for(..), ...
    /// flow.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscriber_only(mut self) -> Self {
        self.subscriber_only = true;
        self
    }

    /// Starts a throwaway PostgreSQL cluster (binaries from `PATH`) and runs
    /// on it; it is removed when the flow shuts down. For examples, tests and
    /// local development.
    #[cfg(feature = "embedded")]
    pub fn embedded(mut self) -> Self {
        self.embedded = true;
        self
    }

    /// Serves `/metrics` (Prometheus' text format), `/healthz` and
    /// `/readyz` on `addr` from the start of [`start`](Self::start) until
    /// [`shutdown`](Walflow::shutdown); port 0 picks a free port
    /// ([`Walflow::metrics_addr`]). Installs a Prometheus recorder as the
    /// process's `metrics` recorder (once per process; flows of one process
    /// share it). See [`crate::telemetry`] for the metrics and the health
    /// answers.
    #[cfg(feature = "prometheus")]
    pub fn metrics_endpoint(mut self, addr: impl Into<std::net::SocketAddr>) -> Self {
        self.metrics_endpoint = Some(addr.into());
        self
    }

    /// Guards the [metrics endpoint](Self::metrics_endpoint)'s `/status`,
    /// `/status/events` and `/metrics` with `token`: they answer 401 unless
    /// the request carries `Authorization: Bearer <token>` (or Basic
    /// credentials whose password is `token`, for a browser); `/healthz`
    /// and `/readyz` stay open. Compared in constant time. A token shorter
    /// than 16 characters, or with characters other than visible ASCII, is
    /// refused at [`start`](Self::start).
    #[cfg(feature = "prometheus")]
    pub fn metrics_endpoint_token(mut self, token: impl Into<String>) -> Self {
        self.metrics_endpoint_token = Some(token.into());
        self
    }

    /// Sets up the database and starts the listener and the executors.
    pub async fn start(self) -> Result<Walflow, FlowError> {
        if self.subscriber_only {
            return nodes::start_subscriber(self).await;
        }
        let registry = match self.registry {
            Some(r) => r,
            None => Registry::global()?,
        };
        let mut builder = self.config?;
        if let Some(pool) = &self.pool {
            builder = builder.connection_from(&pool.connect_options());
        }
        #[cfg(feature = "embedded")]
        let (builder, embedded) = if self.embedded {
            let pg = crate::embedded::EmbeddedPostgres::start().await?;
            (builder.database_url(pg.url()), Some(pg))
        } else {
            (builder, None)
        };
        let config = builder.build()?;
        let health = HealthCell::new(config.ready_lag_bytes(), config.max_slot_lag_bytes());
        #[cfg(feature = "prometheus")]
        let endpoint = match self.metrics_endpoint {
            Some(addr) => Some(
                crate::telemetry::endpoint::serve(
                    addr,
                    health.clone(),
                    config.slot_name().to_owned(),
                    self.metrics_endpoint_token.clone(),
                )
                .await
                .map_err(|reason| FlowError::MetricsEndpoint { addr, reason })?,
            ),
            None => None,
        };
        let operators: Vec<&'static OperatorRegistration> = match &self.operators {
            None => registry.operators().collect(),
            Some(names) => {
                let mut ops = Vec::new();
                for name in names {
                    let op = registry.operator(name).ok_or_else(|| {
                        let all: Vec<_> = registry.operators().map(|o| o.name).collect();
                        FlowError::UnknownOperator(name.clone(), all.join(", "))
                    })?;
                    ops.push(op);
                }
                ops
            }
        };
        let mut tables: Vec<_> = match &self.operators {
            None => registry.tables(),
            // The operators' entities, and their targets: derived tables
            // feed subscriptions and downstream operators.
            Some(_) => operators
                .iter()
                .flat_map(|o| o.entities.iter().copied().chain(o.target.map(|t| t.table)))
                .collect(),
        };
        tables.sort();
        tables.dedup();
        // After the endpoint installed its recorder.
        crate::telemetry::flow_started(
            &operators.iter().map(|o| o.name).collect::<Vec<_>>(),
            tables.iter().map(|t| (t.schema, t.table)),
        );

        // One connection first, so that a server that is not there, or that
        // refuses the role, fails the start at once with its cause ("connection
        // refused", "password authentication failed") rather than after the
        // pool's acquire timeout as "pool timed out". Once the flow runs, lost
        // connections are retried with backoff instead.
        health.step("connecting");
        let probe = crate::preflight::connect(&config).await?;
        let _ = sqlx::Connection::close(probe).await;
        let pool = match self.pool.clone() {
            Some(pool) => pool,
            None => PgPoolOptions::new()
                .max_connections(self.max_connections)
                // No ping round trip per acquire: a broken connection fails
                // its statement, and that is retried as transient.
                .test_before_acquire(false)
                .connect_with(config.connect_options())
                .await
                .map_err(FlowError::sql(format!("connecting to {}", config.server())))?,
        };
        for sql in &self.setup_sql {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&pool)
                .await
                .map_err(FlowError::sql(format!("running the set-up SQL {sql:?}")))?;
        }
        // Clear messages before anything is created (see `preflight`).
        health.step("checking the server");
        let server = crate::preflight::check_server(&pool, &config).await?;
        tracing::info!(
            version = %server.version,
            synchronous_commit = %server.synchronous_commit,
            "server checked; walflow's own transactions commit with synchronous_commit = local"
        );
        health.step("migrating the walflow schema");
        crate::migrate::migrate(&pool)
            .await
            .map_err(FlowError::sql("migrating the `walflow` schema"))?;
        crate::crash_point::hit("start.migrated");
        health.step("publishing the tables and creating the slot");
        prepare(
            &pool,
            &SetupSpec {
                publication: config.publication().to_owned(),
                slot: config.slot_name().to_owned(),
                durable_slot: config.durable_slot(),
                tables: tables
                    .iter()
                    .map(|t| {
                        let mut spec = TableSpec::new(t.schema, t.table);
                        let entity = registry.entity(t.schema, t.table);
                        spec.replica_identity_full = entity.is_none_or(|e| e.replica_identity_full);
                        if let Some(e) = entity {
                            spec.old_row_columns = crate::setup::old_row_columns(e, &operators);
                        }
                        spec
                    })
                    .collect(),
            },
        )
        .await?;
        crate::crash_point::hit("start.prepared");
        // Warnings only: what the promise needs that can be seen here.
        crate::plan_check::check(&pool, &operators).await;
        let slot = config.slot_name().to_owned();
        health.step("waiting for the slot's previous holder to stop");
        crate::queue::enqueue::wait_for_predecessor(&pool, &slot, Duration::from_secs(30))
            .await
            .map_err(FlowError::sql(format!(
                "waiting for slot `{slot}`'s previous holder to stop"
            )))?;
        let position = crate::queue::enqueue::read_position(&pool, &slot)
            .await
            .map_err(FlowError::sql(format!(
                "reading the queue's position for slot `{slot}`"
            )))?;
        crate::crash_point::hit("start.streams_read");
        let store = Store::new(&config, false);
        store
            .start(&pool, &slot)
            .await
            .map_err(FlowError::sql(format!(
                "starting the stream storage of slot `{slot}`"
            )))?;
        let watermark = position.map(|p| p.enqueued.0 as i64);
        let partial = position.and_then(|p| p.partial);

        let mut options = ListenerOptions::new(&slot, config.publication());
        options.durable_slot = config.durable_slot();
        options.heartbeat_interval = Some(config.heartbeat_interval());
        let handover = Handover::new(&operators, store.durable_queue());
        let shared = Arc::new(Shared {
            pool: pool.clone(),
            config: config.clone(),
            slot: slot.clone(),
            store,
            handover,
            server_gone: watch::channel(0).0,
            health: health.clone(),
        });
        let (stop, stop_rx) = watch::channel(false);
        // Realtime subscriptions see every change committed from now on.
        let hub = Subscriptions::new(HubOptions {
            start: Some(Lsn(watermark.unwrap_or(0) as u64)),
            ..self.hub_options.clone()
        });
        let (feed, broadcaster): (Arc<dyn crate::subscribe::Feed>, _) = match config.pubsub() {
            PubSub::Local => (Arc::new(hub.clone()), None),
            PubSub::Postgres => {
                let handed_on = watermark.map(|w| Lsn(w as u64));
                let (relay, task) = nodes::start_broadcaster(
                    &pool,
                    &config,
                    hub.clone(),
                    handed_on,
                    stop_rx.clone(),
                )
                .await?;
                (Arc::new(relay), Some(task))
            }
        };
        let consumer = consumer::Consumer {
            shared: shared.clone(),
            ops: operators.clone(),
            stop: stop_rx.clone(),
            url: replication_url(&config),
            options,
            watermark: Lsn(watermark.unwrap_or(0) as u64),
            partial,
            conn: None,
            flushes: 0,
            hub: feed,
        };
        health.step("starting the listener");
        let listener = consumer.start_listener().await?;
        // The slot is held: record its operators, and answer requests.
        let names: Vec<&str> = operators.iter().map(|o| o.name).collect();
        let node = requests::register(&pool, &slot, &names)
            .await
            .map_err(FlowError::sql(format!(
                "recording the operators of slot `{slot}`"
            )))?;
        let requests = tokio::spawn(requests::watch(
            shared.clone(),
            node,
            names.iter().map(|n| (*n).to_owned()).collect(),
            stop_rx.clone(),
        ));

        if shared.store.records_progress() {
            tokio::spawn(crate::queue::progress::prune_confirmed(
                shared.pool.clone(),
                shared.slot.clone(),
                stop_rx.clone(),
            ));
        }
        let executors = operators
            .iter()
            .map(|op| {
                let n = self
                    .operator_concurrency
                    .get(op.name)
                    .copied()
                    .or(self.concurrency)
                    .unwrap_or(match op.action {
                        OperatorAction::Query(_) => 2,
                        OperatorAction::Handler(_) => 8,
                    });
                tokio::spawn(supervise(
                    op,
                    shared.clone(),
                    shared
                        .handover
                        .signals(op.name)
                        .expect("every operator has an inbox")
                        .clone(),
                    n,
                    stop_rx.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        let consumer = tokio::spawn(consumer.run(listener));
        #[cfg(feature = "prometheus")]
        let metrics_addr = endpoint.as_ref().map(|e| e.addr);
        let health_task = tokio::spawn(health::watch(
            shared.clone(),
            operators.iter().map(|o| o.name).collect(),
            stop_rx.clone(),
        ));
        Ok(Walflow {
            hub,
            shared,
            operators,
            stop,
            tasks: std::sync::Mutex::new(Some(Tasks {
                consumer: Some(consumer),
                executors,
                broadcaster,
                listening: None,
                health: Some(health_task),
                #[cfg(feature = "prometheus")]
                endpoint,
                requests: Some(requests),
            })),
            stopped: watch::channel(false).0,
            owns_pool: self.pool.is_none(),
            subscriber_only: false,
            #[cfg(feature = "prometheus")]
            metrics_addr,
            #[cfg(feature = "embedded")]
            _embedded: embedded,
        })
    }
}

/// Runs an operator's executor, restarting it should it ever die (units
/// catch their own panics; this guards the executor's own loop).
///
/// With the durable queue the restarted executor reads its rows back. With
/// the stream storage the rows it held died with it (not acknowledged:
/// the slot delivers them again at the next start): the flow fails loudly
/// instead (health `failed` naming the operator, an error, and the flow
/// stops), rather than run on without them.
async fn supervise(
    op: &'static OperatorRegistration,
    shared: Arc<Shared>,
    signals: Signals,
    concurrency: usize,
    stop: watch::Receiver<bool>,
    stop_flow: watch::Sender<bool>,
) {
    let mut restarts = 0u32;
    loop {
        let run = tokio::spawn(executor::run(
            op,
            shared.clone(),
            signals.clone(),
            concurrency,
            stop.clone(),
        ));
        match run.await {
            Ok(()) => return,
            Err(e) if !shared.store.durable_queue() => {
                let why = format!(
                    "operator `{}`'s executor died ({e}); the events it held are not \
                     acknowledged and come again once the process restarts, so the flow \
                     stopped: restart the process",
                    op.name
                );
                tracing::error!(operator = op.name, error = %e, "{why}");
                shared.health.fail(why);
                let _ = stop_flow.send(true);
                return;
            }
            Err(e) => {
                restarts += 1;
                tracing::error!(operator = op.name, error = %e, restarts, "operator executor died; restarting it");
                if *stop.borrow() {
                    return;
                }
                tokio::time::sleep(shared.config.restart_delay(restarts)).await;
            }
        }
    }
}

/// The URL of the replication connection.
fn replication_url(config: &Config) -> String {
    if let Some(url) = config.database_url() {
        return url.to_owned();
    }
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    format!(
        "postgres://{}:{}@{}:{}/{}",
        enc(config.username()),
        enc(config.password()),
        config.host(),
        config.port(),
        enc(config.database())
    )
}

/// A running flow. See the [module documentation](self).
pub struct Walflow {
    hub: Subscriptions,
    shared: Arc<Shared>,
    operators: Vec<&'static OperatorRegistration>,
    stop: watch::Sender<bool>,
    /// The running tasks, taken by the first [`shutdown`](Walflow::shutdown).
    tasks: std::sync::Mutex<Option<Tasks>>,
    /// Set once a shutdown has finished.
    stopped: watch::Sender<bool>,
    /// Whether the pool is the flow's own (closed at shutdown), not the
    /// application's.
    owns_pool: bool,
    subscriber_only: bool,
    #[cfg(feature = "prometheus")]
    metrics_addr: Option<std::net::SocketAddr>,
    #[cfg(feature = "embedded")]
    _embedded: Option<crate::embedded::EmbeddedPostgres>,
}

impl std::fmt::Debug for Walflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Walflow")
            .field("slot", &self.shared.slot)
            .field(
                "operators",
                &self.operators.iter().map(|o| o.name).collect::<Vec<_>>(),
            )
            .field("subscriber_only", &self.subscriber_only)
            .finish_non_exhaustive()
    }
}

impl Walflow {
    /// The realtime subscription hub this flow feeds, in commit order, with
    /// every change of the published tables.
    pub fn subscriptions(&self) -> &Subscriptions {
        &self.hub
    }

    /// A live subscription to the rows of `T` in `scope`
    /// ([`Scope::All`](crate::subscribe::Scope), `Scope::id(..)`, or a field
    /// scope such as `Comment::POST_ID.eq(7)`). See [`crate::subscribe`].
    pub fn subscribe<T>(&self, scope: impl Into<Scope<T>>) -> Subscription<T>
    where
        T: EventSource + DeserializeOwned,
    {
        self.hub.subscribe(scope)
    }

    /// A subscription to configure (authorization predicate, buffer, resume
    /// position) before starting it.
    pub fn subscription<T>(&self, scope: impl Into<Scope<T>>) -> SubscriptionBuilder<T>
    where
        T: EventSource + DeserializeOwned,
    {
        self.hub.subscription(scope)
    }

    /// Waits for the first change of a row in `scope` committed after
    /// `after` (from now on when `None`): the "create a post, wait until the
    /// derived row exists, then redirect" flow.
    pub async fn wait_for<T>(
        &self,
        scope: impl Into<Scope<T>>,
        after: Option<Position>,
        timeout: Duration,
    ) -> Result<Delivery<T>, WaitError>
    where
        T: EventSource + DeserializeOwned,
    {
        self.hub.wait_for(scope, after, timeout).await
    }

    /// What the flow says about itself: alive, ready, its state and slot
    /// lag (see [`Health`]). The same answer as `/healthz` and `/readyz`
    /// of the metrics endpoint (`WalflowBuilder::metrics_endpoint`, with
    /// the `prometheus` feature).
    pub fn health(&self) -> Health {
        self.shared.health.health()
    }

    /// The address the [metrics endpoint](WalflowBuilder::metrics_endpoint)
    /// listens on, if one was asked for.
    #[cfg(feature = "prometheus")]
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// A builder; see [`WalflowBuilder`].
    pub fn builder() -> WalflowBuilder {
        WalflowBuilder {
            config: ConfigBuilder::from_env(),
            operators: None,
            concurrency: None,
            operator_concurrency: HashMap::new(),
            registry: None,
            max_connections: 10,
            pool: None,
            hub_options: HubOptions::default(),
            setup_sql: Vec::new(),
            subscriber_only: false,
            #[cfg(feature = "embedded")]
            embedded: false,
            #[cfg(feature = "prometheus")]
            metrics_endpoint: None,
            #[cfg(feature = "prometheus")]
            metrics_endpoint_token: None,
        }
    }

    /// Whether this node only receives (see
    /// [`WalflowBuilder::subscriber_only`]).
    pub fn is_subscriber_only(&self) -> bool {
        self.subscriber_only
    }

    /// A pool of connections to the database.
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The names of the operators running.
    pub fn operator_names(&self) -> Vec<&'static str> {
        self.operators.iter().map(|o| o.name).collect()
    }

    /// The server's current WAL insert position
    /// (`pg_current_wal_insert_lsn()`): pass it to
    /// [`wait_processed`](Self::wait_processed) after writing.
    ///
    /// Every transaction that committed before this call, on any session,
    /// has its commit record before this position, whatever its
    /// `synchronous_commit`. (The WAL *write* position,
    /// `pg_current_wal_lsn()`, does not: after a commit with
    /// `synchronous_commit = off` the WAL writer writes the commit record
    /// later, so that position can lie before it, and a fence on it would
    /// not wait for the write just made.)
    pub async fn current_lsn(&self) -> Result<Lsn, FlowError> {
        let text: String = transient_retried(|| {
            sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
                .fetch_one(&self.shared.pool)
        })
        .await
        .map_err(FlowError::sql("reading the current WAL insert position"))?;
        text.parse()
            .map_err(|e| FlowError::Unsupported(format!("unreadable LSN {text:?}: {e}")))
    }

    /// Waits until every operator has applied (or dead-lettered) every event
    /// committed up to `lsn`, through chains: when an operator listens to a
    /// table another one writes (a query operator's target, or a table a
    /// handler declares in `writes: [..]`), the changes the upstream
    /// operator made for those events are applied downstream too, so a
    /// reader of a downstream table sees everything committed up to `lsn`
    /// reflected there. A handler's writes to tables it does not declare
    /// are not waited through.
    ///
    /// A chain of `n` levels is waited for in `n` rounds: once every event
    /// up to `lsn` is applied, the upstream operators' own writes are
    /// committed, so they lie before the WAL insert position read then, and
    /// the next round waits for that position. Under a continuous write
    /// load a round also waits for what others committed meanwhile.
    ///
    /// The operators waited for are this flow's and those of every flow
    /// running on the slot (each records its operators with a heartbeat in
    /// `walflow.nodes`; one killed stops counting 30 s after its last
    /// heartbeat). Rows queued for an operator no running flow declares
    /// (removed from the program, or not deployed yet) do not hold the
    /// fence; they are never dropped at start, and stay queued for a flow
    /// that declares the operator again, until `walflow operator drop NAME`
    /// moves them to the dead letters. When no flow runs on the slot, every
    /// operator's rows count.
    ///
    /// On a subscriber-only node: the operators of the node holding the
    /// slot named by the configuration, through the shared tables (with
    /// the stream storage, the slot's confirmed position and the spilled
    /// rows: rule 12 of the queue protocol); the chain is
    /// that of every operator declared in the program.
    pub async fn wait_processed(&self, lsn: Lsn, timeout: Duration) -> Result<(), FlowError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let rounds = if self.subscriber_only {
            Registry::global().map_or(1, |r| {
                crate::registry::chain_depth(&r.operators().collect::<Vec<_>>())
            })
        } else {
            crate::registry::chain_depth(&self.operators)
        };
        let mut lsn = lsn;
        for round in 0..rounds {
            if round > 0 {
                let text: String = transient_retried(|| {
                    sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
                        .fetch_one(&self.shared.pool)
                })
                .await
                .map_err(FlowError::sql("reading the WAL insert position"))?;
                lsn = text
                    .parse()
                    .map_err(|e| FlowError::Unsupported(format!("unreadable LSN {text:?}: {e}")))?;
            }
            self.fence(lsn, timeout, deadline).await?;
        }
        Ok(())
    }

    /// One round of [`wait_processed`](Self::wait_processed): every event
    /// committed up to `lsn` applied.
    async fn fence(
        &self,
        lsn: Lsn,
        timeout: Duration,
        deadline: tokio::time::Instant,
    ) -> Result<(), FlowError> {
        let mut nudged: Option<tokio::time::Instant> = None;
        let operators = self.operator_names();
        loop {
            let reached = self
                .shared
                .store
                .fence(&self.shared.pool, &self.shared.slot, lsn, &operators)
                .await
                .map_err(FlowError::store(format!(
                    "checking whether the operators reached {lsn}"
                )))?;
            match reached {
                Some(true) => return Ok(()),
                Some(false) => {}
                None => {
                    // Nothing committed after `lsn` may reach the slot for a
                    // while: a transactional message moves it past `lsn`.
                    let now = tokio::time::Instant::now();
                    if nudged.is_none_or(|t| now - t > Duration::from_secs(2)) {
                        // Committed durably: the commit flushes the WAL
                        // before it, commits of `synchronous_commit = off`
                        // included, so the slot gets them now.
                        transient_retried(|| async {
                            let mut tx = self
                                .shared
                                .pool
                                .begin_with("BEGIN; SET LOCAL synchronous_commit = local")
                                .await?;
                            sqlx::query(
                                "SELECT pg_logical_emit_message(true, 'walflow.fence', '')",
                            )
                            .execute(&mut *tx)
                            .await?;
                            tx.commit().await
                        })
                        .await
                        .map_err(FlowError::sql("writing a fence message to the WAL"))?;
                        nudged = Some(now);
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(FlowError::Timeout { lsn, timeout });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether every event of `table` (`"posts"` or `"schema.posts"`) up to
    /// the given `updated_at` (microseconds since the Unix epoch) has been
    /// processed by all its operators: the stored status is at least
    /// `micros`.
    ///
    /// On a subscriber-only node with the memory process status:
    /// [`FlowError::SubscriberOnly`].
    pub async fn processed(&self, table: &str, micros: i64) -> Result<bool, FlowError> {
        self.shared
            .store
            .processed(&self.shared.pool, &self.shared.slot, table, micros)
            .await
            .map_err(FlowError::store(format!(
                "reading the process status of table `{table}`"
            )))
    }

    /// The dead letters of `operator`, oldest first.
    pub async fn dead_letters(&self, operator: &str) -> Result<Vec<DeadLetter>, FlowError> {
        crate::queue::status::dead_letters(&self.shared.pool, &self.shared.slot, operator)
            .await
            .map_err(FlowError::sql(format!(
                "reading the dead letters of operator `{operator}`"
            )))
    }

    /// Puts dead letter `id` back in its operator's queue, to run again
    /// (after the events of its id queued before it). `false` when there is
    /// no such dead letter, or when it was put back already and its replay
    /// has not finished (with the stream storage the dead letter stays
    /// until its replay commits, so that a crash before leaves it a dead
    /// letter).
    ///
    /// On a subscriber-only node: [`FlowError::SubscriberOnly`].
    pub async fn retry_dead_letter(&self, id: i64) -> Result<bool, FlowError> {
        self.shared
            .store
            .retry_dead_letter(&self.shared, id)
            .await
            .map_err(FlowError::store(format!("retrying dead letter {id}")))
    }

    /// Stops gracefully: the listener stops taking transactions and sends its
    /// last acknowledgement, the executors finish the units they are running
    /// (waits between retries are cut short; those events stay queued for the
    /// next start), and every subscription's stream ends. Returns once all
    /// of it is done; a second call waits for the first.
    ///
    /// Takes `&self`, so a flow shared with request handlers (an
    /// `Arc<Walflow>`) can be shut down too. Dropping a flow without it
    /// stops it as well, without waiting: what was not acknowledged is
    /// delivered again at the next start.
    pub async fn shutdown(&self) -> Result<(), FlowError> {
        let _ = self.stop.send(true);
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut tasks) = tasks else {
            let mut stopped = self.stopped.subscribe();
            let _ = stopped.wait_for(|s| *s).await;
            return Ok(());
        };
        if let Some(c) = tasks.consumer.take() {
            let _ = c.await;
        }
        // The consumer is gone: the broadcaster sends what is left, then ends.
        if let Some(b) = tasks.broadcaster.take() {
            let _ = b.await;
        }
        if let Some(l) = tasks.listening.take() {
            l.abort();
            let _ = l.await;
        }
        // Nothing more is published: the streams end after what they got.
        self.hub.close();
        for e in tasks.executors.drain(..) {
            let _ = e.await;
        }
        if let Some(r) = tasks.requests.take() {
            let _ = r.await;
        }
        if let Some(h) = tasks.health.take() {
            let _ = h.await;
        }
        self.shared.health.stop();
        #[cfg(feature = "prometheus")]
        if let Some(mut e) = tasks.endpoint.take() {
            e.stop().await;
        }
        if self.owns_pool {
            self.shared.pool.close().await;
        }
        self.stopped.send_replace(true);
        Ok(())
    }

    /// Waits for `signal` (such as `tokio::signal::ctrl_c()`), then
    /// [shuts down](Self::shutdown) gracefully. Whatever `signal` yields is
    /// ignored: an error from `ctrl_c()` (no signal handler could be
    /// installed) shuts down at once rather than never.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn run(flow: walflow_runtime::Walflow) -> Result<(), walflow_runtime::FlowError> {
    /// flow.shutdown_on(tokio::signal::ctrl_c()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown_on<F: Future>(&self, signal: F) -> Result<(), FlowError> {
        let _ = signal.await;
        self.shutdown().await
    }
}

/// The tasks of a running flow.
struct Tasks {
    consumer: Option<JoinHandle<()>>,
    executors: Vec<JoinHandle<()>>,
    /// With [`PubSub::Postgres`], on the node holding the slot.
    broadcaster: Option<JoinHandle<()>>,
    /// On a subscriber-only node: the `LISTEN` task.
    listening: Option<JoinHandle<()>>,
    /// The readings of the slot lag and queue depths.
    health: Option<JoinHandle<()>>,
    /// The metrics endpoint, served until the shutdown is done.
    #[cfg(feature = "prometheus")]
    endpoint: Option<crate::telemetry::endpoint::Endpoint>,
    /// On the node holding the slot: the task answering `walflow.requests`.
    requests: Option<JoinHandle<()>>,
}

impl Drop for Walflow {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(tasks) = self.tasks.get_mut().unwrap_or_else(|e| e.into_inner())
            && let Some(l) = &tasks.listening
        {
            l.abort();
        }
    }
}

//! Runtime configuration.
//!
//! [`Config`] carries every option of EventStreamex, with Rust names and the
//! same defaults (except the slot name, see below):
//!
//! | option | default | EventStreamex name |
//! |---|---|---|
//! | [`url`](ConfigBuilder::url) | none | `url` |
//! | [`host`](ConfigBuilder::host) | `localhost` | `hostname` |
//! | [`port`](ConfigBuilder::port) | `5432` | `port` |
//! | [`database`](ConfigBuilder::database) | `postgres` | `database` |
//! | [`username`](ConfigBuilder::username) | `postgres` | `username` |
//! | [`password`](ConfigBuilder::password) | `postgres` | `password` |
//! | [`app_name`](ConfigBuilder::app_name) | none | `app_name` |
//! | [`durable_slot`](ConfigBuilder::durable_slot) | `true` | `durable_slot` |
//! | [`slot_name`](ConfigBuilder::slot_name) | `walflow_slot` | `slot_name` (`postgres_slot`) |
//! | [`publication`](ConfigBuilder::publication) | `events` | `publication` |
//! | [`min_restart_time`](ConfigBuilder::min_restart_time) | 500 ms | `operator_queue_min_restart_time` |
//! | [`backoff_multiplicator`](ConfigBuilder::backoff_multiplicator) | `2.0` | `operator_queue_backoff_multiplicator` |
//! | [`max_restart_time`](ConfigBuilder::max_restart_time) | 10 s | `operator_queue_max_restart_time` |
//! | [`max_retries`](ConfigBuilder::max_retries) | `5` | `operator_queue_max_retries` |
//! | [`process_status_entity_field`](ConfigBuilder::process_status_entity_field) | `updated_at` | `process_status_entity_field` |
//! | [`queue_storage`](ConfigBuilder::queue_storage) | [`QueueStorage::Postgres`] | `queue_storage_adapter` |
//! | [`process_status_storage`](ConfigBuilder::process_status_storage) | [`ProcessStatusStorage::Postgres`] | `process_status_storage_adapter` |
//! | [`error_logger`](ConfigBuilder::error_logger) | [`TracingErrorLogger`] | `error_logger_adapter` |
//! | [`pubsub`](ConfigBuilder::pubsub) | [`PubSub::Local`] | `pubsub` |
//! | [`pubsub_channel`](ConfigBuilder::pubsub_channel) | `walflow_events` | — |
//! | [`pubsub_retain_transactions`](ConfigBuilder::pubsub_retain_transactions) | `100000` | — |
//! | [`pubsub_retain_for`](ConfigBuilder::pubsub_retain_for) | 1 h | — |
//! | [`heartbeat_interval`](ConfigBuilder::heartbeat_interval) | 10 s | — |
//! | [`status_interval`](ConfigBuilder::status_interval) | 1 s | — |
//!
//! The default slot name is `walflow_slot` rather than EventStreamex's
//! `postgres_slot`, so that walflow and an EventStreamex application can share
//! a server without stealing each other's slot.
//!
//! # Environment
//!
//! [`Config::from_env`] starts from the defaults and reads:
//!
//! | variable | option | format |
//! |---|---|---|
//! | `DATABASE_URL` | `url` | `postgres://user:password@host:port/database?sslmode=...` |
//! | `WALFLOW_HOST` | `host` | host name or IP address |
//! | `WALFLOW_PORT` | `port` | integer |
//! | `WALFLOW_DATABASE` | `database` | name |
//! | `WALFLOW_USERNAME` | `username` | name |
//! | `WALFLOW_PASSWORD` | `password` | text |
//! | `WALFLOW_APP_NAME` | `app_name` | text |
//! | `WALFLOW_DURABLE_SLOT` | `durable_slot` | `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`) |
//! | `WALFLOW_SLOT_NAME` | `slot_name` | lower-case letters, digits, `_` |
//! | `WALFLOW_PUBLICATION` | `publication` | name |
//! | `WALFLOW_MIN_RESTART_TIME_MS` | `min_restart_time` | milliseconds |
//! | `WALFLOW_BACKOFF_MULTIPLICATOR` | `backoff_multiplicator` | number ≥ 1 |
//! | `WALFLOW_MAX_RESTART_TIME_MS` | `max_restart_time` | milliseconds |
//! | `WALFLOW_MAX_RETRIES` | `max_retries` | integer |
//! | `WALFLOW_PROCESS_STATUS_ENTITY_FIELD` | `process_status_entity_field` | column name |
//! | `WALFLOW_QUEUE_STORAGE` | `queue_storage` | `postgres` or `memory` |
//! | `WALFLOW_PROCESS_STATUS_STORAGE` | `process_status_storage` | `postgres` or `memory` |
//! | `WALFLOW_PUBSUB` | `pubsub` | `local` or `postgres` |
//! | `WALFLOW_PUBSUB_CHANNEL` | `pubsub_channel` | lower-case letters, digits, `_` |
//! | `WALFLOW_PUBSUB_RETAIN_TRANSACTIONS` | `pubsub_retain_transactions` | integer ≥ 1 |
//! | `WALFLOW_PUBSUB_RETAIN_FOR_MS` | `pubsub_retain_for` | milliseconds |
//! | `WALFLOW_HEARTBEAT_INTERVAL_MS` | `heartbeat_interval` | milliseconds |
//! | `WALFLOW_STATUS_INTERVAL_MS` | `status_interval` | milliseconds |
//!
//! Unset or empty variables leave the default in place.
//!
//! # Connection parameters
//!
//! When a `url` is given, its parts win over `host`, `port`, `username`,
//! `password` and `database`; the parts the URL leaves out fall back to those
//! options. User name and password are percent-decoded. Query parameters
//! (`sslmode`, `sslrootcert`, ...) are honoured by [`Config::connect_options`].
//!
//! [`Debug`](fmt::Debug) output and error messages never contain the password,
//! whether it was given on its own or inside the URL.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use url::Url;

/// PostgreSQL's `NAMEDATALEN - 1`: the longest identifier, in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// The `application_name` used when no [`app_name`](ConfigBuilder::app_name)
/// is configured.
pub const DEFAULT_APPLICATION_NAME: &str = "walflow";

/// Where operator queues are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QueueStorage {
    /// In a PostgreSQL table: the queue survives restarts (default).
    #[default]
    Postgres,
    /// In memory: lost when the process stops.
    Memory,
}

/// Where the process status registry (what has been processed up to when)
/// is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProcessStatusStorage {
    /// In a PostgreSQL table, shared by all nodes (default).
    #[default]
    Postgres,
    /// In memory, local to this process.
    Memory,
}

/// How events are published to subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PubSub {
    /// Within this process only (default).
    #[default]
    Local,
    /// Across processes through PostgreSQL `LISTEN`/`NOTIFY` on
    /// [`pubsub_channel`](ConfigBuilder::pubsub_channel), with a log
    /// (`walflow.pubsub_log`) that lets a node catch up after its `LISTEN`
    /// connection was down; see [`PgPubSub`](crate::subscribe::PgPubSub).
    Postgres,
}

fn parse_choice<T: Copy>(s: &str, choices: &[(&str, T)]) -> Result<T, String> {
    let lower = s.trim().to_ascii_lowercase();
    choices
        .iter()
        .find(|(name, _)| *name == lower)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("`{n}`")).collect();
            format!("expected one of {}", names.join(", "))
        })
}

impl FromStr for QueueStorage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_choice(s, &[("postgres", Self::Postgres), ("memory", Self::Memory)])
    }
}

impl FromStr for ProcessStatusStorage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_choice(s, &[("postgres", Self::Postgres), ("memory", Self::Memory)])
    }
}

impl FromStr for PubSub {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_choice(s, &[("local", Self::Local), ("postgres", Self::Postgres)])
    }
}

/// What an [`ErrorLogger`] is told when an operator failed and will be
/// retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryInfo<'a> {
    /// Name of the operator.
    pub operator: &'a str,
    /// Table of the event the operator failed on.
    pub table: &'a str,
    /// Primary key of the row, rendered as text.
    pub id: String,
    /// Which attempt failed, starting at 1.
    pub attempt: u32,
    /// The configured [`max_retries`](Config::max_retries).
    pub max_retries: u32,
    /// How long the operator waits before the next attempt.
    pub next_wait: Duration,
    /// The error, rendered as text.
    pub error: String,
}

/// What an [`ErrorLogger`] is told when an operator failed for the last time
/// and its event is given up.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureInfo<'a> {
    /// Name of the operator.
    pub operator: &'a str,
    /// Table of the event the operator failed on.
    pub table: &'a str,
    /// Primary key of the row, rendered as text.
    pub id: String,
    /// The number of the last attempt.
    pub attempt: u32,
    /// The configured [`max_retries`](Config::max_retries).
    pub max_retries: u32,
    /// The last error, rendered as text.
    pub error: String,
}

/// Receives operator failures (EventStreamex's `error_logger_adapter`).
pub trait ErrorLogger: Send + Sync + 'static {
    /// An operator failed and will be retried after `info.next_wait`.
    fn log_retry(&self, info: &RetryInfo<'_>);
    /// An operator failed and will not be retried.
    fn log_failed(&self, info: &FailureInfo<'_>);
}

/// The default [`ErrorLogger`]: retries are logged with `tracing` at `warn`
/// level, final failures at `error` level.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingErrorLogger;

impl ErrorLogger for TracingErrorLogger {
    fn log_retry(&self, info: &RetryInfo<'_>) {
        tracing::warn!(
            operator = info.operator,
            table = info.table,
            id = %info.id,
            attempt = info.attempt,
            max_retries = info.max_retries,
            next_wait_ms = info.next_wait.as_millis() as u64,
            error = %info.error,
            "operator failed, retrying"
        );
    }

    fn log_failed(&self, info: &FailureInfo<'_>) {
        tracing::error!(
            operator = info.operator,
            table = info.table,
            id = %info.id,
            attempt = info.attempt,
            max_retries = info.max_retries,
            error = %info.error,
            "operator failed, giving up"
        );
    }
}

/// An invalid configuration value. Messages name the option and the value
/// (never a password) and say how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `slot_name` is not a valid replication slot name.
    #[error(
        "invalid `slot_name` {value:?}: {reason}; use 1 to 63 lower-case letters, digits or underscores, e.g. `walflow_slot`"
    )]
    InvalidSlotName {
        /// The rejected value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `publication` is not a valid publication name.
    #[error(
        "invalid `publication` {value:?}: {reason}; use a name of 1 to 63 bytes without NUL characters, e.g. `events`"
    )]
    InvalidPublication {
        /// The rejected value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `url` cannot be used. The URL is shown with its password masked.
    #[error(
        "invalid `url` {url}: {reason}; use postgres://user:password@host:port/database (percent-encode special characters)"
    )]
    InvalidUrl {
        /// The URL, password masked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Another option has an unusable value.
    #[error("invalid `{option}` {value}: {reason}")]
    InvalidValue {
        /// The option's name.
        option: &'static str,
        /// The rejected value, rendered.
        value: String,
        /// What is wrong with it and how to fix it.
        reason: String,
    },
    /// An environment variable read by [`Config::from_env`] cannot be parsed.
    #[error("invalid environment variable `{var}`={value:?}: {reason}; fix or unset it")]
    InvalidEnv {
        /// The variable's name.
        var: &'static str,
        /// Its value (never shown for `WALFLOW_PASSWORD`, which cannot be
        /// invalid).
        value: String,
        /// The expected format.
        reason: String,
    },
}

/// The resolved connection parameters (URL parts merged with the separate
/// options).
#[derive(Clone, PartialEq, Eq)]
struct Conn {
    host: String,
    port: u16,
    username: String,
    password: String,
    database: String,
    ssl_mode: Option<String>,
}

/// Runtime configuration; see the [module documentation](self) for the
/// options, their defaults and the environment variables.
///
/// Build one with [`Config::builder`], [`Config::from_env`] or
/// [`Config::from_url`]; [`Config::default`] gives every default.
#[derive(Clone)]
pub struct Config {
    url: Option<String>,
    host: String,
    port: u16,
    database: String,
    username: String,
    password: String,
    app_name: Option<String>,
    durable_slot: bool,
    slot_name: String,
    publication: String,
    min_restart_time: Duration,
    backoff_multiplicator: f64,
    max_restart_time: Duration,
    max_retries: u32,
    process_status_entity_field: String,
    queue_storage: QueueStorage,
    process_status_storage: ProcessStatusStorage,
    error_logger: Arc<dyn ErrorLogger>,
    pubsub: PubSub,
    pubsub_channel: String,
    pubsub_retain_transactions: usize,
    pubsub_retain_for: Duration,
    heartbeat_interval: Duration,
    status_interval: Duration,
    conn: Conn,
}

impl Default for Config {
    fn default() -> Self {
        let conn = Conn {
            host: "localhost".into(),
            port: 5432,
            username: "postgres".into(),
            password: "postgres".into(),
            database: "postgres".into(),
            ssl_mode: None,
        };
        Self {
            url: None,
            host: conn.host.clone(),
            port: conn.port,
            database: conn.database.clone(),
            username: conn.username.clone(),
            password: conn.password.clone(),
            app_name: None,
            durable_slot: true,
            slot_name: "walflow_slot".into(),
            publication: "events".into(),
            min_restart_time: Duration::from_millis(500),
            backoff_multiplicator: 2.0,
            max_restart_time: Duration::from_secs(10),
            max_retries: 5,
            process_status_entity_field: "updated_at".into(),
            queue_storage: QueueStorage::Postgres,
            process_status_storage: ProcessStatusStorage::Postgres,
            error_logger: Arc::new(TracingErrorLogger),
            pubsub: PubSub::Local,
            pubsub_channel: "walflow_events".into(),
            pubsub_retain_transactions: 100_000,
            pubsub_retain_for: Duration::from_secs(3600),
            heartbeat_interval: Duration::from_secs(10),
            status_interval: Duration::from_secs(1),
            conn,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("host", &self.conn.host)
            .field("port", &self.conn.port)
            .field("database", &self.conn.database)
            .field("username", &self.conn.username)
            .field("password", &"<redacted>")
            .field("ssl_mode", &self.conn.ssl_mode)
            .field("app_name", &self.app_name)
            .field("durable_slot", &self.durable_slot)
            .field("slot_name", &self.slot_name)
            .field("publication", &self.publication)
            .field("min_restart_time", &self.min_restart_time)
            .field("backoff_multiplicator", &self.backoff_multiplicator)
            .field("max_restart_time", &self.max_restart_time)
            .field("max_retries", &self.max_retries)
            .field(
                "process_status_entity_field",
                &self.process_status_entity_field,
            )
            .field("queue_storage", &self.queue_storage)
            .field("process_status_storage", &self.process_status_storage)
            .field("error_logger", &"<dyn ErrorLogger>")
            .field("pubsub", &self.pubsub)
            .field("pubsub_channel", &self.pubsub_channel)
            .field(
                "pubsub_retain_transactions",
                &self.pubsub_retain_transactions,
            )
            .field("pubsub_retain_for", &self.pubsub_retain_for)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("status_interval", &self.status_interval)
            .finish()
    }
}

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            cfg: Config::default(),
        }
    }

    /// The defaults with the connection taken from `url`.
    pub fn from_url(url: impl Into<String>) -> Result<Self, ConfigError> {
        Self::builder().url(url).build()
    }

    /// The defaults overridden by `DATABASE_URL` and the `WALFLOW_*`
    /// environment variables (see the [module documentation](self)).
    pub fn from_env() -> Result<Self, ConfigError> {
        ConfigBuilder::from_env()?.build()
    }

    /// A builder holding this configuration, to change some options.
    pub fn into_builder(self) -> ConfigBuilder {
        ConfigBuilder { cfg: self }
    }

    /// The configured URL, if any. It contains the password: do not log it
    /// (see [`Config::redacted_url`]).
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// The configured URL with its password masked, for messages.
    pub fn redacted_url(&self) -> Option<String> {
        self.url.as_deref().map(redact_url)
    }

    /// Host to connect to (from the URL if it has one); a path starting
    /// with `/` is the directory of a unix socket.
    pub fn host(&self) -> &str {
        &self.conn.host
    }

    /// Port to connect to (from the URL if it has one).
    pub fn port(&self) -> u16 {
        self.conn.port
    }

    /// Database to connect to (from the URL if it has one).
    pub fn database(&self) -> &str {
        &self.conn.database
    }

    /// User name to connect as, percent-decoded (from the URL if it has
    /// one).
    pub fn username(&self) -> &str {
        &self.conn.username
    }

    /// Password to connect with, percent-decoded (from the URL if it has
    /// one).
    pub fn password(&self) -> &str {
        &self.conn.password
    }

    /// The URL's `sslmode` parameter (`disable`, `prefer`, `require`,
    /// `verify-ca`, `verify-full`), if the URL has one.
    pub fn ssl_mode(&self) -> Option<&str> {
        self.conn.ssl_mode.as_deref()
    }

    /// The application name, already sanitised (printable ASCII, at most 63
    /// bytes), if one was configured.
    pub fn app_name(&self) -> Option<&str> {
        self.app_name.as_deref()
    }

    /// The `application_name` reported to PostgreSQL: the
    /// [`app_name`](Self::app_name), or `walflow`.
    pub fn application_name(&self) -> &str {
        self.app_name.as_deref().unwrap_or(DEFAULT_APPLICATION_NAME)
    }

    /// Whether the replication slot survives disconnections (`true`) or is
    /// temporary, losing the events produced while the application is not
    /// running (`false`).
    pub fn durable_slot(&self) -> bool {
        self.durable_slot
    }

    /// Name of the replication slot (validated).
    pub fn slot_name(&self) -> &str {
        &self.slot_name
    }

    /// Name of the publication (validated; quote it with
    /// [`quote_ident`](crate::ident::quote_ident) in SQL).
    pub fn publication(&self) -> &str {
        &self.publication
    }

    /// Wait before the first restart of a failed operator.
    pub fn min_restart_time(&self) -> Duration {
        self.min_restart_time
    }

    /// Factor applied to the wait after each failed attempt.
    pub fn backoff_multiplicator(&self) -> f64 {
        self.backoff_multiplicator
    }

    /// Upper bound of the wait between restarts of a failed operator.
    pub fn max_restart_time(&self) -> Duration {
        self.max_restart_time
    }

    /// How many times a failed operator is restarted before its event is
    /// given up.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The wait before retry number `attempt` (1 for the first retry):
    /// `min_restart_time × backoff_multiplicator^(attempt − 1)`, capped at
    /// `max_restart_time`.
    pub fn restart_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(i32::MAX as u32) as i32;
        let secs = self.min_restart_time.as_secs_f64() * self.backoff_multiplicator.powi(exp);
        let max = self.max_restart_time.as_secs_f64();
        if !secs.is_finite() || secs >= max {
            self.max_restart_time
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// Column of the entities holding their last update time.
    pub fn process_status_entity_field(&self) -> &str {
        &self.process_status_entity_field
    }

    /// Where operator queues are stored.
    pub fn queue_storage(&self) -> QueueStorage {
        self.queue_storage
    }

    /// Where the process status registry is stored.
    pub fn process_status_storage(&self) -> ProcessStatusStorage {
        self.process_status_storage
    }

    /// Receiver of operator failures.
    pub fn error_logger(&self) -> &Arc<dyn ErrorLogger> {
        &self.error_logger
    }

    /// How events reach subscribers.
    pub fn pubsub(&self) -> PubSub {
        self.pubsub
    }

    /// The `LISTEN`/`NOTIFY` channel of [`PubSub::Postgres`] (validated:
    /// lower-case letters, digits and `_`).
    pub fn pubsub_channel(&self) -> &str {
        &self.pubsub_channel
    }

    /// How many of the latest transactions `walflow.pubsub_log` keeps at
    /// most, for nodes catching up after a reconnection.
    pub fn pubsub_retain_transactions(&self) -> usize {
        self.pubsub_retain_transactions
    }

    /// How long `walflow.pubsub_log` keeps a transaction at most.
    pub fn pubsub_retain_for(&self) -> Duration {
        self.pubsub_retain_for
    }

    /// Interval of the heartbeat that keeps the slot advancing on an idle
    /// database.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// Interval of the standby status updates sent on the replication
    /// connection.
    pub fn status_interval(&self) -> Duration {
        self.status_interval
    }

    /// Options for ordinary (non-replication) connections: the URL's
    /// parameters if a URL is configured, the resolved host, port, user,
    /// password and database, and the `application_name`.
    ///
    /// `~/.pgpass` is not read; the `PGSSL*` environment variables are.
    pub fn connect_options(&self) -> PgConnectOptions {
        let base = self
            .url
            .as_deref()
            .and_then(|u| u.parse::<PgConnectOptions>().ok())
            .unwrap_or_else(|| {
                let base = PgConnectOptions::new_without_pgpass();
                if self.conn.host.starts_with('/') {
                    // A directory: connect through its unix socket.
                    base.socket(&self.conn.host)
                } else {
                    base.host(&self.conn.host)
                }
            });
        base.port(self.conn.port)
            .username(&self.conn.username)
            .password(&self.conn.password)
            .database(&self.conn.database)
            .application_name(self.application_name())
    }

    fn validate_and_resolve(&mut self) -> Result<(), ConfigError> {
        validate_slot_name(&self.slot_name)?;
        validate_publication(&self.publication)?;
        if let Err(reason) = validate_name_bytes(&self.process_status_entity_field) {
            return Err(ConfigError::InvalidValue {
                option: "process_status_entity_field",
                value: format!("{:?}", self.process_status_entity_field),
                reason: format!("{reason}; use a column name such as `updated_at`"),
            });
        }
        if !self.backoff_multiplicator.is_finite() || self.backoff_multiplicator < 1.0 {
            return Err(ConfigError::InvalidValue {
                option: "backoff_multiplicator",
                value: self.backoff_multiplicator.to_string(),
                reason: "must be a finite number ≥ 1; use e.g. 2".into(),
            });
        }
        if self.max_restart_time < self.min_restart_time {
            return Err(ConfigError::InvalidValue {
                option: "max_restart_time",
                value: format!("{:?}", self.max_restart_time),
                reason: format!(
                    "is shorter than `min_restart_time` ({:?}); raise `max_restart_time` or lower `min_restart_time`",
                    self.min_restart_time
                ),
            });
        }
        if let Err(reason) = validate_channel(&self.pubsub_channel) {
            return Err(ConfigError::InvalidValue {
                option: "pubsub_channel",
                value: format!("{:?}", self.pubsub_channel),
                reason: format!("{reason}; use lower-case letters, digits and `_`"),
            });
        }
        if self.pubsub_retain_transactions == 0 {
            return Err(ConfigError::InvalidValue {
                option: "pubsub_retain_transactions",
                value: "0".into(),
                reason: "must be at least 1; use e.g. 100000".into(),
            });
        }
        for (option, value) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("status_interval", self.status_interval),
            ("pubsub_retain_for", self.pubsub_retain_for),
        ] {
            if value.is_zero() {
                return Err(ConfigError::InvalidValue {
                    option,
                    value: format!("{value:?}"),
                    reason: "must be longer than zero; use e.g. 1 s".into(),
                });
            }
        }
        if self.host.is_empty() {
            return Err(ConfigError::InvalidValue {
                option: "host",
                value: "\"\"".into(),
                reason: "is empty; set a host name such as `localhost`".into(),
            });
        }
        if self.port == 0 {
            return Err(ConfigError::InvalidValue {
                option: "port",
                value: "0".into(),
                reason: "is not a usable port; use e.g. 5432".into(),
            });
        }
        self.app_name = self.app_name.as_deref().map(sanitize_application_name);
        self.conn = self.resolve_conn()?;
        Ok(())
    }

    fn resolve_conn(&self) -> Result<Conn, ConfigError> {
        let mut conn = Conn {
            host: self.host.clone(),
            port: self.port,
            username: self.username.clone(),
            password: self.password.clone(),
            database: self.database.clone(),
            ssl_mode: None,
        };
        let Some(raw) = self.url.as_deref() else {
            return Ok(conn);
        };
        let invalid = |reason: String| ConfigError::InvalidUrl {
            url: redact_url(raw),
            reason,
        };
        let url = Url::parse(raw).map_err(|e| invalid(e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(invalid(format!(
                "scheme `{}` is not `postgres` or `postgresql`",
                url.scheme()
            )));
        }
        if let Some(host) = url.host_str().filter(|h| !h.is_empty()) {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            conn.host = decode(host).map_err(|e| invalid(format!("host: {e}")))?;
        }
        if let Some(port) = url.port() {
            if port == 0 {
                return Err(invalid("port 0 is not usable".into()));
            }
            conn.port = port;
        }
        if !url.username().is_empty() {
            conn.username =
                decode(url.username()).map_err(|e| invalid(format!("user name: {e}")))?;
        }
        if let Some(password) = url.password() {
            // Do not echo the decoding error's details: they are about the password.
            conn.password = decode(password)
                .map_err(|_| invalid("the password is not valid percent-encoded UTF-8".into()))?;
        }
        conn.ssl_mode = url
            .query_pairs()
            .find(|(k, _)| k == "sslmode" || k == "ssl-mode")
            .map(|(_, v)| v.into_owned());
        let path = url.path().trim_start_matches('/');
        if !path.is_empty() {
            conn.database = decode(path).map_err(|e| invalid(format!("database: {e}")))?;
        }
        Ok(conn)
    }
}

fn decode(s: &str) -> Result<String, String> {
    percent_decode(s).map_err(|_| "not valid percent-encoded UTF-8".to_string())
}

/// Percent-decodes `s` (`+` is kept as is, as in URL user info and paths).
fn percent_decode(s: &str) -> Result<String, std::str::Utf8Error> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
}

/// `url` with the password of its user info replaced by `***`. Works on
/// strings that do not parse as URLs too, so it is safe for error messages.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_string();
    };
    format!(
        "{}{}:***{}",
        &url[..rest_start],
        &userinfo[..colon],
        &url[rest_start + at..]
    )
}

/// Makes `name` acceptable as PostgreSQL's `application_name`: characters
/// outside printable ASCII become `_`, and the result is cut to 63 bytes.
pub fn sanitize_application_name(name: &str) -> String {
    name.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '_' })
        .take(MAX_IDENTIFIER_BYTES)
        .collect()
}

fn validate_name_bytes(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(format!(
            "it is {} bytes long, the limit is {MAX_IDENTIFIER_BYTES}",
            name.len()
        ));
    }
    if name.contains('\0') {
        return Err("it contains a NUL character".into());
    }
    Ok(())
}

/// Checks a replication slot name against PostgreSQL's rule: 1 to 63
/// characters among lower-case ASCII letters, digits and `_`.
pub fn validate_slot_name(name: &str) -> Result<(), ConfigError> {
    let reason = if name.is_empty() {
        Some("it is empty".to_string())
    } else if name.len() > MAX_IDENTIFIER_BYTES {
        Some(format!(
            "it is {} bytes long, the limit is {MAX_IDENTIFIER_BYTES}",
            name.len()
        ))
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
            .map(|c| format!("it contains {c:?}"))
    };
    match reason {
        Some(reason) => Err(ConfigError::InvalidSlotName {
            value: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks a `LISTEN`/`NOTIFY` channel name: 1 to 63 lower-case ASCII
/// letters, digits and `_` (so it needs no quoting). Returns why not.
pub(crate) fn validate_channel(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(format!(
            "it is {} bytes long, the limit is {MAX_IDENTIFIER_BYTES}",
            name.len()
        ));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        Some(c) => Err(format!("it contains {c:?}")),
        None => Ok(()),
    }
}

/// Checks a publication name: 1 to 63 bytes, no NUL. Any other character is
/// allowed, since the name is always quoted.
pub fn validate_publication(name: &str) -> Result<(), ConfigError> {
    validate_name_bytes(name).map_err(|reason| ConfigError::InvalidPublication {
        value: name.to_string(),
        reason,
    })
}

/// Builder of [`Config`]; every setter has the name of its option.
#[derive(Clone, Debug, Default)]
pub struct ConfigBuilder {
    cfg: Config,
}

impl ConfigBuilder {
    /// A builder starting from the defaults overridden by `DATABASE_URL` and
    /// the `WALFLOW_*` environment variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env) but reading the variables through
    /// `lookup` (for tests, or another source of settings).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut b = Config::builder();
        if let Some(v) = get("DATABASE_URL") {
            b = b.url(v);
        }
        if let Some(v) = get("WALFLOW_HOST") {
            b = b.host(v);
        }
        if let Some(v) = get("WALFLOW_PORT") {
            b = b.port(parse_env(
                "WALFLOW_PORT",
                &v,
                "an integer between 1 and 65535",
            )?);
        }
        if let Some(v) = get("WALFLOW_DATABASE") {
            b = b.database(v);
        }
        if let Some(v) = get("WALFLOW_USERNAME") {
            b = b.username(v);
        }
        if let Some(v) = lookup("WALFLOW_PASSWORD").filter(|v| !v.is_empty()) {
            b = b.password(v);
        }
        if let Some(v) = get("WALFLOW_APP_NAME") {
            b = b.app_name(v);
        }
        if let Some(v) = get("WALFLOW_DURABLE_SLOT") {
            let durable = match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    return Err(ConfigError::InvalidEnv {
                        var: "WALFLOW_DURABLE_SLOT",
                        value: v,
                        reason: "expected `true` or `false`".into(),
                    });
                }
            };
            b = b.durable_slot(durable);
        }
        if let Some(v) = get("WALFLOW_SLOT_NAME") {
            b = b.slot_name(v);
        }
        if let Some(v) = get("WALFLOW_PUBLICATION") {
            b = b.publication(v);
        }
        let ms = |var: &'static str| -> Result<Option<Duration>, ConfigError> {
            get(var)
                .map(|v| parse_env::<u64>(var, &v, "a number of milliseconds"))
                .transpose()
                .map(|o| o.map(Duration::from_millis))
        };
        if let Some(d) = ms("WALFLOW_MIN_RESTART_TIME_MS")? {
            b = b.min_restart_time(d);
        }
        if let Some(d) = ms("WALFLOW_MAX_RESTART_TIME_MS")? {
            b = b.max_restart_time(d);
        }
        if let Some(v) = get("WALFLOW_BACKOFF_MULTIPLICATOR") {
            b = b.backoff_multiplicator(parse_env(
                "WALFLOW_BACKOFF_MULTIPLICATOR",
                &v,
                "a number such as 2 or 1.5",
            )?);
        }
        if let Some(v) = get("WALFLOW_MAX_RETRIES") {
            b = b.max_retries(parse_env(
                "WALFLOW_MAX_RETRIES",
                &v,
                "a non-negative integer",
            )?);
        }
        if let Some(v) = get("WALFLOW_PROCESS_STATUS_ENTITY_FIELD") {
            b = b.process_status_entity_field(v);
        }
        if let Some(v) = get("WALFLOW_QUEUE_STORAGE") {
            b = b.queue_storage(parse_env_choice("WALFLOW_QUEUE_STORAGE", &v)?);
        }
        if let Some(v) = get("WALFLOW_PROCESS_STATUS_STORAGE") {
            b = b.process_status_storage(parse_env_choice("WALFLOW_PROCESS_STATUS_STORAGE", &v)?);
        }
        if let Some(v) = get("WALFLOW_PUBSUB") {
            b = b.pubsub(parse_env_choice("WALFLOW_PUBSUB", &v)?);
        }
        if let Some(v) = get("WALFLOW_PUBSUB_CHANNEL") {
            b = b.pubsub_channel(v);
        }
        if let Some(v) = get("WALFLOW_PUBSUB_RETAIN_TRANSACTIONS") {
            b = b.pubsub_retain_transactions(parse_env(
                "WALFLOW_PUBSUB_RETAIN_TRANSACTIONS",
                &v,
                "a positive integer",
            )?);
        }
        if let Some(d) = ms("WALFLOW_PUBSUB_RETAIN_FOR_MS")? {
            b = b.pubsub_retain_for(d);
        }
        if let Some(d) = ms("WALFLOW_HEARTBEAT_INTERVAL_MS")? {
            b = b.heartbeat_interval(d);
        }
        if let Some(d) = ms("WALFLOW_STATUS_INTERVAL_MS")? {
            b = b.status_interval(d);
        }
        Ok(b)
    }

    /// Validates the options and resolves the connection parameters.
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut cfg = self.cfg;
        cfg.validate_and_resolve()?;
        Ok(cfg)
    }

    /// Connection URL, `postgres://user:password@host:port/database`. Its
    /// parts win over the separate connection options; an empty string
    /// removes the URL.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        let url = url.into();
        self.cfg.url = if url.trim().is_empty() {
            None
        } else {
            Some(url)
        };
        self
    }

    /// Host name or address (default `localhost`).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.cfg.host = host.into();
        self
    }

    /// Port (default 5432).
    pub fn port(mut self, port: u16) -> Self {
        self.cfg.port = port;
        self
    }

    /// Database name (default `postgres`).
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.cfg.database = database.into();
        self
    }

    /// User name (default `postgres`).
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.cfg.username = username.into();
        self
    }

    /// Password (default `postgres`).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.cfg.password = password.into();
        self
    }

    /// Application name, reported as `application_name` after sanitising
    /// (see [`sanitize_application_name`]).
    pub fn app_name(mut self, app_name: impl Into<String>) -> Self {
        self.cfg.app_name = Some(app_name.into());
        self
    }

    /// Whether the replication slot is durable (default `true`).
    pub fn durable_slot(mut self, durable: bool) -> Self {
        self.cfg.durable_slot = durable;
        self
    }

    /// Replication slot name (default `walflow_slot`); lower-case letters,
    /// digits and `_`, at most 63 bytes.
    pub fn slot_name(mut self, slot_name: impl Into<String>) -> Self {
        self.cfg.slot_name = slot_name.into();
        self
    }

    /// Publication name (default `events`), created if missing.
    pub fn publication(mut self, publication: impl Into<String>) -> Self {
        self.cfg.publication = publication.into();
        self
    }

    /// Wait before the first restart of a failed operator (default 500 ms).
    pub fn min_restart_time(mut self, d: Duration) -> Self {
        self.cfg.min_restart_time = d;
        self
    }

    /// Factor applied to the wait after each failure (default 2, at least 1).
    pub fn backoff_multiplicator(mut self, m: f64) -> Self {
        self.cfg.backoff_multiplicator = m;
        self
    }

    /// Upper bound of the wait between restarts (default 10 s).
    pub fn max_restart_time(mut self, d: Duration) -> Self {
        self.cfg.max_restart_time = d;
        self
    }

    /// Restarts of a failed operator before giving up (default 5).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.cfg.max_retries = n;
        self
    }

    /// Column holding the entities' last update time (default `updated_at`).
    pub fn process_status_entity_field(mut self, field: impl Into<String>) -> Self {
        self.cfg.process_status_entity_field = field.into();
        self
    }

    /// Where operator queues are stored (default Postgres).
    pub fn queue_storage(mut self, storage: QueueStorage) -> Self {
        self.cfg.queue_storage = storage;
        self
    }

    /// Where the process status registry is stored (default Postgres).
    pub fn process_status_storage(mut self, storage: ProcessStatusStorage) -> Self {
        self.cfg.process_status_storage = storage;
        self
    }

    /// Receiver of operator failures (default [`TracingErrorLogger`]).
    pub fn error_logger(mut self, logger: impl ErrorLogger) -> Self {
        self.cfg.error_logger = Arc::new(logger);
        self
    }

    /// Receiver of operator failures, already shared.
    pub fn error_logger_arc(mut self, logger: Arc<dyn ErrorLogger>) -> Self {
        self.cfg.error_logger = logger;
        self
    }

    /// How events reach subscribers (default local).
    pub fn pubsub(mut self, pubsub: PubSub) -> Self {
        self.cfg.pubsub = pubsub;
        self
    }

    /// `LISTEN`/`NOTIFY` channel of [`PubSub::Postgres`] (default
    /// `walflow_events`): lower-case letters, digits and `_`. Every node of
    /// one application uses the same; one node holding a slot sends on it.
    pub fn pubsub_channel(mut self, channel: impl Into<String>) -> Self {
        self.cfg.pubsub_channel = channel.into();
        self
    }

    /// How many of the latest transactions `walflow.pubsub_log` keeps at
    /// most (default 100,000, at least 1) for nodes catching up after their
    /// `LISTEN` connection was down.
    pub fn pubsub_retain_transactions(mut self, n: usize) -> Self {
        self.cfg.pubsub_retain_transactions = n;
        self
    }

    /// How long `walflow.pubsub_log` keeps a transaction at most (default
    /// 1 hour). The latest transaction is always kept.
    pub fn pubsub_retain_for(mut self, d: Duration) -> Self {
        self.cfg.pubsub_retain_for = d;
        self
    }

    /// Heartbeat interval (default 10 s).
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.cfg.heartbeat_interval = d;
        self
    }

    /// Standby status update interval (default 1 s).
    pub fn status_interval(mut self, d: Duration) -> Self {
        self.cfg.status_interval = d;
        self
    }
}

fn parse_env<T: FromStr>(var: &'static str, value: &str, expected: &str) -> Result<T, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::InvalidEnv {
        var,
        value: value.to_string(),
        reason: format!("expected {expected}"),
    })
}

fn parse_env_choice<T: FromStr<Err = String>>(
    var: &'static str,
    value: &str,
) -> Result<T, ConfigError> {
    value.parse().map_err(|reason| ConfigError::InvalidEnv {
        var,
        value: value.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_match_eventstreamex() {
        let c = Config::default();
        assert_eq!(c.url(), None);
        assert_eq!(c.host(), "localhost");
        assert_eq!(c.port(), 5432);
        assert_eq!(c.database(), "postgres");
        assert_eq!(c.username(), "postgres");
        assert_eq!(c.password(), "postgres");
        assert_eq!(c.app_name(), None);
        assert_eq!(c.application_name(), "walflow");
        assert!(c.durable_slot());
        assert_eq!(c.slot_name(), "walflow_slot");
        assert_eq!(c.publication(), "events");
        assert_eq!(c.min_restart_time(), Duration::from_millis(500));
        assert_eq!(c.backoff_multiplicator(), 2.0);
        assert_eq!(c.max_restart_time(), Duration::from_secs(10));
        assert_eq!(c.max_retries(), 5);
        assert_eq!(c.process_status_entity_field(), "updated_at");
        assert_eq!(c.queue_storage(), QueueStorage::Postgres);
        assert_eq!(c.process_status_storage(), ProcessStatusStorage::Postgres);
        assert_eq!(c.pubsub(), PubSub::Local);
        assert_eq!(c.pubsub_channel(), "walflow_events");
        assert_eq!(c.pubsub_retain_transactions(), 100_000);
        assert_eq!(c.pubsub_retain_for(), Duration::from_secs(3600));
        assert_eq!(c.heartbeat_interval(), Duration::from_secs(10));
        assert_eq!(c.status_interval(), Duration::from_secs(1));
        // The default is valid.
        Config::builder().build().unwrap();
    }

    #[test]
    fn url_parts_win_and_are_decoded() {
        let c = Config::builder()
            .host("ignored")
            .port(1)
            .database("fallback_db")
            .url("postgres://us%40er:p%40ss%3Aw%2Fd@db.example.com:6543/my%20db?sslmode=disable")
            .build()
            .unwrap();
        assert_eq!(c.host(), "db.example.com");
        assert_eq!(c.port(), 6543);
        assert_eq!(c.username(), "us@er");
        assert_eq!(c.password(), "p@ss:w/d");
        assert_eq!(c.database(), "my db");
        assert_eq!(c.ssl_mode(), Some("disable"));

        let c = Config::builder()
            .database("fallback_db")
            .username("bob")
            .password("secret")
            .url("postgresql://[::1]")
            .build()
            .unwrap();
        assert_eq!(c.host(), "::1");
        assert_eq!(c.port(), 5432);
        assert_eq!(c.username(), "bob");
        assert_eq!(c.password(), "secret");
        assert_eq!(c.database(), "fallback_db");
    }

    #[test]
    fn connect_options_use_resolved_values() {
        let c = Config::builder()
            .url("postgres://alice:pw@127.0.0.1:7777/shop")
            .app_name("my app ✓")
            .build()
            .unwrap();
        let o = c.connect_options();
        assert_eq!(o.get_host(), "127.0.0.1");
        assert_eq!(o.get_port(), 7777);
        assert_eq!(o.get_username(), "alice");
        assert_eq!(o.get_database(), Some("shop"));
        assert_eq!(o.get_application_name(), Some("my app _"));

        let c = Config::builder().host("h").port(1234).build().unwrap();
        let o = c.connect_options();
        assert_eq!(o.get_host(), "h");
        assert_eq!(o.get_port(), 1234);
        assert_eq!(o.get_username(), "postgres");
        assert_eq!(o.get_database(), Some("postgres"));
        assert_eq!(o.get_application_name(), Some("walflow"));

        let c = Config::builder()
            .host("/var/run/postgresql")
            .build()
            .unwrap();
        let o = c.connect_options();
        assert_eq!(
            o.get_socket().map(|p| p.to_str().unwrap()),
            Some("/var/run/postgresql")
        );
    }

    #[test]
    fn debug_never_prints_the_password() {
        let c = Config::builder()
            .password("hunter2-separate")
            .build()
            .unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("<redacted>"));

        let c = Config::builder()
            .url("postgres://u:hunter2-in-url@h:1/d")
            .build()
            .unwrap();
        let d = format!("{c:?} {:#?}", c.clone().into_builder());
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("postgres://u:***@h:1/d"), "{d}");

        let err = Config::builder()
            .url("mysql://u:hunter2-bad@h/d")
            .build()
            .unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(msg.contains("invalid `url` mysql://u:***@h/d"), "{msg}");

        // Unparseable URL: still masked.
        let err = Config::builder()
            .url("postgres://u:hunter2@h:notaport/d")
            .build()
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    }

    #[test]
    fn redact_url_variants() {
        assert_eq!(redact_url("postgres://h/d"), "postgres://h/d");
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(redact_url("postgres://u:p@h"), "postgres://u:***@h");
        assert_eq!(redact_url("postgres://u:p@x@h/d"), "postgres://u:***@h/d");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn slot_names_follow_postgres_rules() {
        for ok in ["walflow_slot", "a", "slot_1", &"a".repeat(63)] {
            validate_slot_name(ok).unwrap();
        }
        let err = Config::builder().slot_name("My-Slot").build().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid `slot_name` \"My-Slot\": it contains 'M'; use 1 to 63 lower-case letters, digits or underscores, e.g. `walflow_slot`"
        );
        assert!(matches!(err, ConfigError::InvalidSlotName { .. }));
        let long = "a".repeat(64);
        let err = Config::builder().slot_name(&long).build().unwrap_err();
        assert!(
            err.to_string()
                .contains("it is 64 bytes long, the limit is 63"),
            "{err}"
        );
        let err = Config::builder().slot_name("").build().unwrap_err();
        assert!(err.to_string().contains("it is empty"), "{err}");
        let err = Config::builder()
            .slot_name("a\"; drop table x; --")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("it contains '\"'"), "{err}");
    }

    #[test]
    fn publication_names() {
        for ok in ["events", "My Events", "a\"; drop table x; --", "événements"] {
            Config::builder().publication(ok).build().unwrap();
        }
        let err = Config::builder().publication("").build().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid `publication` \"\": it is empty; use a name of 1 to 63 bytes without NUL characters, e.g. `events`"
        );
        let err = Config::builder().publication("a\0b").build().unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
        // 32 two-byte characters: 64 bytes.
        let err = Config::builder()
            .publication("é".repeat(32))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("64 bytes"), "{err}");
    }

    #[test]
    fn other_values_are_validated() {
        let err = Config::builder()
            .backoff_multiplicator(0.5)
            .build()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid `backoff_multiplicator` 0.5"),
            "{err}"
        );
        let err = Config::builder()
            .min_restart_time(Duration::from_secs(20))
            .build()
            .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid `max_restart_time`"),
            "{err}"
        );
        let err = Config::builder()
            .status_interval(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid `status_interval`"),
            "{err}"
        );
        let err = Config::builder()
            .process_status_entity_field("")
            .build()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid `process_status_entity_field`"),
            "{err}"
        );
        let err = Config::builder()
            .url("postgres://h:0/d")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("port 0"), "{err}");
        let err = Config::builder()
            .pubsub_channel("Events")
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid `pubsub_channel` \"Events\": it contains 'E'; use lower-case letters, digits and `_`"
        );
        let err = Config::builder()
            .pubsub_retain_transactions(0)
            .build()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid `pubsub_retain_transactions` 0"),
            "{err}"
        );
    }

    #[test]
    fn app_name_is_sanitised() {
        let c = Config::builder()
            .app_name(format!("héllo\n{}", "x".repeat(100)))
            .build()
            .unwrap();
        let name = c.app_name().unwrap();
        assert!(name.starts_with("h_llo_x"), "{name}");
        assert_eq!(name.len(), 63);
    }

    #[test]
    fn restart_delay_backs_off_and_caps() {
        let c = Config::default();
        assert_eq!(c.restart_delay(1), Duration::from_millis(500));
        assert_eq!(c.restart_delay(2), Duration::from_secs(1));
        assert_eq!(c.restart_delay(3), Duration::from_secs(2));
        assert_eq!(c.restart_delay(6), Duration::from_secs(10));
        assert_eq!(c.restart_delay(u32::MAX), Duration::from_secs(10));
        assert_eq!(c.restart_delay(0), Duration::from_millis(500));
    }

    #[test]
    fn from_env_reads_every_variable() {
        let b = ConfigBuilder::from_lookup(env(&[
            ("DATABASE_URL", "postgres://u:p@dbhost:5555/app"),
            ("WALFLOW_APP_NAME", "shop"),
            ("WALFLOW_DURABLE_SLOT", "off"),
            ("WALFLOW_SLOT_NAME", "shop_slot"),
            ("WALFLOW_PUBLICATION", "shop_events"),
            ("WALFLOW_MIN_RESTART_TIME_MS", "100"),
            ("WALFLOW_MAX_RESTART_TIME_MS", "2000"),
            ("WALFLOW_BACKOFF_MULTIPLICATOR", "1.5"),
            ("WALFLOW_MAX_RETRIES", "7"),
            ("WALFLOW_PROCESS_STATUS_ENTITY_FIELD", "modified_at"),
            ("WALFLOW_QUEUE_STORAGE", "memory"),
            ("WALFLOW_PROCESS_STATUS_STORAGE", "Memory"),
            ("WALFLOW_PUBSUB", "postgres"),
            ("WALFLOW_PUBSUB_CHANNEL", "shop_events"),
            ("WALFLOW_PUBSUB_RETAIN_TRANSACTIONS", "500"),
            ("WALFLOW_PUBSUB_RETAIN_FOR_MS", "60000"),
            ("WALFLOW_HEARTBEAT_INTERVAL_MS", "3000"),
            ("WALFLOW_STATUS_INTERVAL_MS", "250"),
        ]))
        .unwrap();
        let c = b.build().unwrap();
        assert_eq!(c.host(), "dbhost");
        assert_eq!(c.port(), 5555);
        assert_eq!(c.username(), "u");
        assert_eq!(c.password(), "p");
        assert_eq!(c.database(), "app");
        assert_eq!(c.app_name(), Some("shop"));
        assert!(!c.durable_slot());
        assert_eq!(c.slot_name(), "shop_slot");
        assert_eq!(c.publication(), "shop_events");
        assert_eq!(c.min_restart_time(), Duration::from_millis(100));
        assert_eq!(c.max_restart_time(), Duration::from_secs(2));
        assert_eq!(c.backoff_multiplicator(), 1.5);
        assert_eq!(c.max_retries(), 7);
        assert_eq!(c.process_status_entity_field(), "modified_at");
        assert_eq!(c.queue_storage(), QueueStorage::Memory);
        assert_eq!(c.process_status_storage(), ProcessStatusStorage::Memory);
        assert_eq!(c.pubsub(), PubSub::Postgres);
        assert_eq!(c.pubsub_channel(), "shop_events");
        assert_eq!(c.pubsub_retain_transactions(), 500);
        assert_eq!(c.pubsub_retain_for(), Duration::from_secs(60));
        assert_eq!(c.heartbeat_interval(), Duration::from_secs(3));
        assert_eq!(c.status_interval(), Duration::from_millis(250));

        let c = ConfigBuilder::from_lookup(env(&[
            ("WALFLOW_HOST", "h2"),
            ("WALFLOW_PORT", "6000"),
            ("WALFLOW_DATABASE", "d2"),
            ("WALFLOW_USERNAME", "u2"),
            ("WALFLOW_PASSWORD", "p2"),
            ("DATABASE_URL", ""),
        ]))
        .unwrap()
        .build()
        .unwrap();
        assert_eq!(
            (c.host(), c.port(), c.database(), c.username(), c.password()),
            ("h2", 6000, "d2", "u2", "p2")
        );
        assert_eq!(c.url(), None);
    }

    #[test]
    fn from_env_errors_name_the_variable() {
        let err = ConfigBuilder::from_lookup(env(&[("WALFLOW_PORT", "abc")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid environment variable `WALFLOW_PORT`=\"abc\": expected an integer between 1 and 65535; fix or unset it"
        );
        let err =
            ConfigBuilder::from_lookup(env(&[("WALFLOW_QUEUE_STORAGE", "redis")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid environment variable `WALFLOW_QUEUE_STORAGE`=\"redis\": expected one of `postgres`, `memory`; fix or unset it"
        );
        let err =
            ConfigBuilder::from_lookup(env(&[("WALFLOW_DURABLE_SLOT", "maybe")])).unwrap_err();
        assert!(err.to_string().contains("WALFLOW_DURABLE_SLOT"), "{err}");
        let err = ConfigBuilder::from_lookup(env(&[("WALFLOW_SLOT_NAME", "Bad")]))
            .unwrap()
            .build()
            .unwrap_err();
        assert!(matches!(err, ConfigError::InvalidSlotName { .. }));
    }

    #[test]
    fn custom_error_logger_is_called() {
        #[derive(Default)]
        struct Collect(Mutex<Vec<String>>);
        impl ErrorLogger for Arc<Collect> {
            fn log_retry(&self, info: &RetryInfo<'_>) {
                self.0
                    .lock()
                    .unwrap()
                    .push(format!("retry {} {}", info.operator, info.attempt));
            }
            fn log_failed(&self, info: &FailureInfo<'_>) {
                self.0
                    .lock()
                    .unwrap()
                    .push(format!("failed {} {}", info.operator, info.error));
            }
        }
        let sink = Arc::new(Collect::default());
        let c = Config::builder()
            .error_logger(sink.clone())
            .build()
            .unwrap();
        c.error_logger().log_retry(&RetryInfo {
            operator: "op",
            table: "posts",
            id: "1".into(),
            attempt: 1,
            max_retries: 5,
            next_wait: Duration::from_millis(500),
            error: "boom".into(),
        });
        c.error_logger().log_failed(&FailureInfo {
            operator: "op",
            table: "posts",
            id: "1".into(),
            attempt: 6,
            max_retries: 5,
            error: "boom".into(),
        });
        assert_eq!(
            *sink.0.lock().unwrap(),
            vec!["retry op 1".to_string(), "failed op boom".to_string()]
        );
        // The default logger does not panic without a subscriber.
        TracingErrorLogger.log_failed(&FailureInfo {
            operator: "op",
            table: "t",
            id: "x".into(),
            attempt: 1,
            max_retries: 0,
            error: "e".into(),
        });
    }
}

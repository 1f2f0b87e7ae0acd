//! Every option, declared once.
//!
//! `with_options!(callback)` calls `callback! { … }` with the table below.
//! The callbacks generate, each from the same entries: the fields of
//! [`Config`](super::Config) with their defaults, its getters and `Debug`,
//! the [`ConfigBuilder`](super::ConfigBuilder) setters, the environment
//! variables read by [`ConfigBuilder::from_lookup`](super::ConfigBuilder::from_lookup),
//! the forwarding setters of [`WalflowBuilder`](crate::WalflowBuilder), and
//! the table of options in the documentation and the README
//! ([`OPTIONS_TABLE`](super::OPTIONS_TABLE)).
//!
//! An entry:
//!
//! ```text
//! /// Doc of the setters.
//! name: Type = default;
//!     set(arg: ArgType) => value of Type made from arg;
//!     get(c) -> Return => value read from the config `c`;
//!     show(c) => what `Debug` prints;
//!     env("VARIABLE", kind, "format");   // or env(): no variable
//!     default("shown default"), esx("EventStreamex's name");
//! ```
//!
//! `kind` is a parser of `config/env.rs`: `text`, `secret`, `number`,
//! `ms`, `flag` or `choice`.

macro_rules! with_options {
    ($callback:path) => {
        $callback! {
            /// Connection URL, `postgres://user:password@host:port/database`.
            /// Its parts win over the separate connection options; an empty
            /// string removes it.
            database_url: Option<String> = None;
                set(url: impl Into<String>) => {
                    let url = url.into();
                    (!url.trim().is_empty()).then_some(url)
                };
                get(c) -> Option<&str> => c.database_url.as_deref();
                show(c) => c.database_url.as_deref().map($crate::config::redact_url);
                env("DATABASE_URL", text, "`postgres://user:password@host:port/database?sslmode=...`");
                default("none"), esx("`url`");

            /// Host name or address, used when the URL has none; a path
            /// starting with `/` is the directory of a unix socket.
            host: String = "localhost".into();
                set(host: impl Into<String>) => host.into();
                get(c) -> &str => &c.conn.host;
                show(c) => &c.conn.host;
                env("WALFLOW_HOST", text, "host name or IP address");
                default("`localhost`"), esx("`hostname`");

            /// Port, used when the URL has none.
            port: u16 = 5432;
                set(port: u16) => port;
                get(c) -> u16 => c.conn.port;
                show(c) => c.conn.port;
                env("WALFLOW_PORT", number, "an integer between 1 and 65535");
                default("`5432`"), esx("`port`");

            /// Database name, used when the URL has none.
            database: String = "postgres".into();
                set(database: impl Into<String>) => database.into();
                get(c) -> &str => &c.conn.database;
                show(c) => &c.conn.database;
                env("WALFLOW_DATABASE", text, "name");
                default("`postgres`"), esx("`database`");

            /// User name, used when the URL has none (percent-decoded from
            /// the URL); it needs the `REPLICATION` attribute.
            username: String = "postgres".into();
                set(username: impl Into<String>) => username.into();
                get(c) -> &str => &c.conn.username;
                show(c) => &c.conn.username;
                env("WALFLOW_USERNAME", text, "name");
                default("`postgres`"), esx("`username`");

            /// Password, used when the URL has none (percent-decoded from
            /// the URL). Never printed.
            password: String = "postgres".into();
                set(password: impl Into<String>) => password.into();
                get(c) -> &str => &c.conn.password;
                show(_c) => "<redacted>";
                env("WALFLOW_PASSWORD", secret, "text");
                default("`postgres`"), esx("`password`");

            /// The sessions' `application_name`, sanitised (printable ASCII,
            /// at most 63 bytes; see [`sanitize_application_name`](crate::config::sanitize_application_name)).
            application_name: String = $crate::config::DEFAULT_APPLICATION_NAME.into();
                set(name: impl Into<String>) => name.into();
                get(c) -> &str => &c.application_name;
                show(c) => &c.application_name;
                env("WALFLOW_APPLICATION_NAME", text, "text");
                default("`walflow`"), esx("`app_name`");

            /// Whether the replication slot survives disconnections (`true`)
            /// or is temporary, losing the changes made while the flow is
            /// not running (`false`).
            durable_slot: bool = true;
                set(durable: bool) => durable;
                get(c) -> bool => c.durable_slot;
                show(c) => c.durable_slot;
                env("WALFLOW_DURABLE_SLOT", flag, "`true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`)");
                default("`true`"), esx("`durable_slot`");

            /// Replication slot name: lower-case letters, digits and `_`, at
            /// most 63 bytes.
            slot_name: String = "walflow_slot".into();
                set(slot_name: impl Into<String>) => slot_name.into();
                get(c) -> &str => &c.slot_name;
                show(c) => &c.slot_name;
                env("WALFLOW_SLOT_NAME", text, "lower-case letters, digits, `_`");
                default("`walflow_slot`"), esx("`slot_name` (`postgres_slot`)");

            /// Publication name, created if missing (quote it with
            /// [`quote_ident`](crate::ident::quote_ident) in SQL).
            publication: String = "events".into();
                set(publication: impl Into<String>) => publication.into();
                get(c) -> &str => &c.publication;
                show(c) => &c.publication;
                env("WALFLOW_PUBLICATION", text, "name");
                default("`events`"), esx("`publication`");

            /// Wait before the first retry of a failed event (and the first
            /// restart of a failed stage).
            min_restart_time: std::time::Duration = std::time::Duration::from_millis(500);
                set(d: std::time::Duration) => d;
                get(c) -> std::time::Duration => c.min_restart_time;
                show(c) => c.min_restart_time;
                env("WALFLOW_MIN_RESTART_TIME_MS", ms, "milliseconds");
                default("500 ms"), esx("`operator_queue_min_restart_time`");

            /// Factor applied to the wait after each failed attempt (at
            /// least 1).
            backoff_multiplicator: f64 = 2.0;
                set(m: f64) => m;
                get(c) -> f64 => c.backoff_multiplicator;
                show(c) => c.backoff_multiplicator;
                env("WALFLOW_BACKOFF_MULTIPLICATOR", number, "a number such as 2 or 1.5");
                default("`2.0`"), esx("`operator_queue_backoff_multiplicator`");

            /// Upper bound of the wait between attempts.
            max_restart_time: std::time::Duration = std::time::Duration::from_secs(10);
                set(d: std::time::Duration) => d;
                get(c) -> std::time::Duration => c.max_restart_time;
                show(c) => c.max_restart_time;
                env("WALFLOW_MAX_RESTART_TIME_MS", ms, "milliseconds");
                default("10 s"), esx("`operator_queue_max_restart_time`");

            /// Retries before an event is dead-lettered (`1 + max_retries`
            /// attempts).
            max_retries: u32 = 5;
                set(n: u32) => n;
                get(c) -> u32 => c.max_retries;
                show(c) => c.max_retries;
                env("WALFLOW_MAX_RETRIES", number, "a non-negative integer");
                default("`5`"), esx("`operator_queue_max_retries`");

            /// Column of the entities holding their last update time
            /// (process status).
            process_status_entity_field: String = "updated_at".into();
                set(field: impl Into<String>) => field.into();
                get(c) -> &str => &c.process_status_entity_field;
                show(c) => &c.process_status_entity_field;
                env("WALFLOW_PROCESS_STATUS_ENTITY_FIELD", text, "column name");
                default("`updated_at`"), esx("`process_status_entity_field`");

            /// Where operator queues are kept (see [Queue and process status
            /// storage](crate::flow#queue-and-process-status-storage)).
            queue_storage: $crate::config::QueueStorage = $crate::config::QueueStorage::Stream;
                set(storage: $crate::config::QueueStorage) => storage;
                get(c) -> $crate::config::QueueStorage => c.queue_storage;
                show(c) => c.queue_storage;
                env("WALFLOW_QUEUE_STORAGE", choice, "`stream` or `postgres`");
                default("`QueueStorage::Stream`"), esx("`queue_storage_adapter`");

            /// With the stream storage: held rows of one operator past which
            /// it has fallen behind: its held events are written to
            /// `walflow.queue` and it runs from there until it has caught up
            /// (at least 1). The backlog the slot delivers at start (events
            /// committed before the flow started) does not count: it runs
            /// from memory, unless held longer than `spill_after`. The rows
            /// all operators hold in memory are bounded by twice this (at
            /// least 20,000): past it the flow stops receiving until units
            /// or spills make room.
            spill_rows: usize = 10_000;
                set(n: usize) => n;
                get(c) -> usize => c.spill_rows;
                show(c) => c.spill_rows;
                env("WALFLOW_SPILL_ROWS", number, "a positive integer");
                default("`10000`"), esx("—");

            /// With the stream storage: how long an operator holds an event
            /// in memory (since it was handed over) before its held events
            /// are written to `walflow.queue`.
            spill_after: std::time::Duration = std::time::Duration::from_secs(30);
                set(d: std::time::Duration) => d;
                get(c) -> std::time::Duration => c.spill_after;
                show(c) => c.spill_after;
                env("WALFLOW_SPILL_AFTER_MS", ms, "milliseconds");
                default("30 s"), esx("—");

            /// Where the process status is kept.
            process_status_storage: $crate::config::ProcessStatusStorage =
                $crate::config::ProcessStatusStorage::Postgres;
                set(storage: $crate::config::ProcessStatusStorage) => storage;
                get(c) -> $crate::config::ProcessStatusStorage => c.process_status_storage;
                show(c) => c.process_status_storage;
                env("WALFLOW_PROCESS_STATUS_STORAGE", choice, "`postgres` or `memory`");
                default("`ProcessStatusStorage::Postgres`"), esx("`process_status_storage_adapter`");

            /// Receiver of retries and final failures.
            error_logger: std::sync::Arc<dyn $crate::ErrorLogger> =
                std::sync::Arc::new($crate::TracingErrorLogger);
                set(logger: impl $crate::ErrorLogger) => std::sync::Arc::new(logger);
                get(c) -> &std::sync::Arc<dyn $crate::ErrorLogger> => &c.error_logger;
                show(_c) => "<dyn ErrorLogger>";
                env();
                default("`TracingErrorLogger`"), esx("`error_logger_adapter`");

            /// How changes reach subscribers: [`PubSub::Local`](crate::config::PubSub::Local)
            /// or [`PubSub::Postgres`](crate::config::PubSub::Postgres) to
            /// feed the hubs of several processes (see [Several
            /// nodes](crate::flow#several-nodes)).
            pubsub: $crate::config::PubSub = $crate::config::PubSub::Local;
                set(pubsub: $crate::config::PubSub) => pubsub;
                get(c) -> $crate::config::PubSub => c.pubsub;
                show(c) => c.pubsub;
                env("WALFLOW_PUBSUB", choice, "`local` or `postgres`");
                default("`PubSub::Local`"), esx("`pubsub`");

            /// `LISTEN`/`NOTIFY` channel of `PubSub::Postgres`: lower-case
            /// letters, digits and `_`. Every node of one application uses
            /// the same, one channel per slot; the node holding the slot
            /// sends on it.
            pubsub_channel: String = "walflow_events".into();
                set(channel: impl Into<String>) => channel.into();
                get(c) -> &str => &c.pubsub_channel;
                show(c) => &c.pubsub_channel;
                env("WALFLOW_PUBSUB_CHANNEL", text, "lower-case letters, digits, `_`");
                default("`walflow_events`"), esx("—");

            /// How many of the latest transactions `walflow.pubsub_log`
            /// keeps at most (at least 1), for nodes catching up after their
            /// `LISTEN` connection was down.
            pubsub_retain_transactions: usize = 100_000;
                set(n: usize) => n;
                get(c) -> usize => c.pubsub_retain_transactions;
                show(c) => c.pubsub_retain_transactions;
                env("WALFLOW_PUBSUB_RETAIN_TRANSACTIONS", number, "a positive integer");
                default("`100000`"), esx("—");

            /// How long `walflow.pubsub_log` keeps a transaction at most. The
            /// latest transaction is always kept.
            pubsub_retain_for: std::time::Duration = std::time::Duration::from_secs(3600);
                set(d: std::time::Duration) => d;
                get(c) -> std::time::Duration => c.pubsub_retain_for;
                show(c) => c.pubsub_retain_for;
                env("WALFLOW_PUBSUB_RETAIN_FOR_MS", ms, "milliseconds");
                default("1 h"), esx("—");

            /// Heartbeat keeping the slot moving while the published tables
            /// are idle.
            heartbeat_interval: std::time::Duration = std::time::Duration::from_secs(10);
                set(d: std::time::Duration) => d;
                get(c) -> std::time::Duration => c.heartbeat_interval;
                show(c) => c.heartbeat_interval;
                env("WALFLOW_HEARTBEAT_INTERVAL_MS", ms, "milliseconds");
                default("10 s"), esx("—");

            /// Interval of the replication status updates.
            status_interval: std::time::Duration = std::time::Duration::from_secs(1);
                set(d: std::time::Duration) => d;
                get(c) -> std::time::Duration => c.status_interval;
                show(c) => c.status_interval;
                env("WALFLOW_STATUS_INTERVAL_MS", ms, "milliseconds");
                default("1 s"), esx("—");

            /// How often the flow reads its slot's lag and its queues'
            /// depths, for [`Walflow::health`](crate::Walflow::health), the
            /// metrics and the slot guard.
            health_interval: std::time::Duration = std::time::Duration::from_secs(5);
                set(d: std::time::Duration) => d;
                get(c) -> std::time::Duration => c.health_interval;
                show(c) => c.health_interval;
                env("WALFLOW_HEALTH_INTERVAL_MS", ms, "milliseconds");
                default("5 s"), esx("—");

            /// The slot lag (WAL bytes not yet acknowledged) within which
            /// the flow counts as caught up: ready
            /// ([`Health::ready`](crate::Health::ready), `/readyz`).
            ready_lag_bytes: u64 = 16 * 1024 * 1024;
                set(bytes: u64) => bytes;
                get(c) -> u64 => c.ready_lag_bytes;
                show(c) => c.ready_lag_bytes;
                env("WALFLOW_READY_LAG_BYTES", number, "bytes");
                default("16 MiB"), esx("—");

            /// The slot guard: past this lag the flow logs a warning and
            /// reports itself degraded. PostgreSQL keeps the WAL a slot has
            /// not acknowledged, so a stuck flow fills the server's disk
            /// (or, with `max_slot_wal_keep_size`, loses its slot).
            max_slot_lag_bytes: u64 = 1024 * 1024 * 1024;
                set(bytes: u64) => bytes;
                get(c) -> u64 => c.max_slot_lag_bytes;
                show(c) => c.max_slot_lag_bytes;
                env("WALFLOW_MAX_SLOT_LAG_BYTES", number, "bytes");
                default("1 GiB"), esx("—");
        }
    };
}

pub(crate) use with_options;

/// Generates the `Walflow` builder's setters, each forwarding to the
/// [`ConfigBuilder`](super::ConfigBuilder) setter of the same name. Called
/// inside `impl WalflowBuilder`, whose `map` applies a change to its
/// configuration builder.
macro_rules! forward_setters {
    ($(
        $(#[doc = $doc:expr])*
        $name:ident : $ty:ty = $default:expr;
            set($arg:ident : $argty:ty) => $set:expr;
            get($g:ident) -> $ret:ty => $get:expr;
            show($s:ident) => $show:expr;
            env($($env:tt)*);
            default($dflt:literal), esx($esx:literal);
    )*) => {
        $(
            $(#[doc = $doc])*
            #[doc = ""]
            #[doc = concat!("Default: ", $dflt, ". See [`ConfigBuilder::", stringify!($name), "`](crate::config::ConfigBuilder::", stringify!($name), ").")]
            pub fn $name(self, $arg: $argty) -> Self {
                self.map(|b| b.$name($arg))
            }
        )*
    };
}

pub(crate) use forward_setters;

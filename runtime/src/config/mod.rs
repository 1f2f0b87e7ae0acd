//! Runtime configuration: [`Config`], built with [`ConfigBuilder`] or read
//! from the environment.
//!
//! [`Config`] carries every option of EventStreamex, with Rust names and the
//! same defaults (except the slot name, see below); its documentation lists
//! them all, with their environment variables. Each option is declared once,
//! in `config/options.rs`: its field, default, getter, setter, variable, the
//! `Walflow` builder's setter and that table all come from the one entry.
//!
//! The default slot name is `walflow_slot` rather than EventStreamex's
//! `postgres_slot`, so that walflow and an EventStreamex application can share
//! a server without stealing each other's slot.
//!
//! # Environment
//!
//! [`Config::from_env`] starts from the defaults and reads `DATABASE_URL` and
//! one `WALFLOW_*` variable per option. Unset or empty variables leave the
//! default in place.
//!
//! # Connection parameters
//!
//! When a `database_url` is given, its parts win over `host`, `port`,
//! `username`, `password` and `database`; the parts the URL leaves out fall
//! back to those options. User name and password are percent-decoded. Query
//! parameters (`sslmode`, `sslrootcert`, ...) are honoured by
//! [`Config::connect_options`].
//!
//! [`Debug`](fmt::Debug) output and error messages never contain the password,
//! whether it was given on its own or inside the URL.

mod builder;
mod env;
mod options;
mod url;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use self::builder::ConfigBuilder;
pub(crate) use self::options::{forward_setters, with_options};
pub use self::url::redact_url;
use crate::backoff::Backoff;
pub use crate::error_logger::{ErrorLogger, FailureInfo, RetryInfo, TracingErrorLogger};

/// PostgreSQL's `NAMEDATALEN - 1`: the longest identifier, in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// The `application_name` used when none is configured.
pub const DEFAULT_APPLICATION_NAME: &str = "walflow";

/// Where operator queues are stored.
///
/// Both storages apply every event of a query operator exactly once and
/// call handlers at least once (exactly once with
/// [`Ctx::transaction`](crate::Ctx::transaction)), across crashes and
/// restarts; they differ in what they write per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QueueStorage {
    /// Every event is written to a PostgreSQL table (`walflow.queue`) before
    /// the slot is acknowledged, and deleted by the unit that applies it:
    /// one queue row per event and operator.
    Postgres,
    /// Straight from the replication stream (default): rows are handed to the
    /// executors in memory and no queue row is written; each unit
    /// transaction records in itself the positions of the events it
    /// applied (`walflow.applied`), and the slot is acknowledged only up to the
    /// oldest event some operator has not applied. After a crash the slot
    /// delivers the rest again and each operator skips what its record
    /// says it applied: query operators apply every event exactly once,
    /// handlers at least once (exactly once with
    /// [`Ctx::transaction`](crate::Ctx::transaction)). An operator that
    /// falls behind (`spill_rows`, `spill_after`) or whose id waits to try
    /// again spills its held events to `walflow.queue` and runs from there
    /// until it has caught up. See the queue protocol's rule 12
    /// (`runtime/src/queue/mod.rs`).
    #[default]
    Stream,
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
        parse_choice(s, &[("stream", Self::Stream), ("postgres", Self::Postgres)])
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

/// An invalid configuration value. Messages name the option and the value
/// (never a password) and say how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
    /// `database_url` cannot be used. The URL is shown with its password masked.
    #[error(
        "invalid `database_url` {url}: {reason}; use postgres://user:password@host:port/database (percent-encode special characters)"
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

/// The table's variable and format cells of an option's `env(…)`.
macro_rules! var_cell {
    () => {
        "—"
    };
    ($var:literal, $kind:ident, $format:literal) => {
        concat!("`", $var, "`")
    };
}

macro_rules! format_cell {
    () => {
        "—"
    };
    ($var:literal, $kind:ident, $format:literal) => {
        $format
    };
}

/// Generates [`Config`] from the options table: its fields and defaults,
/// getters, `Debug`, and [`OPTIONS_TABLE`].
macro_rules! define_config {
    ($(
        $(#[doc = $doc:expr])*
        $name:ident : $ty:ty = $default:expr;
            set($arg:ident : $argty:ty) => $set:expr;
            get($g:ident) -> $ret:ty => $get:expr;
            show($s:ident) => $show:expr;
            env($($env:tt)*);
            default($dflt:literal), esx($esx:literal);
    )*) => {
        /// Every option, its default, its environment variable (and the
        /// variable's format) and EventStreamex's name for it, as a Markdown
        /// table (the README shows it).
        pub const OPTIONS_TABLE: &str = concat!(
            "| option | default | variable | format | EventStreamex |\n",
            "|---|---|---|---|---|\n",
            $(
                "| `", stringify!($name), "` | ", $dflt, " | ",
                var_cell!($($env)*), " | ", format_cell!($($env)*), " | ", $esx, " |\n",
            )*
        );

        /// Runtime configuration; see the [module documentation](self).
        ///
        /// Build one with [`Config::builder`], [`Config::from_env`] or
        /// [`Config::from_database_url`]; [`Config::default`] gives every
        /// default. Each option has a getter and a [`ConfigBuilder`] setter
        /// of its name:
        ///
        #[doc = concat!(
            "| option | default | variable | format | EventStreamex |\n",
            "|---|---|---|---|---|\n",
            $(
                "| [`", stringify!($name), "`](ConfigBuilder::", stringify!($name), ") | ", $dflt, " | ",
                var_cell!($($env)*), " | ", format_cell!($($env)*), " | ", $esx, " |\n",
            )*
        )]
        #[derive(Clone)]
        pub struct Config {
            $($name: $ty,)*
            conn: Conn,
        }

        impl Default for Config {
            fn default() -> Self {
                let mut cfg = Config {
                    $($name: $default,)*
                    conn: Conn {
                        host: String::new(),
                        port: 0,
                        username: String::new(),
                        password: String::new(),
                        database: String::new(),
                        ssl_mode: None,
                    },
                };
                cfg.conn = cfg.resolve_conn().expect("the defaults resolve");
                cfg
            }
        }

        impl fmt::Debug for Config {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("Config")
                    $(.field(stringify!($name), &{ let $s = self; $show }))*
                    .field("ssl_mode", &self.conn.ssl_mode)
                    .finish()
            }
        }

        impl Config {
            $(
                $(#[doc = $doc])*
                pub fn $name(&self) -> $ret {
                    let $g = self;
                    $get
                }
            )*
        }
    };
}

with_options!(define_config);

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The defaults with the connection taken from `url`.
    pub fn from_database_url(url: impl Into<String>) -> Result<Self, ConfigError> {
        Self::builder().database_url(url).build()
    }

    /// The defaults overridden by `DATABASE_URL` and the `WALFLOW_*`
    /// environment variables (see the table on [`Config`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        ConfigBuilder::from_env()?.build()
    }

    /// A builder holding this configuration, to change some options.
    pub fn into_builder(self) -> ConfigBuilder {
        ConfigBuilder { cfg: self }
    }

    /// The configured URL with its password masked, for messages.
    pub fn redacted_database_url(&self) -> Option<String> {
        self.database_url.as_deref().map(redact_url)
    }

    /// The server, for messages: the URL with its password masked, or
    /// `host:port`.
    pub fn server(&self) -> String {
        self.redacted_database_url()
            .unwrap_or_else(|| format!("{}:{}", self.conn.host, self.conn.port))
    }

    /// The URL's `sslmode` parameter (`disable`, `prefer`, `require`,
    /// `verify-ca`, `verify-full`), if the URL has one.
    pub fn ssl_mode(&self) -> Option<&str> {
        self.conn.ssl_mode.as_deref()
    }

    /// The retry backoff: `min_restart_time`, multiplied by
    /// `backoff_multiplicator` after each failure, up to `max_restart_time`.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(
            self.min_restart_time,
            self.backoff_multiplicator,
            self.max_restart_time,
        )
    }

    /// The wait before retry number `attempt` (1 for the first retry):
    /// [`backoff`](Self::backoff)'s delay.
    pub fn restart_delay(&self, attempt: u32) -> Duration {
        self.backoff().delay(attempt)
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
        if self.spill_rows == 0 {
            return Err(ConfigError::InvalidValue {
                option: "spill_rows",
                value: "0".into(),
                reason: "must be at least 1; use e.g. 10000".into(),
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
            ("health_interval", self.health_interval),
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
        self.application_name = sanitize_application_name(&self.application_name);
        self.conn = self.resolve_conn()?;
        Ok(())
    }
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

/// A slot name for `prefix` on the database `database`: slots belong to the
/// whole server, so a flow that may run against several databases of one
/// server (an example, a test, a tenant per database) names its slot after
/// the database. Lower-cased, every character but ASCII letters, digits and
/// `_` made `_`, cut to PostgreSQL's 63 bytes; a valid `slot_name`.
///
/// ```
/// use walflow_runtime::config::slot_name_for;
/// assert_eq!(slot_name_for("walflow_blog", "My-DB"), "walflow_blog_my_db");
/// ```
pub fn slot_name_for(prefix: &str, database: &str) -> String {
    let mut name: String = format!("{prefix}_{database}")
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(63);
    name
}

/// Checks a replication slot name against PostgreSQL's rule: 1 to 63
/// characters among lower-case ASCII letters, digits and `_`.
pub(crate) fn validate_slot_name(name: &str) -> Result<(), ConfigError> {
    validate_channel(name).map_err(|reason| ConfigError::InvalidSlotName {
        value: name.to_string(),
        reason,
    })
}

/// Checks a `LISTEN`/`NOTIFY` channel name: 1 to 63 lower-case ASCII
/// letters, digits and `_` (so it needs no quoting). Returns why not.
pub(crate) fn validate_channel(name: &str) -> Result<(), String> {
    validate_name_bytes(name)?;
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
pub(crate) fn validate_publication(name: &str) -> Result<(), ConfigError> {
    validate_name_bytes(name).map_err(|reason| ConfigError::InvalidPublication {
        value: name.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests;

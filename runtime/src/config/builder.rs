//! [`ConfigBuilder`]: one setter per option, generated from the
//! [options table](super::options).

use std::sync::Arc;

use super::{Config, ConfigError};
use crate::ErrorLogger;

/// Builder of [`Config`]; every setter has the name of its option (see the
/// table on [`Config`]).
#[derive(Clone, Debug, Default)]
pub struct ConfigBuilder {
    pub(super) cfg: Config,
}

impl ConfigBuilder {
    /// A builder starting from the defaults overridden by `DATABASE_URL` and
    /// the `WALFLOW_*` environment variables.
    ///
    /// A `WALFLOW_` variable that no option reads (`WALFLOW_SLOTNAME`) is
    /// warned about, with the nearest variable that is read
    /// (`WALFLOW_SLOT_NAME`); it never fails the start.
    pub fn from_env() -> Result<Self, ConfigError> {
        let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
        for (name, nearest) in super::env::unknown_variables(names) {
            match nearest {
                Some(nearest) => tracing::warn!(
                    variable = %name,
                    "{name} is set but no walflow option reads it; did you mean {nearest}?"
                ),
                None => tracing::warn!(
                    variable = %name,
                    "{name} is set but no walflow option reads it (see the options table of walflow::Config)"
                ),
            }
        }
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Validates the options and resolves the connection parameters.
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut cfg = self.cfg;
        cfg.validate_and_resolve()?;
        Ok(cfg)
    }

    /// Takes the connection (host or socket, port, user name, database) from
    /// sqlx options when none is configured: no `database_url`, and `host`
    /// and the others at their defaults. The password stays the configured
    /// one (sqlx does not give it back).
    pub fn connection_from(mut self, options: &sqlx::postgres::PgConnectOptions) -> Self {
        let defaults = Config::default();
        let cfg = &mut self.cfg;
        let unset = cfg.database_url.is_none()
            && cfg.host == defaults.host
            && cfg.port == defaults.port
            && cfg.username == defaults.username
            && cfg.database == defaults.database;
        if unset {
            cfg.host = match options.get_socket() {
                Some(dir) => dir.display().to_string(),
                None => options.get_host().to_owned(),
            };
            cfg.port = options.get_port();
            cfg.username = options.get_username().to_owned();
            if let Some(database) = options.get_database() {
                cfg.database = database.to_owned();
            }
        }
        self
    }

    /// [`error_logger`](Self::error_logger), already shared.
    pub fn error_logger_arc(mut self, logger: Arc<dyn ErrorLogger>) -> Self {
        self.cfg.error_logger = logger;
        self
    }
}

/// Generates the setters and, for each option with a variable, its reading
/// in [`ConfigBuilder::from_lookup`] (its parser in `env.rs`, then its setter).
macro_rules! setters {
    ($(
        $(#[doc = $doc:expr])*
        $name:ident : $ty:ty = $default:expr;
            set($arg:ident : $argty:ty) => $set:expr;
            get($g:ident) -> $ret:ty => $get:expr;
            show($s:ident) => $show:expr;
            env($($var:literal, $kind:ident, $format:literal)?);
            default($dflt:literal), esx($esx:literal);
    )*) => {
        impl ConfigBuilder {
            /// Every variable an option reads.
            pub(super) const VARIABLES: &'static [&'static str] = &[$($($var,)?)*];

            /// Like [`from_env`](Self::from_env) but reading the variables
            /// through `lookup` (for tests, or another source of settings).
            pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
                let mut b = ConfigBuilder::default();
                $($(
                    if let Some(v) = super::env::$kind($var, lookup($var), $format)? {
                        b = b.$name(v);
                    }
                )?)*
                Ok(b)
            }

            $(
                $(#[doc = $doc])*
                #[doc = ""]
                #[doc = concat!("Default: ", $dflt, ".")]
                pub fn $name(mut self, $arg: $argty) -> Self {
                    self.cfg.$name = $set;
                    self
                }
            )*
        }
    };
}

super::options::with_options!(setters);

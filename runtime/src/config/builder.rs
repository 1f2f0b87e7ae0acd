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
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Validates the options and resolves the connection parameters.
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut cfg = self.cfg;
        cfg.validate_and_resolve()?;
        Ok(cfg)
    }

    /// [`error_logger`](Self::error_logger), already shared.
    pub fn error_logger_arc(mut self, logger: Arc<dyn ErrorLogger>) -> Self {
        self.cfg.error_logger = logger;
        self
    }
}

macro_rules! setters {
    ($(
        $(#[doc = $doc:expr])*
        $name:ident : $ty:ty = $default:expr;
            set($arg:ident : $argty:ty) => $set:expr;
            get($g:ident) -> $ret:ty => $get:expr;
            show($s:ident) => $show:expr;
            env($($env:tt)*);
            default($dflt:literal), esx($esx:literal);
    )*) => {
        impl ConfigBuilder {
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

//! The parsers of the environment variables (`DATABASE_URL` and
//! `WALFLOW_*`, one per option, named in the [options table](super::options)).
//!
//! Each parser takes the variable's name, its value (if set) and the format
//! the table states, and gives the option's value, `None` when the variable
//! is unset or empty, or an error naming the variable.

use std::str::FromStr;
use std::time::Duration;

use super::ConfigError;

type Parsed<T> = Result<Option<T>, ConfigError>;

fn set(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

fn invalid(var: &'static str, value: String, reason: String) -> ConfigError {
    ConfigError::InvalidEnv { var, value, reason }
}

/// Text, as given.
pub(super) fn text(_var: &'static str, value: Option<String>, _format: &str) -> Parsed<String> {
    Ok(set(value))
}

/// Text that may be all spaces (a password): only an empty value is unset.
pub(super) fn secret(_var: &'static str, value: Option<String>, _format: &str) -> Parsed<String> {
    Ok(value.filter(|v| !v.is_empty()))
}

/// A number in `format`.
pub(super) fn number<T: FromStr>(
    var: &'static str,
    value: Option<String>,
    format: &str,
) -> Parsed<T> {
    set(value)
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| invalid(var, v, format!("expected {format}")))
        })
        .transpose()
}

/// A number of milliseconds.
pub(super) fn ms(var: &'static str, value: Option<String>, _format: &str) -> Parsed<Duration> {
    Ok(number::<u64>(var, value, "a number of milliseconds")?.map(Duration::from_millis))
}

/// `true` or `false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
pub(super) fn flag(var: &'static str, value: Option<String>, _format: &str) -> Parsed<bool> {
    set(value)
        .map(|v| match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(invalid(var, v, "expected `true` or `false`".into())),
        })
        .transpose()
}

/// One of the names a [`FromStr`] type accepts.
pub(super) fn choice<T: FromStr<Err = String>>(
    var: &'static str,
    value: Option<String>,
    _format: &str,
) -> Parsed<T> {
    set(value)
        .map(|v| v.parse().map_err(|reason| invalid(var, v, reason)))
        .transpose()
}

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

/// `WALFLOW_` variables read elsewhere than the options: the throwaway
/// server's binaries and crash points (runtime), and walflow's own tests and
/// benchmarks (by prefix).
const OTHER_VARIABLES: &[&str] = &["WALFLOW_PG_BIN_DIR", "WALFLOW_CRASH_AT"];
const OTHER_PREFIXES: &[&str] = &[
    "WALFLOW_TEST_",
    "WALFLOW_BENCH_",
    "WALFLOW_SOAK",
    "WALFLOW_SEED",
    "WALFLOW_REPEAT",
    "WALFLOW_EXPECT_PG_MAJOR",
    "WALFLOW_CRASH_POINT",
    "WALFLOW_EMBEDDED_TEST_CHILD",
];

/// The `WALFLOW_` variables among `names` that nothing reads, each with
/// the nearest variable an option reads when one is close (a typo).
pub(super) fn unknown_variables(
    names: impl IntoIterator<Item = String>,
) -> Vec<(String, Option<&'static str>)> {
    let known = super::ConfigBuilder::VARIABLES;
    let mut unknown: Vec<_> = names
        .into_iter()
        .filter(|n| n.starts_with("WALFLOW_") && !n.ends_with("_CHILD"))
        .filter(|n| !known.contains(&n.as_str()) && !OTHER_VARIABLES.contains(&n.as_str()))
        .filter(|n| !OTHER_PREFIXES.iter().any(|p| n.starts_with(p)))
        .map(|n| {
            let nearest = known
                .iter()
                .map(|k| (strsim::levenshtein(k, &n), *k))
                .min()
                .filter(|(distance, _)| *distance <= 4)
                .map(|(_, k)| k);
            (n, nearest)
        })
        .collect();
    unknown.sort();
    unknown
}

#[cfg(test)]
mod tests {
    use super::unknown_variables;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_typo_gets_the_nearest_name() {
        assert_eq!(
            unknown_variables(names(&["WALFLOW_SLOTNAME", "PATH", "WALFLOW_SLOT_NAME"])),
            vec![("WALFLOW_SLOTNAME".to_owned(), Some("WALFLOW_SLOT_NAME"))]
        );
        assert_eq!(
            unknown_variables(names(&["WALFLOW_MAX_RETRY"])),
            vec![("WALFLOW_MAX_RETRY".to_owned(), Some("WALFLOW_MAX_RETRIES"))]
        );
    }

    #[test]
    fn an_unrelated_name_gets_none() {
        assert_eq!(
            unknown_variables(names(&["WALFLOW_COMPLETELY_DIFFERENT_THING"])),
            vec![("WALFLOW_COMPLETELY_DIFFERENT_THING".to_owned(), None)]
        );
    }

    #[test]
    fn known_and_other_variables_are_not_reported() {
        assert!(
            unknown_variables(names(&[
                "WALFLOW_PORT",
                "DATABASE_URL",
                "WALFLOW_PG_BIN_DIR",
                "WALFLOW_SEED",
                "WALFLOW_CONVERGENCE_CHILD",
                "WALFLOW_BENCH_COMMENTS",
            ]))
            .is_empty()
        );
    }
}

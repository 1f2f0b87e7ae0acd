//! The configuration's unit tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    assert_eq!(c.database_url(), None);
    assert_eq!(c.host(), "localhost");
    assert_eq!(c.port(), 5432);
    assert_eq!(c.database(), "postgres");
    assert_eq!(c.username(), "postgres");
    assert_eq!(c.password(), "postgres");
    assert_eq!(c.application_name(), "walflow");
    assert!(c.durable_slot());
    assert_eq!(c.slot_name(), "walflow_slot");
    assert_eq!(c.publication(), "events");
    assert_eq!(c.min_restart_time(), Duration::from_millis(500));
    assert_eq!(c.backoff_multiplicator(), 2.0);
    assert_eq!(c.max_restart_time(), Duration::from_secs(10));
    assert_eq!(c.max_retries(), 5);
    assert_eq!(c.process_status_entity_field(), "updated_at");
    assert_eq!(c.queue_storage(), QueueStorage::Stream);
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
        .database_url(
            "postgres://us%40er:p%40ss%3Aw%2Fd@db.example.com:6543/my%20db?sslmode=disable",
        )
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
        .database_url("postgresql://[::1]")
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
        .database_url("postgres://alice:pw@127.0.0.1:7777/shop")
        .application_name("my app ✓")
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
        .database_url("postgres://u:hunter2-in-url@h:1/d")
        .build()
        .unwrap();
    let d = format!("{c:?} {:#?}", c.clone().into_builder());
    assert!(!d.contains("hunter2"), "{d}");
    assert!(d.contains("postgres://u:***@h:1/d"), "{d}");

    let err = Config::builder()
        .database_url("mysql://u:hunter2-bad@h/d")
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(
        msg.contains("invalid `database_url` mysql://u:***@h/d"),
        "{msg}"
    );

    // Unparseable URL: still masked.
    let err = Config::builder()
        .database_url("postgres://u:hunter2@h:notaport/d")
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
    // A password holding the URL's delimiters does not parse; it is masked all the same.
    assert_eq!(
        redact_url("postgres://postgres:pa/ss@127.0.0.1:5432/live"),
        "postgres://postgres:***@127.0.0.1:5432/live"
    );
    assert_eq!(redact_url("postgres://u:p#w?d@h/d"), "postgres://u:***@h/d");
    assert_eq!(
        redact_url("postgres://127.0.0.1:5432/live?user=postgres&password=topsecret"),
        "postgres://127.0.0.1:5432/live?user=postgres&password=***"
    );
    assert_eq!(
        redact_url("postgres://h/d?PASSWORD=x&sslmode=require"),
        "postgres://h/d?PASSWORD=***&sslmode=require"
    );
    assert_eq!(
        redact_url("host=h password=secret user=u"),
        "host=h password=*** user=u"
    );
    assert_eq!(
        redact_url("postgres://h/d?mypassword=x"),
        "postgres://h/d?mypassword=x"
    );
}

mod redaction {
    use proptest::prelude::*;

    use super::redact_url;
    use crate::config::{Config, ConfigBuilder};

    /// A password no other part of the URL contains: a marker, then
    /// anything, the URL's delimiters and percent escapes included.
    fn password() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-z0-9/#?@:%&=;. +~é]{1,12}")
            .unwrap()
            .prop_map(|p| format!("Zq{p}"))
    }

    fn percent_encoded(p: &str) -> String {
        percent_encoding::utf8_percent_encode(p, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    /// Every shape a connection string takes: the password in the user
    /// info (raw or percent-encoded), in a `password=` parameter, or both,
    /// with and without a port, path and other parameters.
    fn url() -> impl Strategy<Value = (String, String)> {
        (password(), 0..6usize, any::<bool>()).prop_map(|(p, shape, port)| {
            let host = if port {
                "db.example:5432"
            } else {
                "db.example"
            };
            let url = match shape {
                0 => format!("postgres://app:{p}@{host}/live"),
                1 => format!("postgres://app:{}@{host}/live", percent_encoded(&p)),
                2 => format!(
                    "postgresql://{host}/live?user=app&password={}",
                    percent_encoded(&p)
                ),
                3 => format!("postgres://{host}/live?sslmode=disable&password={p}"),
                4 => format!("postgres://app:{p}@{host}"),
                _ => format!("postgress://app:{p}@{host}/live?application_name=x"),
            };
            (url, p)
        })
    }

    fn leaks(text: &str, password: &str) -> bool {
        text.contains(password) || text.contains(&percent_encoded(password))
    }

    proptest! {
        #[test]
        fn no_password_reaches_a_message((url, password) in url()) {
            let redacted = redact_url(&url);
            prop_assert!(!leaks(&redacted, &password), "{url} -> {redacted}");
            // Whatever the builder makes of it: its error, or the config's
            // Debug and the server it names.
            match ConfigBuilder::default().database_url(url.clone()).build() {
                Err(e) => {
                    prop_assert!(!leaks(&e.to_string(), &password), "{e}");
                    prop_assert!(!leaks(&format!("{e:?}"), &password), "{e:?}");
                }
                Ok(config) => {
                    let shown = format!("{config:?} {}", config.server());
                    prop_assert!(!leaks(&shown, &password), "{shown}");
                }
            }
        }
    }

    #[test]
    fn an_unparsable_string_keeps_only_the_user() {
        let config = Config::builder()
            .database_url("postgres://postgres:pa/ss@127.0.0.1:5432/live")
            .build();
        let e = config.unwrap_err().to_string();
        assert!(
            e.contains("postgres://postgres:***@127.0.0.1:5432/live"),
            "{e}"
        );
        assert!(!e.contains("pa/ss"), "{e}");
    }
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
        .database_url("postgres://h:0/d")
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
        .application_name(format!("héllo\n{}", "x".repeat(100)))
        .build()
        .unwrap();
    let name = c.application_name();
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
        ("WALFLOW_APPLICATION_NAME", "shop"),
        ("WALFLOW_DURABLE_SLOT", "off"),
        ("WALFLOW_SLOT_NAME", "shop_slot"),
        ("WALFLOW_PUBLICATION", "shop_events"),
        ("WALFLOW_MIN_RESTART_TIME_MS", "100"),
        ("WALFLOW_MAX_RESTART_TIME_MS", "2000"),
        ("WALFLOW_BACKOFF_MULTIPLICATOR", "1.5"),
        ("WALFLOW_MAX_RETRIES", "7"),
        ("WALFLOW_PROCESS_STATUS_ENTITY_FIELD", "modified_at"),
        ("WALFLOW_QUEUE_STORAGE", "postgres"),
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
    assert_eq!(c.application_name(), "shop");
    assert!(!c.durable_slot());
    assert_eq!(c.slot_name(), "shop_slot");
    assert_eq!(c.publication(), "shop_events");
    assert_eq!(c.min_restart_time(), Duration::from_millis(100));
    assert_eq!(c.max_restart_time(), Duration::from_secs(2));
    assert_eq!(c.backoff_multiplicator(), 1.5);
    assert_eq!(c.max_retries(), 7);
    assert_eq!(c.process_status_entity_field(), "modified_at");
    assert_eq!(c.queue_storage(), QueueStorage::Postgres);
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
    assert_eq!(c.database_url(), None);
}

#[test]
fn from_env_errors_name_the_variable() {
    let err = ConfigBuilder::from_lookup(env(&[("WALFLOW_PORT", "abc")])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid environment variable `WALFLOW_PORT`=\"abc\": expected an integer between 1 and 65535; fix or unset it"
    );
    let err = ConfigBuilder::from_lookup(env(&[("WALFLOW_QUEUE_STORAGE", "redis")])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid environment variable `WALFLOW_QUEUE_STORAGE`=\"redis\": expected one of `stream`, `postgres`; fix or unset it"
    );
    let err = ConfigBuilder::from_lookup(env(&[("WALFLOW_DURABLE_SLOT", "maybe")])).unwrap_err();
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

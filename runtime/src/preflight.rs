//! Server checks run before replication starts, with messages that say what
//! is wrong and how to fix it.
//!
//! [`check`] connects with a [`Config`] and runs [`check_server`], which
//! gathers a [`ServerInfo`] and verifies, in this order:
//!
//! 1. PostgreSQL is 14 or newer;
//! 2. `wal_level` is `logical`;
//! 3. the role is a superuser or has the `REPLICATION` attribute;
//! 4. a WAL sender is free (`max_wal_senders`);
//! 5. the configured slot either exists and is usable (a logical `pgoutput`
//!    slot of this database, not used by another connection), or a
//!    replication slot is free (`max_replication_slots`).
//!
//! The first failing check is returned. The WAL sender count comes from
//! `pg_stat_activity`; a role without `pg_read_all_stats` may not see other
//! roles' WAL senders, in which case an exhaustion is only reported when the
//! replication connection is refused.

use std::time::Duration;

use sqlx::{Acquire, Connection, PgConnection, Postgres, Row};

use crate::config::Config;
use crate::ident::display_ident;

/// Oldest supported server (`server_version_num`).
pub const MIN_SERVER_VERSION_NUM: u32 = 140_000;

/// How long [`check`] waits for the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the checks found out about the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `server_version`, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub version: String,
    /// `server_version_num`, e.g. `150018`.
    pub version_num: u32,
    /// `wal_level`.
    pub wal_level: String,
    /// `max_replication_slots`.
    pub max_replication_slots: u32,
    /// Replication slots that exist, of any kind and database.
    pub used_replication_slots: u32,
    /// `max_wal_senders`.
    pub max_wal_senders: u32,
    /// WAL sender processes visible in `pg_stat_activity`.
    pub active_wal_senders: u32,
    /// The role connected (`current_user`).
    pub role: String,
    /// Whether the role is a superuser.
    pub superuser: bool,
    /// Whether the role has the `REPLICATION` attribute.
    pub replication: bool,
    /// The database connected to.
    pub database: String,
    /// The configured slot, if it exists.
    pub slot: Option<SlotInfo>,
}

/// The configured replication slot, as found in `pg_replication_slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Its name.
    pub name: String,
    /// `logical` or `physical`.
    pub slot_type: String,
    /// Output plugin of a logical slot.
    pub plugin: Option<String>,
    /// Database of a logical slot.
    pub database: Option<String>,
    /// Whether a connection is streaming from it.
    pub active: bool,
    /// The process streaming from it.
    pub active_pid: Option<u32>,
    /// Whether it is a temporary slot.
    pub temporary: bool,
}

/// Why the server cannot be used. Messages never contain the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PreflightError {
    /// No connection could be made (network, refused, timed out, TLS).
    #[error(
        "cannot reach PostgreSQL at {host}:{port}: {reason}; check that the server is running and accepts TCP connections there (`listen_addresses`, `port`, firewall)"
    )]
    Unreachable {
        /// Host tried.
        host: String,
        /// Port tried.
        port: u16,
        /// What happened.
        reason: String,
    },
    /// The server refused the connection (authentication, missing database,
    /// too many connections, ...).
    #[error(
        "cannot connect to PostgreSQL at {host}:{port} as `{username}` to database `{database}`: {reason}"
    )]
    Refused {
        /// Host tried.
        host: String,
        /// Port tried.
        port: u16,
        /// Role used.
        username: String,
        /// Database asked for.
        database: String,
        /// The server's message.
        reason: String,
    },
    /// The server is older than PostgreSQL 14.
    #[error(
        "PostgreSQL {version} is too old; walflow needs PostgreSQL 14 or newer (upgrade the server)"
    )]
    UnsupportedVersion {
        /// `server_version`.
        version: String,
        /// `server_version_num`.
        version_num: u32,
    },
    /// `wal_level` is not `logical`.
    #[error(
        "wal_level is '{wal_level}'; walflow needs 'logical' (set wal_level = logical and restart PostgreSQL)"
    )]
    WalLevel {
        /// The current `wal_level`.
        wal_level: String,
    },
    /// The role may not replicate.
    #[error(
        "role \"{role}\" has no REPLICATION attribute; run ALTER ROLE {} WITH REPLICATION",
        display_ident(role)
    )]
    NoReplicationAttribute {
        /// The role.
        role: String,
    },
    /// All WAL senders are busy.
    #[error(
        "no free WAL sender: max_wal_senders = {max} and {active} are in use; raise max_wal_senders and restart PostgreSQL, or stop another replication client"
    )]
    NoFreeWalSender {
        /// `max_wal_senders`.
        max: u32,
        /// WAL senders running.
        active: u32,
    },
    /// All replication slots are taken and ours does not exist.
    #[error(
        "no free replication slot: max_replication_slots = {max} and {used} are in use, none of them `{slot}`; drop an unused slot (SELECT pg_drop_replication_slot('name')) or raise max_replication_slots and restart PostgreSQL"
    )]
    NoFreeSlot {
        /// `max_replication_slots`.
        max: u32,
        /// Slots that exist.
        used: u32,
        /// The configured slot name.
        slot: String,
    },
    /// Our slot is being streamed by another connection.
    #[error(
        "replication slot `{slot}` is in use by another connection (pid {pid}); stop that consumer, or give this one another `slot_name`"
    )]
    SlotInUse {
        /// The slot.
        slot: String,
        /// The process streaming from it.
        pid: u32,
    },
    /// A slot with our name exists but cannot be used.
    #[error(
        "replication slot `{slot}` exists but {reason}; drop it (SELECT pg_drop_replication_slot('{slot}')) or choose another `slot_name`"
    )]
    SlotMismatch {
        /// The slot.
        slot: String,
        /// What does not match.
        reason: String,
    },
    /// A query of the checks failed.
    #[error("cannot check the server: {0}")]
    Query(#[source] sqlx::Error),
}

/// Connects with `cfg` (bounded by [`CONNECT_TIMEOUT`]) and runs
/// [`check_server`].
pub async fn check(cfg: &Config) -> Result<ServerInfo, PreflightError> {
    let mut conn = connect(cfg).await?;
    let result = check_server(&mut conn, cfg).await;
    let _ = conn.close().await;
    result
}

/// Opens an ordinary connection with `cfg`, mapping failures to
/// [`PreflightError::Unreachable`] or [`PreflightError::Refused`].
pub async fn connect(cfg: &Config) -> Result<PgConnection, PreflightError> {
    let unreachable = |reason: String| PreflightError::Unreachable {
        host: cfg.host().to_string(),
        port: cfg.port(),
        reason,
    };
    let options = cfg.connect_options();
    let attempt = PgConnection::connect_with(&options);
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Err(_) => Err(unreachable(format!(
            "no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(sqlx::Error::Database(e))) => Err(PreflightError::Refused {
            host: cfg.host().to_string(),
            port: cfg.port(),
            username: cfg.username().to_string(),
            database: cfg.database().to_string(),
            reason: e.message().to_string(),
        }),
        Ok(Err(e)) => Err(unreachable(strip_password(e.to_string(), cfg.password()))),
    }
}

/// Belt and braces: no error text may carry the password.
fn strip_password(text: String, password: &str) -> String {
    if password.len() >= 3 && text.contains(password) {
        text.replace(password, "***")
    } else {
        text
    }
}

/// Gathers [`ServerInfo`] on `conn` (a `&PgPool` or `&mut PgConnection`)
/// and verifies it against `cfg` (see [`ServerInfo::verify`]).
pub async fn check_server<'c, A>(conn: A, cfg: &Config) -> Result<ServerInfo, PreflightError>
where
    A: Acquire<'c, Database = Postgres>,
{
    let info = server_info(conn, cfg).await?;
    info.verify(cfg)?;
    Ok(info)
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// Gathers [`ServerInfo`] without judging it.
pub async fn server_info<'c, A>(conn: A, cfg: &Config) -> Result<ServerInfo, PreflightError>
where
    A: Acquire<'c, Database = Postgres>,
{
    let mut conn = conn.acquire().await.map_err(PreflightError::Query)?;
    let row = sqlx::query(
        "SELECT current_setting('server_version') AS version, \
                current_setting('server_version_num')::int8 AS version_num, \
                current_setting('wal_level') AS wal_level, \
                current_setting('max_replication_slots')::int8 AS max_slots, \
                current_setting('max_wal_senders')::int8 AS max_senders, \
                (SELECT count(*) FROM pg_replication_slots) AS used_slots, \
                (SELECT count(*) FROM pg_stat_activity \
                  WHERE backend_type = 'walsender') AS active_senders, \
                current_user::text AS role, \
                coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false) AS superuser, \
                coalesce((SELECT rolreplication FROM pg_roles WHERE rolname = current_user), false) AS replication, \
                current_database()::text AS database",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(PreflightError::Query)?;
    let slot_row = sqlx::query(
        "SELECT slot_name::text, slot_type, plugin::text, database::text, active, \
                active_pid, temporary \
           FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(cfg.slot_name())
    .fetch_optional(&mut *conn)
    .await
    .map_err(PreflightError::Query)?;
    let get_i64 = |name: &str| row.try_get::<i64, _>(name).map(to_u32);
    let slot = slot_row
        .map(|r| -> Result<SlotInfo, sqlx::Error> {
            Ok(SlotInfo {
                name: r.try_get("slot_name")?,
                slot_type: r.try_get("slot_type")?,
                plugin: r.try_get("plugin")?,
                database: r.try_get("database")?,
                active: r.try_get("active")?,
                active_pid: r
                    .try_get::<Option<i32>, _>("active_pid")?
                    .map(|p| to_u32(p.into())),
                temporary: r.try_get("temporary")?,
            })
        })
        .transpose()
        .map_err(PreflightError::Query)?;
    (|| -> Result<ServerInfo, sqlx::Error> {
        Ok(ServerInfo {
            version: row.try_get("version")?,
            version_num: get_i64("version_num")?,
            wal_level: row.try_get("wal_level")?,
            max_replication_slots: get_i64("max_slots")?,
            used_replication_slots: get_i64("used_slots")?,
            max_wal_senders: get_i64("max_senders")?,
            active_wal_senders: get_i64("active_senders")?,
            role: row.try_get("role")?,
            superuser: row.try_get("superuser")?,
            replication: row.try_get("replication")?,
            database: row.try_get("database")?,
            slot,
        })
    })()
    .map_err(PreflightError::Query)
}

impl ServerInfo {
    /// Verifies the facts against `cfg`; see the [module
    /// documentation](self) for the checks and their order.
    pub fn verify(&self, cfg: &Config) -> Result<(), PreflightError> {
        if self.version_num < MIN_SERVER_VERSION_NUM {
            return Err(PreflightError::UnsupportedVersion {
                version: self.version.clone(),
                version_num: self.version_num,
            });
        }
        if self.wal_level != "logical" {
            return Err(PreflightError::WalLevel {
                wal_level: self.wal_level.clone(),
            });
        }
        if !self.superuser && !self.replication {
            return Err(PreflightError::NoReplicationAttribute {
                role: self.role.clone(),
            });
        }
        if self.active_wal_senders >= self.max_wal_senders {
            return Err(PreflightError::NoFreeWalSender {
                max: self.max_wal_senders,
                active: self.active_wal_senders,
            });
        }
        let slot_name = cfg.slot_name();
        match &self.slot {
            Some(slot) => {
                let mismatch = |reason: String| PreflightError::SlotMismatch {
                    slot: slot_name.to_string(),
                    reason,
                };
                if slot.slot_type != "logical" {
                    return Err(mismatch(format!(
                        "is a {} slot, not a logical one",
                        slot.slot_type
                    )));
                }
                if slot.plugin.as_deref() != Some("pgoutput") {
                    return Err(mismatch(format!(
                        "uses the output plugin `{}`, not `pgoutput`",
                        slot.plugin.as_deref().unwrap_or("")
                    )));
                }
                if slot.database.as_deref() != Some(self.database.as_str()) {
                    return Err(mismatch(format!(
                        "belongs to database `{}`, not `{}`",
                        slot.database.as_deref().unwrap_or(""),
                        self.database
                    )));
                }
                if slot.active {
                    return Err(PreflightError::SlotInUse {
                        slot: slot_name.to_string(),
                        pid: slot.active_pid.unwrap_or(0),
                    });
                }
            }
            None => {
                if self.used_replication_slots >= self.max_replication_slots {
                    return Err(PreflightError::NoFreeSlot {
                        max: self.max_replication_slots,
                        used: self.used_replication_slots,
                        slot: slot_name.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> ServerInfo {
        ServerInfo {
            version: "15.4".into(),
            version_num: 150004,
            wal_level: "logical".into(),
            max_replication_slots: 10,
            used_replication_slots: 0,
            max_wal_senders: 10,
            active_wal_senders: 0,
            role: "app".into(),
            superuser: false,
            replication: true,
            database: "shop".into(),
            slot: None,
        }
    }

    fn slot() -> SlotInfo {
        SlotInfo {
            name: "walflow_slot".into(),
            slot_type: "logical".into(),
            plugin: Some("pgoutput".into()),
            database: Some("shop".into()),
            active: false,
            active_pid: None,
            temporary: false,
        }
    }

    fn msg(info: ServerInfo) -> String {
        info.verify(&Config::default()).unwrap_err().to_string()
    }

    #[test]
    fn good_server_passes() {
        good().verify(&Config::default()).unwrap();
        let mut with_slot = good();
        with_slot.slot = Some(slot());
        with_slot.used_replication_slots = 10;
        with_slot.verify(&Config::default()).unwrap();
        let mut superuser = good();
        superuser.replication = false;
        superuser.superuser = true;
        superuser.verify(&Config::default()).unwrap();
    }

    #[test]
    fn messages() {
        assert_eq!(
            msg(ServerInfo {
                version: "13.11".into(),
                version_num: 130011,
                ..good()
            }),
            "PostgreSQL 13.11 is too old; walflow needs PostgreSQL 14 or newer (upgrade the server)"
        );
        assert_eq!(
            msg(ServerInfo {
                wal_level: "replica".into(),
                ..good()
            }),
            "wal_level is 'replica'; walflow needs 'logical' (set wal_level = logical and restart PostgreSQL)"
        );
        assert_eq!(
            msg(ServerInfo {
                replication: false,
                ..good()
            }),
            "role \"app\" has no REPLICATION attribute; run ALTER ROLE app WITH REPLICATION"
        );
        assert_eq!(
            msg(ServerInfo {
                replication: false,
                role: "App User".into(),
                ..good()
            }),
            "role \"App User\" has no REPLICATION attribute; run ALTER ROLE \"App User\" WITH REPLICATION"
        );
        assert_eq!(
            msg(ServerInfo {
                active_wal_senders: 4,
                max_wal_senders: 4,
                ..good()
            }),
            "no free WAL sender: max_wal_senders = 4 and 4 are in use; raise max_wal_senders and restart PostgreSQL, or stop another replication client"
        );
        assert_eq!(
            msg(ServerInfo {
                used_replication_slots: 10,
                ..good()
            }),
            "no free replication slot: max_replication_slots = 10 and 10 are in use, none of them `walflow_slot`; drop an unused slot (SELECT pg_drop_replication_slot('name')) or raise max_replication_slots and restart PostgreSQL"
        );
        assert_eq!(
            msg(ServerInfo {
                slot: Some(SlotInfo {
                    active: true,
                    active_pid: Some(42),
                    ..slot()
                }),
                ..good()
            }),
            "replication slot `walflow_slot` is in use by another connection (pid 42); stop that consumer, or give this one another `slot_name`"
        );
        assert_eq!(
            msg(ServerInfo {
                slot: Some(SlotInfo {
                    slot_type: "physical".into(),
                    plugin: None,
                    database: None,
                    ..slot()
                }),
                ..good()
            }),
            "replication slot `walflow_slot` exists but is a physical slot, not a logical one; drop it (SELECT pg_drop_replication_slot('walflow_slot')) or choose another `slot_name`"
        );
        assert!(
            msg(ServerInfo {
                slot: Some(SlotInfo {
                    plugin: Some("test_decoding".into()),
                    ..slot()
                }),
                ..good()
            })
            .contains("uses the output plugin `test_decoding`, not `pgoutput`")
        );
        assert!(
            msg(ServerInfo {
                slot: Some(SlotInfo {
                    database: Some("other".into()),
                    ..slot()
                }),
                ..good()
            })
            .contains("belongs to database `other`, not `shop`")
        );
    }

    #[test]
    fn password_is_stripped() {
        assert_eq!(
            strip_password("bad secret here".into(), "secret"),
            "bad *** here"
        );
    }
}

#[cfg(all(test, feature = "embedded"))]
mod server_tests {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use sqlx::{AssertSqlSafe, Executor};

    use super::*;
    use crate::embedded::{EmbeddedPostgres, test_database};
    use crate::ident::{quote_ident, quote_literal};

    #[tokio::test]
    async fn good_server_passes() {
        let db = test_database().await.unwrap();
        let cfg = db.config();
        let info = check(&cfg).await.unwrap();
        assert_eq!(info.wal_level, "logical");
        assert!(info.version_num >= MIN_SERVER_VERSION_NUM);
        assert!(info.superuser);
        assert_eq!(info.database, db.name());
        assert_eq!(info.slot, None);
        assert!(info.max_replication_slots >= 1);

        // Through a pool too; then with our slot present and idle.
        let pool = db.pool().await.unwrap();
        sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(cfg.slot_name())
            .execute(&pool)
            .await
            .unwrap();
        let info = check_server(&pool, &cfg).await.unwrap();
        let slot = info.slot.unwrap();
        assert_eq!(slot.name, cfg.slot_name());
        assert_eq!(slot.plugin.as_deref(), Some("pgoutput"));
        assert!(!slot.active);

        // A slot of that name in the wrong shape is named in the error.
        sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(cfg.slot_name())
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("SELECT pg_create_physical_replication_slot($1)")
            .bind(cfg.slot_name())
            .execute(&pool)
            .await
            .unwrap();
        let err = check_server(&pool, &cfg).await.unwrap_err();
        assert!(matches!(err, PreflightError::SlotMismatch { .. }), "{err}");
        sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(cfg.slot_name())
            .execute(&pool)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn wal_level_replica_is_refused() {
        let pg = EmbeddedPostgres::builder()
            .setting("wal_level", "replica")
            .start()
            .await
            .unwrap();
        let cfg = Config::from_database_url(pg.url()).unwrap();
        let err = check(&cfg).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "wal_level is 'replica'; walflow needs 'logical' (set wal_level = logical and restart PostgreSQL)"
        );
    }

    #[tokio::test]
    async fn role_without_replication_is_refused() {
        let db = test_database().await.unwrap();
        let pool = db.pool().await.unwrap();
        // Roles are cluster-wide: name it after the database.
        let role = format!("{} norep", db.name());
        pool.execute(AssertSqlSafe(format!(
            "CREATE ROLE {} LOGIN PASSWORD {}",
            quote_ident(&role),
            quote_literal("pw'\\x")
        )))
        .await
        .unwrap();
        let cfg = db
            .config_builder()
            .username(&role)
            .password("pw'\\x")
            .database_url(
                url::Url::parse(db.url())
                    .map(|mut u| {
                        u.set_username("").unwrap();
                        u.set_password(None).unwrap();
                        u.to_string()
                    })
                    .unwrap(),
            )
            .build()
            .unwrap();
        let err = check(&cfg).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "role \"{role}\" has no REPLICATION attribute; run ALTER ROLE \"{role}\" WITH REPLICATION"
            )
        );

        pool.execute(AssertSqlSafe(format!(
            "ALTER ROLE {} WITH REPLICATION",
            quote_ident(&role)
        )))
        .await
        .unwrap();
        let info = check(&cfg).await.unwrap();
        assert!(info.replication && !info.superuser);
        assert_eq!(info.role, role);
        pool.execute(AssertSqlSafe(format!("DROP ROLE {}", quote_ident(&role))))
            .await
            .unwrap();
    }

    fn pg_recvlogical(pg: &EmbeddedPostgres, slot: &str) -> Option<Child> {
        let bin = pg.bin_dir().join("pg_recvlogical");
        if !bin.exists() {
            return None;
        }
        Some(
            Command::new(bin)
                .arg("-d")
                .arg(pg.url())
                .args(["--slot", slot, "--start", "-f", "/dev/null"])
                .args(["-o", "proto_version=1", "-o", "publication_names=events"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn exhausted_slots_and_wal_senders_are_refused() {
        let pg = EmbeddedPostgres::builder()
            .setting("max_replication_slots", "1")
            .setting("max_wal_senders", "1")
            .start()
            .await
            .unwrap();
        let mut conn = PgConnection::connect(&pg.url()).await.unwrap();
        sqlx::query("SELECT pg_create_logical_replication_slot('other', 'pgoutput')")
            .execute(&mut conn)
            .await
            .unwrap();
        let cfg = Config::from_database_url(pg.url()).unwrap();
        let err = check(&cfg).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free replication slot: max_replication_slots = 1 and 1 are in use, none of them `walflow_slot`; drop an unused slot (SELECT pg_drop_replication_slot('name')) or raise max_replication_slots and restart PostgreSQL"
        );
        // With the slot being ours, there is no problem.
        let ours = cfg
            .clone()
            .into_builder()
            .slot_name("other")
            .build()
            .unwrap();
        let info = check(&ours).await.unwrap();
        assert_eq!(
            (info.used_replication_slots, info.max_replication_slots),
            (1, 1)
        );

        // Occupy the only WAL sender.
        let Some(mut receiver) = pg_recvlogical(&pg, "other") else {
            eprintln!("pg_recvlogical not found next to postgres; WAL sender case not exercised");
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            if n == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "pg_recvlogical did not connect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let err = check(&ours).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free WAL sender: max_wal_senders = 1 and 1 are in use; raise max_wal_senders and restart PostgreSQL, or stop another replication client"
        );
        let _ = receiver.kill();
        let _ = receiver.wait();
    }

    #[tokio::test]
    async fn slot_in_use_is_refused() {
        let db = test_database().await.unwrap();
        let cfg = db.config();
        let pool = db.pool().await.unwrap();
        sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(cfg.slot_name())
            .execute(&pool)
            .await
            .unwrap();
        // pg_recvlogical must run next to the server: only on the embedded one.
        if std::env::var("DATABASE_URL").is_ok_and(|u| !u.trim().is_empty()) {
            return;
        }
        let cluster = crate::embedded::shared_cluster().await.unwrap();
        let bin = cluster.bin_dir().join("pg_recvlogical");
        if !bin.exists() {
            eprintln!("pg_recvlogical not found next to postgres; slot-in-use case not exercised");
            return;
        }
        let mut receiver = Command::new(bin)
            .arg("-d")
            .arg(db.url())
            .args(["--slot", cfg.slot_name(), "--start", "-f", "/dev/null"])
            .args(["-o", "proto_version=1", "-o", "publication_names=events"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let err = loop {
            match check_server(&pool, &cfg).await {
                Err(e @ PreflightError::SlotInUse { .. }) => break e,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
            assert!(Instant::now() < deadline, "pg_recvlogical did not connect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let _ = receiver.kill();
        let _ = receiver.wait();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "replication slot `{}` is in use by another connection (pid ",
                cfg.slot_name()
            )),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn unreachable_and_refused_servers_are_named() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = Config::builder()
            .database_url(format!("postgres://app:s3cret-pw@127.0.0.1:{port}/shop"))
            .build()
            .unwrap();
        let err = check(&cfg).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("cannot reach PostgreSQL at 127.0.0.1:{port}: ")),
            "{msg}"
        );
        assert!(!msg.contains("s3cret"), "{msg}");
        assert!(!format!("{err:?}").contains("s3cret"));

        // Wrong password (refused by a SCRAM server) and a missing database
        // (refused by a trusting one).
        let mut url = url::Url::parse(&crate::embedded::test_server_url().await.unwrap()).unwrap();
        url.set_password(Some("s3cret-wrong")).unwrap();
        url.set_path("/walflow_no_such_database");
        let cfg = Config::from_database_url(url.to_string()).unwrap();
        let err = check(&cfg).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PreflightError::Refused { .. }), "{msg}");
        assert!(
            msg.contains("password authentication failed") || msg.contains("does not exist"),
            "{msg}"
        );
        assert!(
            msg.contains("to database `walflow_no_such_database`: "),
            "{msg}"
        );
        assert!(!msg.contains("s3cret"), "{msg}");
    }
}

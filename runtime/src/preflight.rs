//! Server checks run before replication starts, with messages that say what
//! is wrong and how to fix it.
//!
//! [`check`] connects with a [`Config`] and runs [`check_server`], which
//! gathers a [`ServerInfo`] and verifies, in this order:
//!
//! 1. PostgreSQL is 15 or newer (`MERGE`, publication row filters);
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
pub const MIN_SERVER_VERSION_NUM: u32 = 150_000;

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
    /// `synchronous_commit` as the connected role and database get it by
    /// default. walflow's own transactions set `local` for themselves
    /// whatever it is, so that nothing it acknowledges to the slot can be
    /// lost by a crash of the server.
    pub synchronous_commit: String,
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
    /// `reserved`, `extended`, `unreserved` or `lost` (invalidated: the WAL
    /// it needs was removed).
    pub wal_status: Option<String>,
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
    /// The server is older than PostgreSQL 15.
    #[error(
        "PostgreSQL {version} is too old; walflow needs PostgreSQL 15 or newer (upgrade the server)"
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
    /// Our slot was invalidated: PostgreSQL removed WAL it still needed
    /// (`wal_status = 'lost'`), because more WAL than
    /// `max_slot_wal_keep_size` was written while nothing read it.
    #[error(
        "replication slot `{slot}` was invalidated (wal_status = 'lost'): PostgreSQL removed WAL it \
         still needed, because more than max_slot_wal_keep_size was written while nothing read it. \
         The changes made since can no longer be streamed. To go on, drop the slot \
         (`walflow slot drop --slot {slot}`, or SELECT pg_drop_replication_slot('{slot}')) and \
         start again: the new slot starts from now, \
         so the changes made in between are not seen and derived tables must be rebuilt from their \
         sources; raise max_slot_wal_keep_size (or keep a flow running) so it does not happen again"
    )]
    SlotLost {
        /// The slot.
        slot: String,
    },
    /// A query of the checks failed.
    #[error("cannot check the server: {}", crate::pg_error::DbError(.0))]
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
                current_setting('synchronous_commit') AS synchronous_commit, \
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
                active_pid, temporary, wal_status \
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
                wal_status: r.try_get("wal_status")?,
            })
        })
        .transpose()
        .map_err(PreflightError::Query)?;
    (|| -> Result<ServerInfo, sqlx::Error> {
        Ok(ServerInfo {
            version: row.try_get("version")?,
            version_num: get_i64("version_num")?,
            wal_level: row.try_get("wal_level")?,
            synchronous_commit: row.try_get("synchronous_commit")?,
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
                if slot.wal_status.as_deref() == Some("lost") {
                    return Err(PreflightError::SlotLost {
                        slot: slot_name.to_string(),
                    });
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
mod tests;

#[cfg(all(test, feature = "embedded"))]
mod server_tests;

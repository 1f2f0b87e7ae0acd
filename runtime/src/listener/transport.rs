//! The replication connection, behind a small trait.
//!
//! [`PgWireConnector`] speaks the streaming replication protocol through the
//! `pgwire-replication` crate (connection, authentication, keepalives,
//! standby status feedback). The listener only sees [`TransportEvent`]s, so
//! the protocol client can be swapped without touching decoding, ordering or
//! acknowledgement.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use walflow_pgwire_replication::{
    ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig,
};

use crate::decode::SESSION_OPTIONS;
use crate::lsn::Lsn;

use super::error::{ListenerError, classify_server_error};

/// What the replication connection delivers, in WAL order.
#[derive(Debug, Clone)]
#[doc(hidden)]
pub enum TransportEvent {
    /// A transaction starts.
    Begin {
        /// LSN of the transaction's commit record.
        final_lsn: Lsn,
        /// Transaction id.
        xid: u32,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time_micros: i64,
    },
    /// A pgoutput message other than Begin, Commit and Message (Relation,
    /// Type, Origin, Insert, Update, Delete, Truncate).
    Data {
        /// WAL position of the change.
        wal_start: Lsn,
        /// The pgoutput payload.
        data: Bytes,
    },
    /// A transaction ends.
    Commit {
        /// LSN of the commit record.
        lsn: Lsn,
        /// End of the commit record: the position to acknowledge.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time_micros: i64,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        /// Whether it was emitted inside a transaction.
        transactional: bool,
        /// Its WAL position.
        lsn: Lsn,
        /// Its prefix.
        prefix: String,
        /// Its content.
        content: Bytes,
    },
    /// The server's keepalive: everything before `wal_end` has been sent.
    KeepAlive {
        /// The server's sent position.
        wal_end: Lsn,
    },
}

/// Where a replication session starts and which slot it uses.
#[derive(Debug, Clone)]
#[doc(hidden)]
pub struct SessionSpec {
    /// Slot name.
    pub slot: String,
    /// Publication name.
    pub publication: String,
    /// Resume position (the server resumes from the later of this and the
    /// slot's confirmed position).
    pub start_lsn: Lsn,
    /// Create the slot as a temporary slot on this session before starting.
    pub create_temporary_slot: bool,
    /// The session's `client_encoding`: `UTF8`, or `SQL_ASCII` for a
    /// `SQL_ASCII` database (its text bytes arrive as stored, and those
    /// that are not UTF-8 become [`Value::Invalid`](crate::Value::Invalid)
    /// instead of ending the session).
    pub client_encoding: &'static str,
}

/// An open replication session.
#[doc(hidden)]
pub trait Transport: Send + 'static {
    /// The next event; `Ok(None)` when the session ended cleanly.
    fn recv(
        &mut self,
    ) -> impl Future<Output = Result<Option<TransportEvent>, ListenerError>> + Send;
    /// Reports `lsn` as durably handed on (monotonic; sent with the next
    /// standby status update).
    fn ack(&mut self, lsn: Lsn);
    /// The last position actually reported to the server.
    fn reported(&self) -> Lsn;
    /// Ends the session cleanly, after `ack` positions have been reported.
    fn close(self) -> impl Future<Output = Result<(), ListenerError>> + Send;
}

/// Opens replication sessions (once at start, again after a connection loss).
#[doc(hidden)]
pub trait Connector: Send + Sync + 'static {
    /// The session type.
    type Transport: Transport;
    /// Connects, authenticates and starts streaming.
    fn connect(
        &self,
        spec: &SessionSpec,
    ) -> impl Future<Output = Result<Self::Transport, ListenerError>> + Send;
}

/// Connection parameters of the replication connection.
#[derive(Clone)]
pub struct PgWireConnector {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User name (needs the REPLICATION attribute).
    pub user: String,
    /// Password.
    pub password: String,
    /// Database.
    pub database: String,
    /// `application_name` of the walsender session.
    pub application_name: String,
    /// How often standby status updates are sent while positions advance.
    pub status_interval: Duration,
    /// Require TLS (only with the `tls` feature).
    pub tls: bool,
}

impl std::fmt::Debug for PgWireConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWireConnector")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("database", &self.database)
            .field("application_name", &self.application_name)
            .field("status_interval", &self.status_interval)
            .field("tls", &self.tls)
            .finish()
    }
}

impl PgWireConnector {
    /// Connection parameters of `config` (its URL or host/port/user/...).
    pub fn from_config(config: &crate::Config) -> Self {
        PgWireConnector {
            host: config.host().to_owned(),
            port: config.port(),
            user: config.username().to_owned(),
            password: config.password().to_owned(),
            database: config.database().to_owned(),
            application_name: config.application_name().to_owned(),
            status_interval: config.status_interval(),
            tls: matches!(
                config.ssl_mode(),
                Some("require" | "verify-ca" | "verify-full")
            ),
        }
    }

    /// Connection parameters from a `postgres://user:password@host:port/database`
    /// URL (user, password and database percent-decoded; defaults as libpq's:
    /// port 5432, user and database `postgres`).
    pub fn from_url(url: &str) -> Result<Self, ListenerError> {
        let bad = |why: &str| ListenerError::Connection(format!("invalid database URL: {why}"));
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(bad("the scheme must be `postgres://` or `postgresql://`"));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let user = match parsed.username() {
            "" => "postgres".to_owned(),
            u => decode(u),
        };
        let password = parsed.password().map(decode).unwrap_or_default();
        let database = match parsed.path().trim_start_matches('/') {
            "" => "postgres".to_owned(),
            d => decode(d),
        };
        let host = parsed
            .host_str()
            .unwrap_or("localhost")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = parsed
            .query_pairs()
            .any(|(k, v)| k == "sslmode" && matches!(&*v, "require" | "verify-ca" | "verify-full"));
        Ok(PgWireConnector {
            host,
            port: parsed.port().unwrap_or(5432),
            user,
            password,
            database,
            application_name: "walflow".to_owned(),
            status_interval: Duration::from_secs(1),
            tls,
        })
    }
}

/// A session opened by [`PgWireConnector`].
#[doc(hidden)]
pub struct PgWireTransport {
    client: ReplicationClient,
    acked: Lsn,
}

impl Connector for PgWireConnector {
    type Transport = PgWireTransport;

    async fn connect(&self, spec: &SessionSpec) -> Result<PgWireTransport, ListenerError> {
        let tls = if self.tls {
            TlsConfig::require()
        } else {
            TlsConfig::disabled()
        };
        let cfg = ReplicationConfig::new(
            self.host.clone(),
            self.user.clone(),
            self.password.clone(),
            self.database.clone(),
            spec.slot.clone(),
            // `publication_names` is a list of identifiers: quote the name so
            // case, spaces and quotes survive.
            crate::ident::quote_ident(&spec.publication),
        )
        .with_port(self.port)
        .with_tls(tls)
        .with_start_lsn(spec.start_lsn.into())
        .with_status_interval(self.status_interval)
        .with_wakeup_interval(Duration::from_secs(10))
        .with_buffer_size(4096)
        .with_options(SESSION_OPTIONS)
        .with_client_encoding(spec.client_encoding)
        .with_application_name(self.application_name.clone());

        let mut client = ReplicationClient::connect_gated(cfg)
            .await
            .map_err(|e| classify_server_error(e, &spec.slot))?;
        if spec.create_temporary_slot {
            let sql = format!(
                "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput",
                crate::ident::quote_ident(&spec.slot)
            );
            client
                .simple_query(&sql)
                .await
                .map_err(|e| classify_server_error(e, &spec.slot))?;
        }
        client
            .start()
            .await
            .map_err(|e| classify_server_error(e, &spec.slot))?;
        client
            .wait_started()
            .await
            .map_err(|e| classify_server_error(e, &spec.slot))?;
        Ok(PgWireTransport {
            client,
            acked: spec.start_lsn,
        })
    }
}

impl Transport for PgWireTransport {
    async fn recv(&mut self) -> Result<Option<TransportEvent>, ListenerError> {
        loop {
            let ev = match self.client.recv().await {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(None),
                Err(e) => return Err(ListenerError::from_pgwire(e)),
            };
            return Ok(Some(match ev {
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => TransportEvent::Begin {
                    final_lsn: final_lsn.into(),
                    xid,
                    commit_time_micros,
                },
                ReplicationEvent::XLogData {
                    wal_start, data, ..
                } => TransportEvent::Data {
                    wal_start: wal_start.into(),
                    data,
                },
                ReplicationEvent::Commit {
                    lsn,
                    end_lsn,
                    commit_time_micros,
                } => TransportEvent::Commit {
                    lsn: lsn.into(),
                    end_lsn: end_lsn.into(),
                    commit_time_micros,
                },
                ReplicationEvent::Message {
                    transactional,
                    lsn,
                    prefix,
                    content,
                } => TransportEvent::Message {
                    transactional,
                    lsn: lsn.into(),
                    prefix,
                    content,
                },
                ReplicationEvent::KeepAlive { wal_end, .. } => TransportEvent::KeepAlive {
                    wal_end: wal_end.into(),
                },
                ReplicationEvent::StoppedAt { .. } => return Ok(None),
                #[allow(unreachable_patterns)]
                _ => continue,
            }));
        }
    }

    fn ack(&mut self, lsn: Lsn) {
        if lsn > self.acked {
            self.acked = lsn;
            self.client.update_applied_lsn(lsn.into());
        }
    }

    fn reported(&self) -> Lsn {
        self.client.metrics().last_applied_lsn().into()
    }

    async fn close(mut self) -> Result<(), ListenerError> {
        // `shutdown` sends CopyDone without a last status update: wait (a
        // bounded time) until the worker has reported the final position.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let metrics = self.client.metrics();
        while Lsn::from(metrics.last_applied_lsn()) < self.acked
            && tokio::time::Instant::now() < deadline
            && self.client.is_running()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.client
            .shutdown()
            .await
            .map_err(ListenerError::from_pgwire)
    }
}

//! Listener errors.

use walflow_pgwire_replication::PgWireError;

use crate::decode::DecodeError;

/// Why the listener could not start or had to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// Another session holds the replication slot.
    #[error("slot \"{slot}\" is in use by another process (pid {pid})")]
    SlotInUse {
        /// The slot.
        slot: String,
        /// The process holding it.
        pid: i32,
    },
    /// The replication slot does not exist.
    #[error(
        "replication slot \"{slot}\" does not exist; run walflow's set-up or create it with `pg_create_logical_replication_slot('{slot}', 'pgoutput')`"
    )]
    SlotMissing {
        /// The slot.
        slot: String,
    },
    /// The server refused the credentials.
    #[error("authentication failed for the replication connection: {0}")]
    Auth(String),
    /// The server answered with an error.
    #[error("PostgreSQL refused the replication session: {message}")]
    Server {
        /// The server's message, with its SQLSTATE.
        message: String,
        /// The SQLSTATE code, when given.
        code: Option<String>,
    },
    /// The connection failed or was lost (retried by the listener).
    #[error("replication connection lost: {0}")]
    Connection(String),
    /// A pgoutput message could not be decoded. Nothing past the previous
    /// acknowledgement is confirmed to the server, so nothing is lost.
    #[error("could not decode the WAL stream at {lsn}: {source}")]
    Decode {
        /// Position of the message.
        lsn: crate::Lsn,
        /// What was wrong with it.
        #[source]
        source: DecodeError,
    },
    /// A SQL statement of the set-up or the heartbeat failed.
    #[error("{context}: {}", crate::pg_error::DbError(.source))]
    Sql {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: sqlx::Error,
    },
    /// The listener was already shut down.
    #[error("the listener has stopped")]
    Stopped,
}

impl ListenerError {
    /// Whether reconnecting may help (connection loss, server restart).
    pub fn is_transient(&self) -> bool {
        match self {
            ListenerError::Connection(_) => true,
            // The server is shutting down or restarting; or our own previous
            // walsender has not exited yet after a connection loss.
            ListenerError::Server { code, .. } => matches!(
                code.as_deref(),
                Some("57P01" | "57P02" | "57P03" | "08006" | "08001" | "08003" | "53300")
            ),
            ListenerError::SlotInUse { .. } => false,
            _ => false,
        }
    }

    pub(crate) fn from_pgwire(e: PgWireError) -> Self {
        match e {
            PgWireError::Io(e) => ListenerError::Connection(e.to_string()),
            PgWireError::Task(e) => ListenerError::Connection(e),
            PgWireError::Auth(e) => ListenerError::Auth(e),
            PgWireError::Server(message) => {
                let code = sqlstate(&message);
                ListenerError::Server { message, code }
            }
            other => ListenerError::Connection(other.to_string()),
        }
    }

    pub(crate) fn sql(context: impl Into<String>, source: sqlx::Error) -> Self {
        ListenerError::Sql {
            context: context.into(),
            source,
        }
    }
}

/// Reads the SQLSTATE that pgwire-replication appends as `(SQLSTATE xxxxx)`.
fn sqlstate(message: &str) -> Option<String> {
    let start = message.rfind("(SQLSTATE ")? + "(SQLSTATE ".len();
    let code = message.get(start..start + 5)?;
    Some(code.to_owned())
}

/// Maps a session error to the slot-specific errors users should see.
pub(crate) fn classify_server_error(e: PgWireError, slot: &str) -> ListenerError {
    let err = ListenerError::from_pgwire(e);
    if let ListenerError::Server { message, code } = &err {
        match code.as_deref() {
            // object_in_use: "replication slot "x" is active for PID 123"
            Some("55006") => {
                let pid = message
                    .split("PID ")
                    .nth(1)
                    .and_then(|rest| {
                        rest.split(|c: char| !c.is_ascii_digit())
                            .next()
                            .and_then(|d| d.parse().ok())
                    })
                    .unwrap_or(0);
                return ListenerError::SlotInUse {
                    slot: slot.to_owned(),
                    pid,
                };
            }
            // undefined_object: "replication slot "x" does not exist"
            Some("42704") if message.contains("does not exist") => {
                return ListenerError::SlotMissing {
                    slot: slot.to_owned(),
                };
            }
            _ => {}
        }
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_in_use_names_slot_and_pid() {
        let e = classify_server_error(
            PgWireError::Server(
                "replication slot \"s1\" is active for PID 4242 (SQLSTATE 55006)".into(),
            ),
            "s1",
        );
        assert_eq!(
            e.to_string(),
            "slot \"s1\" is in use by another process (pid 4242)"
        );
        assert!(!e.is_transient());
    }

    #[test]
    fn shutdown_errors_are_transient() {
        let e = ListenerError::from_pgwire(PgWireError::Server(
            "terminating connection due to administrator command (SQLSTATE 57P01)".into(),
        ));
        assert!(e.is_transient());
    }
}

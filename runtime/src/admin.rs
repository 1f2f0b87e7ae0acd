//! What the `walflow` command reads and changes, for tools beside a running
//! flow: its slot's status, the dead letters, requests to the flow, and
//! dropping the slot.
//!
//! Every function takes a pool on the flow's database and the slot's name
//! (every row of walflow's tables is scoped by it), and first checks that
//! the `walflow` schema is there and up to date
//! ([`AdminError::NoSchema`], [`AdminError::SchemaOutdated`]).
//!
//! # Requests
//!
//! Retrying a dead letter puts it back in its operator's queue, which only
//! the flow holding the slot can do (with the stream storage, what is not
//! spilled is in that process's memory; with the durable one, its executors must be told
//! to look). So a tool asks: [`request_retry`] inserts a row in
//! `walflow.requests` (state `pending`) and sends `NOTIFY walflow_requests`
//! with the slot as payload. The flow holding the slot listens on that
//! channel, and polls the table every second should a notification be
//! missed; it takes a pending request (state `running`, so two flows never
//! take the same one), sets `total`, retries each dead letter through
//! [`Walflow::retry_dead_letter`](crate::Walflow::retry_dead_letter)'s path,
//! counts them in `done`, and ends the request in `done`, or `failed` with
//! `error`. [`request_progress`] reads where a request stands.
//!
//! # Operators no flow runs
//!
//! Rows queued for an operator that no running flow declares (removed from
//! the program, or not deployed yet) stay in `walflow.queue`: a flow never
//! drops them at start, and the LSN fence does not wait for them.
//! [`drop_operator`] moves them to the dead letters, with the error
//! `operator NAME dropped`.

/// A database error as a person reads it: the server's message, detail,
/// hint and SQLSTATE, without the C source line sqlx appends
/// (`... at line 334`). What walflow's own messages show.
pub use crate::pg_error::describe as describe_database_error;
pub use crate::text::escape_controls;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::lsn::Lsn;
use crate::migrate::LATEST_VERSION;
use crate::queue;

/// The channel a tool notifies, with the slot as payload, after inserting
/// a request.
pub const REQUESTS_CHANNEL: &str = "walflow_requests";

/// The `kind` of a request to retry dead letters.
pub const RETRY_DEAD_LETTERS: &str = "retry_dead_letters";

/// Why an administrative call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The database has no `walflow` schema.
    #[error("no walflow tables in this database; start a flow once, or run `walflow migrate`")]
    NoSchema,
    /// The `walflow` schema is older than this version of walflow.
    #[error(
        "the walflow tables are at schema version {found}, this walflow needs version {latest}; run `walflow migrate`"
    )]
    SchemaOutdated {
        /// The latest version applied in the database (0: none).
        found: i32,
        /// [`LATEST_VERSION`].
        latest: i32,
    },
    /// No replication slot of this database has the name.
    #[error("no replication slot `{slot}` in this database; its slots: {known}")]
    UnknownSlot {
        /// The name asked for.
        slot: String,
        /// The database's logical slots, comma-separated (`none`).
        known: String,
    },
    /// The operator is not known on the slot.
    #[error("no operator `{operator}` on slot `{slot}`; its operators: {known}")]
    UnknownOperator {
        /// The name asked for.
        operator: String,
        /// The slot.
        slot: String,
        /// The operators known on the slot, comma-separated (`none`).
        known: String,
    },
    /// Some dead letters asked for do not exist (on the slot, or for the
    /// operator given).
    #[error("no dead letter {} {scope}", join_ids(.ids))]
    UnknownDeadLetters {
        /// The ids not found.
        ids: Vec<i64>,
        /// Where they were looked for (`on slot `s``, `of operator `o` on slot `s``).
        scope: String,
    },
    /// No request has the id.
    #[error("no request {0}")]
    UnknownRequest(i64),
    /// Asking the flow for work while no flow holds the slot.
    #[error(
        "no flow holds slot `{slot}`: the flow that owns the operators does the retry; start it, then run this again"
    )]
    NoFlow {
        /// The slot.
        slot: String,
    },
    /// Dropping a slot a process is streaming from.
    #[error(
        "slot `{slot}` is in use by process {pid} (`{application_name}`); stop that flow first"
    )]
    SlotActive {
        /// The slot.
        slot: String,
        /// The process holding it.
        pid: i32,
        /// Its `application_name` (empty when unknown).
        application_name: String,
    },
    /// Dropping an operator that a running flow declares.
    #[error(
        "operator `{operator}` runs in a flow on slot `{slot}` (it declares it); deploy the \
         program without it and stop every flow that still declares it, then drop it"
    )]
    OperatorRunning {
        /// The operator.
        operator: String,
        /// The slot.
        slot: String,
    },
    /// A statement failed; `step` says what was being done.
    #[error("{step}: {}", crate::pg_error::DbError(.source))]
    Sql {
        /// What was being done, and on what.
        step: String,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
}

fn join_ids(ids: &[i64]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn sql(step: impl Into<String>) -> impl FnOnce(sqlx::Error) -> AdminError {
    let step = step.into();
    move |source| AdminError::Sql { step, source }
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// Checks that the `walflow` schema exists and is at [`LATEST_VERSION`] or
/// newer.
pub async fn check_schema(pool: &PgPool) -> Result<(), AdminError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('walflow.migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(sql("looking for the walflow tables"))?;
    if !exists {
        return Err(AdminError::NoSchema);
    }
    let found: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM walflow.migrations")
        .fetch_one(pool)
        .await
        .map_err(sql("reading the walflow schema version"))?;
    let found = found.unwrap_or(0);
    if found < LATEST_VERSION {
        return Err(AdminError::SchemaOutdated {
            found,
            latest: LATEST_VERSION,
        });
    }
    Ok(())
}

/// Where a slot stands, and what its flow has left to do.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// The replication slot.
    pub slot: SlotStatus,
    /// The process streaming from the slot, when one is.
    pub holder: Option<Holder>,
    /// The end of the last transaction whose events are in the durable
    /// queue (`walflow.streams`); `None` before anything was queued, and
    /// with the stream storage, which keeps no such position (the slot's
    /// confirmed position is how far it has got).
    pub enqueued_lsn: Option<Lsn>,
    /// Per operator, by name.
    pub operators: Vec<OperatorStatus>,
    /// Per table, by name.
    pub tables: Vec<TableStatus>,
}

/// The slot, from `pg_replication_slots`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SlotStatus {
    /// Its name.
    pub name: String,
    /// Whether the database has the slot. `false` when it was dropped (or
    /// never created here) while walflow's tables still have rows for it:
    /// every other field is then empty.
    pub exists: bool,
    /// Whether a process is streaming from it.
    pub active: bool,
    /// That process (the WAL sender serving the flow).
    pub active_pid: Option<i32>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// The position up to which the flow has acknowledged the stream.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// The oldest position the slot keeps WAL for.
    pub restart_lsn: Option<Lsn>,
    /// Bytes of WAL written after `confirmed_flush_lsn`
    /// (`pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)`).
    pub lag_bytes: Option<i64>,
    /// Bytes of WAL the slot keeps the server from removing (from
    /// `restart_lsn` to the current position).
    pub retained_wal_bytes: Option<i64>,
}

/// The process holding the slot, from `pg_stat_activity`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Holder {
    /// Its process id.
    pub pid: i32,
    /// Its `application_name`.
    pub application_name: String,
    /// The client's address (`None`: a unix socket).
    pub client_addr: Option<String>,
    /// When the connection started.
    pub backend_start: Option<DateTime<Utc>>,
}

/// How an operator stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OperatorState {
    /// No queue row and no dead letter: it has applied everything queued.
    CaughtUp,
    /// Queue rows are waiting for it (and it has no dead letter).
    Behind,
    /// It has dead letters (whether or not rows are waiting): events it
    /// gave up on, to retry or discard.
    DeadLetters,
}

impl std::fmt::Display for OperatorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OperatorState::CaughtUp => "caught_up",
            OperatorState::Behind => "behind",
            OperatorState::DeadLetters => "dead_letters",
        })
    }
}

/// One operator: those of the flow that last started on the slot
/// (`walflow.operators`), and any other with queue rows or dead letters.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct OperatorStatus {
    /// Its name.
    pub name: String,
    /// Whether the flow that last started on the slot runs it.
    pub in_flow: bool,
    /// Its rows in `walflow.queue` (with the stream storage: those spilled).
    pub queued: i64,
    /// Seconds since its oldest queue row was queued.
    pub oldest_queued_secs: Option<f64>,
    /// Its dead letters.
    pub dead_letters: i64,
    /// [`OperatorState::DeadLetters`] when it has dead letters, otherwise
    /// [`Behind`](OperatorState::Behind) when rows are queued, otherwise
    /// [`CaughtUp`](OperatorState::CaughtUp).
    pub state: OperatorState,
}

/// One table's process status (`walflow.process_status`).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TableStatus {
    /// `schema.table`.
    pub table: String,
    /// The largest `updated_at` (microseconds since the Unix epoch) of an
    /// event of the table all of whose operators finished.
    pub updated_at: i64,
    /// The same, as a time.
    pub updated_at_time: Option<DateTime<Utc>>,
}

/// The slot's status: see [`Status`].
///
/// When the database has no such slot but walflow's tables have rows for
/// it (a slot dropped, or lost and dropped), the status says so
/// ([`SlotStatus::exists`] is `false`) and still shows its operators,
/// queues, dead letters and tables. [`AdminError::UnknownSlot`] when
/// neither the database nor walflow's tables know the name.
pub async fn status(pool: &PgPool, slot: &str) -> Result<Status, AdminError> {
    check_schema(pool).await?;
    let row = sqlx::query(
        "SELECT active, active_pid, wal_status, confirmed_flush_lsn::text AS confirmed,
                restart_lsn::text AS restart,
                pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 AS lag,
                pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 AS retained
         FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await
    .map_err(sql(format!("reading slot `{slot}`")))?;
    let slot_status = match row {
        Some(row) => read_slot(slot, &row).map_err(sql(format!("reading slot `{slot}`")))?,
        None if recorded(pool, slot).await? => SlotStatus {
            name: slot.to_owned(),
            exists: false,
            active: false,
            active_pid: None,
            wal_status: None,
            confirmed_flush_lsn: None,
            restart_lsn: None,
            lag_bytes: None,
            retained_wal_bytes: None,
        },
        None => return Err(unknown_slot(pool, slot).await),
    };

    let holder = match slot_status.active_pid {
        None => None,
        Some(pid) => sqlx::query(
            "SELECT pid, application_name, host(client_addr) AS addr, backend_start
             FROM pg_stat_activity WHERE pid = $1",
        )
        .bind(pid)
        .fetch_optional(pool)
        .await
        .map_err(sql(format!("reading the process holding slot `{slot}`")))?
        .map(|r| -> Result<Holder, sqlx::Error> {
            Ok(Holder {
                pid: r.try_get("pid")?,
                application_name: r
                    .try_get::<Option<String>, _>("application_name")?
                    .unwrap_or_default(),
                client_addr: r.try_get("addr")?,
                backend_start: r.try_get("backend_start")?,
            })
        })
        .transpose()
        .map_err(sql(format!("reading the process holding slot `{slot}`")))?,
    };

    let enqueued: Option<Lsn> = queue::admin::enqueued_lsn(pool, slot)
        .await
        .map_err(sql(format!("reading the queue position of slot `{slot}`")))?;

    let operators = queue::admin::operator_figures(pool, slot)
        .await
        .map_err(sql(format!("reading the operators of slot `{slot}`")))?
        .into_iter()
        .map(|r| OperatorStatus {
            name: r.operator,
            in_flow: r.in_flow,
            queued: r.queued,
            oldest_queued_secs: r.oldest,
            dead_letters: r.dead,
            state: if r.dead > 0 {
                OperatorState::DeadLetters
            } else if r.queued > 0 {
                OperatorState::Behind
            } else {
                OperatorState::CaughtUp
            },
        })
        .collect();

    let tables = queue::admin::process_status(pool, slot)
        .await
        .map_err(sql(format!("reading the process status of slot `{slot}`")))?;
    let tables = tables
        .into_iter()
        .map(|(schema, table, updated_at)| TableStatus {
            table: format!("{schema}.{table}"),
            updated_at,
            updated_at_time: DateTime::from_timestamp_micros(updated_at),
        })
        .collect();

    Ok(Status {
        slot: slot_status,
        holder,
        enqueued_lsn: enqueued,
        operators,
        tables,
    })
}

fn read_slot(slot: &str, row: &sqlx::postgres::PgRow) -> Result<SlotStatus, sqlx::Error> {
    let lsn = |name: &str| -> Result<Option<Lsn>, sqlx::Error> {
        Ok(row
            .try_get::<Option<String>, _>(name)?
            .and_then(|t| t.parse().ok()))
    };
    Ok(SlotStatus {
        name: slot.to_owned(),
        exists: true,
        active: row.try_get("active")?,
        active_pid: row.try_get("active_pid")?,
        wal_status: row.try_get("wal_status")?,
        confirmed_flush_lsn: lsn("confirmed")?,
        restart_lsn: lsn("restart")?,
        lag_bytes: row.try_get("lag")?,
        retained_wal_bytes: row.try_get("retained")?,
    })
}

/// Whether walflow's tables have rows for the slot (a flow ran on it).
async fn recorded(pool: &PgPool, slot: &str) -> Result<bool, AdminError> {
    queue::admin::recorded(pool, slot)
        .await
        .map_err(sql(format!("looking for walflow's rows of slot `{slot}`")))
}

/// A replication slot of the database, or a slot walflow's tables have
/// rows for, as [`slots`] lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SlotSummary {
    /// Its name.
    pub name: String,
    /// Whether the database has it (`false`: only walflow's tables name it,
    /// it was dropped).
    pub exists: bool,
    /// Whether a process is streaming from it.
    pub active: bool,
    /// Whether a walflow flow started on it: walflow's tables record its
    /// operators or its queue position.
    pub walflow: bool,
}

/// The logical replication slots of the database and the slots walflow's
/// tables record a flow on, by name.
pub async fn slots(pool: &PgPool) -> Result<Vec<SlotSummary>, AdminError> {
    check_schema(pool).await?;
    let rows = queue::admin::slots(pool)
        .await
        .map_err(sql("listing the replication slots"))?;
    Ok(rows
        .into_iter()
        .map(|(name, exists, active, walflow)| SlotSummary {
            name,
            exists,
            active,
            walflow,
        })
        .collect())
}

/// [`AdminError::UnknownSlot`], naming the database's logical slots (or
/// the error met listing them).
async fn unknown_slot(pool: &PgPool, slot: &str) -> AdminError {
    let known: Result<Vec<String>, _> = sqlx::query_scalar(
        "SELECT slot_name::text FROM pg_replication_slots
         WHERE database = current_database() ORDER BY slot_name",
    )
    .fetch_all(pool)
    .await;
    match known {
        Ok(known) => AdminError::UnknownSlot {
            slot: slot.to_owned(),
            known: list_or_none(&known),
        },
        Err(e) => sql("listing the replication slots")(e),
    }
}

/// The operators known on the slot: those of the flow that last started
/// on it, and any with queue rows or dead letters.
async fn known_operators(pool: &PgPool, slot: &str) -> Result<Vec<String>, AdminError> {
    queue::admin::known_operators(pool, slot)
        .await
        .map_err(sql(format!("reading the operators of slot `{slot}`")))
}

/// [`AdminError::UnknownOperator`] unless `operator` is known on the slot.
async fn check_operator(pool: &PgPool, slot: &str, operator: &str) -> Result<(), AdminError> {
    let known = known_operators(pool, slot).await?;
    if known.iter().any(|o| o == operator) {
        return Ok(());
    }
    Err(AdminError::UnknownOperator {
        operator: operator.to_owned(),
        slot: slot.to_owned(),
        known: list_or_none(&known),
    })
}

fn scope(slot: &str, operator: Option<&str>) -> String {
    match operator {
        Some(op) => format!("of operator `{op}` on slot `{slot}`"),
        None => format!("on slot `{slot}`"),
    }
}

/// A dead letter (`walflow.dead_letters`), as listed.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DeadLetterSummary {
    /// Its id.
    pub id: i64,
    /// The operator that gave up on it.
    pub operator: String,
    /// The event's position, `16/B374D848#3`.
    pub position: String,
    /// `insert`, `update`, `delete` or `truncate`.
    pub kind: String,
    /// `schema.table` of the event.
    pub table: String,
    /// The mapped id, rendered as text.
    pub mapped_id: String,
    /// The last error.
    pub error: String,
    /// How many attempts were made.
    pub attempts: i32,
    /// When it was given up.
    pub failed_at: DateTime<Utc>,
}

/// One dead letter with its event.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DeadLetterDetail {
    /// What the list shows.
    #[serde(flatten)]
    pub summary: DeadLetterSummary,
    /// The whole event, as queued for a handler operator (`None` for a
    /// query operator, which needs only the mapped id).
    pub event: Option<serde_json::Value>,
}

impl From<queue::admin::DeadLetterRecord> for DeadLetterDetail {
    fn from(r: queue::admin::DeadLetterRecord) -> DeadLetterDetail {
        DeadLetterDetail {
            summary: DeadLetterSummary {
                id: r.id,
                operator: r.operator,
                position: format!("{}#{}", r.commit_lsn, r.seq),
                kind: r.kind,
                table: format!("{}.{}", r.schema_name, r.table_name),
                mapped_id: crate::dispatch::id_display(&r.mapped_id),
                error: r.error,
                attempts: r.attempts,
                failed_at: r.failed_at,
            },
            event: r.event,
        }
    }
}

/// The dead letters of the slot (of `operator` only, when given), oldest
/// first. [`AdminError::UnknownOperator`] for an operator not known on the
/// slot.
pub async fn dead_letters(
    pool: &PgPool,
    slot: &str,
    operator: Option<&str>,
) -> Result<Vec<DeadLetterSummary>, AdminError> {
    check_schema(pool).await?;
    if let Some(op) = operator {
        check_operator(pool, slot, op).await?;
    }
    let rows = queue::admin::dead_letters(pool, slot, operator)
        .await
        .map_err(sql(format!(
            "reading the dead letters {}",
            scope(slot, operator)
        )))?;
    Ok(rows
        .into_iter()
        .map(|r| DeadLetterDetail::from(r).summary)
        .collect())
}

/// Dead letter `id` of the slot, with its event and whole error.
pub async fn dead_letter_detail(
    pool: &PgPool,
    slot: &str,
    id: i64,
) -> Result<DeadLetterDetail, AdminError> {
    check_schema(pool).await?;
    let row = queue::admin::dead_letter(pool, slot, id)
        .await
        .map_err(sql(format!("reading dead letter {id}")))?;
    match row {
        Some(r) => Ok(r.into()),
        None => Err(AdminError::UnknownDeadLetters {
            ids: vec![id],
            scope: scope(slot, None),
        }),
    }
}

/// Whether [`discard_dead_letters`] would find every one of `ids` now:
/// [`AdminError::UnknownOperator`] for an operator not known on the slot,
/// [`AdminError::UnknownDeadLetters`] naming the ids not found (for a tool
/// that asks for confirmation first).
pub async fn check_dead_letters(
    pool: &PgPool,
    slot: &str,
    operator: Option<&str>,
    ids: &[i64],
) -> Result<(), AdminError> {
    check_schema(pool).await?;
    if let Some(op) = operator {
        check_operator(pool, slot, op).await?;
    }
    let missing = queue::admin::missing_dead_letters(pool, slot, operator, ids)
        .await
        .map_err(sql("looking up the dead letters"))?;
    if !missing.is_empty() {
        return Err(AdminError::UnknownDeadLetters {
            ids: missing,
            scope: scope(slot, operator),
        });
    }
    Ok(())
}

/// Deletes the dead letters `ids` of the slot (only those of `operator`,
/// when given): they will not run again. All or nothing: an id not found
/// is [`AdminError::UnknownDeadLetters`], naming every such id, and nothing
/// is deleted. Returns how many were deleted.
pub async fn discard_dead_letters(
    pool: &PgPool,
    slot: &str,
    operator: Option<&str>,
    ids: &[i64],
) -> Result<u64, AdminError> {
    check_schema(pool).await?;
    if let Some(op) = operator {
        check_operator(pool, slot, op).await?;
    }
    let step = || format!("discarding dead letters {}", join_ids(ids));
    let mut tx = queue::begin(pool).await.map_err(sql(step()))?;
    // Locks them, so the check holds until the commit.
    queue::admin::lock_dead_letters(&mut tx, slot, operator, ids)
        .await
        .map_err(sql(step()))?;
    let missing = queue::admin::missing_dead_letters(&mut *tx, slot, operator, ids)
        .await
        .map_err(sql(step()))?;
    if !missing.is_empty() {
        return Err(AdminError::UnknownDeadLetters {
            ids: missing,
            scope: scope(slot, operator),
        });
    }
    let deleted = queue::admin::delete_dead_letters(&mut tx, slot, operator, ids)
        .await
        .map_err(sql(step()))?;
    tx.commit().await.map_err(sql(step()))?;
    Ok(deleted)
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RequestState {
    /// Waiting for the flow to take it.
    Pending,
    /// The flow is working on it.
    Running,
    /// Finished.
    Done,
    /// Given up; the request's `error` says why.
    Failed,
}

impl RequestState {
    /// Reads the `state` column.
    fn parse(s: &str) -> Option<RequestState> {
        Some(match s {
            "pending" => RequestState::Pending,
            "running" => RequestState::Running,
            "done" => RequestState::Done,
            "failed" => RequestState::Failed,
            _ => return None,
        })
    }

    /// Whether the request is over ([`Done`](Self::Done) or
    /// [`Failed`](Self::Failed)).
    pub fn is_finished(self) -> bool {
        matches!(self, RequestState::Done | RequestState::Failed)
    }
}

impl std::fmt::Display for RequestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RequestState::Pending => "pending",
            RequestState::Running => "running",
            RequestState::Done => "done",
            RequestState::Failed => "failed",
        })
    }
}

/// A request (`walflow.requests`) and its progress.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RequestProgress {
    /// Its id.
    pub id: i64,
    /// The slot whose flow does it.
    pub slot: String,
    /// What is asked ([`RETRY_DEAD_LETTERS`]).
    pub kind: String,
    /// The operator it is restricted to.
    pub operator: Option<String>,
    /// Where it stands.
    pub state: RequestState,
    /// How many items it has, once the flow has taken it.
    pub total: Option<i32>,
    /// How many are done.
    pub done: i32,
    /// Why it failed.
    pub error: Option<String>,
    /// When it was asked.
    pub created_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Whether [`request_retry`] would accept the request now (for a tool that
/// asks for confirmation first): the same refusals.
pub async fn check_retry(
    pool: &PgPool,
    slot: &str,
    operator: Option<&str>,
    ids: Option<&[i64]>,
) -> Result<(), AdminError> {
    check_schema(pool).await?;
    let active: Option<bool> = sqlx::query_scalar(
        "SELECT active FROM pg_replication_slots
         WHERE slot_name = $1 AND database = current_database()",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await
    .map_err(sql(format!("reading slot `{slot}`")))?;
    match active {
        None => return Err(unknown_slot(pool, slot).await),
        Some(false) => {
            return Err(AdminError::NoFlow {
                slot: slot.to_owned(),
            });
        }
        Some(true) => {}
    }
    if let Some(op) = operator {
        let in_flow: Vec<String> = sqlx::query_scalar(
            "SELECT operator FROM walflow.operators WHERE slot = $1 ORDER BY operator",
        )
        .bind(slot)
        .fetch_all(pool)
        .await
        .map_err(sql(format!("reading the operators of slot `{slot}`")))?;
        if !in_flow.iter().any(|o| o == op) {
            return Err(AdminError::UnknownOperator {
                operator: op.to_owned(),
                slot: slot.to_owned(),
                known: list_or_none(&in_flow),
            });
        }
    }
    if let Some(ids) = ids {
        let missing = queue::admin::missing_dead_letters(pool, slot, operator, ids)
            .await
            .map_err(sql("looking up the dead letters to retry"))?;
        if !missing.is_empty() {
            return Err(AdminError::UnknownDeadLetters {
                ids: missing,
                scope: scope(slot, operator),
            });
        }
    }
    Ok(())
}

/// Asks the flow holding the slot to retry dead letters: `ids`, or every
/// dead letter (of `operator` when given, otherwise of every operator the
/// flow runs). Returns the request's id, for [`request_progress`].
///
/// Refused with [`AdminError::NoFlow`] when no process holds the slot,
/// [`AdminError::UnknownOperator`] for an operator the slot's flow does not
/// run, and [`AdminError::UnknownDeadLetters`] for ids not found. See the
/// [module documentation](self) for the protocol.
pub async fn request_retry(
    pool: &PgPool,
    slot: &str,
    operator: Option<&str>,
    ids: Option<&[i64]>,
) -> Result<i64, AdminError> {
    check_retry(pool, slot, operator, ids).await?;
    let step = format!("asking the flow of slot `{slot}` to retry dead letters");
    let mut tx = queue::begin(pool).await.map_err(sql(step.clone()))?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO walflow.requests (slot, kind, operator, dead_letter_ids)
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(slot)
    .bind(RETRY_DEAD_LETTERS)
    .bind(operator)
    .bind(ids)
    .fetch_one(&mut *tx)
    .await
    .map_err(sql(step.clone()))?;
    // Delivered at commit.
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(REQUESTS_CHANNEL)
        .bind(slot)
        .execute(&mut *tx)
        .await
        .map_err(sql(step.clone()))?;
    tx.commit().await.map_err(sql(step))?;
    Ok(id)
}

/// Where request `id` stands. [`AdminError::UnknownRequest`] when there is
/// no such request.
pub async fn request_progress(pool: &PgPool, id: i64) -> Result<RequestProgress, AdminError> {
    let row = sqlx::query(
        "SELECT id, slot, kind, operator, state, total, done, error, created_at, finished_at
         FROM walflow.requests WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(sql(format!("reading request {id}")))?
    .ok_or(AdminError::UnknownRequest(id))?;
    let read = || -> Result<RequestProgress, sqlx::Error> {
        let state: String = row.try_get("state")?;
        Ok(RequestProgress {
            id: row.try_get("id")?,
            slot: row.try_get("slot")?,
            kind: row.try_get("kind")?,
            operator: row.try_get("operator")?,
            state: RequestState::parse(&state).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown request state `{state}`").into())
            })?,
            total: row.try_get("total")?,
            done: row.try_get("done")?,
            error: row.try_get("error")?,
            created_at: row.try_get("created_at")?,
            finished_at: row.try_get("finished_at")?,
        })
    };
    read().map_err(sql(format!("reading request {id}")))
}

/// Withdraws request `id` if no flow has taken it yet: it ends `failed`
/// with `reason`. Returns whether it was withdrawn (`false`: it is
/// running or over).
pub async fn withdraw_request(pool: &PgPool, id: i64, reason: &str) -> Result<bool, AdminError> {
    let withdrawn = sqlx::query(
        "UPDATE walflow.requests SET state = 'failed', error = $2, finished_at = now()
         WHERE id = $1 AND state = 'pending'",
    )
    .bind(id)
    .bind(reason)
    .execute(pool)
    .await
    .map_err(sql(format!("withdrawing request {id}")))?
    .rows_affected();
    Ok(withdrawn == 1)
}

/// Whether [`drop_slot`] would drop the slot now: [`AdminError::SlotActive`]
/// while a process holds it, [`AdminError::UnknownSlot`] when there is no
/// such slot (for a tool that asks for confirmation first).
pub async fn check_droppable(pool: &PgPool, slot: &str) -> Result<(), AdminError> {
    let row: Option<(bool, Option<i32>, Option<String>)> = sqlx::query_as(
        "SELECT s.active, s.active_pid, a.application_name::text
         FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid
         WHERE s.slot_name = $1 AND s.database = current_database()",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await
    .map_err(sql(format!("reading slot `{slot}`")))?;
    let Some((active, pid, application_name)) = row else {
        return Err(unknown_slot(pool, slot).await);
    };
    if active {
        return Err(AdminError::SlotActive {
            slot: slot.to_owned(),
            pid: pid.unwrap_or(0),
            application_name: application_name.unwrap_or_default(),
        });
    }
    Ok(())
}

/// Drops the slot: the server no longer keeps WAL for it, and a flow
/// started on it again starts from the current position (what was not
/// queued meanwhile is not delivered). Refused with
/// [`AdminError::SlotActive`] while a process holds it;
/// [`AdminError::UnknownSlot`] when there is no such slot. walflow's own
/// rows for the slot are left as they are.
pub async fn drop_slot(pool: &PgPool, slot: &str) -> Result<(), AdminError> {
    check_droppable(pool, slot).await?;
    match sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(slot)
        .execute(pool)
        .await
    {
        Ok(_) => Ok(()),
        // Taken, or dropped, between the check and the drop.
        Err(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("55006") | Some("42704")) =>
        {
            check_droppable(pool, slot).await?;
            Err(sql(format!("dropping slot `{slot}`"))(
                sqlx::Error::Database(e),
            ))
        }
        Err(e) => Err(sql(format!("dropping slot `{slot}`"))(e)),
    }
}

/// Whether [`drop_operator`] would drop `operator` now, and how many rows
/// it has queued: [`AdminError::UnknownOperator`] when the slot knows no
/// such operator, [`AdminError::OperatorRunning`] while a running flow
/// declares it (for a tool that asks for confirmation first).
pub async fn check_droppable_operator(
    pool: &PgPool,
    slot: &str,
    operator: &str,
) -> Result<i64, AdminError> {
    check_schema(pool).await?;
    let known = known_operators(pool, slot).await?;
    let running = running_operators(pool, slot).await?;
    if !known.iter().chain(&running).any(|o| o == operator) {
        return Err(AdminError::UnknownOperator {
            operator: operator.to_owned(),
            slot: slot.to_owned(),
            known: list_or_none(&known),
        });
    }
    if running.iter().any(|o| o == operator) {
        return Err(AdminError::OperatorRunning {
            operator: operator.to_owned(),
            slot: slot.to_owned(),
        });
    }
    queue::admin::queued_rows(pool, slot, operator)
        .await
        .map_err(sql(format!(
            "counting the queued rows of operator `{operator}` on slot `{slot}`"
        )))
}

/// The operators the running flows of the slot declare (a heartbeat in
/// `walflow.nodes` within the time a node counts as running).
async fn running_operators(pool: &PgPool, slot: &str) -> Result<Vec<String>, AdminError> {
    queue::nodes::running_operators(pool, slot)
        .await
        .map_err(sql(format!("reading the flows running on slot `{slot}`")))
}

/// Drops an operator that no running flow declares: moves its queued rows
/// to the dead letters, with the error `operator NAME dropped` (0
/// attempts), in one transaction; the events waiting on them count as
/// processed. Returns how many rows were moved. Refused as
/// [`check_droppable_operator`] says. The dead letters can be retried
/// (`walflow dead-letters retry`) by a flow that declares the operator
/// again.
pub async fn drop_operator(pool: &PgPool, slot: &str, operator: &str) -> Result<u64, AdminError> {
    check_droppable_operator(pool, slot, operator).await?;
    let step = || format!("dropping operator `{operator}` of slot `{slot}`");
    let mut tx = pool
        .begin_with("BEGIN; SET LOCAL synchronous_commit = local")
        .await
        .map_err(sql(step()))?;
    let moved = queue::admin::dead_letter_operator(
        &mut tx,
        slot,
        operator,
        &format!("operator {operator} dropped"),
    )
    .await
    .map_err(sql(step()))?;
    tx.commit().await.map_err(sql(step()))?;
    Ok(moved as u64)
}

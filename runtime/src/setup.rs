// One file of this length: publication, replica identities and slot are set up under one advisory lock, in one sequence whose steps share its transaction.
//! Database set-up: the publication, replica identities and the slot.
//!
//! The publication contains exactly the declared tables (never
//! `FOR ALL TABLES`): tables are added and removed as declarations change.
//! Declared tables get `REPLICA IDENTITY FULL`, so updates and deletes carry
//! the whole old row, unless an entity opts out. The durable slot is created
//! when missing. Concurrent set-ups (several application nodes starting at
//! once) are serialized with an advisory lock.
//!
//! # Locks, and starting while the application writes
//!
//! On a first start, or when an entity is declared, the set-up changes each
//! new table once: `ALTER TABLE … REPLICA IDENTITY FULL` takes an ACCESS
//! EXCLUSIVE lock on it (every query on the table waits while it is queued
//! or held), `ALTER PUBLICATION … ADD TABLE` / `DROP TABLE` a SHARE UPDATE
//! EXCLUSIVE one. Once granted, each is a catalog change committed at once.
//! A start that finds everything in place takes no table lock.
//!
//! The set-up waits for those locks rather than making an application
//! transaction fail:
//!
//! - every change runs in a short transaction of its own (one table, one
//!   statement), one table after another in `schema.table` order, so the
//!   set-up never holds a lock on one table while it waits for another;
//! - each such transaction sets `SET LOCAL lock_timeout` ([`LOCK_TIMEOUT`]):
//!   when application transactions hold the table, the statement gives up,
//!   the set-up logs a warning naming the table and tries again after a
//!   pause doubling from 50 ms to 2 s, for up to [`LOCK_WAIT_LIMIT`] per
//!   step, then fails with [`SetupError::LockUnavailable`]. Lock timeouts
//!   (`55P03`), deadlocks (`40P01`) and serialization failures (`40001`) are
//!   retried this way;
//! - while the set-up's request is queued, application transactions asking
//!   for that table queue behind it, for at most the lock timeout per
//!   attempt. PostgreSQL runs its deadlock check in a waiting backend only
//!   after `deadlock_timeout` (1 s by default); the lock timeout is kept well
//!   below it (at most a quarter of the server's `deadlock_timeout`), so the
//!   set-up's request is withdrawn before any backend queued behind it runs
//!   the check, and the deadlock detector never has an application
//!   transaction to choose as a victim. (A set-up in one transaction, holding
//!   each table it had changed while waiting for the next, formed real
//!   cycles with application transactions that touch those tables in
//!   another order, and the detector aborted one side, sometimes the
//!   application's.)
//!
//! Each step commits on its own: a set-up that fails part way keeps what it
//! did, and the next start does the rest.

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Row};

use crate::ident::quote_ident;
use crate::listener::{Listener, ListenerError, ListenerOptions, PgWireConnector};

/// A table to publish.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableSpec {
    /// Schema (`public` most often).
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Set `REPLICA IDENTITY FULL` on it (the default; opting out leaves the
    /// table's identity as it is, and update/delete events then carry only
    /// the key columns of the old row).
    pub replica_identity_full: bool,
    /// Columns whose old values operators need from the table's updates
    /// and deletes. With `replica_identity_full` off, the set-up fails
    /// ([`SetupError::OldRowNotCarried`]) unless the table's identity as
    /// it stands carries each of them.
    pub old_row_columns: Vec<OldRowColumn>,
}

/// A column whose old value an operator needs (see
/// [`TableSpec::old_row_columns`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OldRowColumn {
    /// The column.
    pub column: String,
    /// The operator that maps the table by it.
    pub operator: String,
    /// The Rust name of the table's `#[event_source]`.
    pub entity: String,
}

impl TableSpec {
    /// A table in `schema` with `REPLICA IDENTITY FULL`.
    pub fn new(schema: impl Into<String>, table: impl Into<String>) -> Self {
        TableSpec {
            schema: schema.into(),
            table: table.into(),
            replica_identity_full: true,
            old_row_columns: Vec::new(),
        }
    }

    fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

/// What to set up.
#[derive(Debug, Clone)]
pub struct SetupSpec {
    /// Publication name.
    pub publication: String,
    /// Slot name.
    pub slot: String,
    /// Create a durable slot when missing (`false`: the listener creates a
    /// temporary slot on its own session instead).
    pub durable_slot: bool,
    /// The tables to publish.
    pub tables: Vec<TableSpec>,
}

/// What the set-up changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetupReport {
    /// The publication was created.
    pub publication_created: bool,
    /// Tables added to the publication (`schema.table`).
    pub tables_added: Vec<String>,
    /// Tables removed from the publication (`schema.table`).
    pub tables_removed: Vec<String>,
    /// Tables whose replica identity was set to FULL (`schema.table`).
    pub identity_set_full: Vec<String>,
    /// The durable slot was created.
    pub slot_created: bool,
}

/// Why the set-up failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A declared table does not exist.
    #[error(
        "table `{schema}.{table}` does not exist; create it (or fix the `table`/`schema` of its `#[event_source]`) before starting walflow"
    )]
    TableMissing {
        /// Schema.
        schema: String,
        /// Table.
        table: String,
    },
    /// The publication exists as `FOR ALL TABLES`.
    #[error(
        "publication `{0}` is FOR ALL TABLES; walflow manages the publication's table list: drop it or configure another publication name"
    )]
    PublicationForAllTables(String),
    /// The slot exists but was made for another plugin or database.
    #[error(
        "replication slot `{slot}` exists with plugin `{plugin}` on database `{database}`; walflow needs a `pgoutput` slot on this database: drop it or configure another slot name"
    )]
    SlotMismatch {
        /// Slot.
        slot: String,
        /// Its plugin.
        plugin: String,
        /// Its database.
        database: String,
    },
    /// A table stayed locked by other transactions for longer than the
    /// set-up waits ([`SetupOptions::lock_wait_limit`]).
    #[error(
        "gave up after {waited:?} waiting for a lock on `{table}` to {action}: other transactions kept it busy (long-running ones show in pg_stat_activity); the steps before it are done, start again to finish the set-up: {source}"
    )]
    LockUnavailable {
        /// The table (`schema.table`); the publication's name when creating
        /// the publication.
        table: String,
        /// What the set-up was doing.
        action: String,
        /// How long it kept trying.
        waited: Duration,
        /// The last lock error.
        #[source]
        source: sqlx::Error,
    },
    /// An entity declared with `replica_identity = "default"` is mapped by
    /// a column its table's replica identity does not carry in old rows.
    #[error(transparent)]
    OldRowNotCarried(Box<OldRowNotCarried>),
    /// A statement failed.
    #[error("{context}: {}", crate::pg_error::DbError(.source))]
    Sql {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: sqlx::Error,
    },
}

/// An entity declared with `replica_identity = "default"` is mapped by a
/// column its table's replica identity does not carry in old rows: the
/// operator could not tell which id a row moved from, nor which id a
/// deleted row leaves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "entity `{entity}` (table `{table}`) is declared with `replica_identity = \"default\"`, \
     and operator `{operator}` maps it by `{column}`, which the table's replica identity \
     ({identity}) does not carry in old rows: its updates would not say which id a row moved \
     from, nor its deletes which id they leave; run `{fix}`, or remove \
     `replica_identity = \"default\"` from `{entity}` so that walflow sets it"
)]
#[non_exhaustive]
pub struct OldRowNotCarried {
    /// The `#[event_source]` struct.
    pub entity: String,
    /// The table (`schema.table`).
    pub table: String,
    /// The mapped column.
    pub column: String,
    /// The operator.
    pub operator: String,
    /// The table's replica identity and what it carries.
    pub identity: String,
    /// The statement that makes old rows whole.
    pub fix: String,
}

fn sql(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> SetupError {
    let context = context.into();
    move |source| SetupError::Sql { context, source }
}

/// How long one attempt of a set-up step waits for its table lock
/// (`SET LOCAL lock_timeout`). Well below PostgreSQL's default
/// `deadlock_timeout` (1 s); see the [module documentation](self).
pub const LOCK_TIMEOUT: Duration = Duration::from_millis(200);

/// How long the set-up keeps retrying one step whose table stays locked
/// before it fails with [`SetupError::LockUnavailable`].
pub const LOCK_WAIT_LIMIT: Duration = Duration::from_secs(60);

/// The first pause between attempts of a step; it doubles up to
/// [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Key of the advisory lock serializing set-ups.
const SETUP_LOCK: &str = "walflow.setup";

/// How the set-up waits for table locks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SetupOptions {
    /// How long one attempt waits for a table lock ([`LOCK_TIMEOUT`]). It is
    /// lowered to a quarter of the server's `deadlock_timeout` when that is
    /// smaller.
    pub lock_timeout: Duration,
    /// How long one step keeps retrying ([`LOCK_WAIT_LIMIT`]).
    pub lock_wait_limit: Duration,
}

impl Default for SetupOptions {
    fn default() -> Self {
        SetupOptions {
            lock_timeout: LOCK_TIMEOUT,
            lock_wait_limit: LOCK_WAIT_LIMIT,
        }
    }
}

/// Creates or updates the publication, replica identities and slot.
///
/// Safe to run while the application writes to the tables: it waits for
/// their locks (up to [`LOCK_WAIT_LIMIT`] per table) instead of making
/// application transactions fail; see the [module documentation](self).
pub async fn prepare(pool: &PgPool, spec: &SetupSpec) -> Result<SetupReport, SetupError> {
    prepare_with(pool, spec, &SetupOptions::default()).await
}

/// [`prepare`] with other lock waits.
pub async fn prepare_with(
    pool: &PgPool,
    spec: &SetupSpec,
    options: &SetupOptions,
) -> Result<SetupReport, SetupError> {
    // One session for the whole set-up, holding a session-level advisory
    // lock across its steps. Held per step instead, two nodes could
    // interleave: both find the publication missing and race to create it,
    // or a node with an older declaration list removes a table a newer node
    // has just added. Held across, set-ups run one after the other and each
    // sees the previous one's result, as when the set-up was one
    // transaction. Application transactions never take this lock, so
    // holding it while waiting for table locks delays only other set-ups.
    //
    // The connection is detached from the pool and closed at the end: if
    // this future is dropped part way, the session ends with the connection
    // and the server releases the lock, rather than the pool handing out a
    // connection that still holds it.
    let mut conn = pool
        .acquire()
        .await
        .map_err(sql("connecting for the set-up"))?
        .detach();
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(SETUP_LOCK)
        .execute(&mut conn)
        .await
        .map_err(sql("locking the set-up"))?;
    let result = prepare_locked(&mut conn, spec, options).await;
    // Closing the session would release the lock too; unlocking first lets
    // a waiting set-up go on without waiting for the close.
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(SETUP_LOCK)
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    let mut report = result?;

    if spec.durable_slot {
        report.slot_created = ensure_slot(pool, &spec.slot).await?;
    }
    Ok(report)
}

async fn prepare_locked(
    conn: &mut PgConnection,
    spec: &SetupSpec,
    options: &SetupOptions,
) -> Result<SetupReport, SetupError> {
    let mut report = SetupReport::default();
    let deadlock_timeout: i64 =
        sqlx::query_scalar("SELECT setting::int8 FROM pg_settings WHERE name = 'deadlock_timeout'")
            .fetch_one(&mut *conn)
            .await
            .map_err(sql("reading deadlock_timeout"))?;
    let steps = Steps {
        lock_timeout: effective_lock_timeout(
            options.lock_timeout,
            Duration::from_millis(deadlock_timeout.max(0) as u64),
        ),
        wait_limit: options.lock_wait_limit,
    };

    // Everything is checked before anything is changed.
    let wanted: BTreeSet<TableSpec> = spec.tables.iter().cloned().collect();
    let mut identities = Vec::with_capacity(wanted.len());
    for t in &wanted {
        // The identity, and the columns it carries in old rows (the
        // primary key's or the identity index's; every one when FULL).
        let row = sqlx::query(
            "SELECT c.relreplident::text,
                    ARRAY(SELECT a.attname::text FROM pg_index i
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                          WHERE i.indrelid = c.oid
                            AND CASE c.relreplident WHEN 'd' THEN i.indisprimary
                                                    WHEN 'i' THEN i.indisreplident
                                                    ELSE false END
                          ORDER BY array_position(i.indkey::int2[], a.attnum))
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
        )
        .bind(&t.schema)
        .bind(&t.table)
        .fetch_optional(&mut *conn)
        .await
        .map_err(sql(format!("looking up table `{}.{}`", t.schema, t.table)))?;
        let Some(row) = row else {
            return Err(SetupError::TableMissing {
                schema: t.schema.clone(),
                table: t.table.clone(),
            });
        };
        let identity = row.get::<String, _>(0);
        if !t.replica_identity_full {
            check_old_rows(t, &identity, &row.get::<Vec<String>, _>(1))?;
        }
        identities.push(identity);
    }
    let publication = quote_ident(&spec.publication);
    let existing: Option<bool> =
        sqlx::query_scalar("SELECT puballtables FROM pg_publication WHERE pubname = $1")
            .bind(&spec.publication)
            .fetch_optional(&mut *conn)
            .await
            .map_err(sql(format!(
                "looking up publication `{}`",
                spec.publication
            )))?;
    if existing == Some(true) {
        return Err(SetupError::PublicationForAllTables(
            spec.publication.clone(),
        ));
    }

    // Replica identities first, so that a table is published only once its
    // changes carry the whole old row.
    for (t, identity) in wanted.iter().zip(&identities) {
        if t.replica_identity_full && identity != "f" {
            let name = format!("{}.{}", t.schema, t.table);
            // Identifiers quoted with `quote_ident`.
            steps
                .run(
                    conn,
                    &name,
                    "set REPLICA IDENTITY FULL",
                    &format!("ALTER TABLE {} REPLICA IDENTITY FULL", t.qualified()),
                )
                .await?;
            report.identity_set_full.push(name);
        }
    }

    let current: BTreeSet<(String, String)> = if existing.is_none() {
        // Created empty, then filled one table at a time like an existing
        // one: `CREATE PUBLICATION … FOR TABLE` would lock every table in
        // one statement.
        steps
            .run(
                conn,
                &spec.publication,
                "create the publication",
                &format!("CREATE PUBLICATION {publication}"),
            )
            .await?;
        report.publication_created = true;
        BTreeSet::new()
    } else {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
        )
        .bind(&spec.publication)
        .fetch_all(&mut *conn)
        .await
        .map_err(sql(format!("reading publication `{}`", spec.publication)))?;
        rows.into_iter().collect()
    };
    let wanted_names: BTreeSet<(String, String)> = wanted
        .iter()
        .map(|t| (t.schema.clone(), t.table.clone()))
        .collect();
    for (schema, table) in wanted_names.difference(&current) {
        let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
        steps
            .run(
                conn,
                &format!("{schema}.{table}"),
                &format!("add it to publication `{}`", spec.publication),
                &format!("ALTER PUBLICATION {publication} ADD TABLE {name}"),
            )
            .await?;
        report.tables_added.push(format!("{schema}.{table}"));
    }
    for (schema, table) in current.difference(&wanted_names) {
        let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
        steps
            .run(
                conn,
                &format!("{schema}.{table}"),
                &format!("remove it from publication `{}`", spec.publication),
                &format!("ALTER PUBLICATION {publication} DROP TABLE {name}"),
            )
            .await?;
        report.tables_removed.push(format!("{schema}.{table}"));
    }
    Ok(report)
}

/// Fails when `t`'s replica identity (`relreplident`, carrying `key` in
/// old rows) leaves out a column an operator needs the old value of.
fn check_old_rows(t: &TableSpec, identity: &str, key: &[String]) -> Result<(), SetupError> {
    if identity == "f" {
        return Ok(());
    }
    let Some(need) = t.old_row_columns.iter().find(|n| !key.contains(&n.column)) else {
        return Ok(());
    };
    let carried = key
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let identity = match (identity, key.is_empty()) {
        ("d", false) => format!("DEFAULT: the primary key, {carried}"),
        ("d", true) => "DEFAULT, without a primary key: nothing".to_owned(),
        ("i", _) => format!("USING INDEX: {carried}"),
        ("n", _) => "NOTHING".to_owned(),
        (other, _) => format!("`{other}`"),
    };
    Err(SetupError::OldRowNotCarried(Box::new(OldRowNotCarried {
        entity: need.entity.clone(),
        table: format!("{}.{}", t.schema, t.table),
        column: need.column.clone(),
        operator: need.operator.clone(),
        identity,
        fix: crate::dispatch::identity_fix(&t.schema, &t.table),
    })))
}

/// The columns of `entity`'s table whose old values `operators` need: the
/// column each maps it by, when it runs on its deletes or (a query
/// operator) its updates.
pub(crate) fn old_row_columns(
    entity: &crate::registry::EntityRegistration,
    operators: &[&'static crate::registry::OperatorRegistration],
) -> Vec<OldRowColumn> {
    let mut out: Vec<OldRowColumn> = operators
        .iter()
        .filter_map(|op| {
            let column = crate::dispatch::old_row_column(op, entity.table)?;
            Some(OldRowColumn {
                column: column.to_owned(),
                operator: op.name.to_owned(),
                entity: entity.rust_name.to_owned(),
            })
        })
        .collect();
    out.sort();
    out
}

/// The lock timeout one attempt uses: the requested one, at most a quarter
/// of the server's `deadlock_timeout`, at least 1 ms (`0` would mean no
/// timeout).
fn effective_lock_timeout(requested: Duration, deadlock_timeout: Duration) -> Duration {
    requested
        .min(deadlock_timeout / 4)
        .max(Duration::from_millis(1))
}

/// The pause after the `attempt`th failed attempt (from 1).
fn retry_delay(attempt: u32) -> Duration {
    FIRST_RETRY_DELAY
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_RETRY_DELAY)
}

/// Lock timeout, deadlock, serialization failure: the statement did not
/// get its lock in time and can be run again.
fn is_lock_conflict(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(e) => {
            matches!(e.code().as_deref(), Some("55P03" | "40P01" | "40001"))
        }
        _ => false,
    }
}

/// Runs set-up statements, each in a short transaction with a lock timeout,
/// retried while their table is busy.
struct Steps {
    lock_timeout: Duration,
    wait_limit: Duration,
}

impl Steps {
    /// Runs `statement` (SQL-safe: identifiers quoted) on `table`.
    async fn run(
        &self,
        conn: &mut PgConnection,
        table: &str,
        action: &str,
        statement: &str,
    ) -> Result<(), SetupError> {
        let started = tokio::time::Instant::now();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let source = match self.attempt(conn, statement).await {
                Ok(()) => return Ok(()),
                Err(e) if is_lock_conflict(&e) => e,
                Err(source) => {
                    return Err(SetupError::Sql {
                        context: format!("`{table}`: could not {action}"),
                        source,
                    });
                }
            };
            let waited = started.elapsed();
            let Some(left) = self.wait_limit.checked_sub(waited).filter(|d| !d.is_zero()) else {
                return Err(SetupError::LockUnavailable {
                    table: table.to_owned(),
                    action: action.to_owned(),
                    waited,
                    source,
                });
            };
            // Once, then at the 2nd, 4th, 8th, ... retry: a handful of lines
            // over a long wait.
            if attempt.is_power_of_two() {
                tracing::warn!(
                    table,
                    attempt,
                    waited_ms = waited.as_millis() as u64,
                    error = %source,
                    "waiting for a lock on `{table}` to {action}; retrying"
                );
            }
            tokio::time::sleep(retry_delay(attempt).min(left)).await;
        }
    }

    async fn attempt(&self, conn: &mut PgConnection, statement: &str) -> sqlx::Result<()> {
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(format!("{}ms", self.lock_timeout.as_millis()))
            .execute(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(statement.to_owned()))
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
}

/// Creates the durable `pgoutput` slot if missing; checks an existing one.
/// Returns whether it was created.
pub async fn ensure_slot(pool: &PgPool, slot: &str) -> Result<bool, SetupError> {
    for _ in 0..2 {
        let row: Option<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT plugin::text, database::text, current_database()::text FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(slot)
        .fetch_optional(pool)
        .await
        .map_err(sql(format!("looking up slot `{slot}`")))?;
        if let Some((plugin, database, current)) = row {
            let plugin = plugin.unwrap_or_default();
            let database = database.unwrap_or_default();
            if plugin != "pgoutput" || Some(&database) != current.as_ref() {
                return Err(SetupError::SlotMismatch {
                    slot: slot.to_owned(),
                    plugin,
                    database,
                });
            }
            return Ok(false);
        }
        let created = sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(slot)
            .execute(pool)
            .await;
        match created {
            Ok(_) => return Ok(true),
            // Another node created it in between: check it on the next pass.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42710") => continue,
            Err(e) => return Err(sql(format!("creating slot `{slot}`"))(e)),
        }
    }
    Ok(false)
}

/// Drops the slot if it exists (and is not in use).
#[doc(hidden)]
pub async fn drop_slot(pool: &PgPool, slot: &str) -> Result<(), SetupError> {
    sqlx::query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .execute(pool)
    .await
    .map_err(sql(format!("dropping slot `{slot}`")))?;
    Ok(())
}

#[cfg(test)]
mod tests;

/// Why [`listen`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The server cannot serve logical replication as configured.
    #[error(transparent)]
    Preflight(#[from] crate::preflight::PreflightError),
    /// The publication, replica identities or slot could not be set up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The replication session did not start.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// The connection pool could not connect.
    #[error("connecting to {url}: {}", crate::pg_error::DbError(.source))]
    Pool {
        /// The server, without password.
        url: String,
        /// The error.
        #[source]
        source: sqlx::Error,
    },
}

/// The listener for direct use, everything at once: checks the server
/// (`wal_level`, REPLICATION, free slots), publishes `tables` (exactly these,
/// `REPLICA IDENTITY FULL` unless a table opts out), creates the slot and
/// starts a [`Listener`] on it. Returns it with a connection pool to the same
/// database.
pub async fn listen(
    config: &crate::Config,
    tables: Vec<TableSpec>,
) -> Result<(Listener, PgPool), ConnectError> {
    crate::preflight::check(config).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(config.connect_options())
        .await
        .map_err(|source| ConnectError::Pool {
            url: config.server(),
            source,
        })?;
    prepare(
        &pool,
        &SetupSpec {
            publication: config.publication().to_owned(),
            slot: config.slot_name().to_owned(),
            durable_slot: config.durable_slot(),
            tables,
        },
    )
    .await?;
    let listener = Listener::start(
        PgWireConnector::from_config(config),
        ListenerOptions::from_config(config),
        pool.clone(),
    )
    .await?;
    Ok((listener, pool))
}

//! Database set-up: the publication, replica identities and the slot.
//!
//! The publication contains exactly the declared tables (never
//! `FOR ALL TABLES`): tables are added and removed as declarations change.
//! Declared tables get `REPLICA IDENTITY FULL`, so updates and deletes carry
//! the whole old row, unless an entity opts out. The durable slot is created
//! when missing. Concurrent set-ups (several application nodes starting at
//! once) are serialized with an advisory lock.

use std::collections::BTreeSet;

use sqlx::{AssertSqlSafe, PgPool, Row};

use crate::listener::quote_ident;

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
}

impl TableSpec {
    /// A table in `schema` with `REPLICA IDENTITY FULL`.
    pub fn new(schema: impl Into<String>, table: impl Into<String>) -> Self {
        TableSpec {
            schema: schema.into(),
            table: table.into(),
            replica_identity_full: true,
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
    /// A statement failed.
    #[error("{context}: {source}")]
    Sql {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: sqlx::Error,
    },
}

fn sql(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> SetupError {
    let context = context.into();
    move |source| SetupError::Sql { context, source }
}

/// Creates or updates the publication, replica identities and slot.
pub async fn prepare(pool: &PgPool, spec: &SetupSpec) -> Result<SetupReport, SetupError> {
    let mut report = SetupReport::default();
    let mut tx = pool.begin().await.map_err(sql("starting the set-up"))?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('walflow.setup'))")
        .execute(&mut *tx)
        .await
        .map_err(sql("locking the set-up"))?;

    let wanted: BTreeSet<TableSpec> = spec.tables.iter().cloned().collect();
    for t in &wanted {
        let row = sqlx::query(
            "SELECT c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
        )
        .bind(&t.schema)
        .bind(&t.table)
        .fetch_optional(&mut *tx)
        .await
        .map_err(sql(format!("looking up table `{}.{}`", t.schema, t.table)))?;
        let Some(row) = row else {
            return Err(SetupError::TableMissing {
                schema: t.schema.clone(),
                table: t.table.clone(),
            });
        };
        let identity: String = row.get(0);
        if t.replica_identity_full && identity != "f" {
            // Identifiers quoted with `quote_ident`.
            sqlx::query(AssertSqlSafe(format!(
                "ALTER TABLE {} REPLICA IDENTITY FULL",
                t.qualified()
            )))
            .execute(&mut *tx)
            .await
            .map_err(sql(format!(
                "setting REPLICA IDENTITY FULL on `{}.{}`",
                t.schema, t.table
            )))?;
            report
                .identity_set_full
                .push(format!("{}.{}", t.schema, t.table));
        }
    }

    let publication = quote_ident(&spec.publication);
    let existing: Option<bool> =
        sqlx::query_scalar("SELECT puballtables FROM pg_publication WHERE pubname = $1")
            .bind(&spec.publication)
            .fetch_optional(&mut *tx)
            .await
            .map_err(sql(format!(
                "looking up publication `{}`",
                spec.publication
            )))?;
    match existing {
        Some(true) => {
            return Err(SetupError::PublicationForAllTables(
                spec.publication.clone(),
            ));
        }
        None => {
            let list: Vec<String> = wanted.iter().map(TableSpec::qualified).collect();
            let stmt = if list.is_empty() {
                format!("CREATE PUBLICATION {publication}")
            } else {
                format!(
                    "CREATE PUBLICATION {publication} FOR TABLE {}",
                    list.join(", ")
                )
            };
            sqlx::query(AssertSqlSafe(stmt))
                .execute(&mut *tx)
                .await
                .map_err(sql(format!("creating publication `{}`", spec.publication)))?;
            report.publication_created = true;
            report.tables_added = wanted
                .iter()
                .map(|t| format!("{}.{}", t.schema, t.table))
                .collect();
        }
        Some(false) => {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            )
            .bind(&spec.publication)
            .fetch_all(&mut *tx)
            .await
            .map_err(sql(format!("reading publication `{}`", spec.publication)))?;
            let current: BTreeSet<(String, String)> = rows.into_iter().collect();
            let wanted_names: BTreeSet<(String, String)> = wanted
                .iter()
                .map(|t| (t.schema.clone(), t.table.clone()))
                .collect();
            for (schema, table) in wanted_names.difference(&current) {
                let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
                sqlx::query(AssertSqlSafe(format!(
                    "ALTER PUBLICATION {publication} ADD TABLE {name}"
                )))
                .execute(&mut *tx)
                .await
                .map_err(sql(format!(
                    "adding `{schema}.{table}` to publication `{}`",
                    spec.publication
                )))?;
                report.tables_added.push(format!("{schema}.{table}"));
            }
            for (schema, table) in current.difference(&wanted_names) {
                let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
                sqlx::query(AssertSqlSafe(format!(
                    "ALTER PUBLICATION {publication} DROP TABLE {name}"
                )))
                .execute(&mut *tx)
                .await
                .map_err(sql(format!(
                    "removing `{schema}.{table}` from publication `{}`",
                    spec.publication
                )))?;
                report.tables_removed.push(format!("{schema}.{table}"));
            }
        }
    }
    tx.commit().await.map_err(sql("committing the set-up"))?;

    if spec.durable_slot {
        report.slot_created = ensure_slot(pool, &spec.slot).await?;
    }
    Ok(report)
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

//! What can be checked at start of the promise's preconditions: a derived
//! table equals what its query computes from scratch only when the query
//! reads nothing but the operator's entities (and its target).
//!
//! A change of a table the query reads but does not declare queues no event
//! for the operator, so its derived rows keep what they computed from the
//! old contents; coalescing and the covered-run rule (rules 5 and 6 of the
//! [queue protocol](crate::queue)) assume that a run after the last event
//! of an id computes the same as a run after each.
//!
//! [`check`] plans each query operator's query as PostgreSQL will run it:
//! in a transaction that is rolled back, `SET LOCAL plan_cache_mode =
//! force_generic_plan`, `PREPARE` the query and `EXPLAIN (VERBOSE, FORMAT
//! JSON) EXECUTE` it with `NULL` for `$1` (nothing runs), then collects
//! every relation of the plan tree, init plans and sub plans included
//! (views are planned as the tables they read; a partition counts as its
//! partitioned table). Each relation that is neither an entity nor the
//! target is a warning naming the operator, the table and why.
//!
//! It also warns when the query's text calls a function whose result does
//! not come from the tables (`now()`, `random()`, `clock_timestamp()`, the
//! `CURRENT_TIMESTAMP` family, ...): a text match on the query as written,
//! outside string literals, quoted identifiers and comments. Functions
//! reached through views, column defaults or other functions are not seen:
//! PostgreSQL's plan shows only their deparsed calls, and telling a clock
//! read from a harmless stable function there would need each call's
//! volatility, which the plan does not carry.
//!
//! Nothing here stops the flow: a query that cannot be planned (its tables
//! missing, `$1`'s type not inferable) is logged at `info` and not
//! checked; it fails when it runs, naming the operator.

use std::collections::BTreeSet;

use sqlx::{Connection, PgConnection, PgPool};

use crate::registry::{OperatorAction, OperatorRegistration};

/// The name queries are prepared under (with a number), on a connection
/// of its own, closed once done.
const STATEMENT: &str = "walflow_plan_check";

/// Functions whose result does not come from the tables, as they are
/// called (`name(...)`).
const VOLATILE_CALLS: &[&str] = &[
    "now",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "random",
    "random_normal",
    "gen_random_uuid",
    "uuid_generate_v4",
    "nextval",
    "txid_current",
    "pg_current_xact_id",
];

/// SQL value functions written without parentheses that read the clock.
const CLOCK_KEYWORDS: &[&str] = &[
    "current_timestamp",
    "current_date",
    "current_time",
    "localtimestamp",
    "localtime",
];

/// Warns, for each query operator of `operators`, about every table its
/// query reads that is not one of its entities nor its target, and about
/// every call of [`VOLATILE_CALLS`] or [`CLOCK_KEYWORDS`] in its text.
/// Never fails: what cannot be checked is logged and skipped.
pub(crate) async fn check(pool: &PgPool, operators: &[&'static OperatorRegistration]) {
    let queries: Vec<_> = operators
        .iter()
        .filter_map(|op| match op.action {
            OperatorAction::Query(sql) => Some((*op, sql)),
            OperatorAction::Handler(_) => None,
        })
        .collect();
    if queries.is_empty() {
        return;
    }
    for (op, sql) in &queries {
        for call in volatile_calls(sql) {
            tracing::warn!(
                operator = op.name,
                function = %call,
                "operator `{}`'s query calls `{call}`, whose result does not come from the \
                 operator's entities: a derived row then depends on when its run happened, and \
                 coalescing and the covered-run rule assume a run after the last event computes \
                 what a run after each would (found in the query's text; ignore it if the value \
                 is only a timestamp of the last run)",
                op.name
            );
        }
    }
    // A connection of its own: a prepared statement outlives a rollback.
    let mut conn = match PgConnection::connect_with(&pool.connect_options()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(
                error = %crate::pg_error::DbError(&e),
                "cannot check which tables the operators' queries read: no connection"
            );
            return;
        }
    };
    for (n, (op, sql)) in queries.into_iter().enumerate() {
        match read_tables(&mut conn, &format!("{STATEMENT}_{n}"), sql).await {
            Ok(tables) => warn_foreign(op, &tables, &mut conn).await,
            Err(e) => tracing::info!(
                operator = op.name,
                error = %crate::pg_error::DbError(&e),
                "cannot check which tables operator `{}`'s query reads: it does not plan \
                 (it fails when it runs if it still does not)",
                op.name
            ),
        }
    }
    let _ = conn.close().await;
}

/// The `(schema, table)` of every relation in the generic plan of `sql`.
async fn read_tables(
    conn: &mut PgConnection,
    name: &str,
    sql: &str,
) -> Result<BTreeSet<(String, String)>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL plan_cache_mode = force_generic_plan")
        .execute(&mut *tx)
        .await?;
    let planned = async {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE {name} AS {sql}")))
            .execute(&mut *tx)
            .await?;
        let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE {name}(NULL)"
        )))
        .fetch_one(&mut *tx)
        .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DEALLOCATE {name}")))
            .execute(&mut *tx)
            .await?;
        Ok::<_, sqlx::Error>(plan)
    }
    .await;
    tx.rollback().await?;
    let mut tables = BTreeSet::new();
    relations(&planned?, &mut tables);
    Ok(tables)
}

/// Collects `"Schema"`/`"Relation Name"` of every node under `plan`.
fn relations(plan: &serde_json::Value, out: &mut BTreeSet<(String, String)>) {
    match plan {
        serde_json::Value::Object(node) => {
            if let (Some(schema), Some(table)) = (
                node.get("Schema").and_then(|s| s.as_str()),
                node.get("Relation Name").and_then(|t| t.as_str()),
            ) {
                out.insert((schema.to_owned(), table.to_owned()));
            }
            for value in node.values() {
                relations(value, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                relations(item, out);
            }
        }
        _ => {}
    }
}

/// Warns about each of `tables` that is neither an entity nor the target
/// of `op` (nor a partition of one).
async fn warn_foreign(
    op: &OperatorRegistration,
    tables: &BTreeSet<(String, String)>,
    conn: &mut PgConnection,
) {
    let declared = |schema: &str, table: &str| {
        op.entities
            .iter()
            .chain(op.target.as_ref().map(|t| &t.table))
            .any(|t| t.schema == schema && t.table == table)
    };
    for (schema, table) in tables {
        if declared(schema, table) {
            continue;
        }
        // A partition stands for its partitioned table.
        let root: Option<(String, String)> = sqlx::query_as(
            "SELECT n.nspname::text, c.relname::text
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = pg_partition_root(format('%I.%I', $1::text, $2::text)::regclass)",
        )
        .bind(schema)
        .bind(table)
        .fetch_optional(&mut *conn)
        .await
        .ok()
        .flatten();
        if root.is_some_and(|(s, t)| declared(&s, &t)) {
            continue;
        }
        tracing::warn!(
            operator = op.name,
            table = %format!("{schema}.{table}"),
            "operator `{}`'s query reads table `{schema}.{table}`, which is not one of its \
             entities nor its target: a change of `{schema}.{table}` queues no event for the \
             operator, so its derived rows keep what they computed from the old rows until an \
             entity of theirs changes; declare an `#[event_source]` for it and add it to \
             `entities` (with an `id` mapping), or read only the entities",
            op.name
        );
    }
}

/// The calls of [`VOLATILE_CALLS`] and uses of [`CLOCK_KEYWORDS`] in
/// `sql`, outside string literals, quoted identifiers and comments, as
/// `name()`, in order of first appearance.
pub(crate) fn volatile_calls(sql: &str) -> Vec<String> {
    let b = sql.as_bytes();
    let mut found: Vec<String> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 2;
            }
            b'\'' | b'"' => {
                i += 1;
                while i < b.len() {
                    if b[i] == c {
                        if b.get(i + 1) == Some(&c) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'$' if b.get(i + 1).is_some_and(|n| !n.is_ascii_digit()) => {
                // A dollar-quoted string: `$tag$ ... $tag$`.
                let tag_end = b[i + 1..].iter().position(|&x| x == b'$');
                match tag_end {
                    Some(n)
                        if b[i + 1..i + 1 + n]
                            .iter()
                            .all(|x| x.is_ascii_alphanumeric() || *x == b'_') =>
                    {
                        let tag = &sql[i..i + n + 2];
                        let body = i + n + 2;
                        i = sql[body..]
                            .find(tag)
                            .map_or(b.len(), |e| body + e + tag.len());
                    }
                    _ => i += 1,
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$')
                {
                    i += 1;
                }
                let word = sql[start..i].to_ascii_lowercase();
                let preceded_by_dot = sql[..start].trim_end().ends_with('.')
                    && !sql[..start].trim_end().ends_with("pg_catalog.");
                let called = sql[i..].trim_start().starts_with('(');
                let hit = (called && !preceded_by_dot && VOLATILE_CALLS.contains(&word.as_str()))
                    || CLOCK_KEYWORDS.contains(&word.as_str());
                let name = if CLOCK_KEYWORDS.contains(&word.as_str()) {
                    word.to_ascii_uppercase()
                } else {
                    format!("{word}()")
                };
                if hit && !found.contains(&name) {
                    found.push(name);
                }
            }
            _ => i += 1,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::volatile_calls;

    #[test]
    fn finds_clock_and_random_calls_outside_literals_and_comments() {
        assert_eq!(
            volatile_calls(
                "INSERT INTO t (id, at) SELECT id, now() FROM s WHERE id = $1 \
                 AND random () < 1 AND x < CURRENT_TIMESTAMP"
            ),
            ["now()", "random()", "CURRENT_TIMESTAMP"]
        );
        assert_eq!(
            volatile_calls(
                "SELECT 'now()', \"random\"(1), $$ clock_timestamp() $$ -- now()\n\
                 /* random() */ FROM s WHERE s.now = $1 AND x.random(2) AND pg_catalog.now() > 0"
            ),
            ["now()"]
        );
        assert!(volatile_calls("SELECT count(*) FROM comments WHERE post_id = $1").is_empty());
    }
}

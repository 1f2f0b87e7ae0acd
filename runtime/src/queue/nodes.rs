//! The flows running a slot's operators (`walflow.nodes`): a flow records
//! itself at start, keeps its row alive with a heartbeat and removes it
//! when it stops; the LSN fence ([`super::status::fence_reached`]) and
//! `walflow operator drop` read which operators the live ones declare
//! (rule 8 of the [protocol](super)).

use sqlx::{PgConnection, PgPool};

use super::status::NODE_LIVE_FOR;

/// Records a flow running `operators` on `slot` as a node of it, in `tx`,
/// and returns its id. Nodes of the slot whose heartbeat stopped long ago
/// (killed without shutting down) are removed.
pub(crate) async fn register(
    tx: &mut PgConnection,
    slot: &str,
    operators: &[&str],
) -> sqlx::Result<String> {
    sqlx::query(
        "DELETE FROM walflow.nodes
         WHERE slot = $1 AND heartbeat_at < now() - make_interval(secs => $2)",
    )
    .bind(slot)
    .bind(NODE_LIVE_FOR.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    sqlx::query_scalar(
        "INSERT INTO walflow.nodes (slot, operators) VALUES ($1, $2) RETURNING node::text",
    )
    .bind(slot)
    .bind(operators)
    .fetch_one(&mut *tx)
    .await
}

/// Records that node `node` of `slot` still runs `operators` (recording it
/// again should its row be gone: removed as stale after a long outage).
pub(crate) async fn heartbeat(
    pool: &PgPool,
    slot: &str,
    node: &str,
    operators: &[String],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO walflow.nodes (slot, node, operators) VALUES ($1, $2::uuid, $3)
             ON CONFLICT (slot, node) DO UPDATE SET heartbeat_at = now()",
    )
    .bind(slot)
    .bind(node)
    .bind(operators)
    .execute(pool)
    .await?;
    Ok(())
}

/// Removes node `node` of `slot`.
pub(crate) async fn deregister(pool: &PgPool, slot: &str, node: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM walflow.nodes WHERE slot = $1 AND node = $2::uuid")
        .bind(slot)
        .bind(node)
        .execute(pool)
        .await?;
    Ok(())
}

/// The operators the running flows of `slot` declare (a heartbeat within
/// [`NODE_LIVE_FOR`]), by name.
pub(crate) async fn running_operators(pool: &PgPool, slot: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT DISTINCT unnest(operators) FROM walflow.nodes
         WHERE slot = $1 AND heartbeat_at > now() - make_interval(secs => $2)
         ORDER BY 1",
    )
    .bind(slot)
    .bind(NODE_LIVE_FOR.as_secs_f64())
    .fetch_all(pool)
    .await
}

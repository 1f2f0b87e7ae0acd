//! The flow's side of `walflow.requests` (see [`crate::admin`]): the
//! operators it runs, recorded at start (in `walflow.operators`, and as a
//! node of the slot in `walflow.nodes`, kept alive by a heartbeat), and the
//! task that does what tools ask of it.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::watch;

use crate::admin::{REQUESTS_CHANNEL, RETRY_DEAD_LETTERS};
use crate::queue::Shared;

/// How often pending requests are looked for without a notification.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Replaces the slot's rows in `walflow.operators` with `operators`,
/// records this flow as a node of the slot (returning its id), and fails
/// the requests a previous holder of the slot left running (it stopped
/// before finishing them).
pub(crate) async fn register(
    pool: &PgPool,
    slot: &str,
    operators: &[&str],
) -> Result<String, sqlx::Error> {
    let mut tx = crate::queue::begin(pool).await?;
    sqlx::query("DELETE FROM walflow.operators WHERE slot = $1")
        .bind(slot)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO walflow.operators (slot, operator) SELECT $1, unnest($2::text[])")
        .bind(slot)
        .bind(operators)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE walflow.requests
         SET state = 'failed', finished_at = now(),
             error = 'the flow stopped before finishing it (' || done || ' of '
                     || coalesce(total::text, '?') || ' done); ask again'
         WHERE slot = $1 AND state = 'running'",
    )
    .bind(slot)
    .execute(&mut *tx)
    .await?;
    let node = crate::queue::nodes::register(&mut tx, slot, operators).await?;
    tx.commit().await?;
    Ok(node)
}

/// A request taken from the table.
#[derive(sqlx::FromRow)]
struct Request {
    id: i64,
    kind: String,
    operator: Option<String>,
    dead_letter_ids: Option<Vec<i64>>,
}

/// Until `stop`: keeps node `node` (from [`register`]) alive with its
/// heartbeat, and answers `walflow.requests`; then removes the node.
pub(crate) async fn watch(
    shared: Arc<Shared>,
    node: String,
    operators: Vec<String>,
    stop: watch::Receiver<bool>,
) {
    tokio::join!(
        super::nodes::heartbeat(&shared, &node, &operators, stop.clone()),
        answer(&shared, &operators, stop.clone()),
    );
    super::nodes::deregister(&shared, &node).await;
}

/// Watches `walflow.requests` for the flow's slot until `stop`: `LISTEN`
/// on [`REQUESTS_CHANNEL`] (on a connection of its own), and a poll every
/// second should a notification be missed or the connection be lost.
async fn answer(shared: &Arc<Shared>, operators: &[String], stop: watch::Receiver<bool>) {
    let listen_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with((*shared.pool.connect_options()).clone());
    let mut listener: Option<PgListener> = None;
    let mut stopping = stop.clone();
    loop {
        if *stop.borrow() {
            break;
        }
        if listener.is_none() {
            listener = tokio::select! {
                _ = stopping.wait_for(|s| *s) => break,
                l = listen(&listen_pool) => l,
            };
        }
        loop {
            let taken = tokio::select! {
                _ = stopping.wait_for(|s| *s) => break,
                taken = take(shared) => taken,
            };
            match taken {
                Ok(Some(request)) => run(shared, operators, &stop, request).await,
                Ok(None) => break,
                Err(e) => {
                    shared.note_error(&e);
                    tracing::warn!(slot = %shared.slot, error = %crate::pg_error::DbError(&e), "cannot read walflow.requests");
                    break;
                }
            }
        }
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(POLL_EVERY) => {}
            n = async {
                match listener.as_mut() {
                    Some(l) => l.try_recv().await,
                    None => std::future::pending().await,
                }
            } => {
                // `None`: the connection was lost; listen again.
                if !matches!(n, Ok(Some(_))) {
                    listener = None;
                }
            }
        }
    }
    drop(listener);
    listen_pool.close().await;
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut l = PgListener::connect_with(pool).await.ok()?;
    l.listen(REQUESTS_CHANNEL).await.ok()?;
    Some(l)
}

/// Takes the oldest pending request of the slot, if any.
async fn take(shared: &Shared) -> Result<Option<Request>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE walflow.requests SET state = 'running'
         WHERE id = (SELECT id FROM walflow.requests
                     WHERE slot = $1 AND state = 'pending'
                     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
           AND state = 'pending'
         RETURNING id, kind, operator, dead_letter_ids",
    )
    .bind(&shared.slot)
    .fetch_optional(&shared.pool)
    .await
}

/// Does `request` and records how it ended.
async fn run(
    shared: &Shared,
    operators: &[String],
    stop: &watch::Receiver<bool>,
    request: Request,
) {
    let id = request.id;
    let outcome = match request.kind.as_str() {
        RETRY_DEAD_LETTERS => retry(shared, operators, stop, &request).await,
        other => Err(format!("unknown request kind `{other}`")),
    };
    let (state, error) = match outcome {
        Ok(()) => ("done", None),
        Err(e) => ("failed", Some(e)),
    };
    if let Err(e) = sqlx::query(
        "UPDATE walflow.requests SET state = $2, error = $3, finished_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(&error)
    .execute(&shared.pool)
    .await
    {
        // The next start fails it as interrupted.
        tracing::warn!(request = id, error = %crate::pg_error::DbError(&e), "cannot record the end of a request");
    }
}

/// Retries the request's dead letters, counting them in `done`.
async fn retry(
    shared: &Shared,
    operators: &[String],
    stop: &watch::Receiver<bool>,
    request: &Request,
) -> Result<(), String> {
    let slot = &shared.slot;
    if let Some(op) = &request.operator
        && !operators.contains(op)
    {
        return Err(format!(
            "operator `{op}` does not run in the flow holding slot `{slot}`; its operators: {}",
            operators.join(", ")
        ));
    }
    let ids: Vec<i64> = match &request.dead_letter_ids {
        Some(ids) => {
            let found: Vec<i64> = crate::queue::admin::found_dead_letters(
                &shared.pool,
                slot,
                request.operator.as_deref(),
                ids,
            )
            .await
            .map_err(|e| format!("reading the dead letters: {}", crate::pg_error::DbError(&e)))?;
            let missing: Vec<String> = ids
                .iter()
                .filter(|i| !found.contains(i))
                .map(|i| i.to_string())
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "no dead letter {} on slot `{slot}`{}",
                    missing.join(", "),
                    request
                        .operator
                        .as_ref()
                        .map(|o| format!(" for operator `{o}`"))
                        .unwrap_or_default()
                ));
            }
            ids.clone()
        }
        None => crate::queue::admin::dead_letters_of(
            &shared.pool,
            slot,
            operators,
            request.operator.as_deref(),
        )
        .await
        .map_err(|e| format!("reading the dead letters: {}", crate::pg_error::DbError(&e)))?,
    };
    let progress = |done: i32, total: Option<i32>| {
        sqlx::query(
            "UPDATE walflow.requests SET done = $2, total = coalesce($3, total) WHERE id = $1",
        )
        .bind(request.id)
        .bind(done)
        .bind(total)
        .execute(&shared.pool)
    };
    let total = ids.len() as i32;
    progress(0, Some(total)).await.map_err(|e| {
        format!(
            "recording the request's progress: {}",
            crate::pg_error::DbError(&e)
        )
    })?;
    let mut done = 0;
    let mut gone = Vec::new();
    for id in ids {
        if *stop.borrow() {
            return Err(format!(
                "the flow shut down before finishing ({done} of {total} done); ask again"
            ));
        }
        match shared.store.retry_dead_letter(shared, id).await {
            Ok(true) => {}
            Ok(false) => gone.push(id.to_string()),
            Err(e) => {
                let e = match e {
                    crate::queue::store::StoreError::Sql(e) => e.to_string(),
                    crate::queue::store::StoreError::Unavailable(what) => what.to_owned(),
                };
                return Err(format!("retrying dead letter {id}: {e}"));
            }
        }
        done += 1;
        progress(done, None).await.map_err(|e| {
            format!(
                "recording the request's progress: {}",
                crate::pg_error::DbError(&e)
            )
        })?;
    }
    if !gone.is_empty() {
        return Err(format!(
            "dead letters {} were gone by the time they were retried \
             (discarded or retried meanwhile, or their operator does not run here)",
            gone.join(", ")
        ));
    }
    Ok(())
}

//! Carrying committed transactions to the hubs of every application node.
//!
//! The node holding the replication slot hands each committed transaction to
//! a [`Broadcast`]; the hubs receive it:
//!
//! - [`LocalPubSub`] (the default, one node): straight into the in-process hub.
//! - [`PgPubSub`] (several nodes): PostgreSQL `LISTEN`/`NOTIFY` on a channel.
//!   Every node, the one holding the slot included, runs
//!   [`PgPubSub::listen`] to feed its hub, so all nodes see the same changes
//!   in the same (commit) order. A payload too large for `NOTIFY` (8000
//!   bytes) is stored in `walflow.pubsub_payloads` and the notification
//!   carries its id; receivers fetch it. Notifications sent while a node's
//!   `LISTEN` connection is down are lost to that node (its subscribers can
//!   resume only from what its hub retained).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgListener;

use super::hub::Subscriptions;
use crate::lsn::Lsn;
use crate::raw::RawEvent;
use crate::registry::BoxFuture;

/// One committed transaction: its changes in order and its end LSN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    /// End of the commit record (`TxCommit::end_lsn`).
    pub end_lsn: Lsn,
    /// Its changes, in order.
    pub changes: Vec<Arc<RawEvent>>,
}

impl Transaction {
    /// Hands the transaction to a hub: every change, then the commit.
    pub fn publish_to(&self, hub: &Subscriptions) {
        for raw in &self.changes {
            hub.publish_arc(raw.clone());
        }
        hub.publish_commit(self.end_lsn);
    }
}

/// Why a transaction could not be broadcast or received.
#[derive(Debug, thiserror::Error)]
pub enum PubSubError {
    /// A database error (sending, listening, fetching a stored payload).
    #[error("pubsub: {0}")]
    Database(#[from] sqlx::Error),
    /// A payload did not encode or decode.
    #[error("pubsub: bad payload: {0}")]
    Payload(#[from] serde_json::Error),
    /// The channel name is not a plain identifier.
    #[error("pubsub: invalid channel name `{0}`; use lowercase letters, digits and `_`")]
    Channel(String),
}

/// Carries committed transactions to the subscription hubs. Called in
/// commit order, one transaction at a time.
pub trait Broadcast: Send + Sync + 'static {
    /// Sends one committed transaction.
    fn send<'a>(&'a self, tx: &'a Transaction) -> BoxFuture<'a, Result<(), PubSubError>>;
}

/// The in-process default: transactions go straight into one hub.
#[derive(Debug, Clone)]
pub struct LocalPubSub {
    hub: Subscriptions,
}

impl LocalPubSub {
    /// Feeds `hub`.
    pub fn new(hub: Subscriptions) -> Self {
        LocalPubSub { hub }
    }
}

impl Broadcast for LocalPubSub {
    fn send<'a>(&'a self, tx: &'a Transaction) -> BoxFuture<'a, Result<(), PubSubError>> {
        tx.publish_to(&self.hub);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Largest payload sent inline: `NOTIFY` payloads must be shorter than 8000
/// bytes.
pub const MAX_INLINE_PAYLOAD: usize = 7900;

/// `LISTEN`/`NOTIFY` on channel `channel` (default `walflow_events`).
#[derive(Debug, Clone)]
pub struct PgPubSub {
    pool: PgPool,
    channel: String,
    refs: Arc<AtomicU64>,
}

const INLINE: char = 'i';
const REFERENCE: char = 'r';

impl PgPubSub {
    /// The default channel.
    pub const DEFAULT_CHANNEL: &'static str = "walflow_events";

    /// Uses `pool` and the default channel; creates `walflow.pubsub_payloads`
    /// when missing.
    pub async fn new(pool: PgPool) -> Result<Self, PubSubError> {
        Self::with_channel(pool, Self::DEFAULT_CHANNEL).await
    }

    /// Uses `pool` and `channel`.
    pub async fn with_channel(
        pool: PgPool,
        channel: impl Into<String>,
    ) -> Result<Self, PubSubError> {
        let channel = channel.into();
        if channel.is_empty()
            || channel.len() > 63
            || !channel
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(PubSubError::Channel(channel));
        }
        let mut tx = pool.begin().await?;
        // Serializes concurrent installs (CREATE ... IF NOT EXISTS races).
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('walflow.pubsub_payloads'))")
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(
            "CREATE SCHEMA IF NOT EXISTS walflow;
             CREATE TABLE IF NOT EXISTS walflow.pubsub_payloads (
                 id bigserial PRIMARY KEY,
                 payload text NOT NULL,
                 created_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(PgPubSub {
            pool,
            channel,
            refs: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Starts listening (returns once `LISTEN` is in place), then feeds
    /// every transaction received into `hub`, in the order sent, until the
    /// returned task is aborted.
    pub async fn listen(
        &self,
        hub: Subscriptions,
    ) -> Result<tokio::task::JoinHandle<()>, PubSubError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(&self.channel).await?;
        let pool = self.pool.clone();
        Ok(tokio::spawn(async move {
            loop {
                let notification = match listener.recv().await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "pubsub: LISTEN connection lost; reconnecting (notifications in between are lost)");
                        // Backoff before the next attempt, so a server that
                        // is down does not make this loop spin.
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                };
                match decode(&pool, notification.payload()).await {
                    Ok(tx) => tx.publish_to(&hub),
                    Err(e) => tracing::error!(error = %e, "pubsub: dropped a transaction"),
                }
            }
        }))
    }
}

async fn decode(pool: &PgPool, payload: &str) -> Result<Transaction, PubSubError> {
    let mut chars = payload.chars();
    match chars.next() {
        Some(REFERENCE) => {
            let id: i64 = chars.as_str().parse().map_err(|_| {
                PubSubError::Payload(serde::de::Error::custom("bad payload reference"))
            })?;
            let (json,): (String,) =
                sqlx::query_as("SELECT payload FROM walflow.pubsub_payloads WHERE id = $1")
                    .bind(id)
                    .fetch_one(pool)
                    .await?;
            Ok(serde_json::from_str(&json)?)
        }
        _ => Ok(serde_json::from_str(chars.as_str())?),
    }
}

impl Broadcast for PgPubSub {
    fn send<'a>(&'a self, tx: &'a Transaction) -> BoxFuture<'a, Result<(), PubSubError>> {
        Box::pin(async move {
            let json = serde_json::to_string(tx)?;
            let payload = if json.len() < MAX_INLINE_PAYLOAD {
                format!("{INLINE}{json}")
            } else {
                let (id,): (i64,) = sqlx::query_as(
                    "INSERT INTO walflow.pubsub_payloads (payload) VALUES ($1) RETURNING id",
                )
                .bind(&json)
                .fetch_one(&self.pool)
                .await?;
                if self.refs.fetch_add(1, Ordering::Relaxed) % 100 == 99 {
                    sqlx::query(
                        "DELETE FROM walflow.pubsub_payloads WHERE created_at < now() - interval '1 hour'",
                    )
                    .execute(&self.pool)
                    .await?;
                }
                format!("{REFERENCE}{id}")
            };
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.channel)
                .bind(&payload)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }
}

// One file of this length: the sender and the receiver of one protocol (NOTIFY and its log), so the format is written in one place.
//! Carrying committed transactions to the hubs of every application node.
//!
//! The node holding the replication slot hands each committed transaction to
//! a [`Broadcast`]; the hubs receive it:
//!
//! - [`LocalPubSub`] (the default, one node): straight into the in-process hub.
//! - [`PgPubSub`] (several nodes): PostgreSQL `LISTEN`/`NOTIFY` on a channel,
//!   backed by a log table. The sender ([`Broadcast::send`]) records each
//!   transaction in `walflow.pubsub_log`, keyed by its end LSN, and notifies
//!   the channel in the same statement; every receiver
//!   ([`PgPubSub::listen`]) feeds its hub in the order sent.
//!
//! # Guarantees of [`PgPubSub`]
//!
//! - Every receiver publishes the same transactions in the same (commit)
//!   order, each once: a notification at or before the last end LSN it
//!   published is skipped.
//! - A payload too large for `NOTIFY` (8000 bytes) is not inlined: the
//!   notification names the transaction's end LSN and receivers read it from
//!   the log.
//! - No gap on reconnection: when a receiver's `LISTEN` connection is lost,
//!   it reconnects (with backoff), listens again, then reads from the log
//!   every transaction after the last one it published before taking
//!   notifications again. Transactions committed while it was away are
//!   published late, never skipped, never twice.
//! - The log keeps the latest [`LogRetention::transactions`] transactions
//!   and none older than [`LogRetention::max_age`] (the latest one is always
//!   kept). Each entry names the one sent before it, so a receiver away
//!   longer than that (or a sender that stopped before broadcasting
//!   transactions it had already handed on, see
//!   [`PgPubSub::resume_sending`]) sees the chain broken: it logs an error
//!   and calls [`Subscriptions::publish_gap`], so its subscriptions get a
//!   [`Lagged`](super::Lagged) with `lost` set and must reload their state.
//!   Nothing is skipped silently.
//! - One sender per channel: give each slot its own channel.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};

use super::hub::Subscriptions;
use crate::backoff::Backoff;
use crate::config::Config;
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
#[non_exhaustive]
pub enum PubSubError {
    /// A database error (sending, listening, reading the log).
    #[error("pubsub: {}", crate::pg_error::DbError(.0))]
    Database(#[from] sqlx::Error),
    /// A payload did not encode or decode.
    #[error("pubsub: bad payload: {0}")]
    Payload(#[from] serde_json::Error),
    /// The channel name is not a plain identifier.
    #[error("pubsub: invalid channel name `{0}`; use lowercase letters, digits and `_`")]
    Channel(String),
    /// The `LISTEN` connection was lost.
    #[error("pubsub: the LISTEN connection was lost")]
    ConnectionLost,
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

/// Largest notification sent: `NOTIFY` payloads must be shorter than 8000
/// bytes. A transaction that does not fit is read from the log by receivers.
pub const MAX_INLINE_PAYLOAD: usize = 7900;

/// How much of `walflow.pubsub_log` a [`PgPubSub`] sender keeps, for
/// receivers catching up after a reconnection. The latest transaction is
/// always kept, whatever its age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRetention {
    /// At most this many transactions (at least 1; default 100,000).
    pub transactions: usize,
    /// None older than this (default 1 hour).
    pub max_age: Duration,
}

impl Default for LogRetention {
    fn default() -> Self {
        LogRetention {
            transactions: 100_000,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// `LISTEN`/`NOTIFY` on channel `channel` (default `walflow_events`), with
/// the log `walflow.pubsub_log`; see the [module documentation](self).
///
/// Cheap to clone: clones share the sender's state.
#[derive(Debug, Clone)]
pub struct PgPubSub {
    pool: PgPool,
    channel: String,
    retention: LogRetention,
    backoff: Backoff,
    sender: Arc<tokio::sync::Mutex<SenderState>>,
}

/// What the sender knows of the log.
#[derive(Debug, Default)]
struct SenderState {
    /// End LSN of the latest transaction in the log (`None`: not read yet).
    prev: Option<Lsn>,
    /// End LSNs of the transactions kept, oldest first, with when they were
    /// logged.
    kept: VecDeque<(Lsn, Instant)>,
    /// Transactions at or before this end LSN are due for deletion.
    expired: Option<Lsn>,
    /// How many expired since the last deletion.
    expired_count: usize,
    last_prune: Option<Instant>,
}

/// A notification: `<end> <prev>[ <transaction JSON>]`, LSNs as integers.
/// Without the JSON, the transaction is in the log.
#[derive(Debug, PartialEq)]
struct Note<'a> {
    end: Lsn,
    prev: Lsn,
    body: Option<&'a str>,
}

impl<'a> Note<'a> {
    fn parse(payload: &'a str) -> Option<Self> {
        let mut parts = payload.splitn(3, ' ');
        let end = Lsn(parts.next()?.parse().ok()?);
        let prev = Lsn(parts.next()?.parse().ok()?);
        Some(Note {
            end,
            prev,
            body: parts.next(),
        })
    }

    /// The notification for a transaction whose JSON is `json`.
    fn format(end: Lsn, prev: Lsn, json: &str) -> String {
        let head = format!("{} {}", end.0, prev.0);
        if head.len() + 1 + json.len() <= MAX_INLINE_PAYLOAD {
            format!("{head} {json}")
        } else {
            head
        }
    }
}

impl PgPubSub {
    /// The default channel.
    pub const DEFAULT_CHANNEL: &'static str = "walflow_events";

    /// Uses `pool` and the default channel; creates `walflow.pubsub_log`
    /// when missing.
    pub async fn new(pool: PgPool) -> Result<Self, PubSubError> {
        Self::with_channel(pool, Self::DEFAULT_CHANNEL).await
    }

    /// Uses `pool` and `channel` (lower-case letters, digits and `_`);
    /// migrates the `walflow` schema (which holds `walflow.pubsub_log`)
    /// when it is not up to date.
    pub async fn with_channel(
        pool: PgPool,
        channel: impl Into<String>,
    ) -> Result<Self, PubSubError> {
        let channel = channel.into();
        if crate::config::validate_channel(&channel).is_err() {
            return Err(PubSubError::Channel(channel));
        }
        // `walflow.pubsub_log` is one of the versioned tables.
        crate::migrate::migrate(&pool).await?;
        let defaults = Config::default();
        Ok(PgPubSub {
            pool,
            channel,
            retention: LogRetention::default(),
            backoff: defaults.backoff(),
            sender: Arc::default(),
        })
    }

    /// Uses `pool` and the configuration's channel
    /// ([`pubsub_channel`](crate::config::ConfigBuilder::pubsub_channel)),
    /// log retention and reconnection backoff (`min_restart_time`,
    /// `backoff_multiplicator`, `max_restart_time`).
    pub async fn from_config(pool: PgPool, config: &Config) -> Result<Self, PubSubError> {
        let mut pubsub = Self::with_channel(pool, config.pubsub_channel()).await?;
        pubsub.retention = LogRetention {
            transactions: config.pubsub_retain_transactions(),
            max_age: config.pubsub_retain_for(),
        };
        pubsub.backoff = config.backoff();
        Ok(pubsub)
    }

    /// Keeps this much of the log when sending (default
    /// [`LogRetention::default`]).
    pub fn retention(mut self, retention: LogRetention) -> Self {
        self.retention = LogRetention {
            transactions: retention.transactions.max(1),
            ..retention
        };
        self
    }

    /// Waits `min`, doubling up to `max`, between reconnection attempts of
    /// [`listen`](Self::listen) (default 500 ms to 10 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = Backoff::new(min, 2.0, max);
        self
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The log's retention.
    pub fn log_retention(&self) -> LogRetention {
        self.retention
    }

    /// The end LSN of the latest transaction in the log for this channel.
    pub async fn latest(&self) -> Result<Option<Lsn>, PubSubError> {
        let max: Option<i64> =
            sqlx::query_scalar("SELECT max(end_lsn) FROM walflow.pubsub_log WHERE channel = $1")
                .bind(&self.channel)
                .fetch_one(&self.pool)
                .await?;
        Ok(max.map(|l| Lsn(l as u64)))
    }

    /// Prepares the sender before its first [`send`](Broadcast::send) (which
    /// otherwise does it with `handed_on = None`): reads what the log holds
    /// and prunes it.
    ///
    /// `handed_on` is the end of the last transaction this sender's source
    /// took responsibility for in an earlier run (a flow passes its slot's
    /// queued position: those transactions will not be delivered again).
    /// When the log does not reach it, the earlier run stopped before
    /// broadcasting some of them; they cannot be recovered, so the next
    /// transaction sent tells every receiver that it missed the transactions
    /// up to `handed_on` (see the [module documentation](self)).
    pub async fn resume_sending(&self, handed_on: Option<Lsn>) -> Result<(), PubSubError> {
        let mut state = self.sender.lock().await;
        self.load(&mut state, handed_on).await
    }

    async fn load(
        &self,
        state: &mut SenderState,
        handed_on: Option<Lsn>,
    ) -> Result<(), PubSubError> {
        let rows: Vec<(i64, f64)> = sqlx::query_as(
            "SELECT end_lsn, greatest(extract(epoch FROM now() - created_at), 0)::float8
             FROM walflow.pubsub_log WHERE channel = $1 ORDER BY end_lsn DESC LIMIT $2",
        )
        .bind(&self.channel)
        .bind(self.retention.transactions as i64)
        .fetch_all(&self.pool)
        .await?;
        let now = Instant::now();
        state.kept = rows
            .iter()
            .rev()
            .map(|(lsn, age)| {
                let at = now
                    .checked_sub(Duration::from_secs_f64(*age))
                    .unwrap_or(now);
                (Lsn(*lsn as u64), at)
            })
            .collect();
        let latest = state.kept.back().map(|(lsn, _)| *lsn);
        state.prev = Some(match (latest, handed_on) {
            (Some(latest), Some(handed_on)) if latest < handed_on => {
                tracing::error!(
                    channel = %self.channel,
                    logged = %latest,
                    handed_on = %handed_on,
                    "pubsub: transactions handed on in an earlier run were never broadcast; \
                     receivers will be told they missed them"
                );
                handed_on
            }
            (Some(latest), _) => latest,
            // An empty log: no receiver can have followed this channel.
            (None, _) => Lsn::ZERO,
        });
        if let Some((oldest, _)) = state.kept.front() {
            // Everything older than what was just read is beyond retention.
            state.expired = Some(Lsn(oldest.0.saturating_sub(1)));
            state.expired_count = 1;
        }
        self.prune(state, true).await;
        Ok(())
    }

    /// Drops what retention no longer keeps from `state.kept`, and deletes
    /// it from the log every so often (every time when `now`). A failure is
    /// only logged: the rows are deleted next time.
    async fn prune(&self, state: &mut SenderState, now: bool) {
        let at = Instant::now();
        while state.kept.len() > 1
            && (state.kept.len() > self.retention.transactions
                || state.kept.front().is_some_and(|(_, t)| {
                    at.saturating_duration_since(*t) > self.retention.max_age
                }))
        {
            let (lsn, _) = state.kept.pop_front().expect("not empty");
            state.expired = Some(lsn);
            state.expired_count += 1;
        }
        let Some(through) = state.expired else {
            return;
        };
        let batch = (self.retention.transactions / 16).clamp(1, 64);
        let due = now
            || state.expired_count >= batch
            || state
                .last_prune
                .is_none_or(|t| at.duration_since(t) >= Duration::from_secs(1));
        if !due {
            return;
        }
        let deleted =
            sqlx::query("DELETE FROM walflow.pubsub_log WHERE channel = $1 AND end_lsn <= $2")
                .bind(&self.channel)
                .bind(through.0 as i64)
                .execute(&self.pool)
                .await;
        match deleted {
            Ok(_) => {
                state.expired = None;
                state.expired_count = 0;
                state.last_prune = Some(at);
            }
            Err(e) => tracing::warn!(
                channel = %self.channel,
                error = %crate::pg_error::DbError(&e),
                "pubsub: pruning walflow.pubsub_log failed; retrying later"
            ),
        }
    }

    /// Logs and notifies one transaction (see [`Broadcast::send`]).
    async fn send_logged(&self, tx: &Transaction) -> Result<(), PubSubError> {
        let mut state = self.sender.lock().await;
        if state.prev.is_none() {
            self.load(&mut state, None).await?;
        }
        let prev = state.prev.unwrap_or(Lsn::ZERO);
        if tx.end_lsn <= prev {
            // Already in the log (delivered again after a restart).
            return Ok(());
        }
        let json = serde_json::to_string(tx)?;
        let note = Note::format(tx.end_lsn, prev, &json);
        // One statement, so one transaction: the notification goes out
        // exactly when the log row commits. A row already there (a retry
        // after a lost reply) sends nothing again.
        sqlx::query(
            "WITH logged AS (
                 INSERT INTO walflow.pubsub_log (channel, end_lsn, prev_end_lsn, payload)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING
                 RETURNING 1
             )
             SELECT pg_notify($1, $5), set_config('synchronous_commit', 'local', true) FROM logged",
        )
        .bind(&self.channel)
        .bind(tx.end_lsn.0 as i64)
        .bind(prev.0 as i64)
        .bind(&json)
        .bind(&note)
        .execute(&self.pool)
        .await?;
        state.prev = Some(tx.end_lsn);
        state.kept.push_back((tx.end_lsn, Instant::now()));
        self.prune(&mut state, false).await;
        Ok(())
    }

    /// Starts listening (returns once `LISTEN` is in place and the log read
    /// up to now), then feeds every transaction sent on the channel into
    /// `hub`, in the order sent, until the returned task is aborted.
    ///
    /// The hub receives the transactions after its
    /// [`processed`](Subscriptions::processed) position, or, for a hub that
    /// has published nothing, those sent from now on. The `LISTEN`
    /// connection is its own (not taken from `pool`), with the pool's
    /// connection options. When it is lost, the task reconnects with
    /// backoff and catches up from the log; see the
    /// [module documentation](self).
    pub async fn listen(
        &self,
        hub: Subscriptions,
    ) -> Result<tokio::task::JoinHandle<()>, PubSubError> {
        let options = (*self.pool.connect_options()).clone();
        // Two: a lost connection may still be handing its slot back.
        let listen_pool = PgPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options);
        let mut receiver = Receiver {
            pubsub: self.clone(),
            listen_pool,
            last: hub.processed(),
            hub,
        };
        let listener = receiver.connect().await?;
        Ok(tokio::spawn(receiver.run(listener)))
    }
}

impl Broadcast for PgPubSub {
    /// Records the transaction in `walflow.pubsub_log` and notifies the
    /// channel, in one statement. A transaction at or before the latest one
    /// logged is not sent again. Transactions that retention no longer keeps
    /// are deleted as later ones are sent.
    fn send<'a>(&'a self, tx: &'a Transaction) -> BoxFuture<'a, Result<(), PubSubError>> {
        Box::pin(self.send_logged(tx))
    }
}

/// The receiving side of [`PgPubSub::listen`].
struct Receiver {
    pubsub: PgPubSub,
    listen_pool: PgPool,
    hub: Subscriptions,
    /// End LSN of the last transaction published to the hub (`None`: start
    /// from the latest one in the log).
    last: Option<Lsn>,
}

impl Receiver {
    /// Listens, then publishes what the log holds after `last`: a
    /// transaction committed in between is in the log or notified (or
    /// both; it is published once).
    async fn connect(&mut self) -> Result<PgListener, PubSubError> {
        let mut listener = PgListener::connect_with(&self.listen_pool).await?;
        listener.listen(&self.pubsub.channel).await?;
        if self.last.is_none() {
            self.last = Some(self.pubsub.latest().await?.unwrap_or(Lsn::ZERO));
        }
        self.catch_up().await?;
        Ok(listener)
    }

    async fn run(mut self, mut listener: PgListener) {
        let mut failures = 0u32;
        loop {
            let outcome = match listener.try_recv().await {
                Ok(Some(n)) => self.receive(n.payload()).await,
                Ok(None) => Err(PubSubError::ConnectionLost),
                Err(e) => Err(e.into()),
            };
            match outcome {
                Ok(()) => failures = 0,
                Err(e) => {
                    tracing::warn!(
                        channel = %self.pubsub.channel,
                        error = %e,
                        "pubsub: lost the LISTEN connection or could not read a transaction; \
                         reconnecting, then catching up from walflow.pubsub_log"
                    );
                    drop(listener);
                    listener = loop {
                        if failures > 0 {
                            tokio::time::sleep(self.pubsub.backoff.delay(failures)).await;
                        }
                        failures += 1;
                        match self.connect().await {
                            Ok(l) => {
                                metrics::counter!(crate::telemetry::RECONNECTS, "connection" => "pubsub")
                                    .increment(1);
                                break l;
                            }
                            Err(e) => tracing::warn!(
                                channel = %self.pubsub.channel,
                                error = %e,
                                "pubsub: reconnecting failed; retrying"
                            ),
                        }
                    };
                }
            }
        }
    }

    fn last(&self) -> Lsn {
        self.last.unwrap_or(Lsn::ZERO)
    }

    async fn receive(&mut self, payload: &str) -> Result<(), PubSubError> {
        let Some(note) = Note::parse(payload) else {
            tracing::warn!(
                channel = %self.pubsub.channel,
                "pubsub: ignored a notification walflow did not send"
            );
            return Ok(());
        };
        if note.end <= self.last() {
            return Ok(());
        }
        if note.prev > self.last() {
            // Something was sent in between that this node did not get.
            return self.catch_up().await;
        }
        match note.body {
            Some(json) => self.publish(note.end, json),
            None => {
                let json: Option<String> = sqlx::query_scalar(
                    "SELECT payload FROM walflow.pubsub_log WHERE channel = $1 AND end_lsn = $2",
                )
                .bind(&self.pubsub.channel)
                .bind(note.end.0 as i64)
                .fetch_optional(&self.pubsub.pool)
                .await?;
                match json {
                    Some(json) => self.publish(note.end, &json),
                    // Already pruned: the catch-up reports the gap.
                    None => return self.catch_up().await,
                }
            }
        }
        Ok(())
    }

    /// Publishes the logged transactions after `last`, in order, reporting
    /// any break in the chain as a gap.
    async fn catch_up(&mut self) -> Result<(), PubSubError> {
        let pool = self.pubsub.pool.clone();
        let channel = self.pubsub.channel.clone();
        let mut rows = sqlx::query_as::<_, (i64, i64, String)>(
            "SELECT end_lsn, prev_end_lsn, payload FROM walflow.pubsub_log
             WHERE channel = $1 AND end_lsn > $2 ORDER BY end_lsn",
        )
        .bind(&channel)
        .bind(self.last().0 as i64)
        .fetch(&pool);
        while let Some((end, prev, json)) = rows.try_next().await? {
            let (end, prev) = (Lsn(end as u64), Lsn(prev as u64));
            if end <= self.last() {
                continue;
            }
            if prev > self.last() {
                tracing::error!(
                    channel = %self.pubsub.channel,
                    after = %self.last(),
                    through = %prev,
                    "pubsub: transactions are missing from walflow.pubsub_log (this node was \
                     away longer than its retention, or they were never broadcast); \
                     subscriptions are told to reload"
                );
                self.hub.publish_gap(prev);
                self.last = Some(prev);
            }
            self.publish(end, &json);
        }
        Ok(())
    }

    fn publish(&mut self, end: Lsn, json: &str) {
        match serde_json::from_str::<Transaction>(json) {
            Ok(tx) => tx.publish_to(&self.hub),
            Err(e) => {
                tracing::error!(
                    channel = %self.pubsub.channel,
                    end_lsn = %end,
                    error = %e,
                    "pubsub: unreadable transaction; subscriptions are told to reload"
                );
                self.hub.publish_gap(end);
            }
        }
        self.last = Some(end);
    }
}

#[cfg(test)]
mod tests;

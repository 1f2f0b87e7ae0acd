//! The context handed to operator handlers.

use std::sync::Arc;

use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use crate::event::Position;

type SharedTx = Arc<Mutex<Option<Transaction<'static, Postgres>>>>;

/// What a handler gets beside its event: which operator runs, the event's
/// position and a connection pool to the database the events come from.
///
/// Handlers run at least once: after a crash an event whose handler ran but
/// whose completion was not recorded runs again. Two ways to make that
/// harmless:
/// - pass the event's stable id ([`position`](Self::position), equal to
///   [`Event::id`](crate::Event::id)) as an idempotency key to what the
///   handler calls outside the database (an HTTP call, an email, a
///   payment);
/// - write through [`transaction`](Self::transaction): the runtime commits
///   that transaction together with the operator's progress, so the writes
///   and the event's completion happen exactly once, together.
#[derive(Debug, Clone)]
pub struct Ctx {
    operator: &'static str,
    position: Position,
    pool: sqlx::PgPool,
    tx: SharedTx,
}

impl Ctx {
    /// Built by the runtime for each handler call.
    #[doc(hidden)]
    pub fn new(operator: &'static str, position: Position, pool: sqlx::PgPool) -> Self {
        Ctx {
            operator,
            position,
            pool,
            tx: Arc::new(Mutex::new(None)),
        }
    }

    /// The stable id of the event being handled: equal to its
    /// [`Event::id`](crate::Event::id) (see there), the same on every run
    /// of the handler for this event, so usable as an idempotency key.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The name of the operator running.
    pub fn operator(&self) -> &'static str {
        self.operator
    }

    /// A pool of connections to the database the events come from.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }

    /// A connection inside a transaction that the runtime commits together
    /// with the operator's progress once the handler returns `Ok` (and rolls
    /// back if it fails or panics). Begun on first use; later calls in the
    /// same handler call return the same transaction.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn handler(ctx: walflow_runtime::ctx::Ctx) -> Result<(), sqlx::Error> {
    /// sqlx::query("INSERT INTO audit (pos) VALUES ($1)")
    ///     .bind(ctx.position().to_string())
    ///     .execute(&mut *ctx.transaction().await?)
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn transaction(&self) -> Result<MappedMutexGuard<'_, PgConnection>, sqlx::Error> {
        let mut guard = self.tx.lock().await;
        if guard.is_none() {
            *guard = Some(crate::queue::begin(&self.pool).await?);
        }
        Ok(MutexGuard::map(guard, |tx| {
            &mut **tx.as_mut().expect("begun above")
        }))
    }

    /// Takes the transaction begun by [`transaction`](Self::transaction), if
    /// any. Used by the runtime after the handler returned.
    #[doc(hidden)]
    pub(crate) async fn take_transaction(&self) -> Option<Transaction<'static, Postgres>> {
        self.tx.lock().await.take()
    }
}

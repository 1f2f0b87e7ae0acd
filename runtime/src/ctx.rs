//! The context handed to operator handlers.

use crate::event::Position;

/// What a handler gets beside its event: which operator runs, the event's
/// position and a connection pool to the database the events come from.
#[derive(Debug, Clone)]
pub struct Ctx {
    operator: &'static str,
    position: Position,
    pool: sqlx::PgPool,
}

impl Ctx {
    /// Built by the runtime for each handler call.
    #[doc(hidden)]
    pub fn new(operator: &'static str, position: Position, pool: sqlx::PgPool) -> Self {
        Ctx {
            operator,
            position,
            pool,
        }
    }

    /// The position of the event being handled: an idempotency key.
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
}

//! The execute stage: one supervised [`executor`] per operator takes its
//! queued rows ([`crate::queue`]), runs them in units (the operator's query,
//! with its parameters bound by [`bind`], or its handler), retries a failing
//! unit with the configured backoff and dead-letters it at last.

pub(crate) mod bind;
pub(crate) mod executor;

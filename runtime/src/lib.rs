//! Runtime of [walflow](https://docs.rs/walflow).
//!
//! A change goes through six stages, each with one owner:
//! listen ([`listener`]) → decode ([`decode`]) → dispatch (`dispatch`) →
//! queue (`queue`, whose rustdoc argues the protocol) → execute
//! (`operator`) → publish ([`subscribe`]). [`flow`] wires them;
//! [`config`], [`declare`] (what the macros speak of), [`registry`] (the
//! declarations collected), [`setup`] and [`preflight`] sit beside them,
//! and [`admin`] (what the `walflow` command reads and changes).
//! The modules import each other without cycles.
//!
//! Applications depend on the `walflow` facade crate, which re-exports this
//! crate together with the declaration macros.

#![doc(test(attr(deny(warnings))))]

pub mod admin;
pub mod backoff;
pub mod config;
#[doc(hidden)]
pub mod crash_point;
pub mod ctx;
pub mod declare;
#[doc(hidden)]
pub mod decode;
pub(crate) mod dispatch;
#[cfg(feature = "embedded")]
pub mod embedded;
pub(crate) mod error_logger;
pub mod event;
pub mod flow;
pub mod ident;
pub mod listener;
pub mod lsn;
pub mod migrate;
pub(crate) mod operator;
pub(crate) mod pg_error;
pub(crate) mod plan_check;
pub mod preflight;
pub(crate) mod queue;
pub mod raw;
pub mod registry;
pub mod report;
pub mod setup;
pub mod subscribe;
pub mod telemetry;
pub(crate) mod text;
pub mod value;

pub use config::{Config, ErrorLogger, FailureInfo, RetryInfo, TracingErrorLogger};
pub use ctx::Ctx;
pub use event::{Event, EventDecodeError, EventMeta, Position};
pub use flow::{DeadLetter, FlowError, Walflow, WalflowBuilder};
pub use lsn::Lsn;
pub use raw::{Change, Changes, ColumnType, EventKind, RawEvent};
pub use registry::{
    EventSource, Field, Registry, RegistryError, RegistryProblem, TableName, TableRef,
};
pub use report::Report;
pub use telemetry::{Health, HealthState};
pub use value::{Interval, InvalidValue, MaybeInfinite, Numeric, Record, RecordError, Value};

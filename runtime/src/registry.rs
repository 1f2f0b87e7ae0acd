//! The declared entities and operators.
//!
//! `#[event_source]` and `on_event!` submit an [`EntityRegistration`] or an
//! [`OperatorRegistration`] to [`inventory`]; [`Registry::from_inventory`]
//! collects them once at start-up and checks that they fit together.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;

use crate::ctx::Ctx;
pub use crate::declare::{BoxError, BoxFuture, EventSource, Field, Location, TableName, TableRef};
use crate::event::EventDecodeError;
use crate::raw::{EventKind, RawEvent};

/// The `fn` pointer an `on_event!` handler operator registers: decodes the raw
/// event into the type the handler takes, then calls the handler.
pub type HandlerFn = fn(&RawEvent, Ctx) -> BoxFuture<'static, Result<(), HandlerError>>;

/// Why a handler call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// The event did not decode into the type the handler takes (names the
    /// type, table and column). Retrying does not help.
    #[error(transparent)]
    Decode(#[from] EventDecodeError),
    /// The handler returned an error.
    #[error("the handler failed: {0}")]
    Handler(#[source] BoxError),
}

/// A table declared with `#[event_source]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntityRegistration {
    /// The Rust name of the struct.
    pub rust_name: &'static str,
    /// The table.
    pub table: TableRef,
    /// Column of the id field.
    pub id_column: &'static str,
    /// Columns read into the struct.
    pub columns: &'static [&'static str],
    /// Whether walflow sets `REPLICA IDENTITY FULL` on the table.
    pub replica_identity_full: bool,
    /// Where the struct is declared.
    pub location: Location,
}

impl EntityRegistration {
    /// The registration of an `#[event_source]` type declared at `location`.
    pub const fn of<T: EventSource>(location: Location) -> Self {
        EntityRegistration {
            rust_name: T::RUST_NAME,
            table: TableRef::of::<T>(),
            id_column: T::ID_COLUMN,
            columns: T::COLUMNS,
            replica_identity_full: T::REPLICA_IDENTITY_FULL,
            location,
        }
    }
}

/// The table an operator's query writes to (`for Target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetRef {
    /// The Rust name of the target struct.
    pub rust_name: &'static str,
    /// The target table.
    pub table: TableRef,
    /// Its id column: `delete_with` deletes `WHERE id_column = $1`.
    pub id_column: &'static str,
}

impl TargetRef {
    /// The target of an `#[event_source]` type.
    pub const fn of<T: EventSource>() -> Self {
        TargetRef {
            rust_name: T::RUST_NAME,
            table: TableRef::of::<T>(),
            id_column: T::ID_COLUMN,
        }
    }
}

/// Which column of an entity's table gives the operator's id (`$1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapping {
    /// The entity's table.
    pub table: TableRef,
    /// The column.
    pub column: &'static str,
}

/// What an operator runs for an event.
#[derive(Clone, Copy)]
pub enum OperatorAction {
    /// SQL run with the mapped id as `$1`.
    Query(&'static str),
    /// A Rust handler.
    Handler(HandlerFn),
}

impl fmt::Debug for OperatorAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OperatorAction::Query(sql) => f.debug_tuple("Query").field(sql).finish(),
            OperatorAction::Handler(_) => f.write_str("Handler(..)"),
        }
    }
}

/// An operator declared with `on_event!`.
#[derive(Debug, Clone, Copy)]
pub struct OperatorRegistration {
    /// The operator's name (its Rust name).
    pub name: &'static str,
    /// Where it is declared.
    pub location: Location,
    /// The table its query writes to (`for Target`).
    pub target: Option<TargetRef>,
    /// The kinds of events it runs on.
    pub events: &'static [EventKind],
    /// The tables it listens to.
    pub entities: &'static [TableRef],
    /// For every entity, the column that gives the id.
    pub id_mapping: &'static [IdMapping],
    /// Entities whose deletes delete the target row instead of running the
    /// query.
    pub delete_with: &'static [TableRef],
    /// The tables a handler declares it writes (`writes: [..]`), beside its
    /// target: [`Walflow::wait_processed`](crate::Walflow::wait_processed)
    /// waits through the operators listening to them.
    pub writes: &'static [TableRef],
    /// Whether pending events for one id may be merged into one query run.
    pub coalesce: bool,
    /// What it runs.
    pub action: OperatorAction,
}

impl OperatorRegistration {
    /// Whether the operator runs on a `kind` event of `table` (a
    /// [`TableRef`], or the table of a [`RawEvent`]).
    pub fn listens_to(&self, table: impl TableName, kind: EventKind) -> bool {
        self.events.contains(&kind) && self.listens_to_table(table)
    }

    /// Whether `table` is one of the operator's entities (whatever the
    /// kind of event).
    pub fn listens_to_table(&self, table: impl TableName) -> bool {
        self.entities.iter().any(|t| t.is(&table))
    }

    /// The id column for events of `table`.
    pub fn id_column(&self, table: impl TableName) -> Option<&'static str> {
        self.id_mapping
            .iter()
            .find(|m| m.table.is(&table))
            .map(|m| m.column)
    }

    /// Whether a delete of `table` deletes the target row.
    pub fn deletes_with(&self, table: impl TableName) -> bool {
        self.delete_with.iter().any(|t| t.is(&table))
    }

    /// The tables the operator writes, as far as walflow knows: its target
    /// and the tables it declares in `writes`.
    pub fn written_tables(&self) -> impl Iterator<Item = TableRef> + '_ {
        self.target
            .map(|t| t.table)
            .into_iter()
            .chain(self.writes.iter().copied())
    }

    /// Whether `down` listens to a table this operator writes: the events
    /// of this operator's writes are `down`'s.
    pub fn feeds(&self, down: &OperatorRegistration) -> bool {
        self.written_tables().any(|t| down.listens_to_table(t))
    }
}

/// The number of levels of the longest chain of `ops`: an operator that
/// listens to a table another writes (its target, or a table a handler
/// declares in `writes`) is one level below it; a cycle counts each
/// operator once.
pub(crate) fn chain_depth(ops: &[&OperatorRegistration]) -> usize {
    let mut level = vec![1usize; ops.len()];
    // Longest paths by relaxation; more rounds than operators only repeat
    // a cycle.
    for _ in 0..ops.len() {
        let mut changed = false;
        for (i, down) in ops.iter().enumerate() {
            for (j, up) in ops.iter().enumerate() {
                if i != j && up.feeds(down) && level[j] + 1 > level[i] && level[j] < ops.len() {
                    level[i] = level[j] + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    level.into_iter().max().unwrap_or(1)
}

inventory::collect!(EntityRegistration);
inventory::collect!(OperatorRegistration);

/// One way the declarations do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryProblem {
    /// Two `#[event_source]` structs name one table.
    #[error(
        "table `{table}` is declared twice: by `{first}` ({first_at}) and by `{second}` ({second_at}); \
         keep one `#[event_source]` per table"
    )]
    DuplicateTable {
        /// The table.
        table: TableRef,
        /// The first struct.
        first: &'static str,
        /// Where it is declared.
        first_at: Location,
        /// The second struct.
        second: &'static str,
        /// Where it is declared.
        second_at: Location,
    },
    /// Two operators have one name.
    #[error(
        "two operators are named `{name}`: in `{}` ({first_at}) and in `{}` ({second_at}); rename one",
        first_at.module_path,
        second_at.module_path
    )]
    DuplicateOperator {
        /// The name.
        name: &'static str,
        /// Where the first is declared.
        first_at: Location,
        /// Where the second is declared.
        second_at: Location,
    },
    /// A query operator listens to its own target: its writes would trigger
    /// it again.
    #[error(
        "operator `{operator}` ({operator_at}) writes to `{table}` (`{target}`, {target_at}) and also listens to it, \
         so each run would trigger another; remove `{target}` from its `entities`"
    )]
    Loop {
        /// The operator.
        operator: &'static str,
        /// Where it is declared.
        operator_at: Location,
        /// The target struct.
        target: &'static str,
        /// The target table.
        table: TableRef,
        /// Where the target is declared (the operator's location when the
        /// target is not registered).
        target_at: Location,
    },
    /// An operator names a table no `#[event_source]` declares.
    #[error(
        "operator `{operator}` ({operator_at}) uses table `{table}`, which no `#[event_source]` declares; \
         declare it or remove it from the operator"
    )]
    UnknownTable {
        /// The operator.
        operator: &'static str,
        /// Where it is declared.
        operator_at: Location,
        /// The table.
        table: TableRef,
    },
}

/// The declarations do not fit together; lists every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct RegistryError {
    /// The problems, in a stable order.
    pub problems: Vec<RegistryProblem>,
}

/// Every declared entity and operator, checked and sorted (by table and by
/// operator name), so its contents do not depend on link order.
#[derive(Debug, Clone)]
pub struct Registry {
    entities: BTreeMap<TableRef, &'static EntityRegistration>,
    operators: BTreeMap<&'static str, &'static OperatorRegistration>,
}

impl Registry {
    /// Collects the registrations submitted by the macros in every linked
    /// crate.
    pub fn from_inventory() -> Result<Registry, RegistryError> {
        Registry::new(
            inventory::iter::<EntityRegistration>(),
            inventory::iter::<OperatorRegistration>(),
        )
    }

    /// The registry of this program, collected from inventory on first use
    /// and kept for its lifetime.
    pub fn global() -> Result<&'static Registry, RegistryError> {
        static REGISTRY: std::sync::OnceLock<Result<Registry, RegistryError>> =
            std::sync::OnceLock::new();
        REGISTRY
            .get_or_init(Registry::from_inventory)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Builds a registry from the given registrations, checking them.
    pub fn new(
        entities: impl IntoIterator<Item = &'static EntityRegistration>,
        operators: impl IntoIterator<Item = &'static OperatorRegistration>,
    ) -> Result<Registry, RegistryError> {
        let mut problems = Vec::new();

        let mut entities: Vec<_> = entities.into_iter().collect();
        entities.sort_by_key(|e| (e.table, e.location, e.rust_name));
        let mut by_table = BTreeMap::new();
        for e in entities {
            if let Some(first) = by_table.get(&e.table) {
                let first: &&EntityRegistration = first;
                problems.push(RegistryProblem::DuplicateTable {
                    table: e.table,
                    first: first.rust_name,
                    first_at: first.location,
                    second: e.rust_name,
                    second_at: e.location,
                });
            } else {
                by_table.insert(e.table, e);
            }
        }

        let mut operators: Vec<_> = operators.into_iter().collect();
        operators.sort_by_key(|o| (o.name, o.location));
        let mut by_name = BTreeMap::new();
        for o in operators {
            if let Some(first) = by_name.get(o.name) {
                let first: &&OperatorRegistration = first;
                problems.push(RegistryProblem::DuplicateOperator {
                    name: o.name,
                    first_at: first.location,
                    second_at: o.location,
                });
                continue;
            }
            by_name.insert(o.name, o);

            let mut tables: Vec<TableRef> = o.entities.to_vec();
            tables.extend(o.delete_with);
            tables.extend(o.id_mapping.iter().map(|m| m.table));
            tables.extend(o.written_tables());
            tables.sort();
            tables.dedup();
            for table in tables {
                if !by_table.contains_key(&table) {
                    problems.push(RegistryProblem::UnknownTable {
                        operator: o.name,
                        operator_at: o.location,
                        table,
                    });
                }
            }

            if let (Some(target), OperatorAction::Query(_)) = (o.target, o.action)
                && o.entities.contains(&target.table)
            {
                problems.push(RegistryProblem::Loop {
                    operator: o.name,
                    operator_at: o.location,
                    target: target.rust_name,
                    table: target.table,
                    target_at: by_table
                        .get(&target.table)
                        .map_or(o.location, |e| e.location),
                });
            }
        }

        if problems.is_empty() {
            Ok(Registry {
                entities: by_table,
                operators: by_name,
            })
        } else {
            Err(RegistryError { problems })
        }
    }

    /// The entities, by table.
    pub fn entities(&self) -> impl Iterator<Item = &'static EntityRegistration> + '_ {
        self.entities.values().copied()
    }

    /// The operators, by name.
    pub fn operators(&self) -> impl Iterator<Item = &'static OperatorRegistration> + '_ {
        self.operators.values().copied()
    }

    /// The entity declared for a table.
    pub fn entity(&self, schema: &str, table: &str) -> Option<&'static EntityRegistration> {
        self.entities
            .values()
            .copied()
            .find(|e| e.table.schema == schema && e.table.table == table)
    }

    /// The entity a raw event belongs to.
    pub fn entity_of(&self, raw: &RawEvent) -> Option<&'static EntityRegistration> {
        self.entity(&raw.schema, &raw.table)
    }

    /// The operator with this name.
    pub fn operator(&self, name: &str) -> Option<&'static OperatorRegistration> {
        self.operators.get(name).copied()
    }

    /// The operators that run on a `kind` event of `schema.table`, by name.
    pub fn operators_for<'a>(
        &'a self,
        schema: &'a str,
        table: &'a str,
        kind: EventKind,
    ) -> impl Iterator<Item = &'static OperatorRegistration> + 'a {
        self.operators.values().copied().filter(move |o| {
            o.events.contains(&kind)
                && o.entities
                    .iter()
                    .any(|t| t.schema == schema && t.table == table)
        })
    }

    /// The tables to publish: every declared entity's, sorted.
    pub fn tables(&self) -> Vec<TableRef> {
        self.entities.keys().copied().collect()
    }

    /// The tables walflow sets `REPLICA IDENTITY FULL` on: every entity's
    /// but those declared with `replica_identity = "default"`, sorted.
    pub fn replica_identity_full_tables(&self) -> Vec<TableRef> {
        self.entities
            .values()
            .filter(|e| e.replica_identity_full)
            .map(|e| e.table)
            .collect()
    }
}

/// Helpers for the code the macros generate. Not part of the API.
#[doc(hidden)]
pub mod support {
    use super::*;
    use crate::event::{Carries, FromRawEvent};

    /// The column of `field` in `fields` (the field's own name when absent).
    pub const fn column_of(
        fields: &'static [(&'static str, &'static str)],
        field: &'static str,
    ) -> &'static str {
        let mut i = 0;
        while i < fields.len() {
            if str_eq(fields[i].0, field) {
                return fields[i].1;
            }
            i += 1;
        }
        field
    }

    const fn str_eq(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Compiles only when both arguments have one type.
    pub fn same_type<T: ?Sized>(_: &T, _: &T) {}

    /// Compiles only when `T` derives `serde::Deserialize`.
    pub fn assert_deserialize<T: DeserializeOwned>() {}

    /// Compiles only when `E` carries the events of `T`.
    pub fn assert_carries<T, E: Carries<T>>(_: PhantomData<E>) {}

    /// Decodes the raw event into what `handler` takes and calls it. Also
    /// returns the type the handler takes, for `assert_carries`.
    pub fn call_handler<F, E, Fut, Er>(
        handler: F,
        raw: &RawEvent,
        ctx: Ctx,
    ) -> (BoxFuture<'static, Result<(), HandlerError>>, PhantomData<E>)
    where
        F: FnOnce(E, Ctx) -> Fut,
        E: FromRawEvent,
        Fut: Future<Output = Result<(), Er>> + Send + 'static,
        Er: Into<BoxError>,
    {
        let future: BoxFuture<'static, _> = match E::from_raw_event(raw) {
            Ok(event) => {
                let fut = handler(event, ctx);
                Box::pin(async move { fut.await.map_err(|e| HandlerError::Handler(e.into())) })
            }
            Err(e) => Box::pin(std::future::ready(Err(HandlerError::Decode(e)))),
        };
        (future, PhantomData)
    }
}

#[cfg(test)]
mod tests;

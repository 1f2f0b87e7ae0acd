//! The names the macros read, in one place.

/// Keys of `#[event_source(...)]`.
pub const TABLE: &str = "table";
pub const SCHEMA: &str = "schema";
pub const ID: &str = "id";
pub const REPLICA_IDENTITY: &str = "replica_identity";
/// The path walflow is reached through (also in `on_event!` and
/// `#[event_enum]`).
pub const CRATE: &str = "crate";
pub const EVENT_SOURCE_KEYS: &[&str] = &[TABLE, SCHEMA, ID, REPLICA_IDENTITY, CRATE];

/// Values of `replica_identity`.
pub const REPLICA_IDENTITY_FULL: &str = "full";
pub const REPLICA_IDENTITY_DEFAULT: &str = "default";

/// The default schema and id field.
pub const DEFAULT_SCHEMA: &str = "public";
pub const DEFAULT_ID: &str = "id";

/// `serde` attributes that change which column a field reads.
pub const SERDE: &str = "serde";
pub const RENAME: &str = "rename";
pub const RENAME_ALL: &str = "rename_all";
pub const DESERIALIZE: &str = "deserialize";
pub const SKIP: &str = "skip";
pub const SKIP_DESERIALIZING: &str = "skip_deserializing";
pub const FLATTEN: &str = "flatten";

/// `on_event!` words.
pub const OPERATOR: &str = "operator";
pub const EVENTS: &str = "events";
pub const ENTITIES: &str = "entities";
pub const DELETE_WITH: &str = "delete_with";
pub const COALESCE: &str = "coalesce";
pub const QUERY: &str = "query";
pub const HANDLER: &str = "handler";
pub const WRITES: &str = "writes";
pub const OPERATOR_KEYS: &[&str] = &[
    EVENTS,
    ENTITIES,
    ID,
    DELETE_WITH,
    COALESCE,
    QUERY,
    HANDLER,
    WRITES,
];

/// The only attribute allowed on an operator.
pub const DOC: &str = "doc";

/// The type each `#[event_enum]` variant holds.
pub const EVENT: &str = "Event";

/// Event kinds, and `all` (every kind but `truncate`).
pub const ALL: &str = "all";
pub const INSERT: &str = "insert";
pub const UPDATE: &str = "update";
pub const DELETE: &str = "delete";
pub const TRUNCATE: &str = "truncate";
pub const EVENT_KINDS: &[&str] = &[INSERT, UPDATE, DELETE, TRUNCATE];

/// `` `a`, `b`, `c` `` for error messages.
pub fn one_of(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("`{w}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

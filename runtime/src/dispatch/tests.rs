//! Unit tests of `dispatch`.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::*;
use crate::declare::{Location, TableRef};
use crate::lsn::Lsn;
use crate::registry::{IdMapping, TargetRef};

const POSTS: TableRef = TableRef {
    schema: "public",
    table: "posts",
};
const COMMENTS: TableRef = TableRef {
    schema: "public",
    table: "comments",
};
const LOC: Location = Location {
    module_path: "tests",
    file: "tests.rs",
    line: 1,
};
const ALL: &[EventKind] = &[EventKind::Insert, EventKind::Update, EventKind::Delete];

/// Posts by `id` (deleting the derived row), comments by `post_id`.
static COUNTS: OperatorRegistration = OperatorRegistration {
    name: "Counts",
    location: LOC,
    target: Some(TargetRef {
        rust_name: "Count",
        table: TableRef {
            schema: "public",
            table: "counts",
        },
        id_column: "id",
    }),
    events: ALL,
    entities: &[COMMENTS, POSTS],
    id_mapping: &[
        IdMapping {
            table: COMMENTS,
            column: "post_id",
        },
        IdMapping {
            table: POSTS,
            column: "id",
        },
    ],
    delete_with: &[POSTS],
    writes: &[],
    coalesce: true,
    action: OperatorAction::Query("SELECT $1"),
};

/// A handler on comments' inserts and updates only.
static AUDIT: OperatorRegistration = OperatorRegistration {
    name: "Audit",
    location: LOC,
    target: None,
    events: &[EventKind::Insert, EventKind::Update],
    entities: &[COMMENTS],
    id_mapping: &[IdMapping {
        table: COMMENTS,
        column: "post_id",
    }],
    delete_with: &[],
    writes: &[],
    coalesce: false,
    action: OperatorAction::Handler(|_, _| Box::pin(async { Ok(()) })),
};

/// `(name, part of the replica identity)`.
fn columns(cols: &[(&str, bool)]) -> Arc<[ColumnType]> {
    cols.iter()
        .map(|(name, key)| ColumnType {
            name: Arc::from(*name),
            type_oid: 20,
            type_modifier: -1,
            key: *key,
        })
        .collect()
}

fn record(cols: &[(&str, i64)]) -> Record {
    Record::new(
        cols.iter().map(|(n, _)| Arc::from(*n)).collect(),
        cols.iter().map(|(_, v)| Value::Int8(*v)).collect(),
    )
}

fn event(
    table: &str,
    kind: EventKind,
    columns: &Arc<[ColumnType]>,
    new: Option<Record>,
    old: Option<Record>,
) -> Arc<RawEvent> {
    Arc::new(RawEvent {
        schema: "public".into(),
        table: table.into(),
        kind,
        new,
        old,
        changes: None,
        columns: columns.clone(),
        lsn: Lsn(1),
        commit_lsn: Lsn(2),
        commit_time: DateTime::<Utc>::UNIX_EPOCH,
        xid: 3,
        seq: 0,
    })
}

fn run(raw: &Arc<RawEvent>) -> Batch {
    let mut batch = Batch::default();
    dispatch(raw, &[&AUDIT, &COUNTS], "updated_at", &mut batch);
    batch
}

fn rows(batch: &Batch) -> Vec<(&str, i16, &str, EventKind)> {
    batch
        .rows
        .iter()
        .map(|r| (r.operator, r.part, r.id.as_str(), r.kind))
        .collect()
}

#[test]
fn the_old_id_of_a_delete_with_entity_is_a_delete_of_it() {
    let full = columns(&[("id", true), ("title", true)]);
    let moved = event(
        "posts",
        EventKind::Update,
        &full,
        Some(record(&[("id", 7), ("title", 0)])),
        Some(record(&[("id", 5), ("title", 0)])),
    );
    assert_eq!(
        rows(&run(&moved)),
        vec![
            ("Counts", 0, r#"{"Int8":7}"#, EventKind::Update),
            ("Counts", 1, r#"{"Int8":5}"#, EventKind::Delete),
        ]
    );
    // Not a `delete_with` entity: the old id is recomputed.
    let full = columns(&[("id", true), ("post_id", true)]);
    let moved = event(
        "comments",
        EventKind::Update,
        &full,
        Some(record(&[("id", 1), ("post_id", 7)])),
        Some(record(&[("id", 1), ("post_id", 5)])),
    );
    let batch = run(&moved);
    assert_eq!(
        rows(&batch)[1..],
        [
            ("Counts", 0, r#"{"Int8":7}"#, EventKind::Update),
            ("Counts", 1, r#"{"Int8":5}"#, EventKind::Update),
        ]
    );
    assert!(batch.refused.is_empty());
}

#[test]
fn events_without_the_old_row_they_need_are_refused_with_the_reason() {
    // REPLICA IDENTITY DEFAULT: old rows carry `id` only.
    let default = columns(&[("id", true), ("post_id", false)]);
    // An update: no old row at all (the key did not change).
    let update = event(
        "comments",
        EventKind::Update,
        &default,
        Some(record(&[("id", 1), ("post_id", 7)])),
        None,
    );
    let batch = run(&update);
    // The new id runs; the handler needs no old row.
    assert_eq!(
        rows(&batch),
        vec![
            ("Audit", 0, r#"{"Int8":7}"#, EventKind::Update),
            ("Counts", 0, r#"{"Int8":7}"#, EventKind::Update),
        ]
    );
    let [r] = &batch.refused[..] else {
        panic!("{:?}", batch.refused)
    };
    assert_eq!((r.operator, r.part, r.id.as_str()), ("Counts", 1, "null"));
    assert_eq!(r.kind, EventKind::Update);
    for part in [
        "update of `public.comments` (the row with id = 1)",
        "old `post_id`",
        "operator `Counts`",
        "REPLICA IDENTITY DEFAULT or USING INDEX: old rows carry `id` only",
        r#"run `ALTER TABLE "public"."comments" REPLICA IDENTITY FULL`"#,
    ] {
        assert!(r.reason.contains(part), "{part:?} not in {}", r.reason);
    }

    // A delete: the key only.
    let delete = event(
        "comments",
        EventKind::Delete,
        &default,
        None,
        Some(record(&[("id", 1)])),
    );
    let batch = run(&delete);
    assert!(batch.rows.is_empty());
    let [r] = &batch.refused[..] else {
        panic!("{:?}", batch.refused)
    };
    assert_eq!(
        (r.operator, r.part, r.kind),
        ("Counts", 0, EventKind::Delete)
    );
    assert!(
        r.reason.contains(
            "delete of `public.comments` (the row with id = 1) does not carry its `post_id`"
        ),
        "{}",
        r.reason
    );

    // Mapped by the key, the default identity is enough.
    let default = columns(&[("id", true), ("title", false)]);
    for ev in [
        event(
            "posts",
            EventKind::Update,
            &default,
            Some(record(&[("id", 5), ("title", 1)])),
            None,
        ),
        event(
            "posts",
            EventKind::Delete,
            &default,
            None,
            Some(record(&[("id", 5)])),
        ),
    ] {
        let batch = run(&ev);
        assert!(batch.refused.is_empty(), "{:?}", batch.refused);
        assert_eq!(batch.rows.len(), 1);
    }
}

#[test]
fn the_identity_watch_speaks_when_what_can_be_followed_changes() {
    let ops: &[&'static OperatorRegistration] = &[&AUDIT, &COUNTS];
    let mut watch = IdentityWatch::default();
    let insert = |cols: &Arc<[ColumnType]>| {
        event(
            "comments",
            EventKind::Insert,
            cols,
            Some(record(&[("id", 1), ("post_id", 7)])),
            None,
        )
    };
    let full = columns(&[("id", true), ("post_id", true)]);
    assert_eq!(
        watch.check(&insert(&full), ops),
        None,
        "fine from the start"
    );
    assert_eq!(watch.check(&insert(&full), ops), None);

    let default = columns(&[("id", true), ("post_id", false)]);
    let v = watch.check(&insert(&default), ops).expect("a verdict");
    assert_eq!(v.table, "public.comments");
    let problem = v.problem.expect("a problem");
    assert!(
        problem.contains("does not carry `post_id` (operator `Counts`)"),
        "{problem}"
    );
    assert!(
        problem.contains(r#"ALTER TABLE "public"."comments" REPLICA IDENTITY FULL"#),
        "{problem}"
    );
    // Said once per announcement, and not again for the same identity.
    assert_eq!(watch.check(&insert(&default), ops), None);
    let again = columns(&[("id", true), ("post_id", false)]);
    assert_eq!(watch.check(&insert(&again), ops), None);

    let full = columns(&[("id", true), ("post_id", true)]);
    let v = watch.check(&insert(&full), ops).expect("restored");
    assert_eq!(v.problem, None);
    // One set of columns kept per table.
    assert_eq!(watch.tables.len(), 1);
    assert_eq!(watch.seen.len(), 1);
}

#[test]
fn what_an_operator_needs_of_the_old_row() {
    assert_eq!(old_row_column(&COUNTS, COMMENTS), Some("post_id"));
    assert_eq!(old_row_column(&COUNTS, POSTS), Some("id"));
    // A handler follows no moves, and this one runs on no delete.
    assert_eq!(old_row_column(&AUDIT, COMMENTS), None);
    assert_eq!(old_row_column(&AUDIT, POSTS), None);
}

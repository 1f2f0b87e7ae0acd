//! Unit tests of `registry`.

use super::*;

const fn loc(module_path: &'static str, line: u32) -> Location {
    Location {
        module_path,
        file: "src/lib.rs",
        line,
    }
}

const fn table(name: &'static str) -> TableRef {
    TableRef {
        schema: "public",
        table: name,
    }
}

const fn entity(rust_name: &'static str, t: &'static str, line: u32) -> EntityRegistration {
    EntityRegistration {
        rust_name,
        table: table(t),
        id_column: "id",
        columns: &["id"],
        replica_identity_full: true,
        location: loc("app", line),
    }
}

const fn operator(
    name: &'static str,
    line: u32,
    target: Option<TargetRef>,
    entities: &'static [TableRef],
    action: OperatorAction,
) -> OperatorRegistration {
    OperatorRegistration {
        name,
        location: loc("app::ops", line),
        target,
        events: &[EventKind::Insert, EventKind::Update, EventKind::Delete],
        entities,
        id_mapping: &[],
        delete_with: &[],
        writes: &[],
        coalesce: false,
        action,
    }
}

static POSTS: EntityRegistration = entity("Post", "posts", 1);
static COMMENTS: EntityRegistration = entity("Comment", "comments", 2);
static COUNTS: EntityRegistration = entity("Count", "counts", 3);
static POSTS_AGAIN: EntityRegistration = entity("PostRow", "posts", 9);

const COUNT_TARGET: TargetRef = TargetRef {
    rust_name: "Count",
    table: table("counts"),
    id_column: "id",
};

fn handler(_: &RawEvent, _: Ctx) -> BoxFuture<'static, Result<(), HandlerError>> {
    Box::pin(async { Ok(()) })
}

static COUNT_OP: OperatorRegistration = operator(
    "Count",
    10,
    Some(COUNT_TARGET),
    &[table("posts"), table("comments")],
    OperatorAction::Query("select $1"),
);
static AUDIT: OperatorRegistration = operator(
    "Audit",
    20,
    None,
    &[table("comments")],
    OperatorAction::Handler(handler),
);
static AUDIT_AGAIN: OperatorRegistration = operator(
    "Audit",
    30,
    None,
    &[table("posts")],
    OperatorAction::Handler(handler),
);
static LOOP: OperatorRegistration = operator(
    "Loop",
    40,
    Some(COUNT_TARGET),
    &[table("counts")],
    OperatorAction::Query("select $1"),
);
static HANDLER_ON_TARGET: OperatorRegistration = operator(
    "Touch",
    50,
    Some(COUNT_TARGET),
    &[table("counts")],
    OperatorAction::Handler(handler),
);
static UNKNOWN: OperatorRegistration = operator(
    "Ghost",
    60,
    None,
    &[table("ghosts")],
    OperatorAction::Handler(handler),
);

#[test]
fn builds_sorted_lookups() {
    let registry = Registry::new(
        [&COUNTS, &POSTS, &COMMENTS],
        [&COUNT_OP, &AUDIT, &HANDLER_ON_TARGET],
    )
    .unwrap();
    let names: Vec<_> = registry.operators().map(|o| o.name).collect();
    assert_eq!(names, ["Audit", "Count", "Touch"]);
    let tables: Vec<_> = registry.tables().iter().map(|t| t.table).collect();
    assert_eq!(tables, ["comments", "counts", "posts"]);
    assert_eq!(registry.replica_identity_full_tables().len(), 3);
    assert_eq!(
        registry.entity("public", "posts").unwrap().rust_name,
        "Post"
    );
    assert!(registry.entity("other", "posts").is_none());
    let on_comment_insert: Vec<_> = registry
        .operators_for("public", "comments", EventKind::Insert)
        .map(|o| o.name)
        .collect();
    assert_eq!(on_comment_insert, ["Audit", "Count"]);
    assert_eq!(
        registry
            .operators_for("public", "comments", EventKind::Truncate)
            .count(),
        0
    );
    assert_eq!(
        registry.operator("Count").unwrap().target,
        Some(COUNT_TARGET)
    );
}

#[test]
fn order_of_submission_does_not_matter() {
    let a = Registry::new([&POSTS, &COMMENTS, &COUNTS], [&AUDIT, &COUNT_OP]);
    let b = Registry::new([&COUNTS, &COMMENTS, &POSTS], [&COUNT_OP, &AUDIT]);
    let names = |r: &Registry| r.operators().map(|o| o.name).collect::<Vec<_>>();
    assert_eq!(names(&a.unwrap()), names(&b.unwrap()));
    let e1 = Registry::new([&POSTS_AGAIN, &POSTS], []).unwrap_err();
    let e2 = Registry::new([&POSTS, &POSTS_AGAIN], []).unwrap_err();
    assert_eq!(e1, e2);
}

#[test]
fn table_declared_twice() {
    let err = Registry::new([&POSTS, &POSTS_AGAIN], []).unwrap_err();
    assert_eq!(
        err.problems,
        [RegistryProblem::DuplicateTable {
            table: table("posts"),
            first: "Post",
            first_at: loc("app", 1),
            second: "PostRow",
            second_at: loc("app", 9),
        }]
    );
    assert_eq!(
        err.to_string(),
        "table `public.posts` is declared twice: by `Post` (src/lib.rs:1) and by `PostRow` \
         (src/lib.rs:9); keep one `#[event_source]` per table"
    );
}

#[test]
fn operator_named_twice() {
    let err = Registry::new([&POSTS, &COMMENTS], [&AUDIT_AGAIN, &AUDIT]).unwrap_err();
    assert_eq!(
        err.problems,
        [RegistryProblem::DuplicateOperator {
            name: "Audit",
            first_at: loc("app::ops", 20),
            second_at: loc("app::ops", 30),
        }]
    );
    assert!(err.to_string().contains("rename one"));
}

#[test]
fn query_operator_listening_to_its_target_is_a_loop() {
    let err = Registry::new([&COUNTS], [&LOOP]).unwrap_err();
    assert_eq!(
        err.problems,
        [RegistryProblem::Loop {
            operator: "Loop",
            operator_at: loc("app::ops", 40),
            target: "Count",
            table: table("counts"),
            target_at: loc("app", 3),
        }]
    );
    assert!(
        err.to_string()
            .contains("remove `Count` from its `entities`")
    );
    // A handler may listen to its target: it decides what to write.
    Registry::new([&COUNTS], [&HANDLER_ON_TARGET]).unwrap();
}

#[test]
fn undeclared_table() {
    let err = Registry::new([&POSTS], [&UNKNOWN, &COUNT_OP]).unwrap_err();
    let unknown: Vec<_> = err
        .problems
        .iter()
        .map(|p| match p {
            RegistryProblem::UnknownTable {
                operator, table, ..
            } => format!("{operator}: {table}"),
            other => panic!("unexpected {other}"),
        })
        .collect();
    assert_eq!(
        unknown,
        [
            "Count: public.comments",
            "Count: public.counts",
            "Ghost: public.ghosts"
        ]
    );
}

#[test]
fn column_of_follows_renames() {
    const FIELDS: &[(&str, &str)] = &[("id", "id"), ("post_id", "postId")];
    const COLUMN: &str = support::column_of(FIELDS, "post_id");
    assert_eq!(COLUMN, "postId");
    assert_eq!(support::column_of(FIELDS, "other"), "other");
}

static BADGES: EntityRegistration = entity("Badge", "badges", 4);
static MIRRORS: EntityRegistration = entity("Mirror", "mirrors", 5);

/// Listens to `counts`, `Count`'s target.
static BADGE_OP: OperatorRegistration = operator(
    "Badge",
    70,
    Some(TargetRef {
        rust_name: "Badge",
        table: table("badges"),
        id_column: "id",
    }),
    &[table("counts")],
    OperatorAction::Query("select $1"),
);
/// A handler on `badges` that writes `mirrors`.
static MIRROR_OP: OperatorRegistration = OperatorRegistration {
    writes: &[table("mirrors")],
    ..operator(
        "Mirror",
        80,
        None,
        &[table("badges")],
        OperatorAction::Handler(handler),
    )
};
/// Listens to `mirrors`, which only `Mirror`'s declared writes feed.
static MIRROR_COUNT_OP: OperatorRegistration = operator(
    "MirrorCount",
    90,
    Some(COUNT_TARGET),
    &[table("mirrors")],
    OperatorAction::Query("select $1"),
);

#[test]
fn chains_count_targets_and_declared_writes() {
    assert_eq!(chain_depth(&[]), 1);
    assert_eq!(chain_depth(&[&COUNT_OP, &AUDIT]), 1);
    // Count → Badge: the target feeds the next level.
    assert_eq!(chain_depth(&[&BADGE_OP, &COUNT_OP]), 2);
    // Count → Badge → Mirror (a handler) → MirrorCount, through the
    // handler's declared `writes`.
    assert_eq!(
        chain_depth(&[&MIRROR_COUNT_OP, &MIRROR_OP, &BADGE_OP, &COUNT_OP]),
        4
    );
    assert!(MIRROR_OP.feeds(&MIRROR_COUNT_OP));
    assert!(!MIRROR_COUNT_OP.feeds(&MIRROR_OP));
    let written: Vec<_> = MIRROR_OP.written_tables().map(|t| t.table).collect();
    assert_eq!(written, ["mirrors"]);
    // A cycle counts each operator once: MirrorCount writes `counts`,
    // which Badge listens to.
    assert_eq!(chain_depth(&[&MIRROR_COUNT_OP, &MIRROR_OP, &BADGE_OP]), 3);
}

#[test]
fn declared_writes_must_be_declared_tables() {
    let err = Registry::new([&BADGES], [&MIRROR_OP]).unwrap_err();
    assert_eq!(
        err.problems,
        [RegistryProblem::UnknownTable {
            operator: "Mirror",
            operator_at: loc("app::ops", 80),
            table: table("mirrors"),
        }]
    );
    Registry::new([&BADGES, &MIRRORS], [&MIRROR_OP]).unwrap();
}

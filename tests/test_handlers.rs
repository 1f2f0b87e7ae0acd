//! Declarations run as the runtime runs them: the registry built from
//! inventory, a handler called through its registered `fn` pointer with a
//! raw event and a `Ctx`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use walflow::prelude::*;
use walflow::{
    EventDecodeError, HandlerError, Lsn, OperatorAction, Position, RawEvent, Record, Registry,
    Value,
};

#[event_source(table = "posts")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Post {
    id: i64,
    title: String,
}

#[event_source(table = "comments")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Comment {
    id: i64,
    post_id: i64,
}

on_event! {
    operator TitleWatcher {
        events: [insert, update],
        entities: [Post],
        handler: watch_title,
    }

    operator Audit {
        events: all,
        entities: [Comment, Post],
        id: [Comment.post_id, Post.id],
        handler: audit,
    }
}

#[event_enum]
enum BlogEvent {
    Comment(Event<Comment>),
    Post(Event<Post>),
}

static TITLES: AtomicUsize = AtomicUsize::new(0);
static AUDITED: AtomicUsize = AtomicUsize::new(0);

async fn watch_title(event: Event<Post>, ctx: Ctx) -> Result<(), std::io::Error> {
    assert_eq!(ctx.operator(), "TitleWatcher");
    let post = event.record().expect("insert or update");
    assert!(post.id > 0);
    if post.title == "fail" {
        return Err(std::io::Error::other("refused"));
    }
    TITLES.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

async fn audit(event: BlogEvent, ctx: Ctx) -> Result<(), walflow::BoxError> {
    assert_eq!(ctx.position(), event.meta().position());
    if let BlogEvent::Comment(comment) = &event {
        let comment = comment.record().expect("a row");
        assert!(comment.id > 0 && comment.post_id > 0);
    }
    AUDITED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

fn raw(table: &str, names: &[&str], values: Vec<Value>) -> RawEvent {
    let names: Vec<Arc<str>> = names.iter().map(|n| Arc::from(*n)).collect();
    RawEvent {
        schema: "public".into(),
        table: table.into(),
        kind: walflow::EventKind::Insert,
        new: Some(Record::new(names.into(), values)),
        old: None,
        changes: None,
        columns: Arc::from(Vec::new()),
        lsn: Lsn(1),
        commit_lsn: Lsn(2),
        commit_time: chrono::Utc::now(),
        xid: 1,
        seq: 0,
    }
}

fn ctx(operator: &'static str, raw: &RawEvent) -> Ctx {
    let pool = sqlx::PgPool::connect_lazy("postgres://walflow@localhost/walflow").unwrap();
    Ctx::new(operator, Position::from(raw), pool)
}

async fn run(
    registry: &Registry,
    operator: &'static str,
    raw: &RawEvent,
) -> Result<(), HandlerError> {
    let op = registry.operator(operator).unwrap();
    let OperatorAction::Handler(handler) = op.action else {
        panic!("`{operator}` is a handler operator")
    };
    handler(raw, ctx(op.name, raw)).await
}

#[tokio::test]
async fn handlers_run_through_their_registration() {
    let registry = Registry::global().unwrap();
    let post = raw(
        "posts",
        &["id", "title"],
        vec![Value::Int8(1), Value::Text("hello".into())],
    );
    let comment = raw(
        "comments",
        &["id", "post_id"],
        vec![Value::Int8(9), Value::Int8(1)],
    );

    let on_post: Vec<_> = registry
        .operators_for("public", "posts", walflow::EventKind::Insert)
        .map(|o| o.name)
        .collect();
    assert_eq!(on_post, ["Audit", "TitleWatcher"]);

    run(registry, "TitleWatcher", &post).await.unwrap();
    assert_eq!(TITLES.load(Ordering::SeqCst), 1);

    run(registry, "Audit", &post).await.unwrap();
    run(registry, "Audit", &comment).await.unwrap();
    assert_eq!(AUDITED.load(Ordering::SeqCst), 2);

    let audit = registry.operator("Audit").unwrap();
    let comments = walflow::TableRef {
        schema: "public",
        table: "comments",
    };
    assert_eq!(audit.id_column(comments), Some("post_id"));
}

#[tokio::test]
async fn decode_and_handler_errors_are_told_apart() {
    let registry = &Registry::from_inventory().unwrap();

    let bad = raw(
        "posts",
        &["id", "title"],
        vec![Value::Text("x".into()), Value::Text("t".into())],
    );
    let err = run(registry, "TitleWatcher", &bad).await.unwrap_err();
    assert!(
        matches!(
            &err,
            HandlerError::Decode(EventDecodeError::Record { source, .. })
                if source.table == "posts" && source.column.as_deref() == Some("id")
        ),
        "{err}"
    );

    let refused = raw(
        "posts",
        &["id", "title"],
        vec![Value::Int8(2), Value::Text("fail".into())],
    );
    let err = run(registry, "TitleWatcher", &refused).await.unwrap_err();
    assert!(matches!(err, HandlerError::Handler(_)), "{err}");
    assert_eq!(err.to_string(), "the handler failed: refused");

    let other = raw("tags", &["id"], vec![Value::Int8(1)]);
    let err = run(registry, "Audit", &other).await.unwrap_err();
    assert!(
        matches!(
            &err,
            HandlerError::Decode(EventDecodeError::UnexpectedTable { schema, table, .. })
                if schema == "public" && table == "tags"
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("does not carry events of table `public.tags`"),
        "{err}"
    );
}

//! The example: several operators in one `on_event!`, doc comments,
//! `pub`, a query operator with `delete_with` and `coalesce`, `events: all`,
//! a handler taking `Event<T>` and one taking an `#[event_enum]`.

use walflow::prelude::*;

#[event_source(table = "posts")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Post {
    pub id: i64,
    pub title: String,
    pub updated_at: DateTime<Utc>,
}

#[event_source(table = "comments")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Comment {
    pub id: i64,
    pub post_id: i64,
    pub body: String,
    pub updated_at: DateTime<Utc>,
}

#[event_source(table = "post_with_comments_counts")]
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct PostWithCommentsCount {
    pub id: i64,
    pub title: String,
    pub comments_count: i64,
}

on_event! {
    /// Keeps post_with_comments_counts in step with posts and comments.
    pub operator PostWithCommentsCountOperator for PostWithCommentsCount {
        events: all,
        entities: [Comment, Post],
        id: [Comment.post_id, Post.id],
        delete_with: [Post],
        coalesce: true,
        query: "MERGE INTO post_with_comments_counts dest USING (SELECT p.id, p.title, \
                count(c.id) AS comments_count FROM posts p LEFT JOIN comments c ON c.post_id = p.id \
                WHERE p.id = $1 GROUP BY p.id) src ON dest.id = src.id \
                WHEN MATCHED THEN UPDATE SET comments_count = src.comments_count \
                WHEN NOT MATCHED THEN INSERT VALUES (src.id, src.title, src.comments_count)",
    }

    /// Tells authors about new comments.
    pub operator CommentNotifier {
        events: [insert],
        entities: [Comment],
        handler: notify_author,
    }

    operator Audit {
        events: all,
        entities: [Comment, Post],
        handler: audit,
    }
}

#[event_enum]
pub enum BlogEvent {
    Comment(Event<Comment>),
    Post(Event<Post>),
}

#[derive(Debug)]
pub struct NotifyError;

impl std::fmt::Display for NotifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cannot notify")
    }
}

impl std::error::Error for NotifyError {}

async fn notify_author(event: Event<Comment>, _ctx: Ctx) -> Result<(), NotifyError> {
    let _ = event.record().map(|c| (c.post_id, &c.body));
    Ok(())
}

async fn audit(event: BlogEvent, ctx: Ctx) -> Result<(), walflow::BoxError> {
    let _ = (event.kind(), event.meta().position(), ctx.operator());
    if let BlogEvent::Post(post) = &event {
        let _ = post.changes().get("title");
    }
    Ok(())
}

fn main() {
    let registry = walflow::Registry::from_inventory().unwrap();
    let names: Vec<_> = registry.operators().map(|o| o.name).collect();
    assert_eq!(names, ["Audit", "CommentNotifier", "PostWithCommentsCountOperator"]);

    let count = registry.operator(PostWithCommentsCountOperator::NAME).unwrap();
    let target = count.target.unwrap();
    assert_eq!(target.table.table, "post_with_comments_counts");
    assert_eq!(target.id_column, "id");
    assert!(count.coalesce);
    assert_eq!(
        count.events,
        [EventKind::Insert, EventKind::Update, EventKind::Delete]
    );
    let mapping: Vec<_> = count
        .id_mapping
        .iter()
        .map(|m| (m.table.table, m.column))
        .collect();
    assert_eq!(mapping, [("comments", "post_id"), ("posts", "id")]);
    assert_eq!(count.delete_with.len(), 1);
    assert_eq!(count.delete_with[0].table, "posts");
    assert!(matches!(count.action, walflow::OperatorAction::Query(sql) if sql.contains("$1")));

    let notifier = registry.operator("CommentNotifier").unwrap();
    assert_eq!(notifier.events, [EventKind::Insert]);
    assert!(notifier.target.is_none());
    assert!(matches!(notifier.action, walflow::OperatorAction::Handler(_)));

    let tables: Vec<_> = registry.tables().iter().map(|t| t.table).collect();
    assert_eq!(tables, ["comments", "post_with_comments_counts", "posts"]);
    assert_eq!(Comment::POST_ID.column(), "post_id");
    assert_eq!(<Post as EventSource>::COLUMNS, ["id", "title", "updated_at"]);
}

use walflow::prelude::*;

#[event_source(table = "posts")]
#[derive(serde::Deserialize)]
pub struct Post {
    pub id: i64,
}

#[event_source(table = "comments")]
#[derive(serde::Deserialize)]
pub struct Comment {
    pub id: i64,
    pub post_id: i64,
}

#[event_source(table = "counts")]
#[derive(serde::Deserialize)]
pub struct Count {
    pub id: i64,
}

#[event_source(table = "tags")]
#[derive(serde::Deserialize)]
pub struct Tag {
    pub id: uuid::Uuid,
}

on_event! {
    operator Audit {
        events: all,
        entities: [Comment, Tag],
        id: [Comment.post_id, Tag.id],
        handler: audit,
    }
}

#[event_enum]
pub enum AuditEvent {
    Comment(Event<Comment>),
    Tag(Event<Tag>),
}

async fn audit(_: AuditEvent, _: Ctx) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}

use walflow::prelude::*;

include!("../../common/entities.rs");
include!("../../common/count.rs");

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

use walflow::prelude::*;

include!("../../common/entities.rs");
include!("../../common/count.rs");

#[event_source(table = "tags")]
#[derive(serde::Deserialize)]
pub struct Tag {
    pub id: uuid::Uuid,
    pub name: String,
}

on_event! {
    operator Counter for Count {
        events: all,
        entities: [Comment, Tag],
        id: [Comment.post_id, Tag.name],
        query: "SELECT $1",
    }
}

fn main() {}

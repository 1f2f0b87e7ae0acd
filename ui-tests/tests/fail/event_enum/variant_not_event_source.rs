use walflow::prelude::*;

include!("../../common/entities.rs");

#[derive(serde::Deserialize)]
pub struct Tag {
    pub id: i64,
}

#[event_enum]
pub enum BlogEvent {
    Comment(Event<Comment>),
    Tag(Event<Tag>),
}

fn main() {}

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

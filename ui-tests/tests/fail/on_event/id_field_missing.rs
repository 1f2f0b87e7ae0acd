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

on_event! {
    operator Counter for Count {
        events: all,
        entities: [Comment, Post],
        id: [Comment.postid],
        query: "SELECT $1",
    }
}

fn main() {}

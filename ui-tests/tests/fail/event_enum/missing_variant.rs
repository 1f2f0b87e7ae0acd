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

#[event_enum]
pub enum BlogEvent {
    Comment(Event<Comment>),
}

on_event! {
    operator Audit {
        events: all,
        entities: [Comment, Post],
        handler: audit,
    }
}

async fn audit(_: BlogEvent, _: Ctx) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}

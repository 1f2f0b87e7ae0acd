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
    operator Audit {
        events: all,
        entities: [Comment],
        handler: on_post,
    }
}

async fn on_post(_: Event<Post>, _: Ctx) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}

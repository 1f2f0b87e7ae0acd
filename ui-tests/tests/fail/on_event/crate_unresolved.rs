use walflow::prelude::*;

#[event_source(table = "posts")]
#[derive(serde::Deserialize)]
struct Post {
    id: i64,
}

on_event! {
    crate = "no_such_crate::walflow";
    operator Log {
        events: all,
        entities: [Post],
        id: [Post.id],
        handler: log,
    }
}

async fn log(_event: Event<Post>, _ctx: Ctx) -> Result<(), walflow::BoxError> {
    Ok(())
}

fn main() {}

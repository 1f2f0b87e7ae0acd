use walflow::prelude::*;

include!("../../common/entities.rs");
include!("../../common/count.rs");

on_event! {
    operator Counter for Count {
        events: all,
        entities: [Post],
        query: "SELECT $1",
        handler: on_post,
    }
}

async fn on_post(_: Event<Post>, _: Ctx) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}

use walflow::prelude::*;

include!("../../common/entities.rs");
include!("../../common/count.rs");

on_event! {
    operator Audit {
        events: all,
        entities: [Comment, Post],
        handler: on_comment,
    }
}

async fn on_comment(_: Event<Comment>, _: Ctx) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}

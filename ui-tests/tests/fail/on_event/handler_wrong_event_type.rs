use walflow::prelude::*;

include!("../../common/entities.rs");
include!("../../common/count.rs");

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

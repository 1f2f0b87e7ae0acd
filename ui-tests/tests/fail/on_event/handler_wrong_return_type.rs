use walflow::prelude::*;

include!("../../common/entities.rs");
include!("../../common/count.rs");

on_event! {
    operator Audit {
        events: all,
        entities: [Post],
        handler: on_post,
    }
}

async fn on_post(_: Event<Post>, _: Ctx) -> bool {
    true
}

fn main() {}

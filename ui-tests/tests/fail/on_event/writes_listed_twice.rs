use walflow::prelude::*;

include!("../../common/entities.rs");
include!("../../common/count.rs");

on_event! {
    operator Tally {
        events: [insert],
        entities: [Comment],
        writes: [Count, Post, Count],
        handler: on_comment,
    }
}

async fn on_comment(_: Event<Comment>, _: Ctx) -> Result<(), walflow::BoxError> {
    Ok(())
}

fn main() {}

use walflow::prelude::*;

include!("../../common/entities.rs");
include!("../../common/count.rs");

on_event! {
    operator Tally for Count {
        events: [insert],
        entities: [Comment],
        id: [Comment.post_id],
        writes: [Post, Count],
        handler: on_comment,
    }
}

async fn on_comment(_: Event<Comment>, _: Ctx) -> Result<(), walflow::BoxError> {
    Ok(())
}

fn main() {}

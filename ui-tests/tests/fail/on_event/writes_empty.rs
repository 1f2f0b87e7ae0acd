use walflow::prelude::*;

include!("../../common/entities.rs");

on_event! {
    operator Tally {
        events: [insert],
        entities: [Comment],
        writes: [],
        handler: on_comment,
    }
}

async fn on_comment(_: Event<Comment>, _: Ctx) -> Result<(), walflow::BoxError> {
    Ok(())
}

fn main() {}

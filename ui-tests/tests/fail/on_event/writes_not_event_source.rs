use walflow::prelude::*;

include!("../../common/entities.rs");

#[derive(serde::Deserialize)]
pub struct Tag {
    pub id: i64,
}

on_event! {
    operator Tagger {
        events: [insert],
        entities: [Comment],
        writes: [Post, Tag],
        handler: on_comment,
    }
}

async fn on_comment(_: Event<Comment>, _: Ctx) -> Result<(), walflow::BoxError> {
    Ok(())
}

fn main() {}

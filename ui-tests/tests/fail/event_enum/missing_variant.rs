use walflow::prelude::*;

include!("../../common/entities.rs");

#[event_enum]
pub enum BlogEvent {
    Comment(Event<Comment>),
}

on_event! {
    operator Audit {
        events: all,
        entities: [Comment, Post],
        handler: audit,
    }
}

async fn audit(_: BlogEvent, _: Ctx) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}

use walflow::prelude::*;

include!("../../common/entities.rs");

#[event_enum]
pub enum BlogEvent {
    Comment(Event<Comment>),
    Reply(Event<Comment>),
}

fn main() {}

use walflow::prelude::*;

include!("../../common/entities.rs");

#[event_enum]
pub enum BlogEvent {
    Comment(Event<Comment>),
    Post(Post),
}

fn main() {}

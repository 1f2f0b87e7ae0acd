use walflow::prelude::*;

include!("../../common/entities.rs");

#[event_enum]
pub struct BlogEvent {
    pub comment: Event<Comment>,
}

fn main() {}

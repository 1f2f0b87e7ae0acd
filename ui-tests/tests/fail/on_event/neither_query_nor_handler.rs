use walflow::prelude::*;

include!("../../common/entities.rs");
include!("../../common/count.rs");

on_event! {
    operator Counter for Count {
        events: all,
        entities: [Post],
    }
}

fn main() {}

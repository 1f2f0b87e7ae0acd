use walflow::prelude::*;

include!("../../common/entities.rs");
include!("../../common/count.rs");

on_event! {
    operator Counter {
        events: all,
        entities: [Post],
        query: "SELECT $1",
    }
}

fn main() {}

use walflow::prelude::*;

include!("../../common/entities.rs");
include!("../../common/count.rs");

on_event! {
    operator Counter for Count {
        entities: [Post],
        query: "SELECT $1",
    }
}

fn main() {}

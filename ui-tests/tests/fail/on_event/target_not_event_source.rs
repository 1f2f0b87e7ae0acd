use walflow::prelude::*;

include!("../../common/entities.rs");
include!("../../common/count.rs");

pub struct Summary {
    pub id: i64,
}

on_event! {
    operator Summarize for Summary {
        events: all,
        entities: [Post],
        query: "SELECT $1",
    }
}

fn main() {}

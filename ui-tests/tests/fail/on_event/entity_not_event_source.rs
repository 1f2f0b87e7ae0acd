use walflow::prelude::*;

include!("../../common/entities.rs");
include!("../../common/count.rs");

#[derive(serde::Deserialize)]
pub struct Tag {
    pub id: i64,
}

on_event! {
    operator Counter for Count {
        events: all,
        entities: [Post, Tag],
        query: "SELECT $1",
    }
}

fn main() {}

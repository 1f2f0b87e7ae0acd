use walflow::prelude::*;

include!("../../common/entities.rs");
include!("../../common/count.rs");

on_event! {
    operator Counter for Count {
        events: all,
        entities: [Comment, Post],
        id: [Comment.post_id, Comment.id],
        query: "SELECT $1",
    }
}

fn main() {}

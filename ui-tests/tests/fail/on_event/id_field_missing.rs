use walflow::prelude::*;

include!("../../common/entities.rs");
include!("../../common/count.rs");

on_event! {
    operator Counter for Count {
        events: all,
        entities: [Comment, Post],
        id: [Comment.postid],
        query: "SELECT $1",
    }
}

fn main() {}

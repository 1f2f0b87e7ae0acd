use walflow::prelude::*;

#[event_source(table = "posts", crate = "not a path")]
#[derive(serde::Deserialize)]
struct Post {
    id: i64,
}

fn main() {}

use walflow::prelude::*;

#[event_source(table = "posts", id = "uid")]
#[derive(serde::Deserialize)]
pub struct Post {
    pub id: i64,
}

fn main() {}

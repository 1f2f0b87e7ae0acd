use walflow::prelude::*;

#[event_source(table = "posts")]
#[derive(serde::Deserialize)]
pub struct Post {
    pub post_id: i64,
}

fn main() {}

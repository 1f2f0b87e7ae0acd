use walflow::prelude::*;

#[event_source(table = "posts", replica_identity = "nothing")]
#[derive(serde::Deserialize)]
pub struct Post {
    pub id: i64,
}

fn main() {}

use walflow::prelude::*;

#[event_source(table = "posts")]
pub struct Post {
    pub id: i64,
}

fn main() {}

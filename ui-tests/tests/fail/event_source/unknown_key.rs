use walflow::prelude::*;

#[event_source(table = "posts", primary_key = "id")]
#[derive(serde::Deserialize)]
pub struct Post {
    pub id: i64,
}

fn main() {}

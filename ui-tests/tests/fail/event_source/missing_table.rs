use walflow::prelude::*;

#[event_source(schema = "blog")]
#[derive(serde::Deserialize)]
pub struct Post {
    pub id: i64,
}

fn main() {}

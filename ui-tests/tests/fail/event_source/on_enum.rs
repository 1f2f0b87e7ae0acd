use walflow::prelude::*;

#[event_source(table = "posts")]
#[derive(serde::Deserialize)]
pub enum Post {
    Draft,
}

fn main() {}

use walflow::prelude::*;

#[event_source(table = "posts")]
#[derive(serde::Deserialize)]
pub struct Post<T> {
    pub id: i64,
    pub body: T,
}

fn main() {}

// Every mistake of one attribute is reported in one build.
use walflow::prelude::*;

#[event_source(tabel = "posts", schema = "blog", schema = "public", id = "key")]
#[derive(serde::Deserialize)]
pub struct Post {
    pub id: i64,
}

fn main() {}

//! A handler declares the tables it writes: `wait_processed` waits through
//! the operators listening to them.

use walflow::prelude::*;

include!("../common/entities.rs");

#[event_source(table = "comment_mirrors")]
#[derive(Debug, serde::Deserialize)]
pub struct CommentMirror {
    pub id: i64,
}

on_event! {
    operator Mirror {
        events: all,
        entities: [Comment],
        writes: [CommentMirror, Post],
        handler: mirror,
    }
}

async fn mirror(_: Event<Comment>, _: Ctx) -> Result<(), walflow::BoxError> {
    Ok(())
}

fn main() {
    let registry = walflow::Registry::from_inventory().unwrap();
    let mirror = registry.operator(Mirror::NAME).unwrap();
    let written: Vec<_> = mirror.writes.iter().map(|t| t.table).collect();
    assert_eq!(written, ["comment_mirrors", "posts"]);
}

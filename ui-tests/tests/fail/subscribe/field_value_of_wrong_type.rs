use walflow::prelude::*;
use walflow::subscribe::Subscriptions;

#[event_source(table = "comments")]
#[derive(serde::Deserialize)]
pub struct Comment {
    pub id: i64,
    pub post_id: i64,
}

fn main() {
    let hub = Subscriptions::default();
    let _sub = hub.subscribe::<Comment>(Comment::POST_ID.eq("5"));
}
